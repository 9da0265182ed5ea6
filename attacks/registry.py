"""Attack specs: a small frozen record per attack, resolved from a profile, and one dispatcher.

Step sizes are absolute here; profiles may write them relative to ε ("eps/4") and the config
resolves them before an ``AttackSpec`` is built, so a spec always records the numbers that ran.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from functools import partial

from .pgd import ce_sum, cw_margin_sum, fgsm, pgd, scaled_ce_sum
from .torchattacks_bridge import torchattacks_pgd

ATTACKS = ("fgsm", "pgd", "torchattacks_pgd")
# PGD objectives: name -> (loss(logits, y, **param), param keyword, default param, prefix of the default attack name)
LOSSES = {
    "ce": (ce_sum, None, None, "pgd"),
    "cw": (cw_margin_sum, "confidence", 50.0, "cw"),  # CW-L∞ of AT-BSL's evaluation
    "scaled_ce": (scaled_ce_sum, "scale", 10.0, "lsa"),  # AT-BSL's logit-scaling attack (LSA)
}


@dataclass(frozen=True)
class AttackSpec:
    """One evaluation or training attack. ``name`` is also the key its results are stored under."""

    kind: str  # one of ATTACKS
    eps: float
    steps: int = 0
    step_size: float = 0.0
    start: str = "uniform"  # "none" | "uniform" | "uniform_one_sided" | "normal"
    name: str = ""
    loss: str = "ce"  # PGD objective: "ce", "cw" (margin, confidence loss_param) or "scaled_ce" (logits × loss_param)
    loss_param: float | None = None  # None: the objective's default (CW κ = 50, logit scale 10, as AT-BSL's eval)

    def __post_init__(self):
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack kind {self.kind!r}; choose one of {', '.join(ATTACKS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown attack loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.loss != "ce" and self.kind != "pgd":
            raise ValueError(f"loss {self.loss!r} needs kind 'pgd' (got {self.kind!r})")
        if self.loss_param is None and LOSSES[self.loss][2] is not None:
            object.__setattr__(self, "loss_param", LOSSES[self.loss][2])
        if not self.name:
            prefix = LOSSES[self.loss][3] if self.kind == "pgd" else self.kind
            object.__setattr__(self, "name", self.kind if self.kind == "fgsm" else f"{prefix}{self.steps}")

    def loss_fn(self):
        """The PGD objective with this spec's parameter bound (summed over the batch)."""
        fn, keyword, _, _ = LOSSES[self.loss]
        return partial(fn, **{keyword: self.loss_param}) if keyword else fn

    def to_dict(self) -> dict:
        return asdict(self)


def run_attack(spec: AttackSpec, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial inputs for (x, y) under ``spec``."""
    if spec.kind == "fgsm":
        return fgsm(model, x, y, spec.eps)
    if spec.kind == "pgd":
        return pgd(model, x, y, spec.eps, spec.steps, spec.step_size, start=spec.start, loss_fn=spec.loss_fn(),
                   generator=generator)
    return torchattacks_pgd(model, x, y, spec.eps, spec.steps, spec.step_size, random_start=spec.start != "none")
