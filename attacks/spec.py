"""Attack specs and the attack registry: what an attack kind is, and a small frozen record per attack.

Each attack kind registers its runner where it is written (``pgd.py``: fgsm, pgd; ``torchattacks_bridge.py``:
torchattacks_pgd; ``autoattack.py``: autoattack, torchattacks_autoattack) with metadata that says what it is:
its strength ``family`` ("gradient", "ensemble"), whether it is ``iterative``, which parameters it takes, the
``library`` that runs it, which kind it is a ``cross_check_of``, its PGD objectives, and the builders of its
default name and table label. Everything that asks "what is this attack" reads the registry, never the kind string.

Step sizes are absolute in a spec; a profile may write them relative to ε ("eps/4") and
``AttackSpec.from_profile`` resolves them, so a spec always records the numbers that ran.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from typing import Any

import torch

from benchmark.errors import UsageError
from benchmark.numbers import parse_number
from benchmark.registry import Registry

_ATTACKS: Registry[Callable] = Registry("attack kind")  # kind -> runner(spec, model, x, y, generator, num_classes, seed)
RENAMED_KINDS = {"reference_autoattack": "kind 'autoattack' now runs the authors' AutoAttack (pyautoattack); "
                                         "torchattacks' is kind 'torchattacks_autoattack'"}
# What a profile may write for an attack, with the defaults a profile gets (not those of AttackSpec's fields):
# PGD steps 10 when absent, AutoAttack steps absent = the reference's iterations, step sizes relative to ε.
PROFILE_DEFAULTS = {"kind": "pgd", "steps": None, "step_size": "eps/4", "start": "normal", "name": "", "loss": "ce",
                    "loss_param": None, "version": "standard", "per_class": None, "eps": None}
PROFILE_FIELDS = frozenset(PROFILE_DEFAULTS)


@dataclass
class LibraryResult:
    """Adversarial inputs and, where the attack says it, how many examples it found still robust."""

    x_adv: torch.Tensor
    reported_robust: int | None  # the attack's own count of examples still classified correctly; None: none
    cascade: dict | None = field(default=None)  # AutoAttack: stage names and robust count per class after each


def register_attack(kind: str, runner: Callable | None = None, *, family: str, iterative: bool, library: str, title: str,
                    label: Callable[["AttackSpec"], str], name: Callable[["AttackSpec"], str],
                    takes: tuple[str, ...] = (), objectives: Mapping[str, tuple] | None = None,
                    check: Callable[["AttackSpec"], dict] | None = None, parameter_free: bool = False,
                    cross_check_of: str | None = None, batch_invariant: bool = False, **metadata):
    """Register ``runner(spec, model, x, y, generator, num_classes, seed) -> LibraryResult`` as attack ``kind``
    (without ``runner``: a decorator that does).

    ``family`` ("gradient" | "ensemble"), ``iterative`` and ``library`` ("own" | "torchattacks" | "pyautoattack")
    say what it is; ``title`` names it in a description; ``label(spec)`` and ``name(spec)`` build its table label
    and default result name; ``takes`` lists the spec fields that change what it does (of "steps", "step_size",
    "start", "version", "loss"); ``objectives`` maps each PGD objective it accepts to (loss_fn, parameter keyword,
    default parameter, name prefix); ``check(spec)`` validates a spec of this kind and returns fields to fill in;
    ``parameter_free``: step size and start are the library's own (a profile's are ignored).
    ``batch_invariant``: its random starts are drawn per example (``attacks.pgd.ExampleSeeds``), so its
    predictions do not depend on the evaluation batch size, which then stays out of its evaluation key.
    """
    objectives = dict(objectives or {"ce": None})
    return _ATTACKS.register(kind, runner, family=family, iterative=iterative, library=library, title=title, label=label,
                             name=name, takes=tuple(takes), objectives=objectives, check=check,
                             parameter_free=parameter_free, cross_check_of=cross_check_of,
                             batch_invariant=batch_invariant, **metadata)


def list_attacks(pattern: str | None = None, **metadata) -> list[str]:
    """Registered attack kinds, sorted; ``pattern`` (fnmatch) and metadata values (``family="ensemble"``) filter."""
    kinds = _ATTACKS.list(pattern)
    return [k for k in kinds if k in _ATTACKS.where(**metadata)] if metadata else kinds


def get_attack(kind: str) -> Callable:
    """The runner of attack ``kind``; "unknown attack kind 'x'; known attack kinds: …" otherwise."""
    return _ATTACKS.get(kind)


def attack_metadata(kind: str) -> dict[str, Any]:
    """What ``kind`` was registered with (family, iterative, library, takes, objectives, ...)."""
    return _ATTACKS.metadata(kind)


def _objectives() -> dict[str, tuple]:
    """Every PGD objective some registered kind accepts."""
    out = {}
    for kind in _ATTACKS.list():
        out.update({k: v for k, v in _ATTACKS.metadata(kind)["objectives"].items() if v is not None})
    return out


@dataclass(frozen=True)
class AttackSpec:
    """One evaluation or training attack. ``name`` is also the key its results are stored under."""

    kind: str  # a registered attack kind (list_attacks())
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
        if self.kind not in _ATTACKS:
            raise ValueError(_ATTACKS.unknown_message(self.kind))
        objectives = _objectives()
        if self.loss not in objectives:
            raise ValueError(f"unknown attack loss {self.loss!r}; choose one of {', '.join(objectives)}")
        if self.loss not in self.metadata["objectives"]:
            takers = [k for k in _ATTACKS.list() if self.loss in _ATTACKS.metadata(k)["objectives"]]
            raise ValueError(f"loss {self.loss!r} needs kind {' or '.join(map(repr, takers))} (got {self.kind!r})")
        check = self.metadata["check"]
        for key, value in (check(self) if check else {}).items():
            object.__setattr__(self, key, value)
        if self.per_class is not None and self.per_class < 1:
            raise ValueError(f"per_class must be >= 1 (or absent for all examples); got {self.per_class}")
        if self.loss_param is None and objectives[self.loss][2] is not None:
            object.__setattr__(self, "loss_param", objectives[self.loss][2])
        if not self.name:
            object.__setattr__(self, "name", self.metadata["name"](self))

    @classmethod
    def from_profile(cls, attack: Mapping[str, Any], eps: float, name: str | None = None) -> "AttackSpec":
        """The spec of an attack as a profile writes it, at the cell's ``eps`` (or the attack's own ``eps``).

        ``step_size`` may be relative to the attack's own ε ("eps/4"); PGD-family steps default to 10 when
        absent, AutoAttack's to the reference's iterations; ``name`` overrides the attack's name (the
        training attack is stored as "train"). Bad values are a one-line UsageError.
        """
        if not isinstance(attack, Mapping):
            raise UsageError(f"an attack must be a mapping (kind, steps, step_size, start); got {attack!r}")
        unknown = set(attack) - PROFILE_FIELDS
        if unknown:
            raise UsageError(f"unknown attack field(s) {', '.join(sorted(unknown))}")
        a = {**PROFILE_DEFAULTS, **attack}
        kind = a["kind"]
        if a["eps"] is not None:
            eps = parse_number(a["eps"], what=f"{kind} eps")
            if not 0.0 <= eps <= 1.0:
                raise UsageError(f"{kind} eps must lie in [0, 1]; got {a['eps']}")
        per_class = None if a["per_class"] is None else int(a["per_class"])
        name = a["name"] if name is None else name
        try:
            if kind in _ATTACKS and _ATTACKS.metadata(kind)["parameter_free"]:  # step size, start: the library's own
                return cls(kind=kind, eps=eps, steps=0 if a["steps"] is None else int(a["steps"]), step_size=0.0,
                           start="none", name=name, version=str(a["version"]), per_class=per_class)
            return cls(kind=kind, eps=eps, steps=10 if a["steps"] is None else int(a["steps"]),
                       step_size=parse_number(a["step_size"], eps, f"{kind} step_size"), start=a["start"], name=name,
                       loss=a["loss"], loss_param=None if a["loss_param"] is None else float(a["loss_param"]),
                       per_class=per_class)
        except ValueError as err:
            raise UsageError(str(err)) from None

    @property
    def metadata(self) -> dict[str, Any]:
        """What this spec's kind is (the registry's metadata)."""
        return _ATTACKS.metadata(self.kind)

    @property
    def reduced(self) -> bool:
        """An AutoAttack run with fewer iterations than the reference: cheaper, weaker, and named so."""
        reference = self.metadata.get("reference_iterations")
        return reference is not None and self.steps < reference

    @property
    def label(self) -> str:
        """What a table calls this attack: only the reference AutoAttack at its full budget is "AutoAttack"."""
        return self.metadata["label"](self)

    @property
    def description(self) -> str:
        """One line of what ran: kind and library, version, steps, step size, ε, start, objective, subset."""
        meta, takes = self.metadata, self.metadata["takes"]
        parts = [f"{self.kind} ({meta['title']})"]
        if "version" in takes:
            parts.append(f"version {self.version}")
        if "steps" in takes:
            reference = meta.get("reference_iterations")
            if reference is None:
                parts.append(f"{self.steps} steps")
            else:
                parts.append(f"{self.steps} iterations" + (" (reduced)" if self.reduced else
                                                           " (the reference's)" if self.steps == reference else ""))
        if "step_size" in takes:
            parts.append(f"step {_budget(self.step_size)}")
        parts.append(f"ε {_budget(self.eps)} (L∞)")
        if "start" in takes:
            start_text = meta.get("start_text")
            parts.append(start_text(self) if start_text else _STARTS.get(self.start, f"{self.start} start"))
        if "loss" in takes:
            parts.append(f"objective {self.loss}" + ("" if self.loss_param is None else f" ({self.loss_param:g})"))
        parts.append("all examples" if self.per_class is None else f"{self.per_class} examples per class")
        return ", ".join(parts)

    def loss_fn(self):
        """The PGD objective with this spec's parameter bound (summed over the batch)."""
        fn, keyword, _, _ = _objectives()[self.loss]
        return partial(fn, **{keyword: self.loss_param}) if keyword else fn

    def to_dict(self) -> dict:
        """The spec's fields (what a cell key hashes and a record stores; label and description are derived)."""
        return asdict(self)

    def evaluation_key(self, seed: int, batch_size: int) -> str:
        """What one evaluation of this attack on a cell's evaluation subset is keyed by: its spec and seed, and
        the batch size only for an attack whose random draws depend on batching (``batch_invariant`` False)."""
        fields = {"spec": self.to_dict(), "seed": int(seed)}
        if self.metadata.get("plugin"):  # a plugin's attack kind (benchmark.plugins): an edited source evaluates anew
            fields["plugin_sha256"] = self.metadata["plugin"]["sha256"]
        if not self.metadata.get("batch_invariant"):
            fields["batch_size"] = int(batch_size)
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


_STARTS = {"none": "no random start", "uniform": "uniform random start", "uniform_one_sided": "one-sided uniform start",
           "normal": "0.001·N(0, 1) start"}
SPEC_FIELDS = tuple(f.name for f in fields(AttackSpec))


def _budget(value: float) -> str:
    """8/255 for a multiple of 1/255 (how papers write ε and step sizes), else the number."""
    scaled = value * 255
    if value and abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return f"{value:g}"


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
    return get_attack(spec.kind)(spec, model, x, y, generator, num_classes, seed)
