"""Attack specs: a small frozen record per attack, resolved from a profile, and one dispatcher.

Step sizes are absolute here; profiles may write them relative to ε ("eps/4") and the config
resolves them before an ``AttackSpec`` is built, so a spec always records the numbers that ran.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .pgd import fgsm, pgd
from .torchattacks_bridge import torchattacks_pgd

ATTACKS = ("fgsm", "pgd", "torchattacks_pgd")


@dataclass(frozen=True)
class AttackSpec:
    """One evaluation or training attack. ``name`` is also the key its results are stored under."""

    kind: str  # one of ATTACKS
    eps: float
    steps: int = 0
    step_size: float = 0.0
    start: str = "uniform"  # "none" | "uniform" | "normal"
    name: str = ""

    def __post_init__(self):
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack kind {self.kind!r}; choose one of {', '.join(ATTACKS)}")
        if not self.name:
            label = self.kind if self.kind == "fgsm" else f"{self.kind}{self.steps}"
            object.__setattr__(self, "name", label)

    def to_dict(self) -> dict:
        return asdict(self)


def run_attack(spec: AttackSpec, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial inputs for (x, y) under ``spec``."""
    if spec.kind == "fgsm":
        return fgsm(model, x, y, spec.eps)
    if spec.kind == "pgd":
        return pgd(model, x, y, spec.eps, spec.steps, spec.step_size, start=spec.start, generator=generator)
    return torchattacks_pgd(model, x, y, spec.eps, spec.steps, spec.step_size, random_start=spec.start != "none")
