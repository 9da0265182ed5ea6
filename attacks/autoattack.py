"""AutoAttack (Croce & Hein, ICML 2020) through torchattacks, and optionally the reference package.

Two traps of torchattacks' ``AutoAttack`` are closed here: it assumes 10 classes (APGD-T and FAB-T
then target classes that do not exist, or miss some) and, without a seed, seeds its random starts
from the clock. Both are always passed explicitly. Each call also returns what the library itself
reported as robust, so the evaluation can re-score the returned inputs against it.

Versions: ``standard`` (APGD-CE, APGD-T, FAB-T, Square), ``plus``, ``rand`` as the library defines
them, and ``apgd-ce`` (its first stage alone: the cheap CPU stand-in used in tests).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .pgd import eval_mode

VERSIONS = ("standard", "plus", "rand", "apgd-ce")


def _check_classes(version: str, num_classes: int) -> None:
    """The targeted DLR loss of APGD-T divides by z_(1) − (z_(3) + z_(4))/2: it needs four classes."""
    if version != "apgd-ce" and num_classes < 4:
        raise ValueError(f"AutoAttack {version} needs at least 4 classes (its targeted DLR loss uses the "
                         f"4th-largest logit); this model has {num_classes}: use version apgd-ce")


@dataclass
class LibraryResult:
    """Adversarial inputs and, where the library says it, how many examples it found still robust."""

    x_adv: torch.Tensor
    reported_robust: int | None  # the library's own count of examples still classified correctly; None: it reports none


def torchattacks_autoattack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                            version: str, num_classes: int, seed: int) -> LibraryResult:
    """torchattacks' AutoAttack (L∞) with ``n_classes`` and ``seed`` set; the model runs in eval mode."""
    import torchattacks

    if version not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; choose one of {', '.join(VERSIONS)}")
    _check_classes(version, num_classes)
    x = x.detach().float()
    with eval_mode(model):
        if version == "apgd-ce":
            attack = torchattacks.APGD(model, norm="Linf", eps=eps, loss="ce", n_restarts=1, seed=seed)
            return LibraryResult(attack(x, y).detach(), None)
        attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version=version, n_classes=num_classes,
                                         seed=seed)
        ensemble = attack._autoattack
        # MultiAttack counts, per stage, the examples still classified correctly by its own forward pass
        ensemble._accumulate_multi_atk_records = True
        ensemble._multi_atk_records = [0.0] * (len(ensemble.attacks) + 1)
        x_adv = attack(x, y).detach()
        still_robust = int(ensemble._multi_atk_records[-1])
    return LibraryResult(x_adv, still_robust)


def reference_autoattack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                         version: str, num_classes: int, seed: int) -> LibraryResult:
    """The authors' AutoAttack (PyPI ``pyautoattack`` 0.2) as a second cross-check; optional dependency."""
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise RuntimeError("the reference AutoAttack is not installed: pip install pyautoattack") from None
    _check_classes(version, num_classes)
    x = x.detach().float()
    options = {"version": "custom", "attacks": ["apgd-ce"]} if version == "apgd-ce" else {"version": version}
    with eval_mode(model):
        adversary = AutoAttack(model, norm="Linf", eps=eps, seed=seed, device=x.device, **options)
        targets = max(1, min(9, num_classes - 1))  # its default of 9 target classes assumes ≥ 10 classes
        adversary.apgd_targeted.n_target_classes = targets
        adversary.fab.n_target_classes = targets
        x_adv, y_adv = adversary.run_standard_evaluation(x, y, batch_size=len(x))
    return LibraryResult(x_adv.detach().to(x.device), int((y_adv.to(y.device) == y).sum()))
