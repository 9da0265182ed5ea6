"""Attacks: our own batched FGSM/PGD and a bridge to torchattacks (see ``registry`` for specs)."""
from .pgd import ce_sum, eval_mode, fgsm, frozen_parameters, pgd, project_linf, random_start
from .registry import AUTOATTACKS, AttackSpec, run_attack, run_attack_reported

__all__ = [
    "AttackSpec", "ce_sum", "eval_mode", "fgsm", "frozen_parameters", "pgd", "project_linf",
    "random_start", "run_attack", "run_attack_reported", "AUTOATTACKS",
]
