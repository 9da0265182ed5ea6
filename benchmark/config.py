"""Typed, validated configuration of one grid cell, and profiles (YAML) that expand into cells.

Precedence, lowest first: code defaults < profile YAML < method preset < CLI overrides. A cell's
config is resolved fully (every number that ran, ε and step sizes as floats) before it is hashed
into the cell key, so changing any hyperparameter gives a new key.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

# The registries: the one place names are checked (_check_registered); importing a package registers its entries.
from attacks import AttackSpec, get_attack
from attacks.pgd import STARTS
from attacks.spec import PROFILE_FIELDS, RENAMED_KINDS, attack_metadata
from methods import get_method, method_metadata
from methods.base import split_method_tag
from .data.datasets import dataset_metadata, get_dataset, is_naturally_imbalanced
from .models import get_model, model_metadata
from .plugins import load_plugins, resolve_spec
from .tracking import check_trackers

from methods.schedule import COMMON_MILESTONES, COMMON_SELECT_FROM
from .cell import AS_WRITTEN_FIELDS, LOCATION_FIELDS, cell_key  # noqa: F401  (the one identity rule)
from .data.transforms import AUGMENTATIONS
from .errors import UsageError
from .numbers import parse_number  # noqa: F401  (also imported from here)
from .fastpath import SPEED_SWITCHES, parse_switch, speed_of
from .plan import AMP_MODES, SCHEDULE_UNITS, SELECTIONS, TEST_SPLITS, Plan

PROFILE_DIR = Path(__file__).parent / "profiles"


def _default_eval_attacks() -> list[dict]:
    return [{"kind": "pgd", "steps": 20, "step_size": "eps/4", "start": "uniform"}]


@dataclass
class Config:
    """Everything that defines one cell. Method names may carry a preset tag: ``at.madry``."""

    # data
    dataset: str = "mnist5k"
    data_root: str | None = None
    download: bool = False
    imbalance_ratio: float = 10.0
    subset_seed: int = 0
    test_split: str = "balanced"
    augment: str = "none"
    # model and method
    model: str = "small_cnn"
    model_args: dict = field(default_factory=dict)
    method: str = "at"
    method_args: dict = field(default_factory=dict)
    seed: int = 0
    # optimisation (the common long-tail protocol of AT-BSL's code)
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # lr ×lr_gamma after these 0-based epochs: fractions (< 1) of the budget, whole epochs, or "a/b".
    # Default: AT-BSL's code (methods/schedule.py), lr ×0.1 from its 1-based epochs 75, 90 and 100, i.e.
    # after 74, 89 and 99 of 100 epochs (0.1 ×74, 0.01 ×15, 0.001 ×10, 0.0001 ×1), scaled to the budget.
    milestones: list = field(default_factory=lambda: list(COMMON_MILESTONES))
    lr_gamma: float = 0.1
    schedule_unit: str = "epoch"
    drop_last: bool = True
    # threat model
    eps: Any = "8/255"
    train_attack: dict = field(default_factory=lambda: {"kind": "pgd", "steps": 10, "step_size": "eps/4", "start": "normal"})
    eval_attacks: list = field(default_factory=_default_eval_attacks)
    eval_batch_size: int = 256
    eval_per_class: int | None = None  # evaluate on a class-stratified subset; None = the whole test split
    monitor_per_class: int = 10
    monitor_attack: dict = field(default_factory=lambda: {"kind": "pgd", "steps": 10, "step_size": "eps/4", "start": "uniform"})
    monitor_every: int = 1  # log per-class clean and robust recall on the monitoring subset every k epochs
    # model selection (benchmark/selection.py): final (default, as RoBal) | val_best | test_best (AT-BSL's
    # rule: best PGD-20 test accuracy, labelled "test-selected"); from 0-based epoch select_from (fraction
    # or epoch); default AT-BSL's `epoch >= 75` on 1-based epochs: from 0-based 74 of 100, scaled to the budget
    selection: str = "final"
    select_from: Any = COMMON_SELECT_FROM
    val_fraction: float = 0.1  # share of each class carved from the training subset for val_best
    # outside the cell key: plugin files/modules (loaded before any name is checked; the hashes of the sources
    # a cell uses are keyed, as plugin_sources) and live trackers (benchmark/tracking.py: tensorboard, mlflow, wandb)
    plugins: list = field(default_factory=list)
    trackers: list = field(default_factory=list)
    # hardware
    device: str = "auto"
    amp: str = "none"
    # speed switches (benchmark/fastpath.py): auto | true | false, auto = on for a CUDA run; resolved()
    # records the concrete values, so the cell key says what ran
    channels_last: Any = "auto"
    cudnn_benchmark: Any = "auto"
    torch_compile: bool = False
    cuda_graphs: Any = False  # auto | true | false: the step captured as a CUDA graph (benchmark/cuda_graph.py)
    # how often progress is saved (0 = every epoch / every batch); no number depends on them: not in the cell key
    checkpoint_every_s: float = 60.0  # training checkpoints at most this often, and always after the last epoch
    progress_every_s: float = 5.0  # an evaluation attack's finished batches at most this often, and at its end

    @property
    def method_name(self) -> str:
        return split_method_tag(self.method)[0]

    @property
    def method_preset(self) -> str | None:
        return split_method_tag(self.method)[1]

    @property
    def eps_value(self) -> float:
        return parse_number(self.eps, what="eps")

    def train_attack_spec(self) -> AttackSpec:
        return AttackSpec.from_profile(self.train_attack, self.eps_value, name="train")

    def monitor_attack_spec(self) -> AttackSpec:
        return AttackSpec.from_profile(self.monitor_attack, self.eps_value)

    def eval_attack_specs(self) -> list[AttackSpec]:
        specs = [AttackSpec.from_profile(a, self.eps_value) for a in self.eval_attacks]
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise UsageError(f"eval_attacks: two attacks share a name ({', '.join(names)}); give one a 'name'")
        return specs

    def selection_start_epoch(self) -> int:
        """First 0-based epoch model selection scores: a fraction (< 1) of the budget or a whole epoch."""
        m = parse_number(self.select_from, what="select_from")
        return min(int(round(m * self.epochs)), self.epochs - 1) if 0 < m < 1 else int(m)

    def milestone_epochs(self) -> list[int]:
        """Milestones as epoch indices: fractions (< 1) of the epoch budget, or whole epochs."""
        out = []
        for m in self.milestones:
            m = parse_number(m, what="milestones")
            out.append(int(round(m * self.epochs)) if 0 < m < 1 else int(m))
        return out

    def _coerce_types(self) -> None:
        """Turn profile values into the types the fields hold, or say in one line which one is wrong."""
        for name in FIELD_TYPES:
            value, kind = getattr(self, name), FIELD_TYPES[name]
            if value is None and name in OPTIONAL_FIELDS:
                continue
            try:
                if kind in (int, float):
                    if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
                        raise ValueError
                    value = kind(value)
                elif kind is bool and not isinstance(value, bool):
                    raise ValueError
                elif kind in (list, dict, str) and not isinstance(value, kind):
                    raise ValueError
            except (TypeError, ValueError):
                raise UsageError(f"{name}: expected {kind.__name__}, got {value!r}") from None
            setattr(self, name, value)

    def validate(self) -> "Config":
        self._coerce_types()
        eps = self.eps_value
        if not 0.0 <= eps <= 1.0:
            raise UsageError(f"eps must lie in [0, 1] (inputs are in [0, 1]); got {self.eps}")
        if not float(self.imbalance_ratio) >= 1:  # also rejects NaN
            raise UsageError(f"imbalance ratio must be >= 1 (n_max / n_min); got {self.imbalance_ratio}")
        if is_naturally_imbalanced(self.dataset) and (float(self.imbalance_ratio) != 1 or self.test_split != "balanced"):
            raise UsageError(f"{self.dataset} is used at its natural imbalance: give imbalance ratio 1 and "
                             f"test_split balanced (the published split); got {self.imbalance_ratio:g}, {self.test_split}")
        if self.augment not in AUGMENTATIONS:
            raise UsageError(f"augment must be one of {', '.join(AUGMENTATIONS)}; got {self.augment!r}")
        if self.test_split not in TEST_SPLITS:
            raise UsageError(f"test_split must be one of {', '.join(TEST_SPLITS)}; got {self.test_split!r}")
        if self.amp not in AMP_MODES:
            raise UsageError(f"amp must be one of {', '.join(AMP_MODES)}; got {self.amp!r}")
        for name in SPEED_SWITCHES + ("cuda_graphs",):
            setattr(self, name, parse_switch(getattr(self, name), name))
        for name in ("checkpoint_every_s", "progress_every_s"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise UsageError(f"{name} must be a number of seconds >= 0 (0: every epoch / batch); "
                                 f"got {getattr(self, name)}")
        if self.selection not in SELECTIONS:
            raise UsageError(f"selection must be one of {', '.join(SELECTIONS)}; got {self.selection!r}")
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"val_fraction must lie in (0, 1); got {self.val_fraction}")
        if self.selection != "final" and not 0 <= self.selection_start_epoch() < self.epochs:
            raise UsageError(f"select_from must name an epoch in [0, {self.epochs}); got {self.select_from}")
        if self.schedule_unit not in SCHEDULE_UNITS:
            raise UsageError(f"schedule_unit must be one of {', '.join(SCHEDULE_UNITS)}; got {self.schedule_unit!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "monitor_every", "monitor_per_class", "eval_per_class"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("seed", "subset_seed"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be >= 0; got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"lr must be a finite number > 0; got {self.lr}")
        if not 0 < self.lr_gamma <= 1:  # also rejects NaN
            raise UsageError(f"lr_gamma must lie in (0, 1] (lr is multiplied by it at each milestone); got {self.lr_gamma}")
        for name in ("momentum", "weight_decay"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise UsageError(f"{name} must be a finite number >= 0; got {getattr(self, name)}")
        for m in self.milestones:
            if not parse_number(m, what="milestones") >= 0:
                raise UsageError(f"milestones must be >= 0 (fractions of the budget or epochs); got {m}")
        check_device_name(self.device)
        self.plugins = [resolve_spec(p) for p in self.plugins]
        load_plugins(self.plugins)  # before any name is checked against the registries
        self.trackers = check_trackers(self.trackers)  # a known name whose package is installed, before anything runs
        self._check_attack_fields()
        self._check_registered()
        self._check_attacks()
        return self

    def _check_attack_fields(self) -> None:
        """Each attack a mapping of known fields with values of the right type (did-you-mean for a typo)."""
        if not all(isinstance(a, dict) for a in self.eval_attacks):
            raise UsageError(f"eval_attacks: each attack must be a mapping (kind, steps, step_size, start); "
                             f"got {self.eval_attacks!r}")
        for where, attack in [("train_attack", self.train_attack), ("monitor_attack", self.monitor_attack),
                              *((f"eval_attacks[{i}]", a) for i, a in enumerate(self.eval_attacks))]:
            for key, value in attack.items():
                if key not in PROFILE_FIELDS:
                    raise UsageError(f"{where}: unknown attack field {key!r}{did_you_mean(str(key), PROFILE_FIELDS)}")
                if value is None and key != "kind":
                    continue
                if key in ("kind", "start", "name", "loss", "version") and not isinstance(value, str):
                    raise UsageError(f"{where}: {key} must be a string; got {value!r}")
                if key in ("steps", "per_class") and (isinstance(value, bool) or not isinstance(value, int)):
                    raise UsageError(f"{where}: {key} must be a whole number; got {value!r}")
                if key == "loss_param" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise UsageError(f"{where}: loss_param must be a number; got {value!r}")

    def _check_attacks(self) -> None:
        """Every attack's fields and values, before anything runs: steps >= 1, step size > 0, a known start
        (for the kinds that take them; AutoAttack's steps 0 = the reference's iterations)."""
        specs = [("train_attack", self.train_attack_spec()), ("monitor_attack", self.monitor_attack_spec()),
                 *((f"eval_attacks[{i}]", s) for i, s in enumerate(self.eval_attack_specs()))]
        for where, spec in specs:
            meta = attack_metadata(spec.kind)
            takes = meta["takes"]
            if "steps" in takes and not (spec.steps >= 1 or (meta["parameter_free"] and spec.steps == 0)):
                raise UsageError(f"{where} ({spec.kind}): steps must be >= 1; got {spec.steps}")
            if "step_size" in takes and not (math.isfinite(spec.step_size) and spec.step_size > 0) \
                    and not (spec.eps == 0 and spec.step_size == 0):  # ε = 0 (clean training): step ε/4 = 0
                raise UsageError(f"{where} ({spec.kind}): step_size must be a finite number > 0; got {spec.step_size}")
            if "start" in takes and spec.start not in STARTS:
                raise UsageError(f"{where} ({spec.kind}): unknown start {spec.start!r}; choose one of "
                                 f"{', '.join(STARTS)}{did_you_mean(str(spec.start), STARTS)}")

    def _check_registered(self) -> None:
        """Every name this config picks is registered: "unknown X 'nope'; known Xs: …" from the registry otherwise."""
        get_dataset(self.dataset)
        factory = get_model(self.model)
        try:  # the model's options, as create_model binds them (mean/std are create_model's own)
            extra = {k: v for k, v in self.model_args.items() if k not in ("mean", "std")}
            inspect.signature(factory).bind(10, in_channels=3, **extra)
        except TypeError as err:
            options = [p.name for p in inspect.signature(factory).parameters.values()
                       if p.name not in ("num_classes", "in_channels") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            first = next(iter(set(extra) - set(options)), "")
            raise UsageError(f"model_args for model {self.model!r}: {err}; it accepts: {', '.join(options) or 'no options'}"
                             f"{did_you_mean(str(first), options) if first else ''}") from None
        method_cls = get_method(self.method_name)
        unknown = sorted(set(self.method_args) - set(method_cls.defaults))
        if unknown:
            raise UsageError(f"method {self.method_name}: unknown hyperparameter(s) {', '.join(map(str, unknown))} "
                             f"(known: {', '.join(sorted(method_cls.defaults)) or 'none'})"
                             f"{did_you_mean(str(unknown[0]), method_cls.defaults)}")
        for attack in [self.train_attack, self.monitor_attack, *self.eval_attacks]:
            kind = attack.get("kind", "pgd") if isinstance(attack, dict) else None
            if isinstance(kind, str) and kind not in RENAMED_KINDS:  # a renamed kind: AttackSpec says what it became
                get_attack(kind)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved(self) -> dict:
        """The config with every number that runs spelled out: what the cell key hashes."""
        out = self.to_dict()
        out["method_hparams"] = {**get_method(self.method_name).defaults, **self.method_args}
        out["eps_value"] = self.eps_value
        out["train_attack_spec"] = self.train_attack_spec().to_dict()
        out["eval_attack_specs"] = [s.to_dict() for s in self.eval_attack_specs()]
        out["monitor_attack_spec"] = self.monitor_attack_spec().to_dict()
        out["milestone_epochs"] = self.milestone_epochs()
        out["selection_start_epoch"] = self.selection_start_epoch() if self.selection != "final" else None
        out.update(speed_of(self))  # channels_last, cudnn_benchmark, torch_compile, amp as they run here
        sources = self.plugin_sources()
        if sources:  # only cells that use a plugin's code: every built-in cell keeps its key
            out["plugin_sources"] = sources
        fingerprint = dataset_metadata(self.dataset).get("fingerprint")
        if fingerprint is not None:  # data that is whatever its folder holds (imagefolder): the folder's listing
            out["data_fingerprint"] = fingerprint(self.data_root)
        return out

    def plugin_sources(self) -> dict[str, str]:
        """{plugin name: sha256 of its source} for each plugin that registered this cell's method, model,
        dataset, or training or monitoring attack kind (an evaluation attack's plugin is in its evaluation key)."""
        found = [method_metadata(self.method_name), model_metadata(self.model), dataset_metadata(self.dataset),
                 attack_metadata(self.train_attack_spec().kind), attack_metadata(self.monitor_attack_spec().kind)]
        return dict(sorted((m["plugin"]["name"], m["plugin"]["sha256"]) for m in found if m.get("plugin")))

    def key(self) -> str:
        """Stable cell key: readable prefix + hash of the resolved config. Locations are left out, and
        so are the as-written forms that ``resolved`` spells out (ε, attacks, method arguments), so
        ``eps: 0.1`` and ``eps: 1/10`` name the same cell."""
        return cell_key(self.resolved())

    def resolve(self, device: str | None = None) -> Plan:
        """The frozen plan of this cell on ``device`` (a name: cpu, cuda:1; default the config's own).
        The device is a location, left out of the key, but ``auto`` speed switches resolve for its type."""
        cfg = self if device is None else dataclasses.replace(self, device=str(device))
        resolved = cfg.resolved()
        return Plan(
            key=cell_key(resolved), config=cfg.to_dict(), resolved=resolved,
            dataset=cfg.dataset, data_root=cfg.data_root, download=cfg.download,
            imbalance_ratio=cfg.imbalance_ratio, subset_seed=cfg.subset_seed, test_split=cfg.test_split,
            augment=cfg.augment, model=cfg.model, model_args=copy.deepcopy(cfg.model_args), method=cfg.method,
            method_args=copy.deepcopy(cfg.method_args), method_hparams=resolved["method_hparams"], seed=cfg.seed,
            epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay, milestone_epochs=tuple(resolved["milestone_epochs"]),
            lr_gamma=cfg.lr_gamma, schedule_unit=cfg.schedule_unit, drop_last=cfg.drop_last,
            eps=cfg.eps_value, train_attack=cfg.train_attack_spec(), eval_attacks=tuple(cfg.eval_attack_specs()),
            monitor_attack=cfg.monitor_attack_spec(), eval_batch_size=cfg.eval_batch_size,
            eval_per_class=cfg.eval_per_class, monitor_per_class=cfg.monitor_per_class,
            monitor_every=cfg.monitor_every, selection=cfg.selection,
            selection_start_epoch=resolved["selection_start_epoch"], val_fraction=cfg.val_fraction,
            device=cfg.device, speed={k: resolved[k] for k in ("channels_last", "cudnn_benchmark", "torch_compile", "amp",
                                                               "cuda_graphs")},
            checkpoint_every_s=cfg.checkpoint_every_s, progress_every_s=cfg.progress_every_s)


def did_you_mean(name: str, known) -> str:
    """"; did you mean 'x'?" for the closest of ``known``, or ""."""
    close = difflib.get_close_matches(name, sorted(map(str, known)), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device_name(name: Any) -> str:
    """``auto`` or a torch device name (cpu, cuda, cuda:1, mps): a one-line UsageError otherwise."""
    import torch

    if name == "auto":
        return name
    try:
        device = torch.device(str(name))
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise UsageError(f"device {name!r} is not a device name: give auto, cpu, cuda or cuda:<index>"
                         f"{did_you_mean(str(name), ('auto', *DEVICE_TYPES))}")
    return str(name)


def check_device_present(name: Any) -> str:
    """A device name that exists on this machine (``auto`` always does): a one-line UsageError otherwise."""
    import torch

    check_device_name(name)
    if name == "auto":
        return name
    device = torch.device(str(name))
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"device {name!r}: no CUDA device is available here (give --device cpu or auto)")
        if device.index is not None and device.index >= count:
            raise UsageError(f"device {name!r}: only {count} CUDA device(s) here (cuda:0 .. cuda:{count - 1})")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"device {name!r}: no MPS device is available here")
    return str(name)


FIELD_TYPES = {
    "imbalance_ratio": float, "subset_seed": int, "seed": int, "epochs": int, "batch_size": int, "lr": float,
    "momentum": float, "weight_decay": float, "lr_gamma": float, "eval_batch_size": int, "eval_per_class": int,
    "monitor_per_class": int, "monitor_every": int, "val_fraction": float, "download": bool, "drop_last": bool, "milestones": list, "model_args": dict,
    "method_args": dict, "train_attack": dict, "monitor_attack": dict, "eval_attacks": list, "torch_compile": bool,
    "dataset": str, "model": str, "method": str, "test_split": str, "augment": str, "selection": str,
    "schedule_unit": str, "device": str, "amp": str, "checkpoint_every_s": float, "progress_every_s": float,
}
FIELD_TYPES.update(plugins=list, trackers=list)
OPTIONAL_FIELDS = {"eval_per_class"}
CONFIG_FIELDS = {f.name for f in fields(Config)}
GRID_FIELDS = {"methods": "method", "imbalance_ratios": "imbalance_ratio", "seeds": "seed"}


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge: mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_profile(name_or_path: str) -> dict:
    """A profile by name (``benchmark/profiles/<name>.yaml``) or by path; checked for unknown keys."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
        raise UsageError(f"profile {name_or_path!r} not found (known profiles: {known}, or give a path to a .yaml file)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise UsageError(f"profile {path} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise UsageError(f"profile {path} cannot be read: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise UsageError(f"profile {path} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise UsageError(f"profile {path} must be a mapping of settings, got {type(data).__name__}")
    unknown = set(data) - CONFIG_FIELDS - set(GRID_FIELDS) - {"description"}
    if unknown:
        first = sorted(map(str, unknown))[0]
        raise UsageError(f"profile {path}: unknown setting(s) {', '.join(sorted(map(str, unknown)))}"
                         f"{did_you_mean(first, CONFIG_FIELDS | set(GRID_FIELDS))}")
    return data


def expand_grid(profile: dict, overrides: dict | None = None) -> list[Config]:
    """One validated Config per (method, imbalance ratio, seed), in that nesting order."""
    settings = merge(profile, {k: v for k, v in (overrides or {}).items() if v is not None})
    settings.pop("description", None)
    plugins = settings.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise UsageError(f"plugins: expected a list of .py files or module names, got {plugins!r}")
    load_plugins(plugins)  # before the methods below are looked up: a plugin may register them
    unknown = sorted(map(repr, set(settings) - CONFIG_FIELDS - set(GRID_FIELDS)))
    if unknown:
        first = next(k for k in settings if repr(k) == unknown[0])
        raise UsageError(f"unknown setting(s) {', '.join(unknown)}{did_you_mean(str(first), CONFIG_FIELDS | set(GRID_FIELDS))}")
    axes = {}
    for grid_name, field_name in GRID_FIELDS.items():
        values = settings.pop(grid_name, None)
        if values is None:
            values = [settings.pop(field_name, getattr(Config, field_name))]
        else:
            settings.pop(field_name, None)
        axes[field_name] = values if isinstance(values, list) else [values]
    cli_overrides = {k: v for k, v in (overrides or {}).items() if v is not None and k in CONFIG_FIELDS}
    cells = []
    profile_method_args = settings.get("method_args") or {}
    if not isinstance(profile_method_args, dict):
        raise UsageError(f"method_args: expected a mapping of method name to settings, got {profile_method_args!r}")
    for method in map(str, axes["method"]):
        name, preset_name = split_method_tag(method)
        method_cls = get_method(name)
        preset = dict(method_cls.preset(preset_name)) if preset_name else {}
        extra_attacks = preset.pop("extra_eval_attacks", [])  # a preset's attacks beside the profile's suite
        per_method_args = profile_method_args.get(name) or {}
        for ir in axes["imbalance_ratio"]:
            for seed in axes["seed"]:
                values = merge(settings, preset)
                values = merge(values, cli_overrides)
                if extra_attacks:
                    values["eval_attacks"] = [*values.get("eval_attacks", _default_eval_attacks()), *extra_attacks]
                values["method_args"] = merge(per_method_args, preset.get("method_args", {}))
                values.update(method=method, imbalance_ratio=ir, seed=seed)
                try:
                    cfg = Config(**values)
                except TypeError as err:
                    raise UsageError(f"bad setting: {err}") from None
                cells.append(cfg.validate())
    return cells
