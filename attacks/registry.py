"""Attack specs: a small frozen record per attack, resolved from a profile, and one dispatcher.

Step sizes are absolute here; profiles may write them relative to ε ("eps/4") and the config
resolves them before an ``AttackSpec`` is built, so a spec always records the numbers that ran.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from functools import partial

from .autoattack import REFERENCE_ITERATIONS, VERSIONS, LibraryResult, autoattack
from .pgd import ce_sum, cw_margin_sum, fgsm, pgd, scaled_ce_sum
from .torchattacks_bridge import torchattacks_pgd

# autoattack: the authors' package (pyautoattack) at its standard settings; torchattacks_autoattack: torchattacks'
# components with the same budgets, as a cross-check
ATTACKS = ("fgsm", "pgd", "torchattacks_pgd", "autoattack", "torchattacks_autoattack")
AUTOATTACKS = ("autoattack", "torchattacks_autoattack")
RENAMED_KINDS = {"reference_autoattack": "kind 'autoattack' now runs the authors' AutoAttack (pyautoattack); "
                                         "torchattacks' is kind 'torchattacks_autoattack'"}
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
    steps: int = 0  # AutoAttack: APGD/FAB iterations (0 = the reference's 100; fewer is named as reduced)
    step_size: float = 0.0
    start: str = "uniform"  # "none" | "uniform" | "uniform_one_sided" | "normal"
    name: str = ""
    loss: str = "ce"  # PGD objective: "ce", "cw" (margin, confidence loss_param) or "scaled_ce" (logits × loss_param)
    loss_param: float | None = None  # None: the objective's default (CW κ = 50, logit scale 10, as AT-BSL's eval)
    version: str = "standard"  # AutoAttack only: standard | plus | rand | apgd-ce
    per_class: int | None = None  # run on a class-stratified subset of the evaluated examples (None: all of them)

    def __post_init__(self):
        if self.kind in RENAMED_KINDS:
            raise ValueError(f"attack kind {self.kind!r} is gone: {RENAMED_KINDS[self.kind]}")
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack kind {self.kind!r}; choose one of {', '.join(ATTACKS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown attack loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.loss != "ce" and self.kind != "pgd":
            raise ValueError(f"loss {self.loss!r} needs kind 'pgd' (got {self.kind!r})")
        if self.kind in AUTOATTACKS and self.version not in VERSIONS:
            raise ValueError(f"unknown AutoAttack version {self.version!r}; choose one of {', '.join(VERSIONS)}")
        if self.kind in AUTOATTACKS:
            if self.steps < 0:
                raise ValueError(f"AutoAttack iterations (steps) must be >= 1, or 0 for the reference's "
                                 f"{REFERENCE_ITERATIONS}; got {self.steps}")
            if self.steps == 0:
                object.__setattr__(self, "steps", REFERENCE_ITERATIONS)
            if self.kind == "torchattacks_autoattack" and self.version not in ("standard", "apgd-ce"):
                raise ValueError(f"torchattacks_autoattack builds the standard version (or apgd-ce); "
                                 f"got {self.version!r}")
        if self.per_class is not None and self.per_class < 1:
            raise ValueError(f"per_class must be >= 1 (or absent for all examples); got {self.per_class}")
        if self.loss_param is None and LOSSES[self.loss][2] is not None:
            object.__setattr__(self, "loss_param", LOSSES[self.loss][2])
        if not self.name:
            object.__setattr__(self, "name", self._default_name())

    @property
    def reduced(self) -> bool:
        """An AutoAttack run with fewer iterations than the reference: cheaper, weaker, and named so."""
        return self.kind in AUTOATTACKS and self.steps < REFERENCE_ITERATIONS

    def _default_name(self) -> str:
        if self.kind in AUTOATTACKS:
            base = {"standard": "aa", "apgd-ce": "apgd_ce"}.get(self.version, f"aa_{self.version}")
            base = base if self.kind == "autoattack" else f"ta_{base}"
            return base if self.steps == REFERENCE_ITERATIONS else f"{base}_it{self.steps}"
        if self.kind == "fgsm":
            return "fgsm"
        prefix = LOSSES[self.loss][3] if self.kind == "pgd" else self.kind
        return f"{prefix}{self.steps}"

    @property
    def label(self) -> str:
        """What a table calls this attack: only the reference AutoAttack at its full budget is "AutoAttack"."""
        if self.kind in AUTOATTACKS:
            text = {"standard": "AutoAttack", "plus": "AutoAttack+", "rand": "AutoAttack (rand)",
                    "apgd-ce": "APGD-CE"}[self.version]
            qualifiers = ["torchattacks"] if self.kind == "torchattacks_autoattack" else []
            if self.steps != REFERENCE_ITERATIONS:
                qualifiers.append(f"{self.steps} it., reduced" if self.reduced else f"{self.steps} it.")
            return text + (f" ({', '.join(qualifiers)})" if qualifiers else "")
        if self.kind == "fgsm":
            return "FGSM"
        text = {"ce": f"PGD-{self.steps}", "cw": f"CW-L∞ (PGD-{self.steps})",
                "scaled_ce": f"LSA (PGD-{self.steps})"}[self.loss]
        if self.kind == "torchattacks_pgd":
            text += " (torchattacks)"
        return text + (", no random start" if self.start == "none" else "")

    def loss_fn(self):
        """The PGD objective with this spec's parameter bound (summed over the batch)."""
        fn, keyword, _, _ = LOSSES[self.loss]
        return partial(fn, **{keyword: self.loss_param}) if keyword else fn

    def to_dict(self) -> dict:
        return asdict(self)


def run_attack(spec: AttackSpec, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               generator: torch.Generator | None = None, num_classes: int | None = None,
               seed: int = 0) -> torch.Tensor:
    """Adversarial inputs for (x, y) under ``spec``."""
    return run_attack_reported(spec, model, x, y, generator, num_classes, seed).x_adv


def run_attack_reported(spec: AttackSpec, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                        generator: torch.Generator | None = None, num_classes: int | None = None,
                        seed: int = 0) -> LibraryResult:
    """Adversarial inputs plus the library's own robust count where it reports one (AutoAttack).

    AutoAttack needs the number of classes (no default of 10 is assumed) and takes ``seed`` explicitly;
    its result carries the per-class survivor cascade.
    """
    if spec.kind in AUTOATTACKS:
        if num_classes is None:
            raise ValueError(f"{spec.name}: AutoAttack needs num_classes")
        library = "reference" if spec.kind == "autoattack" else "torchattacks"
        return autoattack(model, x, y, spec.eps, spec.version, num_classes, seed, library, spec.steps)
    return LibraryResult(_own_or_pgd_bridge(spec, model, x, y, generator), None)


def _own_or_pgd_bridge(spec: AttackSpec, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                       generator: torch.Generator | None) -> torch.Tensor:
    if spec.kind == "fgsm":
        return fgsm(model, x, y, spec.eps)
    if spec.kind == "pgd":
        return pgd(model, x, y, spec.eps, spec.steps, spec.step_size, start=spec.start, loss_fn=spec.loss_fn(),
                   generator=generator)
    return torchattacks_pgd(model, x, y, spec.eps, spec.steps, spec.step_size, random_start=spec.start != "none")
