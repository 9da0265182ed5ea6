"""The audit block of an evaluation: checks that catch broken attacks and gradient masking.

What an attack is (its strength family, whether it is iterative, which library runs it, which kind it is a
cross-check of) comes from the attack registry (``AttackSpec.metadata``), never from kind strings.

Never hidden: every cell's ``metrics.json`` carries it, and a failed check is a flag, not an error,
so a suspicious number stays visible next to the evidence against it.
"""
from __future__ import annotations

import numpy as np
import torch

from attacks import AttackSpec
from .data.loader import to_float

ORDER_TOLERANCE = 0.01  # robust accuracy a stronger attack may exceed a weaker one by (sampling noise of random starts)


def attack_agreement(y: np.ndarray, predictions: dict[str, np.ndarray], specs: dict[str, AttackSpec],
                     num_classes: int) -> list[dict]:
    """Per-class count of examples on which our PGD and torchattacks' PGD (same ε, steps, step, no random
    start) disagree about robustness; a class with more than one is flagged."""
    out = []
    for ours in specs.values():
        if ours.metadata["library"] != "own" or "start" not in ours.metadata["takes"] or ours.start != "none" \
                or ours.loss != "ce":
            continue
        for theirs in specs.values():
            if (theirs.metadata["cross_check_of"] == ours.kind and theirs.start == "none" and theirs.eps == ours.eps
                    and theirs.steps == ours.steps and theirs.step_size == ours.step_size):
                both = (predictions[ours.name] >= 0) & (predictions[theirs.name] >= 0)
                differs = both & ((predictions[ours.name] == y) != (predictions[theirs.name] == y))
                per_class = np.bincount(y[differs], minlength=num_classes)
                out.append({"ours": ours.name, "torchattacks": theirs.name, "disagreements": int(differs.sum()),
                            "per_class": per_class.tolist(),
                            "flagged_classes": [int(c) for c in np.flatnonzero(per_class > 1)]})
    return out


def _accuracy_on_common(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None, int]:
    """Robust accuracy of two attacks on the examples both ran on (predictions of -1 mark examples skipped)."""
    both = (a >= 0) & (b >= 0)
    n = int(both.sum())
    if n == 0:
        return None, None, 0
    return float((a[both] == y[both]).mean()), float((b[both] == y[both]).mean()), n


def own_gradient(metadata: dict) -> bool:
    """Our own gradient attack (FGSM, PGD): what the order checks compare AutoAttack and each other against."""
    return metadata["family"] == "gradient" and metadata["library"] == "own"


def order_checks(y: np.ndarray, predictions: dict[str, np.ndarray], specs: dict[str, AttackSpec],
                 tolerance: float = ORDER_TOLERANCE) -> list[dict]:
    """Robust accuracy must not rise with attack strength: PGD ≤ FGSM at the same ε, a PGD with more
    steps ≤ one with fewer (same ε and objective), and AutoAttack ≤ PGD (cross-entropy). Compared on the
    examples both attacks ran on. A violation hints at gradient masking."""
    pairs = []
    for strong in specs.values():
        for weak in specs.values():
            same_eps, s_meta, w_meta = strong.eps == weak.eps, strong.metadata, weak.metadata
            if (own_gradient(s_meta) and s_meta["iterative"] and own_gradient(w_meta) and not w_meta["iterative"]
                    and same_eps and strong.loss == "ce"):
                pairs.append((strong, weak))
            elif (strong.kind == weak.kind and own_gradient(s_meta) and s_meta["iterative"] and same_eps
                  and strong.loss == weak.loss and strong.start == weak.start and strong.steps > weak.steps):
                pairs.append((strong, weak))
            elif (s_meta["family"] == "ensemble" and own_gradient(w_meta) and w_meta["iterative"] and weak.loss == "ce"
                  and same_eps):
                pairs.append((strong, weak))
    out = []
    for s, w in pairs:
        strong_acc, weak_acc, n = _accuracy_on_common(y, predictions[s.name], predictions[w.name])
        out.append({"stronger": s.name, "weaker": w.name, "stronger_acc": strong_acc, "weaker_acc": weak_acc,
                    "examples": n, "ok": bool(n == 0 or strong_acc <= weak_acc + tolerance)})
    return out


def autoattack_agreement(y: np.ndarray, predictions: dict[str, np.ndarray], specs: dict[str, AttackSpec],
                         num_classes: int) -> list[dict]:
    """The reference AutoAttack against torchattacks' rebuilt at the same budgets (same ε, version and
    iterations), per class on their common examples: a class where the library finds fewer adversarial
    examples than the reference is flagged (the library would make that class look more robust)."""
    out = []
    for ref in specs.values():
        for ta in specs.values():
            if (ref.metadata["family"] == "ensemble" and ta.metadata["cross_check_of"] == ref.kind and ta.eps == ref.eps
                    and ta.version == ref.version and ta.steps == ref.steps):
                both = (predictions[ta.name] >= 0) & (predictions[ref.name] >= 0)
                fooled_ref = np.bincount(y[both & (predictions[ref.name] != y)], minlength=num_classes)
                fooled_ta = np.bincount(y[both & (predictions[ta.name] != y)], minlength=num_classes)
                ta_acc, ref_acc, n = _accuracy_on_common(y, predictions[ta.name], predictions[ref.name])
                differs = both & ((predictions[ta.name] == y) != (predictions[ref.name] == y))
                out.append({"reference": ref.name, "torchattacks": ta.name, "examples": n,
                            "reference_acc": ref_acc, "torchattacks_acc": ta_acc,
                            "disagreements": int(differs.sum()),
                            "adversarial_per_class": {"reference": fooled_ref.tolist(), "torchattacks": fooled_ta.tolist()},
                            "library_weaker_classes": [int(c) for c in np.flatnonzero(fooled_ta < fooled_ref)]})
    return out


def zero_gradient_fraction(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                           device: torch.device) -> float:
    """Share of examples whose cross-entropy input gradient at x is exactly zero (masking, or saturated softmax)."""
    zero, was_training = 0, model.training
    model.eval()
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].to(device)
        xb = (to_float(xb) if xb.dtype == torch.uint8 else xb.float()).requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(xb).float(), y[start:start + batch_size].to(device),
                                                 reduction="sum")
        (grad,) = torch.autograd.grad(loss, xb)
        zero += int((grad.flatten(1).abs().amax(1) == 0).sum())
    model.train(was_training)
    return zero / max(len(x), 1)


def build_audit(y: np.ndarray, predictions: dict[str, np.ndarray], specs: list[AttackSpec],
                records: dict[str, dict], num_classes: int, zero_grad: float) -> dict:
    """The audit block written beside the metrics; ``flags`` lists every failed check in words."""
    by_name = {s.name: s for s in specs}
    agreement = attack_agreement(y, predictions, by_name, num_classes)
    order = order_checks(y, predictions, by_name)
    aa_agreement = autoattack_agreement(y, predictions, by_name, num_classes)
    rescoring = {name: {"reported_robust": records[name]["reported_robust"],
                        "rescored_robust": records[name]["rescored_robust"],
                        "matches": records[name]["rescore_matches"]}
                 for name in by_name if "rescore_matches" in records[name]}
    in_ball = {name: records[name]["max_linf"] <= by_name[name].eps + 1e-6
               and records[name]["min_pixel"] >= 0.0 and records[name]["max_pixel"] <= 1.0 for name in by_name}
    flags = [f"{a['ours']} vs {a['torchattacks']}: classes {a['flagged_classes']} disagree on more than one example"
             for a in agreement if a["flagged_classes"]]
    flags += [f"{o['stronger']} ({o['stronger_acc']:.3f}) above {o['weaker']} ({o['weaker_acc']:.3f})"
              for o in order if not o["ok"]]
    flags += [f"{a['torchattacks']} found fewer adversarial examples than {a['reference']} in classes "
              f"{a['library_weaker_classes']}" for a in aa_agreement if a["library_weaker_classes"]]
    flags += [f"{name}: the library reported {r['reported_robust']} robust examples, re-scoring its inputs gives "
              f"{r['rescored_robust']}" for name, r in rescoring.items() if not r["matches"]]
    flags += [f"{name} left the ε-ball or [0, 1]" for name, ok in in_ball.items() if not ok]
    train_mode = {name: r.get("forward_calls_in_train_mode", 0) for name, r in records.items()}
    flags += [f"{name}: {n} forward passes ran with the model in training mode" for name, n in train_mode.items() if n]
    if zero_grad > 0.05:
        flags.append(f"{zero_grad:.1%} of examples have a zero input gradient")
    return {"attack_agreement": agreement, "autoattack_agreement": aa_agreement, "order_checks": order,
            "order_tolerance": ORDER_TOLERANCE, "within_budget": in_ball, "zero_gradient_fraction": zero_grad,
            "rescored": "every robust prediction is the model's prediction on the attack's returned input",
            "rescoring": rescoring,
            "forward_calls_in_train_mode": train_mode, "flags": flags}
