"""TAET's HARL terms against values computed by hand, and its two stages."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attacks import AttackSpec
from methods import TrainContext, create_method
from methods.taet import harl_terms

LOSSES = torch.tensor([1.0, 3.0, 2.0, 4.0])


def test_harl_terms_with_every_class_present_match_hand_values():
    # L = [mean(1, 3), 2, 4] = [2, 2, 4]; mean 8/3
    # HDL = ((2 - 8/3)² + (2 - 8/3)² + (4 - 8/3)²) / 3 = (4/9 + 4/9 + 16/9) / 3 = 8/9
    # RCEL = (2/8)² + (2/8)² + (4/8)² = 3/8
    y = torch.tensor([0, 0, 1, 2])
    for class_mean in ("all", "present"):  # identical when no class is missing
        bcl, hdl, rcel = harl_terms(LOSSES, y, 3, class_mean)
        assert bcl.item() == pytest.approx(8 / 3, rel=1e-6)
        assert hdl.item() == pytest.approx(8 / 9, rel=1e-6)
        assert rcel.item() == pytest.approx(3 / 8, rel=1e-6)


def test_harl_terms_with_a_missing_class_follow_each_reading():
    # class 2 absent: L = [mean(1, 3), mean(2, 4), 0] = [2, 3, 0]
    y = torch.tensor([0, 0, 1, 1])
    # authors' code: means over all 3 classes, the absent one counting as 0
    bcl, hdl, rcel = harl_terms(LOSSES, y, 3, "all")
    assert bcl.item() == pytest.approx(5 / 3, rel=1e-6)
    assert hdl.item() == pytest.approx(((2 - 5 / 3) ** 2 + (3 - 5 / 3) ** 2 + (5 / 3) ** 2) / 3, rel=1e-6)  # 14/9
    assert hdl.item() == pytest.approx(14 / 9, rel=1e-6)
    assert rcel.item() == pytest.approx((2 / 5) ** 2 + (3 / 5) ** 2, rel=1e-6)  # 13/25
    # clean reading: means over the two present classes
    bcl, hdl, rcel = harl_terms(LOSSES, y, 3, "present")
    assert bcl.item() == pytest.approx(5 / 2, rel=1e-6)
    assert hdl.item() == pytest.approx(1 / 4, rel=1e-6)
    assert rcel.item() == pytest.approx(13 / 25, rel=1e-6)


class FixedLogits(torch.nn.Module):
    """Returns preset logits for a batch, scaled by one parameter so gradients exist; the input enters
    with weight 0, so an attack sees a zero input gradient and leaves the logits as set."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.logits * self.scale + 0.0 * x.flatten(1).sum(1, keepdim=True)


def _ctx(epoch, epochs=10):
    return TrainContext(epoch=epoch, epochs=epochs, step=0, num_classes=3, class_counts=torch.tensor([4, 2, 1]),
                        attack=AttackSpec("pgd", 0.1, 2, 0.025, "none"))


def test_taet_stage_two_loss_is_weighted_harl_of_cross_entropy_on_adversarial_inputs():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 3.0]])
    y = torch.tensor([0, 0, 1, 2])
    # CE by hand: -z_y + log Σ exp z
    ce = [-2 + math.log(math.e ** 2 + 2), -0 + math.log(2 + math.e), math.log(3), -3 + math.log(2 * math.e + math.e ** 3)]
    per_class = [(ce[0] + ce[1]) / 2, ce[2], ce[3]]
    mean = sum(per_class) / 3
    hdl = sum((v - mean) ** 2 for v in per_class) / 3
    rcel = sum((v / sum(per_class)) ** 2 for v in per_class)
    expected = 0.1 * mean + 0.1 * hdl + 0.1 * rcel

    method = create_method("taet", ce_epochs=2)
    out = method.loss(FixedLogits(logits), torch.rand(4, 1, 2, 2), y, _ctx(epoch=2))
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert set(out.stats) == {"bcl", "hdl", "rcel"}
    out.loss.backward()  # the loss is differentiable end to end


def test_taet_stage_one_is_clean_cross_entropy_without_any_attack(monkeypatch):
    method = create_method("taet", ce_epochs=2)
    monkeypatch.setattr(method, "adversarial", lambda *a: pytest.fail("stage 1 must not attack"))
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    out = method.loss(FixedLogits(logits), torch.rand(2, 1, 2, 2), y, _ctx(epoch=1))
    assert out.loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_taet_stage_two_attacks_the_batch(monkeypatch):
    method = create_method("taet", ce_epochs=1)
    calls = []
    monkeypatch.setattr(method, "adversarial", lambda model, x, y, ctx: calls.append(ctx.epoch) or x)
    method.loss(FixedLogits(torch.zeros(2, 3)), torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), _ctx(epoch=1))
    assert calls == [1]


def test_taet_stage_one_length_scales_with_the_epoch_budget():
    assert create_method("taet").ce_epochs(100) == 40  # the authors' 40 of 100
    assert create_method("taet").ce_epochs(8) == 3
    assert create_method("taet", ce_epochs=5).ce_epochs(100) == 5
    assert create_method("taet", ce_fraction=0.0).ce_epochs(100) == 0
