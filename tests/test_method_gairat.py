"""GAIRAT: geometry values from its own PGD loop, the κ weights and the loss against hand formulas, its presets."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import methods.gairat  # noqa: F401  (registers "gairat"; ``import methods`` does too)
from attacks import AttackSpec, pgd
from benchmark.config import expand_grid
from benchmark.data import to_float
from benchmark.errors import UsageError
from methods import TrainContext, create_method, describe_methods, get_method_class
from methods.gairat import gair_weights, geometry_aware_pgd
from toys import B, W, ToyLinear as Linear, fixed_batch_losses, images as _images, mnist_batch


pytestmark = pytest.mark.usefixtures("one_thread")


# The 3-class linear toy (W, B) of tests/toys.py: logits = W·vec(x) + b.
X_ADV = [[0.3, 0.3, 0.7, 0.7], [0.8, 0.2, 0.4, 0.4], [0.1, 0.9, 0.6, 0.2], [0.5, 0.5, 0.5, 0.5]]
Y = [1, 0, 2, 1]
KAPPA = [0, 3, 7, 10]  # geometry values of those four examples out of K = 10


def _ctx(epoch=0, epochs=8, attack=None):
    return TrainContext(epoch=epoch, epochs=epochs, step=0, num_classes=10, class_counts=torch.ones(10),
                        attack=attack or AttackSpec("pgd", 0.1, 10, 0.025, "uniform"))


def _hand_tanh_weights(kappas, steps, lam=-1.0):
    half = steps // 2
    raw = [(1 + math.tanh(lam + 5 * (half - k) / half)) / 2 for k in kappas]
    return [r * len(raw) / sum(raw) for r in raw]


def _hand_ce(x, y):
    z = [sum(w * v for w, v in zip(row, x)) + b for row, b in zip(W, B)]
    top = max(z)
    return -(z[y] - top - math.log(sum(math.exp(v - top) for v in z)))


# --- weights ---------------------------------------------------------------------------------------------

def test_tanh_weights_from_given_geometry_values_equal_hand_values():
    # K = 10, ⌊K/2⌋ = 5, Λ = −1: argument −1 + (5 − κ) = 4 − κ
    kappa = [0, 2, 5, 7, 10]
    ours = gair_weights(torch.tensor(kappa), 10, -1.0, "tanh")
    raw = [(1 + math.tanh(4 - k)) / 2 for k in kappa]
    assert ours.tolist() == pytest.approx([r * 5 / sum(raw) for r in raw], rel=1e-5)
    assert ours.mean().item() == pytest.approx(1.0, rel=1e-6)
    assert ours.tolist() == sorted(ours.tolist(), reverse=True)  # fewer correct iterates, more weight
    # odd K: ⌊5/2⌋ = 2
    assert gair_weights(torch.tensor([0, 1, 4, 5]), 5).tolist() == pytest.approx(
        _hand_tanh_weights([0, 1, 4, 5], 5), rel=1e-5)


def test_other_weight_functions_and_an_infinite_lambda_follow_the_authors_definitions():
    kappa = [0, 2, 5, 7, 10]
    sig = [1 / (1 + math.exp(-(-1 + 5 * (5 - k) / 5))) for k in kappa]
    assert gair_weights(torch.tensor(kappa), 10, -1.0, "sigmoid").tolist() == pytest.approx(
        [s * 5 / sum(sig) for s in sig], rel=1e-5)
    disc = [(11 - k) / 11 for k in kappa]
    assert gair_weights(torch.tensor(kappa), 10, -1.0, "discrete").tolist() == pytest.approx(
        [d * 5 / sum(disc) for d in disc], rel=1e-5)
    assert gair_weights(torch.tensor(kappa), 10, math.inf).tolist() == [1.0] * 5  # Λ = ∞: plain PGD-AT
    # a very negative Λ: (1 + tanh z)/2 rounds to 0 in float32 there; the weights stay finite
    far = gair_weights(torch.tensor([10, 10, 9]), 10, -30.0)
    assert torch.isfinite(far).all() and far.mean().item() == pytest.approx(1.0, rel=1e-5)


# --- the attack and κ ------------------------------------------------------------------------------------

def test_geometry_aware_pgd_gives_the_x_adv_of_attacks_pgd_and_counts_correct_iterates(clean_mnist_model, mnist5k):
    model = clean_mnist_model.eval()
    x, y = to_float(mnist5k.x_test[:64]), mnist5k.y_test[:64]
    eps, steps, step = 0.1, 5, 0.025
    torch.manual_seed(3)
    x_adv, kappa = geometry_aware_pgd(model, x, y, eps, steps, step, start="uniform")
    torch.manual_seed(3)
    assert torch.equal(x_adv, pgd(model, x, y, eps, steps, step, start="uniform"))
    # κ by definition: iterate k of PGD is attacks.pgd stopped after k steps (same start noise)
    expected = torch.zeros(64, dtype=torch.long)
    for k in range(steps):  # iterates 0 .. K−1: the start included, the final x_adv not
        torch.manual_seed(3)
        iterate = pgd(model, x, y, eps, k, step, start="uniform")
        with torch.no_grad():
            expected += model(iterate).argmax(1) == y
    assert torch.equal(kappa, expected)
    assert len(set(kappa.tolist())) >= 3  # the batch really spreads over several geometry values


def test_training_perturbation_stays_in_the_eps_ball_and_the_unit_box(clean_mnist_model, mnist5k):
    model = copy.deepcopy(clean_mnist_model).train()
    x, y = to_float(mnist5k.x_test[64:128]), mnist5k.y_test[64:128]
    eps = 0.1
    torch.manual_seed(0)
    x_adv = create_method("gairat").adversarial(model, x, y, _ctx(attack=AttackSpec("pgd", eps, 4, eps / 2, "uniform")))
    assert model.training  # attacked in eval mode, mode given back
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert (x_adv - x).abs().max().item() > eps / 2


def test_an_attack_without_pgd_iterates_is_refused():
    method, x, y = create_method("gairat"), _images(X_ADV), torch.tensor(Y)
    for spec in (AttackSpec("fgsm", 0.1), AttackSpec("pgd", 0.1, 1, 0.1, "uniform"),
                 AttackSpec("torchattacks_pgd", 0.1, 10, 0.025, "uniform")):
        with pytest.raises(UsageError, match="at least 2 steps"):
            method.loss(Linear(), x, y, _ctx(attack=spec))


# --- the loss and its phases -----------------------------------------------------------------------------

def _fixed_attack(method, monkeypatch):
    monkeypatch.setattr(method, "adversarial_with_kappa",
                        lambda model, x, y, ctx: (_images(X_ADV), torch.tensor(KAPPA)))


def test_loss_before_the_begin_epoch_is_mean_cross_entropy_on_x_adv(monkeypatch):
    method = create_method("gairat")
    _fixed_attack(method, monkeypatch)
    out = method.loss(Linear(), _images(X_ADV), torch.tensor(Y), _ctx(epoch=2, epochs=8))  # 3 < 0.5 * 8
    expected = sum(_hand_ce(x, y) for x, y in zip(X_ADV, Y)) / 4
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.stats["kappa"].item() == pytest.approx(5.0)


def test_loss_from_the_begin_epoch_weights_each_example_by_its_geometry_value(monkeypatch):
    method = create_method("gairat")
    _fixed_attack(method, monkeypatch)
    out = method.loss(Linear(), _images(X_ADV), torch.tensor(Y), _ctx(epoch=3, epochs=8))  # 4 >= 0.5 * 8
    weights = _hand_tanh_weights(KAPPA, 10)
    expected = sum(w * _hand_ce(x, y) for w, x, y in zip(weights, X_ADV, Y)) / 4
    plain = sum(_hand_ce(x, y) for x, y in zip(X_ADV, Y)) / 4
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert abs(expected - plain) > 0.1  # the weighting matters on this batch
    expected_logits = [[sum(w * v for w, v in zip(row, x)) + b for row, b in zip(W, B)] for x in X_ADV]
    assert torch.allclose(out.logits, torch.tensor(expected_logits), atol=1e-6)
    out.loss.backward()


@pytest.mark.parametrize("epochs, first_reweighted", [(120, 59), (8, 3), (100, 49), (2, 0)])
def test_reweighting_begins_at_half_the_budget_counted_as_the_authors_do(epochs, first_reweighted):
    method = create_method("gairat")
    phases = [method.reweighting(_ctx(epoch=e, epochs=epochs)) for e in range(epochs)]
    assert phases == [e >= first_reweighted for e in range(epochs)]  # (epoch + 1) >= 0.5 * epochs


def test_an_absolute_begin_epoch_overrides_the_fraction():
    method = create_method("gairat", begin_epoch=60)  # the authors' CLI value, 1-based
    assert [method.reweighting(_ctx(epoch=e, epochs=100)) for e in (58, 59)] == [False, True]
    with pytest.raises(UsageError, match="weight_function"):
        create_method("gairat", weight_function="Tanh2")
    with pytest.raises(UsageError, match="Lambda"):
        create_method("gairat", Lambda=-math.inf)


def test_twenty_sgd_steps_on_one_batch_lower_the_reweighted_loss(clean_mnist_model, mnist5k):
    """64 seeded training digits, a copy of the clean model (not robust, so the adversarial loss is high),
    SGD lr 0.05 momentum 0.9 with the gradient norm clipped to 1 (unclipped, the one-batch loop jumps),
    PGD-4 from the same start every step, in the reweighting phase (κ and the weights change every step)."""
    x, y = mnist_batch(mnist5k, 64)
    model = copy.deepcopy(clean_mnist_model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method, ctx = create_method("gairat"), _ctx(epoch=7, epochs=8, attack=AttackSpec("pgd", 0.1, 4, 0.025, "normal"))
    assert method.reweighting(ctx)
    losses = fixed_batch_losses(method, model, x, y, ctx, optimizer, evaluations=20, clip=1.0)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses  # measured: 2.78 -> 1.34 (0.48x); batch seeds 1-2: 0.49, 0.58x
    assert sum(losses[-5:]) < 0.75 * sum(losses[:5]), losses  # not a lucky last step (measured 0.55x)


# --- registry and presets --------------------------------------------------------------------------------

def test_registry_lists_gairat_with_summary_paper_presets_and_the_autoattack_caveat():
    cls = get_method_class("gairat")
    line = next(line for line in describe_methods() if line.startswith("gairat "))
    assert cls.summary in line and cls.paper in line and "2010.01736" in cls.paper
    assert "presets: common, paper" in line
    assert cls.code == "zjfheart/Geometry-aware-Instance-reweighted-Adversarial-Training"
    assert "AutoAttack" in cls.summary and "issue #1" in cls.summary
    assert "issue #1" in methods.gairat.__doc__


def _authors_lr(epoch, epochs=120, lr_max=0.1):
    """GAIRAT.py's 'piecewise' schedule (branch for >= 110 epochs), evaluated at t = epoch + 1."""
    t = (epoch + 1) / epochs
    return lr_max if t < 0.5 else lr_max / 10 if t < 0.75 else lr_max / 100 if t < 11 / 12 else lr_max / 200


def test_gairat_paper_preset_resolves_to_the_authors_protocol():
    (cfg,) = expand_grid({"methods": ["gairat.paper"]})
    assert (cfg.epochs, cfg.batch_size, cfg.drop_last) == (120, 128, False)
    assert (cfg.lr, cfg.momentum, cfg.weight_decay) == (0.1, 0.9, 2e-4)
    assert cfg.augment == "crop_flip" and cfg.eps_value == pytest.approx(8 / 255)
    assert cfg.method_args == {"Lambda": -1.0, "weight_function": "tanh", "begin_fraction": 0.5}
    spec = cfg.train_attack_spec()
    assert (spec.kind, spec.steps, spec.start, spec.step_size) == ("pgd", 10, "uniform", 0.007)
    assert cfg.milestone_epochs() == [59, 89, 109]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestone_epochs(), cfg.lr_gamma)
    for epoch in range(cfg.epochs):
        ours = optimizer.param_groups[0]["lr"]
        if epoch < 109:
            assert ours == pytest.approx(_authors_lr(epoch)), epoch
        else:  # the stated deviation: one gamma cannot make their last ×0.5 drop
            assert (ours, _authors_lr(epoch)) == (pytest.approx(1e-4), pytest.approx(5e-4))
        optimizer.step()
        scheduler.step()
    method = create_method(cfg.method, **cfg.method_args)
    assert [e for e in range(120) if method.reweighting(_ctx(epoch=e, epochs=120))][0] == 59
