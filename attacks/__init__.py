"""Attacks: our own batched FGSM/PGD, the authors' AutoAttack and torchattacks' cross-checks.

``spec`` holds ``AttackSpec`` and the attack registry; each attack file registers its kinds when imported
(below), with the metadata that says what each is (``list_attacks``, ``attack_metadata``). Every module of the
package is imported, so a new attack kind is one new file here that calls ``register_attack``.
"""
import importlib as _importlib
import pkgutil as _pkgutil

from .spec import (AttackSpec, LibraryResult, attack_metadata, get_attack, list_attacks, register_attack, run_attack,
                   run_attack_reported)
from . import autoattack as _autoattack, pgd as _pgd, torchattacks_bridge as _torchattacks_bridge  # noqa: F401  (registration)
from .pgd import LOSSES, ce_sum, eval_mode, fgsm, frozen_parameters, pgd, project_linf, random_start

for _module in sorted(m.name for m in _pkgutil.iter_modules(__path__)):  # any other attack file registers too
    _importlib.import_module(f"{__name__}.{_module}")

AUTOATTACKS = tuple(list_attacks(autoattack=True))  # the AutoAttack kinds: the reference and torchattacks' cross-check

__all__ = [
    "AUTOATTACKS", "AttackSpec", "LOSSES", "LibraryResult", "attack_metadata", "ce_sum", "eval_mode", "fgsm",
    "frozen_parameters", "get_attack", "list_attacks", "pgd", "project_linf", "random_start", "register_attack",
    "run_attack", "run_attack_reported",
]
