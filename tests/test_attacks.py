"""Our PGD/FGSM: constraints, mode handling, hand-checked steps, and agreement with torchattacks."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attacks import AUTOATTACKS, AttackSpec, attack_metadata, fgsm, list_attacks, pgd, random_start, run_attack
from benchmark.errors import UsageError
from attacks.torchattacks_bridge import torchattacks_pgd
from benchmark.data import to_float


def _batch(mnist5k, n=300):
    return to_float(mnist5k.x_test[:n]), mnist5k.y_test[:n]


def test_pgd_output_stays_in_eps_ball_and_image_box(clean_mnist_model, mnist5k):
    x, y = _batch(mnist5k, 64)
    for start in ("none", "uniform", "normal"):
        x_adv = pgd(clean_mnist_model, x, y, eps=0.1, steps=5, step_size=0.04, start=start)
        assert (x_adv - x).abs().max() <= 0.1 + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert not torch.equal(x_adv, x)


def test_pgd_restores_train_mode_and_accumulates_no_weight_gradients(clean_mnist_model, mnist5k):
    x, y = _batch(mnist5k, 16)
    model = clean_mnist_model.train()
    model.zero_grad(set_to_none=True)
    seen_modes = []
    hook = model.register_forward_pre_hook(lambda m, inp: seen_modes.append(m.training))
    try:
        pgd(model, x, y, eps=0.1, steps=3, step_size=0.025)
    finally:
        hook.remove()
        model.eval()
    assert seen_modes == [False, False, False]  # eval mode inside the attack
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_pgd_restores_eval_mode_too(clean_mnist_model, mnist5k):
    x, y = _batch(mnist5k, 8)
    clean_mnist_model.eval()
    pgd(clean_mnist_model, x, y, eps=0.1, steps=1, step_size=0.025)
    assert clean_mnist_model.training is False


def test_fgsm_is_one_signed_gradient_step_computed_by_hand():
    """Linear softmax model: ∇ₓ CE = Wᵀ(softmax(Wx + b) − onehot(y)), no autograd needed."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 3)
    x = torch.rand(4, 6) * 0.8 + 0.1
    y = torch.tensor([0, 2, 1, 2])
    with torch.no_grad():
        probs = torch.softmax(linear(x), dim=1)
        grad = (probs - F.one_hot(y, 3).float()) @ linear.weight
    expected = (x + 0.05 * grad.sign()).clamp(0, 1)
    assert torch.allclose(fgsm(linear, x, y, eps=0.05), expected, atol=1e-7)


def test_random_starts_have_documented_scale_and_are_reproducible():
    x = torch.full((2000,), 0.5)
    uniform = random_start(x, 0.1, "uniform", torch.Generator().manual_seed(1))
    normal = random_start(x, 0.1, "normal", torch.Generator().manual_seed(1))
    assert (uniform - x).abs().max() <= 0.1 and (uniform - x).abs().max() > 0.09  # U[-ε, ε]
    assert 0.0008 < (normal - x).std() < 0.0012  # 0.001·N(0, 1)
    assert torch.equal(uniform, random_start(x, 0.1, "uniform", torch.Generator().manual_seed(1)))
    assert torch.equal(random_start(x, 0.1, "none"), x)


def test_pgd_from_a_start_drawn_outside_equals_pgd_drawing_it(clean_mnist_model, mnist5k):
    """What a captured attack does (``benchmark.cuda_graph.CapturedAttack``): draw the start, then run the steps."""
    from attacks.pgd import ExampleSeeds

    x, y = to_float(mnist5k.x_test[:16]), mnist5k.y_test[:16]
    for start in ("uniform", "normal"):
        inside = pgd(clean_mnist_model, x, y, 0.3, 5, 0.075, start=start, generator=ExampleSeeds(7, range(16)))
        drawn = random_start(x, 0.3, start, ExampleSeeds(7, range(16)))
        outside = pgd(clean_mnist_model, x, y, 0.3, 5, 0.075, start="ignored with x_init", x_init=drawn)
        assert torch.equal(inside, outside)


def test_our_pgd20_matches_torchattacks_pgd20_without_random_start(clean_mnist_model, mnist5k):
    model, (x, y) = clean_mnist_model, _batch(mnist5k)
    eps = 0.1
    ours = pgd(model, x, y, eps=eps, steps=20, step_size=eps / 4, start="none")
    theirs = torchattacks_pgd(model, x, y, eps=eps, steps=20, step_size=eps / 4, random_start=False)
    with torch.no_grad():
        clean_acc = (model(x).argmax(1) == y).float().mean().item()
        ours_pred, theirs_pred = model(ours).argmax(1), model(theirs).argmax(1)
    robust_acc = (ours_pred == y).float().mean().item()
    assert (ours_pred != theirs_pred).sum().item() <= 1
    assert robust_acc > 0.05, "the attack should not break every example of this model"
    assert robust_acc <= clean_acc - 0.1, f"PGD-20 barely hurts: clean {clean_acc:.3f}, robust {robust_acc:.3f}"


def test_run_attack_dispatches_each_kind_within_budget(clean_mnist_model, mnist5k):
    x, y = _batch(mnist5k, 32)
    for spec in (AttackSpec("fgsm", 0.1), AttackSpec("pgd", 0.1, 5, 0.025, "uniform"),
                 AttackSpec("torchattacks_pgd", 0.1, 5, 0.025, "none")):
        x_adv = run_attack(spec, clean_mnist_model, x, y, torch.Generator().manual_seed(0))
        assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert AttackSpec("pgd", 0.1, 20, 0.025).name == "pgd20"


def test_cw_margin_and_scaled_ce_objectives_match_hand_values():
    from attacks.pgd import cw_margin_sum, scaled_ce_sum

    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5]])
    y = torch.tensor([0, 2])
    # margins z_y − max_{j≠y} z_j: 3 − 1 = 2 and 1.5 − 2 = −0.5; κ = 50 → −(52) − (49.5)
    assert cw_margin_sum(logits, y).item() == pytest.approx(-101.5)
    assert cw_margin_sum(logits, y, confidence=0.0).item() == pytest.approx(-2.0)  # the second is clamped to 0
    ce10 = -(30 - math.log(math.exp(30) + math.exp(10) + 1)) - (15 - math.log(1 + math.exp(20) + math.exp(15)))
    assert scaled_ce_sum(logits, y).item() == pytest.approx(ce10, rel=1e-5)


def test_cw_and_logit_scaled_pgd_get_their_names_and_stay_in_budget(clean_mnist_model, mnist5k):
    x, y = _batch(mnist5k, 32)
    for loss, name in (("cw", "cw20"), ("scaled_ce", "lsa20")):
        spec = AttackSpec("pgd", 0.1, 20, 0.025, "uniform", loss=loss)
        assert spec.name == name
        x_adv = run_attack(spec, clean_mnist_model, x, y, torch.Generator().manual_seed(0))
        assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        with torch.no_grad():
            assert (clean_mnist_model(x_adv).argmax(1) == y).float().mean() < (clean_mnist_model(x).argmax(1) == y).float().mean()
    with pytest.raises(ValueError, match="needs kind 'pgd'"):
        AttackSpec("fgsm", 0.1, loss="cw")


def test_every_registered_kind_says_what_it_is_and_describes_its_spec_in_one_line():
    shipped = {"autoattack", "fgsm", "pgd", "torchattacks_autoattack", "torchattacks_pgd"}
    assert shipped <= set(list_attacks())  # a new kind (one new file in attacks/) needs no edit here
    for kind in list_attacks():
        meta = attack_metadata(kind)
        assert meta["family"] in ("gradient", "ensemble") and isinstance(meta["iterative"], bool)
        assert meta["cross_check_of"] in (None, *list_attacks())
        spec = AttackSpec.from_profile({"kind": kind, "steps": 5, "per_class": 3}, 8 / 255)
        text = spec.description
        assert text.startswith(f"{kind} (") and "ε 8/255" in text and "3 examples per class" in text and "\n" not in text
        assert "description" not in spec.to_dict() and "label" not in spec.to_dict()  # what the cell key hashes
    assert AUTOATTACKS == tuple(list_attacks(family="ensemble")) == ("autoattack", "torchattacks_autoattack")
    assert list_attacks("torchattacks_*", family="gradient") == ["torchattacks_pgd"]
    assert AttackSpec("pgd", 8 / 255, 20, 2 / 255).description == (
        "pgd (our L∞ PGD), 20 steps, step 2/255, ε 8/255 (L∞), uniform random start, objective ce, all examples")


def test_a_profile_attack_resolves_with_the_profile_defaults():
    train = AttackSpec.from_profile({}, 8 / 255, name="train")
    assert (train.kind, train.steps, train.step_size, train.start, train.name) == ("pgd", 10, 2 / 255, "normal", "train")
    own_eps = AttackSpec.from_profile({"kind": "pgd", "steps": 20, "eps": "4/255", "start": "uniform"}, 8 / 255)
    assert own_eps.eps == 4 / 255 and own_eps.step_size == 1 / 255  # relative to the attack's own ε
    assert AttackSpec.from_profile({"kind": "autoattack"}, 8 / 255).steps == 100
    with pytest.raises(UsageError, match="unknown attack field"):
        AttackSpec.from_profile({"kind": "pgd", "stepz": 3}, 8 / 255)
    with pytest.raises(UsageError, match="^unknown attack kind 'pdg'; known attack kinds: .*did you mean 'pgd'"):
        AttackSpec.from_profile({"kind": "pdg"}, 8 / 255)
