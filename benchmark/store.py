"""Results store: every finished cell's ``metrics.json`` as tidy pandas tables.

Tidy, because then a leaderboard, a per-class table and a plot are each one ``groupby`` away, and any
number on the report page can be checked against one row here. Nothing in the tables is recomputed from
predictions: the numbers are the ones ``metrics.json`` records (per-example outcomes, for paired tests, are
read separately and must agree with them; see below).

``load_results(root)`` reads ``<root>/<cell>/metrics.json`` (``benchmark.cell.read_record``) for every folder
directly under ``root`` and returns a :class:`ResultStore`: the tables below, each cell's typed
:class:`~benchmark.cell.CellRecord` (``store.record(key)``) and accessors the report uses instead of raw JSON.
A folder that cannot be used (no ``metrics.json`` yet, ``status`` other
than ``complete``, unreadable JSON, another ``schema_version``, a missing or malformed field, a file this
user may not read: ``UNREADABLE``) is listed in ``ResultStore.skipped`` as ``(path, reason)``, never raised.

Schema (``STORE_SCHEMA_VERSION`` = 1). Recalls and accuracies are fractions in [0, 1].

Cell identity columns, on every row of both tables:

    cell_key         the cell's folder name (the runner names it after the cell key)
    setting          the cell key's rule without the training seed (``benchmark.cell.setting_of``): cells
                     that differ only by training seed share it and are averaged together
    dataset, imbalance_ratio (float), test_split ('balanced' | 'longtail' | 'natural'),
    method, preset (None without one), method_label ('taet.authors'), model,
    seed (training seed), subset_seed, eps (float), eps_label (as the profile wrote it: '8/255'),
    norm ('Linf': every attack of the harness is L∞), eval_examples (test examples of the cell),
    selection (model_selection's label: 'final epoch', 'validation-selected', 'test-selected'; None if
    not recorded), device ('cpu', 'cuda', ...), train_seconds, eval_seconds, flags (tuple of audit flag
    strings), n_flags

``classes``: one row per cell × attack × class, plus

    attack           'clean', 'worst_case' (per-example worst case over clean input and all attacks, on the
                     examples they all ran on), 'worst_case_all_examples' (only when some attack ran on a
                     subset: the worst case over the attacks that ran on every example) or an attack's
                     name in ``evaluation.attacks`` (fgsm, pgd20, cw20, autoattack, ...)
    class_index, class_name, train_count, train_rank (0 = most training images, ties by class index),
    group            the class's head/tail (or many/medium/few) group, by training-count rank
    test_support     test examples of the class that this attack ran on (its confusion-matrix row sum;
                     ``evaluation.test_support`` where no matrix is recorded)
    correct          of those, classified correctly under the attack
    recall           correct / test_support; NaN where test_support is 0 (undefined, never 0 or 1)
    accuracy, balanced   the cell's accuracy and balanced accuracy / Balanced Robustness under the attack

``cells``: one row per cell × attack, plus

    attack, examples (test examples the attack ran on), accuracy, balanced (Balanced Robustness under an
    attack), worst_class_recall, worst_class, tail_mean (mean recall of the 'tail' or 'few' group),
    group_<name> for each group mean

Per-example outcomes, for paired tests between methods: ``ResultStore.worst_case_outcomes(cell_key)``
reads the cell's ``predictions.npz`` (``y``, ``eval_indices``, ``pred_<attack>``; -1 where an attack did not
run) only when asked, once per cell, and returns :class:`Outcomes` (the test-set positions of the examples
every attack of the worst case covered, their labels, and whether each stayed correct under clean input and
every attack), or None with the reason in ``ResultStore.outcome_problems``. The worst case is taken over
the attacks ``evaluation.attacks.worst_case.over`` names, and its per-class counts must equal the recorded
``worst_case.per_class_correct``: predictions that do not match the metrics are refused, never used.
"""
from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from .cell import (LOG_FILE, METRICS_FILE, PREDICTIONS_FILE, SCHEMA_VERSION, UNREADABLE, BadCell, CellRecord,
                   read_record, setting_of)
from .metrics import WORST_CASE, WORST_CASE_ALL_EXAMPLES, class_groups

STORE_SCHEMA_VERSION = SCHEMA_VERSION  # one version: the cell record's (benchmark.cell)
CLEAN = "clean"
TAIL_GROUPS = ("tail", "few")  # names of the smallest-count group (10-class and 100-class conventions)
THREAT_NORM = "Linf"  # every attack of the harness is L∞ (attacks/ has no other norm); a leaderboard column

CELL_COLUMNS = ["cell_key", "setting", "dataset", "imbalance_ratio", "test_split", "method", "preset",
                "method_label", "model", "seed", "subset_seed", "eps", "eps_label", "norm", "eval_examples",
                "selection", "device", "train_seconds", "eval_seconds", "flags", "n_flags"]
CLASS_COLUMNS = CELL_COLUMNS + ["attack", "class_index", "class_name", "train_count", "train_rank", "group",
                                "test_support", "correct", "recall", "accuracy", "balanced"]
ATTACK_COLUMNS = CELL_COLUMNS + ["attack", "examples", "accuracy", "balanced", "worst_class_recall", "worst_class",
                                  "tail_mean"]


class Skipped(NamedTuple):
    path: Path
    reason: str


class Outcomes(NamedTuple):
    """Per-example worst-case correctness of one cell, on the examples every attack of its worst case covered."""

    ids: np.ndarray  # positions in the cell's test set (predictions.npz ``eval_indices``)
    y: np.ndarray  # labels
    correct: np.ndarray  # bool: correct under clean input and every attack


@dataclass
class ResultStore:
    root: Path
    classes: pd.DataFrame  # cell × attack × class
    cells: pd.DataFrame  # cell × attack
    records: dict[str, CellRecord] = field(default_factory=dict)  # cell_key -> its record (what the report reads)
    metrics: dict[str, dict] = field(default_factory=dict)  # cell_key -> metrics.json as read (for notebooks)
    paths: dict[str, Path] = field(default_factory=dict)  # cell_key -> cell folder
    skipped: list[Skipped] = field(default_factory=list)
    outcome_problems: dict[str, str] = field(default_factory=dict)  # cell_key -> why it has no outcomes
    _outcomes: dict[str, Outcomes | None] = field(default_factory=dict, repr=False)

    @property
    def empty(self) -> bool:
        return not self.records

    def record(self, cell_key: str) -> CellRecord:
        """One cell's typed record (``benchmark.cell.CellRecord``)."""
        return self.records[cell_key]

    def class_names(self, cell_key: str) -> list[str]:
        return self.records[cell_key].classes

    def attack_records(self, cell_key: str) -> dict[str, dict]:
        """The cell's per-attack run records: spec, label, description (where recorded), seconds, sanity."""
        return self.records[cell_key].attack_records

    def tail_classes(self, cell_key: str) -> list[int]:
        return tail_classes(self.records[cell_key])

    def log(self, cell_key: str) -> list[dict]:
        return read_log(self.paths[cell_key] / LOG_FILE)

    def worst_case_outcomes(self, cell_key: str) -> Outcomes | None:
        """The cell's per-example worst-case outcomes (read once, on first use); None with the reason in
        ``outcome_problems`` when predictions.npz is missing, unreadable or does not match metrics.json."""
        if cell_key not in self._outcomes:
            try:
                self._outcomes[cell_key] = read_outcomes(self.paths[cell_key] / PREDICTIONS_FILE,
                                                         self.records[cell_key])
            except BadCell as err:
                self._outcomes[cell_key] = None
                self.outcome_problems[cell_key] = str(err)
        return self._outcomes[cell_key]


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # inside a folder this user may not enter
        return False


def load_results(root: str | Path) -> ResultStore:
    """Every usable cell under ``root``; unusable ones go to ``skipped`` with the reason."""
    root = Path(root)
    class_rows: list[dict] = []
    attack_rows: list[dict] = []
    store = ResultStore(root, pd.DataFrame(), pd.DataFrame())
    for cell_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        path = cell_dir / METRICS_FILE
        try:
            record = read_record(path)
            info = cell_info(cell_dir.name, record)
            classes, attacks = _explode(info, record)
        except BadCell as err:
            store.skipped.append(Skipped(path if _exists(path) else cell_dir, str(err)))
            continue
        class_rows += classes
        attack_rows += attacks
        store.records[cell_dir.name] = record
        store.metrics[cell_dir.name] = record.to_json()
        store.paths[cell_dir.name] = cell_dir
    store.classes = pd.DataFrame(class_rows, columns=CLASS_COLUMNS)
    store.cells = cells_frame(attack_rows)
    return store


def cells_frame(rows: list[dict]) -> pd.DataFrame:
    """The cell × attack table from row dicts, with every documented column (group_<name> columns added)."""
    extra = sorted({k for row in rows for k in row if k.startswith("group_")})
    return pd.DataFrame(rows, columns=ATTACK_COLUMNS + extra)


def read_log(path: Path) -> list[dict]:
    """Per-epoch lines of log.jsonl, the last line of each epoch winning (a resumed run repeats epochs).
    Unreadable lines are dropped: the log is a by-product, never a reason to fail a report."""
    by_epoch: dict[int, dict] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("epoch"), int):
            by_epoch[entry["epoch"]] = entry
    return [by_epoch[e] for e in sorted(by_epoch)]


def read_outcomes(path: Path, record: CellRecord | dict) -> Outcomes:
    """Worst-case outcomes from one predictions.npz, checked against the cell's record (see the module
    docstring); BadCell with the reason when they cannot be used."""
    attacks = record.attacks if isinstance(record, CellRecord) else (record.get("evaluation", {}).get("attacks") or {})
    worst = attacks.get(WORST_CASE)
    if not isinstance(worst, dict):
        raise BadCell("no worst case recorded (no attack evaluated)")
    if not Path(path).exists():
        raise BadCell(f"no {PREDICTIONS_FILE}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise BadCell(f"unreadable {PREDICTIONS_FILE}: {type(err).__name__}: {err}") from None
    if "y" not in arrays:
        raise BadCell(f"{PREDICTIONS_FILE} has no y")
    y = np.asarray(arrays["y"]).astype(np.int64).ravel()
    ids = np.asarray(arrays.get("eval_indices", np.arange(y.size))).astype(np.int64).ravel()
    over = worst.get("over") or [k[len("pred_"):] for k in arrays if k.startswith("pred_")]
    missing = [a for a in over if f"pred_{a}" not in arrays]
    if missing:
        raise BadCell(f"{PREDICTIONS_FILE} has no predictions for {', '.join(missing)}")
    preds = [np.asarray(arrays[f"pred_{a}"]).astype(np.int64).ravel() for a in over]
    if ids.size != y.size or any(p.size != y.size for p in preds) or np.unique(ids).size != ids.size:
        raise BadCell(f"{PREDICTIONS_FILE}: y, eval_indices and predictions do not line up")
    stacked = np.stack(preds)
    covered = (stacked >= 0).all(axis=0)
    correct = (stacked == y).all(axis=0)[covered]
    expected = worst.get("per_class_correct")
    n_classes = len(expected) if isinstance(expected, list) else int(y.max(initial=-1)) + 1
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise BadCell(f"{PREDICTIONS_FILE}: labels outside the {n_classes} classes")
    got = np.bincount(y[covered][correct], minlength=n_classes).tolist()
    if expected is not None and got != expected:
        raise BadCell(f"{PREDICTIONS_FILE} does not match metrics.json (worst-case correct per class {got}, "
                      f"recorded {expected})")
    return Outcomes(ids[covered], y[covered], correct)


def _get(part: dict, name: str, kind: type | tuple = object, where: str = "method.") -> Any:
    """A field the tables cannot do without, checked once here: BadCell when missing or mistyped."""
    if name not in part:
        raise BadCell(f"missing field {where}{name}")
    if not isinstance(part[name], kind):
        raise BadCell(f"field {where}{name} has the wrong type ({type(part[name]).__name__})")
    return part[name]


def eps_label(value: Any) -> str:
    """ε as a reader expects it: the profile's own string ("8/255"), else k/255 when it is one, else the number."""
    if isinstance(value, str):
        return value
    k = float(value) * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and round(k) > 0 else f"{float(value):g}"


def cell_info(cell_key: str, record: CellRecord) -> dict:
    """The identity and cost columns of one cell (see the module docstring)."""
    config, cost = record.config, record.cost
    specs = [r["spec"] for r in record.attack_records.values() if isinstance(r.get("spec"), dict)]
    eps = config.get("eps_value", specs[0].get("eps") if specs else None)
    name, preset = str(_get(record.method, "name")), _get(record.method, "preset", (str, type(None)))
    return {
        "cell_key": cell_key,
        "setting": setting_of(config or {"method": name, "preset": preset, "dataset": record.data.get("dataset")}),
        "dataset": str(_get(record.data, "dataset", object, "data.")),
        "imbalance_ratio": float(_get(record.data, "imbalance_ratio", (int, float), "data.")),
        "test_split": str(_get(record.data, "test_split", object, "data.")),
        "method": name,
        "preset": preset,
        "method_label": record.method_label,
        "model": str(config.get("model", "?")),
        "seed": record.training_seed,
        "subset_seed": record.seeds.get("subset", record.data.get("subset_seed")),
        "eps": float(eps) if isinstance(eps, (int, float)) else math.nan,
        "eps_label": eps_label(config.get("eps", eps)) if eps is not None else "?",
        "norm": THREAT_NORM,
        "eval_examples": record.data.get("eval_examples"),
        "selection": record.selection_label,
        "device": str(cost.get("device", "?")),
        "train_seconds": _number(cost.get("train_seconds")),
        "eval_seconds": _number(cost.get("eval_seconds")),
        "flags": tuple(record.flags),
        "n_flags": len(record.flags),
    }


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def class_group_of(record: CellRecord) -> dict[int, str]:
    """class index -> group name: ``evaluation.groups`` when recorded, else by training-count rank."""
    groups = record.evaluation.get("groups") or class_groups(record.train_counts)
    return {int(c): name for name, members in groups.items() for c in members}


def tail_classes(record: CellRecord) -> list[int]:
    """The tail ('tail' or 'few') classes of a cell, in class-index order."""
    groups = class_group_of(record)
    return sorted(c for c, name in groups.items() if name in TAIL_GROUPS)


def _explode(info: dict, record: CellRecord) -> tuple[list[dict], list[dict]]:
    classes = _get(record.data, "classes", list, "data.")
    counts = _get(record.data, "train_counts", list, "data.")
    support = _get(record.evaluation, "test_support", list, "evaluation.")
    attacks = _get(record.evaluation, "attacks", dict, "evaluation.")
    n = len(classes)
    if len(counts) != n or len(support) != n:
        raise BadCell(f"data.train_counts / evaluation.test_support do not have one entry per class ({n})")
    if CLEAN not in attacks:
        raise BadCell("evaluation.attacks has no 'clean' entry")
    group_of = class_group_of(record)
    rank = {c: r for r, c in enumerate(sorted(range(n), key=lambda c: (-counts[c], c)))}
    class_rows, attack_rows = [], []
    for attack, m in attacks.items():
        if not isinstance(m, dict):
            raise BadCell(f"evaluation.attacks.{attack} is not an object")
        recall, correct = m.get("per_class_recall"), m.get("per_class_correct")
        if not isinstance(recall, list) or not isinstance(correct, list) or len(recall) != n or len(correct) != n:
            raise BadCell(f"evaluation.attacks.{attack}: per_class_recall / per_class_correct need {n} entries")
        groups = m.get("group_means") or {}
        tail = next((groups[g] for g in TAIL_GROUPS if g in groups), None)
        attack_support = _attack_support(m, support)
        attack_rows.append({**info, "attack": attack, "examples": m.get("examples", sum(attack_support)),
                            "accuracy": _number(m.get("accuracy")),
                            "balanced": _number(m.get("balanced")),
                            "worst_class_recall": _number(m.get("worst_class_recall")),
                            "worst_class": m.get("worst_class"), "tail_mean": _number(tail),
                            **{f"group_{g}": _number(v) for g, v in groups.items()}})
        for c in range(n):
            class_rows.append({**info, "attack": attack, "class_index": c, "class_name": str(classes[c]),
                               "train_count": counts[c], "train_rank": rank[c], "group": group_of.get(c),
                               "test_support": attack_support[c], "correct": correct[c],
                               "recall": math.nan if recall[c] is None else float(recall[c]),
                               "accuracy": _number(m.get("accuracy")), "balanced": _number(m.get("balanced"))})
    return class_rows, attack_rows


def _attack_support(m: dict, support: list[int]) -> list[int]:
    """Per-class examples an attack ran on: an attack limited to a class-stratified subset (AutoAttack on a
    CPU) is scored on its own examples, which its confusion-matrix rows count."""
    matrix = m.get("confusion_matrix")
    if isinstance(matrix, list) and len(matrix) == len(support) and all(isinstance(r, list) for r in matrix):
        return [int(sum(row)) for row in matrix]
    return list(support)


__all__ = ["STORE_SCHEMA_VERSION", "BadCell", "CellRecord", "ResultStore", "Skipped", "Outcomes", "read_outcomes", "PREDICTIONS_FILE",
           "load_results", "cells_frame", "read_log", "cell_info",
           "class_group_of", "tail_classes", "eps_label", "WORST_CASE", "WORST_CASE_ALL_EXAMPLES", "CLEAN",
           "UNREADABLE"]
