"""Attacks: our own batched FGSM/PGD and a bridge to torchattacks (see ``registry`` for specs)."""
from .pgd import ce_sum, eval_mode, fgsm, frozen_parameters, pgd, project_linf, random_start
from .registry import AttackSpec, run_attack

__all__ = [
    "AttackSpec", "ce_sum", "eval_mode", "fgsm", "frozen_parameters", "pgd", "project_linf",
    "random_start", "run_attack",
]
