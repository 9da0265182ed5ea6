"""The audit block: attack agreement per class, strength-order checks, budget checks, zero gradients."""
from __future__ import annotations

import numpy as np
import torch

from attacks import AttackSpec
from benchmark.audit import attack_agreement, build_audit, order_checks, zero_gradient_fraction

Y = np.array([0, 0, 0, 1, 1, 2])
SPECS = [AttackSpec("fgsm", 0.1), AttackSpec("pgd", 0.1, 20, 0.025, "uniform"),
         AttackSpec("pgd", 0.1, 20, 0.025, "none", name="pgd20_nostart"),
         AttackSpec("torchattacks_pgd", 0.1, 20, 0.025, "none", name="ta_pgd20_nostart"),
         AttackSpec("pgd", 0.1, 100, 0.025, "uniform")]


def _records(max_linf=0.1):
    return {s.name: {"max_linf": max_linf, "min_pixel": 0.0, "max_pixel": 1.0} for s in SPECS}


def test_agreement_counts_robustness_disagreements_per_class_and_flags_classes_above_one():
    preds = {"pgd20_nostart": np.array([0, 0, 0, 1, 1, 2]), "ta_pgd20_nostart": np.array([1, 2, 0, 1, 0, 2])}
    (row,) = attack_agreement(Y, preds, {s.name: s for s in SPECS}, 3)
    assert row["disagreements"] == 3 and row["per_class"] == [2, 1, 0] and row["flagged_classes"] == [0]


def test_order_checks_flag_a_stronger_attack_that_leaves_more_examples_robust():
    preds = {"fgsm": np.array([0, 0, 1, 1, 1, 0]),        # 4/6 robust
             "pgd20": np.array([0, 0, 0, 1, 1, 0]),       # 5/6 > FGSM: violation
             "pgd20_nostart": np.array([0, 0, 1, 1, 0, 0]),
             "ta_pgd20_nostart": np.array([0, 0, 1, 1, 0, 0]),
             "pgd100": np.array([0, 1, 1, 1, 0, 0])}      # 2/6 <= PGD-20: fine
    checks = {(c["stronger"], c["weaker"]): c["ok"] for c in order_checks(Y, preds, {s.name: s for s in SPECS})}
    assert checks[("pgd20", "fgsm")] is False
    assert checks[("pgd100", "pgd20")] is True
    assert ("pgd20_nostart", "pgd100") not in checks  # different starts are not ordered
    audit = build_audit(Y, preds, SPECS, _records(), 3, zero_grad=0.0)
    assert any("pgd20 (0.833) above fgsm (0.667)" in flag for flag in audit["flags"])


def test_audit_flags_a_perturbation_outside_the_budget():
    preds = {s.name: Y for s in SPECS}
    audit = build_audit(Y, preds, SPECS, _records(max_linf=0.2), 3, zero_grad=0.0)
    assert audit["within_budget"]["pgd20"] is False
    assert any("left the ε-ball" in flag for flag in audit["flags"])
    assert build_audit(Y, preds, SPECS, _records(), 3, zero_grad=0.0)["flags"] == []


def test_zero_gradient_fraction_sees_a_model_that_ignores_its_input():
    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.tensor([1.0, 0.0]))

        def forward(self, x):
            return self.bias.expand(len(x), 2) + 0.0 * x.flatten(1).sum(1, keepdim=True)

    x, y = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 0, 1, 0, 1])
    assert zero_gradient_fraction(Constant(), x, y, 4, torch.device("cpu")) == 1.0
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    assert zero_gradient_fraction(linear, x, y, 4, torch.device("cpu")) == 0.0
