"""A cell on disk: its file names, the record schema, its status and its identity.

A cell's folder ``results/<cell key>/`` holds ``config.yaml``, ``indices.json``, ``log.jsonl``, the
checkpoint, per-attack partial predictions in ``eval_progress/`` while an evaluation runs and, once
finished, ``predictions.npz`` and ``metrics.json``: a :class:`CellRecord` that the runner writes with
:func:`write_record` and the store reads with :func:`read_record`. A forced re-run moves earlier files into
``superseded/<time>/``.

Identity: the cell key is ``<dataset>-ir<IR>-<method>-<model>-s<seed>-<digest>``, the digest hashing the
resolved config without locations, the as-written forms that the resolved config spells out and the
evaluation attacks (each keyed on its own, :data:`EVALUATION_FIELDS`: a cell is one trained model, evaluated
on one evaluation subset by every attack asked of it so far), together
with the harness's result-affecting version (:data:`HARNESS_VERSION`: record schema and package version),
so a cell made by another version is never counted as done (:func:`cell_key`, what ``Config.key()``
computes). Cells that differ only in the evaluation subset (:data:`EVALUATION_SUBSET_FIELDS`) share a
:func:`training_key`: the runner trains such a model once and evaluates it in each cell. Every file a cell resumes from (checkpoint, best model, evaluation progress) carries the key
and the :func:`config_hash`, and one that does not match its folder is refused, never resumed. A *setting* is the same rule without the training seed
(:func:`setting_of`): cells that differ only by training seed share it and are averaged together.

This module imports neither torch nor the configuration, so the report reads cells without either.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

from . import __version__
from .atomic import write_json_atomic

SCHEMA_VERSION = 1  # of metrics.json; the store reads this version only
HARNESS_VERSION = f"schema {SCHEMA_VERSION}, tailrobust {__version__}"  # in every cell key

CONFIG_FILE = "config.yaml"
INDICES_FILE = "indices.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.pt"  # the epoch before: resumed from when the newest is unreadable
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.npz"  # per-example labels and predictions of every attack, for audits
EVAL_PROGRESS_DIR = "eval_progress"  # per-attack partial predictions while an evaluation runs (resumable)
SUPERSEDED_DIR = "superseded"
LOCK_FILE = "lock.json"  # the process that owns the cell (benchmark.cell_lock)

# What the cell key leaves out of the resolved config: where things are, and the as-written forms whose
# resolved values (eps_value, *_spec(s), method_hparams, milestone_epochs) it hashes instead.
LOCATION_FIELDS = ("data_root", "download", "device", "plugins", "trackers")  # plugins: their hashes are keyed
PACING_FIELDS = ("checkpoint_every_s", "progress_every_s")  # how often progress is saved: changes no number
AS_WRITTEN_FIELDS = ("eps", "train_attack", "eval_attacks", "monitor_attack", "method_args", "milestones",
                     "select_from")
# What the cell key leaves out because it is keyed per attack instead (``AttackSpec.evaluation_key``): the
# evaluation attacks, and the evaluation batch size, which changes no number of a batch-invariant attack and
# is in the evaluation key of the others. Adding or changing an attack evaluates the trained model again.
EVALUATION_FIELDS = ("eval_attack_specs", "eval_batch_size")
# What chooses the evaluated examples, not the trained weights (unless the model selection scores the test split,
# ``selection: test_best``): cells that differ only here are separate evaluations of one training
# (:func:`training_key`), and the runner trains it once.
EVALUATION_SUBSET_FIELDS = ("eval_per_class", "test_split")

Status = Literal["done", "failed", "resumable", "new"]


class BadCell(ValueError):
    """A metrics.json that is missing, unreadable, or not a complete record of the schema read here."""


class ForeignCellFile(RuntimeError):
    """A checkpoint (or other file a cell resumes from) that belongs to another cell or config: refused."""


def set_aside(cell_dir: Path, only: tuple[str, ...] | None = None, keep: tuple[str, ...] = (LOCK_FILE,)) -> Path:
    """Move a cell's files (or only those named) into ``superseded/<time>/`` (never overwrite or delete
    results): before a forced re-run or a retry, or a damaged file. The cell's lock stays where it is."""
    cell_dir = Path(cell_dir)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    target, n = cell_dir / SUPERSEDED_DIR / stamp, 1
    while target.exists():
        n += 1
        target = cell_dir / SUPERSEDED_DIR / f"{stamp}-{n}"
    target.mkdir(parents=True)
    for item in list(cell_dir.iterdir()):
        if item.name not in (SUPERSEDED_DIR, *keep) and (only is None or item.name in only):
            shutil.move(str(item), target / item.name)
    return target


def non_finite_path(value: Any, where: str = "") -> str | None:
    """The path of the first non-finite number in a JSON value (None: every number is finite or None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "value"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = non_finite_path(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def record_problem(cell_dir: Path) -> str | None:
    """Why the cell's ``metrics.json`` is not a finished record (None: it is one): it must parse, carry the
    current schema, status ``complete`` and the folder's own key, and its evaluation numbers must be finite."""
    cell_dir = Path(cell_dir)
    try:
        raw = json.loads((cell_dir / METRICS_FILE).read_text(encoding="utf-8"))
        record = CellRecord.from_json(raw)
    except FileNotFoundError:
        return f"no {METRICS_FILE}"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"unreadable {METRICS_FILE}: {err}"
    except BadCell as err:
        return str(err)
    if record.cell_key != cell_dir.name:
        return f"{METRICS_FILE} is the record of cell {record.cell_key!r}, not of {cell_dir.name!r}"
    bad = non_finite_path(record.evaluation, "evaluation")
    return f"{METRICS_FILE} holds a non-finite number at {bad}" if bad else None


def read_failure(cell_dir: Path) -> dict | None:
    """The ``failure`` block (stage, epoch, step, cause) of a cell whose record says ``failed``; else None."""
    try:
        raw = json.loads((Path(cell_dir) / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(raw, dict) and raw.get("status") == "failed" and isinstance(raw.get("failure"), dict):
        return raw["failure"]
    return None


def cell_status(cell_dir: Path) -> Status:
    """``done`` (a finished record: :func:`record_problem` finds none), ``failed`` (its record says so, with
    the cause), ``resumable`` (a checkpoint, no finished record) or ``new``."""
    cell_dir = Path(cell_dir)
    if (cell_dir / METRICS_FILE).exists():
        if record_problem(cell_dir) is None:
            return "done"
        if read_failure(cell_dir) is not None:
            return "failed"
    if (cell_dir / CHECKPOINT_FILE).exists() or (cell_dir / PREVIOUS_CHECKPOINT_FILE).exists():
        return "resumable"
    return "new"


def write_failure(cell_dir: Path, *, stage: str, cause: str, epoch: int | None = None, step: int | None = None,
                  config: dict | None = None, finished_at: str = "") -> Path:
    """Write ``metrics.json`` as a ``failed`` record (never counted as done): the stage (training,
    evaluation, record), epoch, step and cause, and the config that ran."""
    path = Path(cell_dir) / METRICS_FILE
    write_json_atomic(path, {"schema_version": SCHEMA_VERSION, "cell_key": Path(cell_dir).name, "status": "failed",
                             "finished_at": finished_at,
                             "failure": {"stage": stage, "epoch": epoch, "step": step, "cause": cause},
                             "config": config or {}})
    return path


def _identity(resolved: dict, drop: tuple[str, ...] = ()) -> dict:
    semantic = {k: v for k, v in resolved.items()
                if k not in LOCATION_FIELDS + PACING_FIELDS + AS_WRITTEN_FIELDS + EVALUATION_FIELDS + drop}
    if not semantic.get("cuda_graphs"):  # the eager step every cell ran before the switch existed: keys unchanged
        semantic.pop("cuda_graphs", None)
    if resolved.get("selection") != "val_best":  # the validation split is carved only for val_best
        semantic.pop("val_fraction", None)
    semantic["harness_version"] = HARNESS_VERSION
    return semantic


def _digest(fields: dict, n: int) -> str:
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:n]


def cell_key(resolved: dict) -> str:
    """The cell key of a resolved config (``Config.resolved()``): readable prefix + 10-digit digest."""
    ir = f"{float(resolved['imbalance_ratio']):g}"
    return (f"{resolved['dataset']}-ir{ir}-{resolved['method']}-{resolved['model']}-s{resolved['seed']}-"
            f"{_digest(_identity(resolved), 10)}")


def config_hash(resolved: dict) -> str:
    """A longer digest of what the cell key hashes (16 hex digits): stored in every file a cell resumes from."""
    return _digest(_identity(resolved), 16)


def ownership_problem(state: dict, expected_key: str, expected_hash: str, what: str) -> str | None:
    """Why a resumable file (checkpoint, best model, evaluation progress) does not belong to the cell being
    run: its stored key or config hash differs from the cell's (None: it belongs). Files without the fields
    are from before they existed and cannot be shown to belong."""
    key, digest = state.get("cell_key"), state.get("config_hash")
    if key is None or digest is None:
        return (f"{what} carries no cell key or config hash (written by an older harness); it cannot be "
                f"shown to belong to cell {expected_key}")
    if key != expected_key or digest != expected_hash:
        return (f"{what} belongs to cell {key} (config hash {digest}), not to {expected_key} "
                f"(config hash {expected_hash})")
    return None


def training_key(resolved: dict) -> str | None:
    """A 16-digit digest of what determines a cell's trained weights: what the cell key hashes without the
    evaluation subset. Cells that share it share one training; None where the selection reads the test split."""
    if resolved.get("selection") == "test_best":
        return None
    return _digest(_identity(resolved, drop=EVALUATION_SUBSET_FIELDS), 16)


def setting_of(resolved: dict) -> str:
    """The cell key's rule without the training seed: an 8-digit digest shared by a cell's seeds."""
    return _digest(_identity(resolved, drop=("seed",)), 8)


class MethodInfo(TypedDict):
    name: str
    preset: str | None
    hparams: dict


class DataInfo(TypedDict, total=False):
    dataset: str
    classes: list
    imbalance_ratio: float
    subset_seed: int
    train_counts: list
    train_size: int
    test_split: str  # 'balanced' | 'longtail' | 'natural'
    balanced_robustness_equals_robust_accuracy: bool
    eval_examples: int
    eval_subset: str


class Seeds(TypedDict):
    training: int
    subset: int
    eval_attack_start: int


# Top-level fields in the order metrics.json has always had them; the required ones must be present.
_ORDER = ("schema_version", "cell_key", "config_hash", "status", "finished_at", "method", "data", "seeds", "evaluation",
          "model_selection", "method_diagnostics", "audit", "cost", "config", "versions")
_REQUIRED = {"method": dict, "data": dict, "evaluation": dict}


@dataclass(frozen=True)
class CellRecord:
    """One finished cell (``metrics.json``). Top-level parts are typed; their insides are the JSON the
    evaluation, audit and cost code produce (see the store's docstring for what the report uses)."""

    cell_key: str
    finished_at: str
    method: MethodInfo
    data: DataInfo
    seeds: Seeds | dict
    evaluation: dict  # per-class summary (metrics.summarize_evaluation) + attack_records
    audit: dict
    cost: dict
    config: dict  # the resolved config
    versions: dict
    model_selection: dict | None = None  # absent in the oldest records
    method_diagnostics: dict | None = None  # only where a method records some (TAET: its plateau)
    schema_version: int = SCHEMA_VERSION
    status: str = "complete"
    config_hash: str | None = None  # absent in records of before the hash
    extra: dict = field(default_factory=dict)  # fields of a newer writer, kept as they are

    def to_json(self) -> dict:
        values = {name: getattr(self, name) for name in _ORDER}
        out = {k: v for k, v in values.items()
               if v is not None or k not in ("model_selection", "method_diagnostics", "config_hash")}
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, raw: Any) -> CellRecord:
        if not isinstance(raw, dict):
            raise BadCell("metrics.json is not a JSON object")
        if raw.get("schema_version") != SCHEMA_VERSION:
            raise BadCell(f"schema_version {raw.get('schema_version')!r} (this report reads {SCHEMA_VERSION})")
        if raw.get("status") == "failed" and isinstance(raw.get("failure"), dict):
            f = raw["failure"]
            where = ", ".join(f"{k} {f[k]}" for k in ("epoch", "step") if f.get(k) is not None)
            raise BadCell(f"failed in {f.get('stage')}" + (f" ({where})" if where else "") + f": {f.get('cause')}")
        if raw.get("status") != "complete":
            raise BadCell(f"status {raw.get('status')!r}, not 'complete'")
        for name, kind in _REQUIRED.items():
            if not isinstance(raw.get(name), kind):
                raise BadCell(f"missing field {name}" if name not in raw else f"field {name} has the wrong type")
        known = {k: raw[k] for k in _ORDER if k in raw}
        dict_or_empty = {k: known.get(k) if isinstance(known.get(k), dict) else {}
                         for k in ("seeds", "audit", "cost", "config", "versions")}
        return cls(cell_key=str(raw.get("cell_key", "")), finished_at=str(raw.get("finished_at", "")),
                   method=known["method"], data=known["data"], evaluation=known["evaluation"],
                   model_selection=known.get("model_selection"), method_diagnostics=known.get("method_diagnostics"),
                   schema_version=known["schema_version"], status=known["status"],
                   config_hash=known.get("config_hash") if isinstance(known.get("config_hash"), str) else None,
                   **dict_or_empty,
                   extra={k: v for k, v in raw.items() if k not in _ORDER})

    # Typed accessors: what readers ask of a cell, each in one place.
    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.data.get("classes", [])]

    @property
    def train_counts(self) -> list[int]:
        return list(self.data.get("train_counts", []))

    @property
    def attacks(self) -> dict[str, dict]:
        """Per-attack summaries (``evaluation.attacks``): clean, each attack, the worst case(s)."""
        return self.evaluation.get("attacks") or {}

    @property
    def attack_records(self) -> dict[str, dict]:
        """Per-attack run records (``evaluation.attack_records``): spec, label, seconds, sanity, cascade."""
        records = self.evaluation.get("attack_records")
        return {k: v for k, v in records.items() if isinstance(v, dict)} if isinstance(records, dict) else {}

    def confusion_matrix(self, attack: str) -> list[list[int]] | None:
        matrix = (self.attacks.get(attack) or {}).get("confusion_matrix")
        return matrix if isinstance(matrix, list) else None

    @property
    def flags(self) -> list[str]:
        return [str(f) for f in (self.audit.get("flags") or [])]

    @property
    def selection_label(self) -> str | None:
        return self.model_selection.get("label") if isinstance(self.model_selection, dict) else None

    @property
    def method_label(self) -> str:
        preset = self.method.get("preset")
        return str(self.method.get("name")) + (f".{preset}" if preset else "")

    @property
    def training_seed(self) -> Any:
        return self.seeds.get("training", self.config.get("seed"))


def write_record(cell_dir: Path, record: CellRecord) -> Path:
    """Write ``metrics.json`` atomically (the cell is ``done`` from then on); return its path."""
    path = Path(cell_dir) / METRICS_FILE
    write_json_atomic(path, record.to_json())
    return path


UNREADABLE = "unreadable (permission denied)"  # why a cell this user may not read is skipped


def read_record(path: Path) -> CellRecord:
    """A cell's record from its ``metrics.json`` (or the cell folder); :class:`BadCell` with the reason
    when it is missing, unreadable or not a complete record of this schema."""
    path = Path(path)
    try:
        if path.is_dir():
            path = path / METRICS_FILE
        if not path.exists():
            unfinished = (path.parent / CHECKPOINT_FILE).exists()
            raise BadCell(f"no {METRICS_FILE}" + (" (unfinished: a checkpoint is there)" if unfinished else ""))
        raw = json.loads(path.read_text())
    except PermissionError:  # another user's cell in a shared folder, written 0600 or in a closed folder
        raise BadCell(UNREADABLE) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadCell(f"unreadable {METRICS_FILE}: {err}") from None
    return CellRecord.from_json(raw)
