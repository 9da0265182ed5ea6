"""AT-BSL: the balanced softmax loss against hand formulas, its plain-CE inner attack, and its presets."""
from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

import methods.at_bsl  # noqa: F401  (registers "at_bsl"; methods/__init__ imports it too)
from attacks import AttackSpec, ce_sum, pgd
from benchmark.config import expand_grid
from benchmark.errors import UsageError
from benchmark.models import create_model
from methods import TrainContext, create_method, describe_methods, get_method_class, list_methods
from toys import fixed_batch_losses, mnist_batch

COUNTS = [100, 10, 1]  # head, middle, tail of a 3-class toy
LOGITS = torch.tensor([[1.0, 0.5, -0.5], [0.2, 1.5, 0.0], [0.0, 0.3, 2.0], [2.0, 0.0, 1.0]])
LABELS = torch.tensor([0, 1, 2, 2])


pytestmark = pytest.mark.usefixtures("one_thread")


class FixedLogits(torch.nn.Module):
    """Preset logits times one parameter (so the loss has a gradient); the input enters with weight 0,
    so an attack sees a zero input gradient and x_adv = x from a "none" start."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.logits[: len(x)] * self.scale + 0.0 * x.flatten(1).sum(1, keepdim=True)


def toy_ctx(counts=COUNTS, attack=None):
    return TrainContext(epoch=0, epochs=1, step=0, num_classes=len(counts), class_counts=torch.tensor(counts),
                        attack=attack or AttackSpec("pgd", 0.1, 2, 0.025, "none"))


def hand_bsl(z: list[float], y: int, counts: list[int]) -> float:
    """−(z_y + log n_y) + log Σ_c exp(z_c + log n_c), written out."""
    return -(z[y] + math.log(counts[y])) + math.log(sum(math.exp(z_c) * n_c for z_c, n_c in zip(z, counts)))


def hand_ce(z: list[float], y: int) -> float:
    return -z[y] + math.log(sum(math.exp(z_c) for z_c in z))


def test_loss_is_the_mean_balanced_softmax_of_hand_formulas_and_differs_from_cross_entropy():
    rows = LOGITS.tolist()
    expected = sum(hand_bsl(z, y, COUNTS) for z, y in zip(rows, LABELS.tolist())) / len(rows)
    plain = sum(hand_ce(z, y) for z, y in zip(rows, LABELS.tolist())) / len(rows)
    out = create_method("at_bsl").loss(FixedLogits(LOGITS), torch.rand(4, 1, 2, 2), LABELS, toy_ctx())
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert abs(out.loss.item() - plain) > 0.5  # not plain CE
    assert torch.equal(out.logits, LOGITS)  # the raw logits are reported, not the shifted ones
    out.loss.backward()  # differentiable end to end


@pytest.mark.parametrize("row, label, tail_harder", [(2, 2, True), (3, 2, True), (0, 0, False)])
def test_a_tail_example_costs_more_and_a_head_example_less_than_plain_cross_entropy(row, label, tail_harder):
    z = LOGITS[row].tolist()
    out = create_method("at_bsl").loss(FixedLogits(LOGITS[row:row + 1]), torch.rand(1, 1, 2, 2),
                                       torch.tensor([label]), toy_ctx())
    assert out.loss.item() == pytest.approx(hand_bsl(z, label, COUNTS), rel=1e-6, abs=1e-6)
    plain = hand_ce(z, label)
    assert (out.loss.item() > plain + 1.0) if tail_harder else (out.loss.item() < plain)


def test_equal_counts_reduce_to_plain_cross_entropy_and_new_counts_are_picked_up():
    method = create_method("at_bsl")
    skewed = method.loss(FixedLogits(LOGITS), torch.rand(4, 1, 2, 2), LABELS, toy_ctx([100, 10, 1]))
    equal = method.loss(FixedLogits(LOGITS), torch.rand(4, 1, 2, 2), LABELS, toy_ctx([7, 7, 7]))
    assert equal.loss.item() == pytest.approx(F.cross_entropy(LOGITS, LABELS).item(), rel=1e-6)
    assert skewed.loss.item() != pytest.approx(equal.loss.item(), rel=1e-3)


def test_a_class_with_no_training_examples_is_a_usage_error():
    with pytest.raises(UsageError, match="class.*1.*no training examples"):
        create_method("at_bsl").loss(FixedLogits(LOGITS), torch.rand(4, 1, 2, 2), LABELS, toy_ctx([5, 0, 1]))


def test_inference_logits_are_the_raw_model_logits():
    model = FixedLogits(LOGITS)
    x = torch.rand(4, 1, 2, 2)
    assert torch.equal(create_method("at_bsl").logits(model, x), model(x))


@pytest.fixture
def attack_spy(monkeypatch):
    """Records the keyword arguments and result of every PGD call the training attack makes."""
    calls = []

    def spy(*args, **kwargs):
        x_adv = pgd(*args, **kwargs)
        calls.append((kwargs, x_adv))
        return x_adv

    monkeypatch.setattr(importlib.import_module("attacks.pgd"), "pgd", spy)  # the module (attacks.pgd is the function)
    return calls


@pytest.fixture(scope="module")
def small_model():
    """A fresh narrow SmallCNN (seed 0): its input gradients are all an attack test needs, and it costs
    nothing to build, unlike a trained one."""
    torch.manual_seed(0)
    return create_model("small_cnn", 10, 1, width=0.5, drop_rate=0.0)


SKEWED = [1000, 300, 100, 30, 10, 3, 1, 1, 1, 1]  # a strong prior, so a BSL attack would go elsewhere


def test_inner_attack_is_plain_cross_entropy_without_the_log_prior(small_model, mnist5k, attack_spy):
    model = small_model.train()
    x, y = mnist_batch(mnist5k, 32)
    spec = AttackSpec("pgd", 0.1, 3, 0.025, "normal")
    torch.manual_seed(11)  # the 0.001·N(0, 1) start comes from the global RNG
    out = create_method("at_bsl").loss(model, x, y, toy_ctx(SKEWED, spec))
    assert model.training  # attacked in eval mode, mode given back
    (kwargs, used), = attack_spy
    assert kwargs.get("loss_fn", ce_sum) is ce_sum

    torch.manual_seed(11)
    plain = pgd(model, x, y, 0.1, 3, 0.025, start="normal", loss_fn=ce_sum)
    log_n = torch.tensor(SKEWED).float().log()
    torch.manual_seed(11)
    with_prior = pgd(model, x, y, 0.1, 3, 0.025, start="normal",
                     loss_fn=lambda z, t: F.cross_entropy(z + log_n, t, reduction="sum"))
    assert torch.equal(used, plain)
    assert not torch.equal(used, with_prior)  # the check can tell the two attacks apart
    expected = sum(hand_bsl(z, t, SKEWED) for z, t in zip(model(plain).tolist(), y.tolist())) / len(y)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_adversarial_inputs_stay_in_the_eps_ball_and_the_unit_box(small_model, mnist5k, attack_spy):
    x, y = mnist_batch(mnist5k, 32)
    eps = 0.1
    torch.manual_seed(0)
    ctx = toy_ctx(SKEWED, AttackSpec("pgd", eps, 5, eps / 2, "normal"))
    create_method("at_bsl").loss(small_model.train(), x, y, ctx)
    (_, x_adv), = attack_spy
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert (x_adv - x).abs().max().item() > eps / 2  # the attack moved, up to the ball's edge


def test_sgd_steps_on_one_batch_lower_the_balanced_softmax_loss(mnist5k):
    """20 steps of SGD (lr 0.05, momentum 0.9, gradient norm clipped to 1: without the clip this
    one-batch loop diverges in spikes) on 64 digits, PGD-3 at ε = 0.1 from the same start every step.
    Measured (seed 0): 2.48 -> 1.60 (0.64×); seeds 1-3 give 0.49-0.74×."""
    x, y = mnist_batch(mnist5k, 64)
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1, width=0.5, drop_rate=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = create_method("at_bsl")
    ctx = toy_ctx([400, 311, 241, 187, 146, 113, 88, 68, 53, 41], AttackSpec("pgd", 0.1, 3, 0.05, "normal"))
    losses = fixed_batch_losses(method, model, x, y, ctx, optimizer, evaluations=20, clip=1.0)
    assert losses[-1] < 0.75 * losses[0], str(losses)
    # still falling at the end, not a lucky dip
    assert all(later < earlier for earlier, later in zip(losses[-5:], losses[-4:])), str(losses)


def test_registry_lists_at_bsl_with_summary_paper_and_presets():
    assert "at_bsl" in list_methods()
    cls = get_method_class("at_bsl")
    assert "balanced softmax" in cls.summary and "2403.10073" in cls.paper and cls.code == "NISPLab/AT-BSL"
    line = next(line for line in describe_methods() if line.startswith("at_bsl "))
    assert cls.summary in line and cls.paper in line and "presets: aua, common, paper, ra" in line


@pytest.mark.parametrize("tag, augment", [("at_bsl.paper", "crop_flip"), ("at_bsl.ra", "randaugment_crop_flip"),
                                          ("at_bsl.aua", "autoaugment_crop_flip")])
def test_presets_resolve_to_the_authors_protocol_and_augmentation(tag, augment):
    (cfg,) = expand_grid({"methods": [tag], "eps": "8/255", "epochs": 100})
    assert cfg.augment == augment
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.drop_last) == (0.1, 0.9, 5e-4, 128, True)
    assert cfg.milestone_epochs() == [74, 89, 99] and cfg.lr_gamma == 0.1  # their 1-based epochs 75, 90, 100
    spec = cfg.train_attack_spec()
    assert (spec.kind, spec.steps, spec.start) == ("pgd", 10, "normal")
    assert spec.step_size == pytest.approx(2 / 255)
