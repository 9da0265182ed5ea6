"""The Method interface every training method implements, and the ``@register_method`` registry.

A method owns its loss, including any inner maximization (through ``attacks``), any change to
the model (``wrap_model``) or to inference (``logits``), and any state it keeps between steps
(``state_dict``), which the training loop saves in every checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Hashable

import torch

from attacks import AttackSpec, run_attack
from benchmark.errors import UsageError
from benchmark.registry import Registry


@dataclass
class TrainContext:
    """What a method may read about the run: where training stands and what it trains on."""

    epoch: int  # 0-based
    epochs: int
    step: int  # global iteration, 0-based
    num_classes: int
    class_counts: torch.Tensor  # training examples per class, on the training device
    attack: AttackSpec  # the training attack of the resolved config
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    lr: float | None = None  # the optimizer's current learning rate, set by the loop before each step


@dataclass
class LossOut:
    """A method's loss for one batch. ``logits`` are on the inputs the loss used (for train accuracy);
    ``stats`` are tensors (not floats) so the hot loop never waits on the device."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class Method:
    """Base class: plain cross-entropy on clean inputs. Subclasses override ``loss`` and what else they need.

    ``hparams`` holds the method's own hyperparameters (recorded in every result); ``presets``
    maps a preset name to config overrides (``{"train_attack": {...}, "method_args": {...}}``) so
    a user can select a paper's own protocol as ``name.preset``.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line: what the method changes (loss, head, inference)
    paper: ClassVar[str] = ""  # authors, venue, year, arXiv id; the equation the loss implements
    code: ClassVar[str] = ""  # the authors' repository the implementation was checked against
    defaults: ClassVar[dict[str, Any]] = {}
    presets: ClassVar[dict[str, dict]] = {}
    # CUDA-graph capture (benchmark/cuda_graph.py): a graph-safe step, once warm-up steps have built its lazy state,
    # has no host-dependent control flow (no .item(), bool(tensor), .tolist(), nonzero, bincount, boolean-mask
    # indexing) and keeps the tensors it reads between steps at fixed addresses (updated in place), so it can be
    # recorded once and replayed. An unsafe method says why; it runs eagerly. tests/test_graph_safety.py checks both.
    graph_safe: ClassVar[bool] = False
    graph_unsafe_reason: ClassVar[str] = "not declared graph-safe (a method declares graph_safe = True once its step is)"

    def __init__(self, **hparams):
        unknown = set(hparams) - set(self.defaults)
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise UsageError(f"method {self.name}: unknown hyperparameter(s) {', '.join(sorted(unknown))} (known: {known})")
        self.hparams = {**self.defaults, **hparams}

    @classmethod
    def preset(cls, name: str) -> dict:
        if name not in cls.presets:
            known = ", ".join(sorted(cls.presets)) or "none"
            raise UsageError(f"method {cls.name} has no preset {name!r} (known presets: {known})")
        return cls.presets[name]

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def adversarial(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        """Training adversarial examples from the config's training attack (model in eval mode inside)."""
        return run_attack(ctx.attack, model, x, y)

    def loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> LossOut:
        logits = model(x)
        return LossOut(torch.nn.functional.cross_entropy(logits, y), logits)

    def graph_phase(self, ctx: TrainContext) -> Hashable:
        """What of ``ctx`` the step's Python control flow depends on (TAET: its stage): a captured step is recorded
        once per value and replayed while it holds. None: one capture for the whole run."""
        return None

    def logits(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Inference-time logits (methods with a post-hoc adjustment override this)."""
        return model(x)

    def on_epoch_start(self, ctx: TrainContext) -> None:
        pass

    def on_epoch_end(self, ctx: TrainContext) -> None:
        pass

    def log_epoch(self, record: dict, ctx: TrainContext) -> dict:
        """Extra fields for the epoch's ``log.jsonl`` line (TAET: whether its clean stage sits on the
        head-class plateau); none by default."""
        return {}

    def diagnostics(self) -> dict | None:
        """What the cell record keeps as ``method_diagnostics`` (TAET: its stage switch); None by default."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


_METHODS: Registry[type[Method]] = Registry("method")  # registry name -> Method subclass
METHODS = _METHODS.entries()  # read-only view, name -> class (look one up with get_method)


def register_method(name: str, **metadata):
    """Class decorator: make a Method available under ``name`` (duplicates are an error).

    The metadata recorded beside it are the class's ``summary``, ``paper`` and preset names, plus ``metadata``.
    """

    def decorate(cls: type[Method]) -> type[Method]:
        _METHODS.register(name, cls, summary=cls.summary, paper=cls.paper, presets=sorted(cls.presets), **metadata)
        cls.name = name
        return cls

    return decorate


def list_methods(pattern: str | None = None) -> list[str]:
    """Registered method names, sorted; ``pattern`` (fnmatch, e.g. ``"at*"``) keeps those it matches."""
    return _METHODS.list(pattern)


def method_metadata(name: str) -> dict:
    """What ``name`` was registered with: summary, paper, presets and any extra metadata."""
    return _METHODS.metadata(name)


def describe_methods() -> list[str]:
    """One line per registered method: name, one-line summary, paper and presets."""
    lines = []
    for name in list_methods():
        cls = _METHODS.get(name)
        presets = ", ".join(sorted(cls.presets)) or "-"
        lines.append(f"{name:<9} {cls.summary} [{cls.paper}] presets: {presets}")
    return lines


def get_method(name: str) -> type[Method]:
    """The Method class registered under ``name``; "unknown method 'x'; known methods: …" otherwise."""
    return _METHODS.get(name)


get_method_class = get_method  # the older name, used across the harness


def split_method_tag(tag: str) -> tuple[str, str | None]:
    """``"at.madry"`` → ``("at", "madry")``, ``"taet"`` → ``("taet", None)``: a method name and its preset."""
    name, _, preset = tag.partition(".")
    return name, preset or None


def create_method(name: str, **hparams) -> Method:
    """A method by registry name; a ``name.preset`` tag selects only the config preset, not the class."""
    return get_method_class(split_method_tag(name)[0])(**hparams)
