"""The report's tables: one small Table model that the HTML template and every export render from, and
the builders for leaderboards, per-class tables in the TAET poster's style, the paper-reported reference
block and the per-cell tables.

Numbers go in as fractions in [0, 1] from the results store and come out as percentages with two
decimals, as the long-tail papers print them. Seeds of one setting are averaged (mean ± sample std, n,
and a 95% Student-t interval over seeds); leaderboard rows are compared by the paired tests of
``significance`` (exact McNemar and a class-stratified paired bootstrap of the BR difference) and grouped
into rank bands.

Attacks are named by the ``label`` their records carry (``evaluation.attack_records.<name>.label``,
e.g. "AutoAttack", "AutoAttack (torchattacks)", "APGD-CE (10 it., reduced)"); cells without one get a
label from the attack's spec (AutoAttack kinds) or its name (pgd20 -> PGD-20).
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..store import CLEAN, WORST_CASE, WORST_CASE_ALL_EXAMPLES, CellRecord, ResultStore, eps_label
from . import significance as sig
from .naming import setting_labels
from .precision import column_decimals, fmt

Z95 = 1.959963984540054  # two-sided 95% normal quantile
REFERENCE_FILE = Path(__file__).with_name("taet_poster.yaml")
GROUP_KEYS = ["dataset", "imbalance_ratio", "norm", "eps", "test_split"]
SUMMARIES = (WORST_CASE_ALL_EXAMPLES, WORST_CASE)  # derived from the attacks, listed after them
NORM_LABELS = {"Linf": "L∞", "L2": "L2", "L1": "L1"}
PAIRED_GROUP = "Paired tests (worst case)"  # header above the columns comparing a row with others
PAGE_CLASSES_MAX = 10  # class columns a per-class table shows on the page before "show all columns"


# ----------------------------------------------------------------------------- the model

@dataclass
class Column:
    key: str
    label: str
    group: str = ""  # spanning header above this column ("Clean", "Attacked (PGD-20)")
    title: str = ""  # hover text of the header
    numeric: bool = True
    descending_first: bool = True  # first click on the header sorts high to low (False for ranks)
    detail: bool = False  # hidden on the page until "show all columns" (so a table fits 1280 px); always exported


@dataclass
class Cell:
    text: str = "—"
    value: float | str | None = None  # what CSV exports and the sort use (percent for recalls)
    std: float | None = None  # over seeds, same unit as value
    interval: tuple[float, float] | None = None  # 95% interval (Wilson, t over seeds, bootstrap), unit of value
    mark: str = ""  # "best" (bold) or "second" (underlined)
    title: str = ""  # hover text
    href: str | None = None
    links: list[tuple[str, str]] = field(default_factory=list)  # small links after the text (one per seed)
    heat: float | None = None  # 0..1 background intensity (confusion matrices)
    badge: str = ""  # a warning shown beside the text (audit flags), its details in badge_title
    badge_title: str = ""
    tag: str = ""  # a label shown beside the text (model selection other than the final epoch)
    export: dict[str, Any] = field(default_factory=dict)  # extra CSV columns "<column> <key>" (test name, n, ...)
    support: float | None = None  # test examples behind a percentage: sets its printed precision (precision.py)
    status: str = ""  # an audit check's result: "ok" (green), "warn" (amber) or "fail" (red)


@dataclass
class Table:
    slug: str  # file name of its exports and the HTML id
    title: str
    columns: list[Column]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    sortable: bool = False
    kind: str = "measured"  # "measured" or "paper" (a reference, never ranked with measured rows)
    detail_note: str = ""  # what the page's "show all columns" adds (the columns marked detail)

    @property
    def group_spans(self) -> list[tuple[str, int]]:
        """Consecutive columns under the same group header, as (label, span)."""
        spans: list[tuple[str, int]] = []
        for col in self.columns:
            if spans and spans[-1][0] == col.group:
                spans[-1] = (col.group, spans[-1][1] + 1)
            else:
                spans.append((col.group, 1))
        return spans

    @property
    def header_spans(self) -> list[tuple[str, int, int]]:
        """``group_spans`` with the span each group has while detail columns are hidden: (label, all, shown)."""
        spans: list[tuple[str, int, int]] = []
        for col in self.columns:
            shown = 0 if col.detail else 1
            if spans and spans[-1][0] == col.group:
                spans[-1] = (col.group, spans[-1][1] + 1, spans[-1][2] + shown)
            else:
                spans.append((col.group, 1, shown))
        return spans

    @property
    def n_detail(self) -> int:
        return sum(col.detail for col in self.columns)

    @property
    def has_groups(self) -> bool:
        return any(col.group for col in self.columns)


def wilson_interval(correct: float, n: float, z: float = Z95) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion (fraction units); None when n is 0. Unlike the normal
    interval it stays inside [0, 1] and is sensible at 0/n and n/n, which tail classes often are."""
    if not n:
        return None
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pct(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}"


def slugify(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.") or "x"


def attack_label(name: str, labels: dict[str, str] | None = None) -> str:
    """A reader's name for an attack key: its records' label where ``labels`` (from ``attack_labels``) has
    one, else pgd20 -> PGD-20, worst_case -> Worst case; others as stored."""
    if labels and labels.get(name):
        return labels[name]
    fixed = {CLEAN: "Clean", WORST_CASE: "Worst case", WORST_CASE_ALL_EXAMPLES: "Worst case (all examples)",
             "fgsm": "FGSM", "autoattack": "AutoAttack", "aa": "AutoAttack"}
    if name in fixed:
        return fixed[name]
    match = re.fullmatch(r"(pgd|cw|lsa|apgd|mim)(\d+)", name)
    return f"{match.group(1).upper()}-{match.group(2)}" if match else name


AUTOATTACK_KINDS = ("autoattack", "torchattacks_autoattack", "reference_autoattack")
AUTOATTACK_ITERATIONS = 100  # the reference's APGD/FAB iterations; fewer is a reduced run


def spec_label(spec: dict | None) -> str | None:
    """A label from an AutoAttack spec, for cells whose records carry no ``label``: "AutoAttack" only for the
    standard version of the authors' package at the reference's iterations, otherwise what ran ("APGD-CE",
    "... (10 it., reduced)"); None for other kinds (their name gives the label). Cells written before the
    reference became kind ``autoattack`` (their AutoAttack specs record steps 0) ran torchattacks' own
    AutoAttack class, whose APGD/FAB use 10 iterations, as ``autoattack``, and the reference as
    ``reference_autoattack``."""
    if not spec or spec.get("kind") not in (*AUTOATTACK_KINDS, "reference_autoattack"):
        return None
    version, steps = str(spec.get("version") or "standard"), int(spec.get("steps") or 0)
    base = {"standard": "AutoAttack", "apgd-ce": "APGD-CE"}.get(version, f"AutoAttack-{version}")
    if spec["kind"] == "autoattack" and steps == 0:  # an older cell: torchattacks' AutoAttack class
        return base + " (torchattacks default, 10 it., reduced)"
    if spec["kind"] == "torchattacks_autoattack":
        base += " (torchattacks)"
    if 0 < steps < AUTOATTACK_ITERATIONS:
        base += f" ({steps} it., reduced)"
    return base


def record_labels(records: dict | None, cell_eps: float | None = None) -> dict[str, str]:
    """attack name -> label of one cell's attack records: the ``label`` field, else ``spec_label``. An
    attack at another ε than its cell's (TAET's notebook test at 8/255 after training at 0.031) gets that
    ε in its label, since its column sits in a leaderboard titled with the cell's ε."""
    out = {}
    for name, record in (records or {}).items():
        if not isinstance(record, dict):
            continue
        spec = record.get("spec") if isinstance(record.get("spec"), dict) else None
        label = record.get("label") if isinstance(record.get("label"), str) and record.get("label") else None
        label = label or spec_label(spec)
        eps = (spec or {}).get("eps")
        if label and cell_eps is not None and isinstance(eps, numbers.Real) and not math.isclose(eps, cell_eps):
            label = f"{label} at ε {eps_label(eps)}"
        if label:
            out[name] = label
    return out


def attack_labels(store: ResultStore, keys=None) -> dict[str, str]:
    """attack name -> label over the cells ``keys`` (default: all); a name labelled differently by different
    cells gets its labels joined with " / ", so no cell's attack is named after another's."""
    seen: dict[str, list[str]] = {}
    for key in (store.records if keys is None else keys):
        cell_eps = store.record(key).config.get("eps_value")
        for name, label in record_labels(store.attack_records(key), cell_eps).items():
            if label not in seen.setdefault(name, []):
                seen[name].append(label)
    return {name: " / ".join(labels) for name, labels in seen.items()}


def describe_spec(spec: dict | None, label: str | None = None) -> str:
    """One line for an attack spec: what a hover over its column says. With ``label`` the line starts with
    it instead of the spec's kind (so a reduced stand-in is not described as "autoattack")."""
    if not spec:
        return label or ""
    kind = str(spec.get("kind", "?"))
    iterative = kind not in ("fgsm",) + AUTOATTACK_KINDS
    parts = [label or kind + (f" {spec['version']}" if spec.get("version") and kind in AUTOATTACK_KINDS else "")]
    if spec.get("steps") and iterative:
        parts.append(f"{spec['steps']} steps")
    if spec.get("step_size") and iterative:
        parts.append(f"step {spec['step_size']:.4g}")
    if spec.get("eps") is not None:
        parts.append(f"ε {spec['eps']:.4g}")
    if spec.get("start") and iterative:
        parts.append(f"start {spec['start']}")
    if spec.get("per_class"):
        parts.append(f"on {spec['per_class']} examples per class")
    if spec.get("loss") and spec.get("loss") != "ce":
        parts.append(f"loss {spec['loss']}")
    return ", ".join(parts)


def mark_best(values: list[float | None], digits: int = 2, min_rows: int = 3) -> list[str]:
    """'best' (bold) / 'second' (underlined) / '' per value, compared at the printed precision ``digits``.
    Only a real best and second best are marked: nothing when fewer than ``min_rows`` values are present
    (with two, "second" only says "the other one"), nothing at all when the best is tied (all zeros is
    no winner), and no second when the runner-up is tied."""
    shown = [None if v is None or math.isnan(v) else round(v, digits) for v in values]
    present = [v for v in shown if v is not None]
    if len(present) < min_rows:
        return [""] * len(values)
    distinct = sorted(set(present), reverse=True)
    if present.count(distinct[0]) > 1:
        return [""] * len(values)
    second = distinct[1] if len(distinct) > 1 and present.count(distinct[1]) == 1 else None
    return ["best" if v == distinct[0] else "second" if v is not None and v == second else "" for v in shown]


def mark_as_printed(values: list[float | None], digits: int = 2) -> list[str]:
    """The TAET poster's own rule, to reproduce its table as printed: ties share a mark, second = the next
    distinct value below the best; fewer than two values: no marks. Measured tables use ``mark_best``."""
    shown = [None if v is None or math.isnan(v) else round(v, digits) for v in values]
    distinct = sorted({v for v in shown if v is not None}, reverse=True)
    if sum(v is not None for v in shown) < 2:
        return [""] * len(values)
    best = distinct[0]
    second = distinct[1] if len(distinct) > 1 else None
    return ["best" if v == best else "second" if v is not None and v == second else "" for v in shown]


def set_precision(body: list[list[Cell]], j: int) -> int:
    """Print column ``j``'s percentages at the decimals their weakest-supported cell warrants (value and
    ± std alike); return the decimals, which ``mark_best`` must compare at."""
    cells = [row[j] for row in body if row[j].support is not None and isinstance(row[j].value, numbers.Real)]
    digits = column_decimals(c.support for c in cells)
    for c in cells:
        c.text = fmt(c.value, digits) if c.std is None else f"{fmt(c.value, digits)} ± {fmt(c.std, digits)}"
    return digits


def mark_column(body: list[list[Cell]], j: int, digits: int) -> None:
    values = [r[j].value if isinstance(r[j].value, numbers.Real) else None for r in body]
    for r, mark in zip(body, mark_best(values, digits)):
        r[j].mark = mark


def _mean_std(values) -> tuple[float, float | None, int]:
    stats = sig.seed_stats(list(values))
    return stats.mean, stats.std, stats.n


def _pct_cell(values, title: str = "", support=None) -> Cell:
    """Mean ± sample std over seeds (percent), with the 95% t-interval over seeds on hover and in exports.
    ``support``: the test examples behind each value (the fewest sets the printed precision)."""
    stats = sig.seed_stats(list(values))
    if not stats.n:
        return Cell(title=title or "not evaluated")
    text = pct(stats.mean) if stats.std is None else f"{pct(stats.mean)} ± {pct(stats.std)}"
    interval = None if stats.interval is None else (100 * stats.interval[0], 100 * stats.interval[1])
    hover = (f"mean ± std over n = {stats.n} seeds; 95% t-interval over seeds {interval[0]:.2f}–{interval[1]:.2f}"
             if interval else "one seed: no interval over seeds")
    known = [float(n) for n in (support if support is not None else []) if pd.notna(n) and n]
    return Cell(text=text, value=100 * stats.mean, std=None if stats.std is None else 100 * stats.std,
                interval=interval, title=f"{title}\n{hover}" if title else hover,
                support=min(known) if known else None)


# ----------------------------------------------------------------------------- groups

@dataclass(frozen=True)
class Group:
    """One leaderboard: a dataset, imbalance ratio, threat model (norm, ε) and test split."""

    dataset: str
    imbalance_ratio: float
    norm: str
    eps: float
    eps_label: str
    test_split: str

    @property
    def slug(self) -> str:
        return slugify(f"{self.dataset}-ir{self.imbalance_ratio:g}-{self.norm}-eps{self.eps_label}-{self.test_split}")

    @property
    def title(self) -> str:
        return (f"{self.dataset} · IR {self.imbalance_ratio:g} · {NORM_LABELS.get(self.norm, self.norm)} "
                f"ε = {self.eps_label} · {self.test_split} test split")

    def select(self, frame: pd.DataFrame) -> pd.DataFrame:
        eps_match = frame["eps"].isna() if math.isnan(self.eps) else np.isclose(frame["eps"], self.eps)
        return frame[(frame["dataset"] == self.dataset) & (frame["imbalance_ratio"] == self.imbalance_ratio)
                     & (frame["norm"] == self.norm) & eps_match & (frame["test_split"] == self.test_split)]


def groups_of(cells: pd.DataFrame) -> list[Group]:
    if cells.empty:
        return []
    keys = cells.drop_duplicates("cell_key")[GROUP_KEYS + ["eps_label"]]
    out = {Group(r.dataset, float(r.imbalance_ratio), r.norm, float(r.eps), r.eps_label, r.test_split)
           for r in keys.itertuples()}
    return sorted(out, key=lambda g: (g.dataset, g.imbalance_ratio, g.norm, g.eps, g.test_split))


def attacks_in(cells: pd.DataFrame) -> list[str]:
    """Attacks in first-seen order, clean first and the worst cases last."""
    names = list(dict.fromkeys(cells["attack"]))
    middle = [a for a in names if a != CLEAN and a not in SUMMARIES]
    return ([CLEAN] if CLEAN in names else []) + middle + [a for a in SUMMARIES if a in names]


def attack_specs(store: ResultStore) -> dict[str, dict]:
    """attack name -> its spec, as the first cell that ran it recorded it."""
    specs: dict[str, dict] = {}
    for key in store.records:
        for name, record in store.attack_records(key).items():
            if isinstance(record.get("spec"), dict):
                specs.setdefault(name, record["spec"])
    return specs


def attack_descriptions(store: ResultStore, keys=None) -> dict[str, str]:
    """attack name -> the description its records carry (``description``, written by the evaluation from
    the attack's registration), as the first cell that has one recorded it; older cells have none, and
    their attacks are described from the spec (``describe_spec``)."""
    out: dict[str, str] = {}
    for key in (store.records if keys is None else keys):
        for name, record in store.attack_records(key).items():
            if isinstance(record.get("description"), str) and record["description"]:
                out.setdefault(name, record["description"])
    return out


def default_attack(attacks: list[str], specs: dict[str, dict]) -> str | None:
    """PGD-20 when there, else the first PGD, else the first attack, else the worst case."""
    if "pgd20" in attacks:
        return "pgd20"
    named = [a for a in attacks if a != CLEAN and a not in SUMMARIES]
    pgd = [a for a in named if specs.get(a, {}).get("kind") == "pgd" or a.startswith("pgd")]
    return (pgd or named or [a for a in attacks if a == WORST_CASE] or [None])[0]


# ----------------------------------------------------------------------------- leaderboards

@dataclass
class Row:
    """One setting (method + preset, model, config) of a group, its seeds averaged."""

    setting: str
    label: str
    model: str
    cell_keys: list[str]
    seeds: list
    rank_value: float  # mean Balanced Robustness under the worst case (NaN when absent)


def setting_rows(group_cells: pd.DataFrame, store: ResultStore | None = None) -> list[Row]:
    """Settings ranked by mean BR under worst_case, best first; ties and missing values by name. A method
    label with several settings (same model) names each by what differs in its config (``naming``), read
    from ``store``'s records; without a store, by its setting hash."""
    rows = []
    names: dict[str, str] = {}
    firsts = group_cells.drop_duplicates("setting")
    for (method_label, _model), same in firsts.groupby(["method_label", "model"], sort=False):
        if len(same) > 1:  # same method twice: say which config
            configs = {r.setting: store.record(r.cell_key).config if store is not None else {}
                       for r in same.itertuples()}
            names.update(setting_labels(str(method_label), configs))
    for setting, sub in group_cells.groupby("setting", sort=False):
        first = sub.iloc[0]
        label = names.get(setting, first.method_label)
        worst = sub[sub["attack"] == WORST_CASE]["balanced"]
        mean = _mean_std(worst.tolist())[0]
        cells = sub.drop_duplicates("cell_key").sort_values(["seed", "cell_key"], key=_seed_key)
        rows.append(Row(setting, label, first.model, cells["cell_key"].tolist(), cells["seed"].tolist(), mean))
    return sorted(rows, key=lambda r: (math.isnan(r.rank_value), -np.nan_to_num(r.rank_value), r.label, r.model))


def _seed_key(series: pd.Series) -> pd.Series:
    return series.map(lambda v: (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)))


def leaderboard(store: ResultStore, group: Group, cell_pages: dict[str, str]) -> Table:
    """Method × (rank band, clean, balanced, BR per attack, BR worst case with its 95% interval over seeds,
    paired tests against the row above and the leader, worst class, tail, n, cost, audit flags)."""
    cells = group.select(store.cells)
    specs = attack_specs(store)
    labels = attack_labels(store, list(dict.fromkeys(cells["cell_key"])))
    descriptions = attack_descriptions(store, list(dict.fromkeys(cells["cell_key"])))
    attacks = [a for a in attacks_in(cells) if a != CLEAN]
    rows = setting_rows(cells, store)
    tests = paired_tests(store, rows)
    bands = sig.rank_bands([above for above, _ in tests])
    tail_name = next((g for g in ("tail", "few") if f"group_{g}" in cells and cells[f"group_{g}"].notna().any()),
                     "tail")
    columns = [Column("rank", "#", numeric=True, descending_first=False, title="rank by BR under the worst case"),
               Column("band", "Band", numeric=True, descending_first=False,
                      title="rank band: a row shares the band of the row above unless the exact McNemar test "
                            "finds them different at 5%"),
               Column("method", "Method", numeric=False), Column("model", "Model", numeric=False),
               Column("seeds", "Seeds", title="training seeds averaged (mean ± sample std)"),
               Column("clean_acc", "Clean acc.", title="plain accuracy on clean test inputs (%)"),
               Column("balanced_acc", "Balanced acc.", title="mean clean recall over classes (%)")]
    columns += [Column(f"br_{a}", attack_label(a, labels), group="Balanced Robustness (%)",
                       title=_attack_title(a, specs, labels, descriptions),
                       detail=str(specs.get(a, {}).get("kind", "")).startswith("torchattacks")) for a in attacks]
    columns += [Column("br_ci", "Worst case 95% CI", group="Balanced Robustness (%)", numeric=False,
                       title="95% Student-t interval over training seeds of BR under the worst case "
                             "(none with one seed)"),
                Column("vs_above_diff", "Δ BR vs above", group=PAIRED_GROUP,
                       title="BR difference from the row above (points), [95% class-stratified paired bootstrap "
                             f"interval, {sig.N_RESAMPLES} resamples]"),
                Column("vs_above_p", "p vs above", group=PAIRED_GROUP,
                       descending_first=False, title="exact McNemar p-value against the row above; n: (seed, "
                                                     "example) pairs; ≈ n.s.: not significant at 5%"),
                Column("vs_leader_diff", "Δ BR vs leader", group=PAIRED_GROUP,
                       title="BR difference from the leader (points), [95% class-stratified paired bootstrap "
                             "interval]"),
                Column("vs_leader_p", "p vs leader", group=PAIRED_GROUP,
                       descending_first=False, title="exact McNemar p-value against the leader")]
    columns += [Column("worst_class", "Worst class", title="lowest per-class recall under the worst case (%)"),
                Column("tail", f"{tail_name.capitalize()} mean",
                       title=f"mean recall of the {tail_name} classes (by training count) under the worst case (%)"),
                Column("examples", "Examples", title="test examples evaluated"),
                Column("hours", "Train time", title="training time per seed: GPU-hours on CUDA, else CPU-hours"),
                Column("audit", "Audit", numeric=False, title="audit flags of the cells (see below the table)")]
    for col in columns:  # on the page behind "show all columns", so the default view fits 1280 px
        col.detail = col.detail or col.key.startswith("vs_") or col.key in ("examples", "hours")
    body = []
    for rank, row in enumerate(rows, 1):
        sub = cells[cells["setting"] == row.setting]
        by = {a: sub[sub["attack"] == a] for a in attacks_in(sub)}
        clean = by.get(CLEAN, sub.iloc[0:0])
        robust = by.get(WORST_CASE, sub.iloc[0:0])
        first = sub.drop_duplicates("cell_key")
        flags = sorted({f for fl in first["flags"] for f in fl})
        seeds = ", ".join(str(s) for s in row.seeds)
        cuda = first["device"].str.startswith("cuda")
        unit = "GPU-h" if cuda.all() else "CPU-h" if not cuda.any() else "h (mixed devices)"
        hours_mean, _, n_hours = _mean_std((first["train_seconds"] / 3600).tolist())
        examples = sorted({int(v) for v in first["eval_examples"].dropna()})
        subsets = sorted({(a, int(n)) for a, n in zip(sub["attack"], sub["examples"])
                          if a not in SUMMARIES and pd.notna(n) and examples and int(n) < examples[-1]})
        selection = sorted({str(v) for v in first["selection"].dropna()} - {"final epoch"})
        above, leader = tests[rank - 1]
        cells_row = [
            Cell(str(rank), rank),
            _band_cell(bands[rank - 1], above),
            Cell(row.label, row.label, links=[(f"s{s}", cell_pages[k]) for s, k in zip(row.seeds, row.cell_keys)
                                             if k in cell_pages], title=f"setting {row.setting}",
                 badge=f"⚠ {len(flags)}" if flags else "", badge_title="audit flags:\n" + "\n".join(flags),
                 tag=", ".join(selection)),
            Cell(row.model, row.model),
            Cell(str(len(row.cell_keys)), len(row.cell_keys), title=f"seeds {seeds}"),
            _pct_cell(clean["accuracy"].tolist(), support=clean["examples"].tolist()),
            _pct_cell(clean["balanced"].tolist(), support=clean["examples"].tolist()),
        ]
        cells_row += [_pct_cell(by[a]["balanced"].tolist(), support=by[a]["examples"].tolist())
                      if a in by else Cell(title="not evaluated") for a in attacks]
        cells_row += [_interval_cell(robust["balanced"].tolist()), _diff_cell(above), _p_cell(above),
                      _diff_cell(leader), _p_cell(leader)]
        worst_classes = [_class_name(store, k, c) for k, c in zip(robust["cell_key"], robust["worst_class"])]
        cells_row += [
            _pct_cell(robust["worst_class_recall"].tolist(),
                      title=f"worst class per seed: {', '.join(worst_classes)}" if worst_classes else "",
                      support=_class_support(store, robust, WORST_CASE, "min")),
            _pct_cell(robust["tail_mean"].tolist(), support=_class_support(store, robust, WORST_CASE, "tail")),
            Cell(" / ".join(map(str, examples)) + "".join(f" ({attack_label(a, labels)} on {n})" for a, n in subsets)
                 if examples else "—", examples[0] if len(examples) == 1 else None,
                 title="test examples; an attack limited to a class-stratified subset is scored on it"
                 if subsets else ""),
            Cell(f"{hours_mean:.3g} {unit}" if n_hours else "—", hours_mean if n_hours else None,
                 title=f"{first['train_seconds'].mean():.0f} s per seed" if n_hours else ""),
            Cell(f"{len(flags)} flag{'s' if len(flags) != 1 else ''}" if flags else "none", "; ".join(flags),
                 title="\n".join(flags)),
        ]
        body.append(cells_row)
    digits = {}
    for j, col in enumerate(columns):
        if col.numeric and col.key not in ("rank", "band", "seeds", "examples", "hours") and \
                not col.key.startswith("vs_"):
            digits[col.key] = set_precision(body, j)
    ci = next(j for j, col in enumerate(columns) if col.key == "br_ci")
    for row in body:  # the interval at its estimate's precision
        if row[ci].interval is not None:
            d = digits.get(f"br_{WORST_CASE}", 2)
            row[ci].text = row[ci].value = f"{fmt(row[ci].interval[0], d)}–{fmt(row[ci].interval[1], d)}"
    notes = group_notes(store, group) + significance_notes(rows, tests)
    for row in rows:
        sub = cells[(cells["setting"] == row.setting)].drop_duplicates("cell_key")
        notes += [f"{row.label} (seed {seed}): audit flag: {flag}"
                  for seed, fl in zip(sub["seed"], sub["flags"]) for flag in fl]
    return Table(f"leaderboard-{group.slug}", group.title, columns, body, notes, sortable=True,
                 detail_note="paired tests, cross-checks, cost")


def _class_support(store: ResultStore, attack_rows: pd.DataFrame, attack: str, which: str) -> list[float]:
    """Test examples behind a per-class figure of each cell: its smallest class ("min", the worst class
    could be any) or its tail classes together ("tail")."""
    out = []
    for key in attack_rows["cell_key"]:
        frame = store.classes[(store.classes["cell_key"] == key) & (store.classes["attack"] == attack)]
        if which == "tail":
            tail = set(store.tail_classes(key))
            frame = frame[frame["class_index"].isin(tail)]
            out.append(float(frame["test_support"].sum()) if len(frame) else math.nan)
        else:
            out.append(float(frame["test_support"].min()) if len(frame) else math.nan)
    return out


def _class_name(store: ResultStore, cell_key: str, index) -> str:
    names = store.class_names(cell_key)
    return str(names[int(index)]) if isinstance(index, numbers.Real) and not math.isnan(index) else "—"


def _attack_title(attack: str, specs: dict[str, dict], labels: dict[str, str] | None = None,
                  descriptions: dict[str, str] | None = None) -> str:
    if attack == WORST_CASE:
        return "per-example worst case over clean input and every attack of the cell, on the examples all ran on"
    if attack == WORST_CASE_ALL_EXAMPLES:
        return "per-example worst case over clean input and the attacks that ran on every example"
    return (descriptions or {}).get(attack) or describe_spec(specs.get(attack), (labels or {}).get(attack)) or attack


# ----------------------------------------------------------------------------- paired tests between rows

def row_outcomes(store: ResultStore, row: Row) -> tuple[dict, list[str]]:
    """training seed -> worst-case outcomes of the row's first cell with that seed, and the cells that have
    none (no predictions.npz, or one that does not match metrics.json) with the reason."""
    per_seed, problems = {}, []
    for seed, key in zip(row.seeds, row.cell_keys):
        if seed in per_seed:
            continue
        outcomes = store.worst_case_outcomes(key)
        if outcomes is None:
            problems.append(f"{key}: {store.outcome_problems.get(key, 'no outcomes')}")
        else:
            per_seed[seed] = outcomes
    return per_seed, problems


def paired_tests(store: ResultStore, rows: list[Row]) -> list[tuple]:
    """(against the row above, against the leader) per ranked row; (None, None) for the leader. Predictions
    are read only here, one cell at a time, and only for leaderboard rows."""
    outcomes = [row_outcomes(store, r) for r in rows]

    def pair(i: int, j: int):
        (mine, my_problems), (theirs, their_problems) = outcomes[i], outcomes[j]
        if not mine or not theirs:
            return sig.Untested("no per-example predictions: " + "; ".join(my_problems + their_problems))
        return sig.compare(mine, theirs)

    out: list[tuple] = []
    for i in range(len(rows)):
        if i == 0:
            out.append((None, None))
            continue
        above = pair(i, i - 1)
        out.append((above, above if i == 1 else pair(i, 0)))
    return out


def significance_notes(rows: list[Row], tests: list[tuple]) -> list[str]:
    """The legend of the band and paired-test columns, and what the intervals cover."""
    if not rows:
        return []
    notes = []
    if len(rows) > 1:
        notes.append(
            "Band: a row shares the band of the row above when their difference is not significant at 5% "
            "(exact two-sided McNemar test on per-example correctness under the worst case, on the same test "
            "examples and training seeds; marked ≈ n.s.); bands chain, so see p vs leader for the gap to the top. "
            f"Δ BR: this row minus the other, in points, with a 95% interval from {sig.N_RESAMPLES} paired "
            "bootstrap resamples of the test examples within each class (Balanced Robustness is what is "
            "resampled); n: the (seed, example) pairs tested; † marks a pair where the bootstrap interval and "
            "McNemar disagree.")
    single = [r.label for r in rows if len(dict.fromkeys(r.seeds)) == 1]
    if len(single) == len(rows):
        notes.append("One training seed per row: the paired tests cover test-set sampling only, not training "
                     "variance (seed to seed), and there is no interval over seeds.")
    elif single:
        notes.append(f"One training seed for {', '.join(single)}: for these rows only test-set sampling is covered, "
                     "not training variance. Elsewhere the 95% CI is a Student-t interval over seeds (training "
                     "variance); the paired tests hold the trained models fixed (test-set sampling).")
    else:
        notes.append("95% CI: Student-t interval over training seeds (training variance); the paired tests hold "
                     "the trained models fixed and cover test-set sampling.")
    reasons = sorted({t.reason for pair in tests for t in pair if t is not None and not t.tested})
    notes += [f"No paired test: {reason}." for reason in reasons]
    return notes


def _band_cell(band: int, above) -> Cell:
    if above is None:
        return Cell(str(band), band, title="the leader's band")
    if above.tested and not above.significant:
        return Cell(f"{band} ≈", band, title=f"same band as the row above: not significantly different at 5% "
                                             f"(McNemar p = {sig.format_p(above.p)})")
    why = (f"significantly different from the row above (McNemar p = {sig.format_p(above.p)})" if above.tested
           else f"no paired test with the row above ({above.reason}): not shown to be tied")
    return Cell(str(band), band, title=f"new band: {why}")


def _interval_cell(values) -> Cell:
    stats = sig.seed_stats(list(values))
    if stats.interval is None:
        why = "one seed: no interval over seeds (only test-set sampling is covered, by the paired tests)" \
            if stats.n == 1 else "not evaluated"
        return Cell("—", None, title=why, export={"n seeds": stats.n or None})
    low, high = 100 * stats.interval[0], 100 * stats.interval[1]
    return Cell(f"{low:.2f}–{high:.2f}", f"{low:.2f}–{high:.2f}", interval=(low, high),
                title=f"95% Student-t interval over n = {stats.n} seeds ({stats.n - 1} degrees of freedom)",
                export={"n seeds": stats.n, "interval": "Student-t 95% over seeds"})


def _diff_cell(comp) -> Cell:
    if comp is None:
        return Cell("—", None, title="the leader")
    if not comp.tested:
        return Cell("—", None, title=f"no paired test: {comp.reason}", export={"interval": None})
    low, high = 100 * comp.interval[0], 100 * comp.interval[1]
    return Cell(f"{100 * comp.diff:+.2f} [{low:+.2f}, {high:+.2f}]", 100 * comp.diff, interval=(low, high),
                title=comp.describe(), export={"interval": sig.BOOTSTRAP, "excludes 0": comp.interval_excludes_zero,
                                               "n examples": comp.examples, "n seeds": len(comp.seeds)})


def _p_cell(comp) -> Cell:
    if comp is None:
        return Cell("—", None, title="the leader")
    if not comp.tested:
        return Cell("no test", None, title=f"no paired test: {comp.reason}",
                    export={"test": None, "n": None, "significant 5%": None})
    text = sig.format_p(comp.p) + ("" if comp.significant else " ≈ n.s.") + f" (n {comp.pairs})"
    text += "" if comp.tests_agree else " †"
    return Cell(text, comp.p, title=comp.describe(),
                export={"test": sig.MCNEMAR, "n": comp.pairs, "b": comp.b, "c": comp.c,
                        "significant 5%": comp.significant})


def group_notes(store: ResultStore, group: Group) -> list[str]:
    """What a reader must know to read a group's numbers: split semantics, differing attack sets."""
    cells = group.select(store.cells)
    keys = list(dict.fromkeys(cells["cell_key"]))
    equal = [store.record(k).data.get("balanced_robustness_equals_robust_accuracy") for k in keys]
    notes = []
    if all(e is True for e in equal):
        notes.append(f"Test split {group.test_split}: every class has the same number of test examples, so "
                     "Balanced Robustness equals robust accuracy here.")
    else:
        notes.append(f"Test split {group.test_split}: classes have different numbers of test examples, so "
                     "Balanced Robustness (the mean per-class recall) differs from robust accuracy here.")
    attack_sets = {k: tuple(store.record(k).attacks) for k in keys}
    if len(set(attack_sets.values())) > 1:
        notes.append("Cells here were evaluated with different attack sets, so their worst cases cover "
                     "different attacks: " + "; ".join(sorted({", ".join(v) for v in attack_sets.values()})) + ".")
    selections = {str(store.record(k).selection_label or "") for k in keys}
    if "test-selected" in selections:
        notes.append("Rows marked test-selected kept the epoch that scored best on the test set (AT-BSL's rule): "
                     "their numbers are optimistic.")
    attacked = cells[~cells["attack"].isin(SUMMARIES)]
    if (attacked["examples"] < attacked["eval_examples"]).any():
        notes.append("Some attacks ran on a class-stratified subset of the test examples (see Examples); each is "
                     "scored on its own examples, and the worst case covers the examples every attack ran on.")
    examples = {store.record(k).data.get("eval_examples") for k in keys}
    if len(examples) > 1:
        notes.append(f"Cells were evaluated on different numbers of test examples: {sorted(map(str, examples))}.")
    notes.append("Ranked by Balanced Robustness under the worst case (mean over seeds); click a header to re-sort.")
    return notes


# ----------------------------------------------------------------------------- per-class tables

def selected_classes(store: ResultStore, keys: list[str], tail_only: bool) -> list[tuple[int, str]]:
    """(index, name) of the columns of a per-class table: all classes, or the tail by training-count rank."""
    names = store.class_names(keys[0])
    chosen = store.tail_classes(keys[0]) if tail_only else range(len(names))
    return [(c, str(names[c])) for c in chosen]


def per_class_table(store: ResultStore, group: Group, attack: str | None, tail_only: bool,
                    rows: list[Row] | None = None, classes: list[tuple[int, str]] | None = None,
                    part: str = "") -> Table:
    """Poster style: classes as columns, grouped Clean | Attacked, best bold and second underlined per column.
    Each cell is the mean recall over seeds; its hover shows the pooled counts and a 95% Wilson interval.
    ``classes`` (index, name) overrides the columns, ``part`` ("head", "tail") names such a selection."""
    frame = group.select(store.classes)
    rows = rows if rows is not None else setting_rows(group.select(store.cells), store)
    keys = [k for r in rows for k in r.cell_keys]
    classes = classes if classes is not None else selected_classes(store, keys, tail_only)
    parts = [(CLEAN, "Clean")] + ([(attack, f"Attacked ({attack_label(attack, attack_labels(store, keys))})")]
                                  if attack else [])
    columns = [Column("method", "Method", numeric=False), Column("model", "Model", numeric=False),
               Column("seeds", "Seeds")]
    # many classes: the page shows the tail-most PAGE_CLASSES_MAX until "show all columns" (exports: all)
    ranked = sorted((c for c, _ in classes), key=lambda c: _train_rank(frame, c))
    shown = set(ranked[-PAGE_CLASSES_MAX:])
    columns += [Column(f"{a}_{c}", name, group=label, detail=c not in shown)
                for a, label in parts for c, name in classes]
    body = []
    for row in rows:
        sub = frame[frame["setting"] == row.setting]
        line = [Cell(row.label, row.label), Cell(row.model, row.model), Cell(str(len(row.cell_keys)),
                                                                           len(row.cell_keys))]
        for a, _ in parts:
            for c, name in classes:
                line.append(_recall_cell(sub[(sub["attack"] == a) & (sub["class_index"] == c)], name))
        body.append(line)
    for j in range(3, len(columns)):
        mark_column(body, j, set_precision(body, j))
    which = f"{part} classes (by training count)" if part else \
        "tail classes (by training count)" if tail_only else "all classes"
    notes = [f"Per-class recall (%) on {which}, mean over seeds; with three or more rows, a clear best in bold "
             "and a clear second best underlined per column (ties: no mark). Decimals follow each class's test "
             "support (none below 1,000 examples). Hover a number for its counts and 95% Wilson interval."]
    if attack is None:
        notes.append("No attack was evaluated in this group: clean recall only.")
    elif not (frame["attack"] == attack).any():
        notes.append(f"Attack {attack!r} was not evaluated in this group.")
    if len(shown) < len(classes):
        notes.append(f"The page shows the {len(shown)} classes with the fewest training images; "
                     f"'Show all columns' adds the other {len(classes) - len(shown)} (the exports have all).")
    suffix = f"-{part}" if part else "-tail" if tail_only else ""
    title = f"Per-class recall{f' ({part} classes)' if part else ''} · {group.title}"
    return Table(f"per-class-{group.slug}-{slugify(attack or 'clean')}{suffix}", title, columns, body, notes,
                 detail_note="the classes with more training images")


def _train_rank(frame: pd.DataFrame, class_index: int) -> tuple:
    """Sort key: most training images first (ties by index), from the group's class rows."""
    counts = frame.loc[frame["class_index"] == class_index, "train_count"]
    return (-(float(counts.iloc[0]) if len(counts) else 0.0), class_index)


def _recall_cell(sub: pd.DataFrame, class_name: str) -> Cell:
    """Mean recall over seeds; counts pooled over seeds for the Wilson interval."""
    if sub.empty:
        return Cell(title="not evaluated")
    support, correct = int(sub["test_support"].sum()), int(sub["correct"].sum())
    if not support:
        return Cell(title=f"{class_name}: no test example (recall undefined)")
    mean = float(np.nanmean(sub["recall"].to_numpy(dtype=float)))
    low, high = wilson_interval(correct, support)
    seeds = len(sub)
    title = (f"{class_name}: {correct}/{support} correct" + (f" over {seeds} seeds" if seeds > 1 else "")
             + f"; 95% Wilson interval {100 * low:.1f}–{100 * high:.1f}%")
    per_seed = sub["test_support"].to_numpy(dtype=float)
    return Cell(pct(mean), 100 * mean, interval=(100 * low, 100 * high), title=title,
                support=float(per_seed[per_seed > 0].min()))


# ----------------------------------------------------------------------------- the paper's numbers

def load_reference(path: Path = REFERENCE_FILE) -> dict:
    return yaml.safe_load(Path(path).read_text())


def reference_table(reference: dict) -> Table:
    """The poster's table as printed, marked by the poster's own rule (ties share a mark; a test checks the
    marks match the poster), not by ``mark_best``'s stricter one for measured tables."""
    setting, source = reference["setting"], reference["source"]
    classes, support = reference["classes"], reference["test_support"]
    parts = [("clean", "Clean"), ("attacked", f"Attacked ({setting['attack_label']})")]
    columns = [Column("method", "Method (paper-reported)", numeric=False)]
    columns += [Column(f"{p}_{c}", c, group=label) for p, label in parts for c in classes]
    body = []
    for row in reference["rows"]:
        line = [Cell(row["method"], row["method"], title=f"our registry name: {row.get('ours', '?')}")]
        for p, _ in parts:
            for c, n, v in zip(classes, support, row[p]):
                low, high = wilson_interval(v / 100 * n, n)
                line.append(Cell(f"{v:g}", float(v), interval=(100 * low, 100 * high),
                                 title=f"{c}: {v:g}% as printed; 95% Wilson interval {100 * low:.1f}–"
                                       f"{100 * high:.1f}% assuming n = {n} test images"))
        body.append(line)
    for j in range(1, len(columns)):
        for r, mark in zip(body, mark_as_printed([r[j].value for r in body])):
            r[j].mark = mark
    citation = (f"{source['title']}, {source['authors'].split(',')[0]} et al., {source['venue']} "
                f"(arXiv {source['arxiv']}): {source['table']}.")
    notes = [f"Paper-reported, not measured here: {citation}",
             f"Setting: {setting['dataset']} IR {setting['imbalance_ratio']}, {setting['model']}, TAET's long-tailed "
             f"test split (per-class test images {', '.join(f'{c} {n}' for c, n in zip(classes, support))}), "
             f"{setting['attack_label']} with step {setting['attack']['step_size']} "
             f"at ε {setting.get('eps_label', setting['eps'])} as the authors' notebook evaluates (it trains at ε "
             f"{setting.get('train_eps', setting['eps'])}; the poster states neither). Bracketed numbers are "
             "the paper's citations. Shown for reference; never ranked with measured rows."]
    return Table("paper-taet-cifar10lt-ir10", "Paper-reported reference: TAET poster, CIFAR-10-LT IR 10",
                 columns, body, notes, kind="paper")


def reference_differences(reference: dict, store: ResultStore, group: Group, attack: str | None,
                          tail_only: bool) -> list[str]:
    """How a measured per-class table's setting differs from the paper's (empty: same setting)."""
    setting = reference["setting"]
    cells = group.select(store.cells)
    out = []
    if group.dataset != setting["dataset"]:
        out.append(f"dataset {group.dataset} here, {setting['dataset']} in the paper")
    if group.imbalance_ratio != float(setting["imbalance_ratio"]):
        out.append(f"IR {group.imbalance_ratio:g} here, {setting['imbalance_ratio']} in the paper")
    if group.test_split != setting["test_split"]:
        out.append(f"{group.test_split} test split here, TAET's {setting['test_split']} split in the paper")
    models = sorted(set(cells["model"]))
    if models != [setting["model"]]:
        out.append(f"model {', '.join(models)} here, {setting['model']} in the paper")
    spec = attack_specs(store).get(attack or "", {})
    want = setting["attack"]
    step = float(eval_fraction(want["step_size"]))
    if not attack or spec.get("kind") != want["kind"] or spec.get("steps") != want["steps"] or \
            not math.isclose(float(spec.get("step_size") or 0), step, rel_tol=1e-3):
        label = attack_labels(store, list(dict.fromkeys(cells["cell_key"]))).get(attack or "")
        out.append(f"attack {attack_label(attack, {attack: label}) if attack else 'none'} "
                   f"({describe_spec(spec, label) or 'no spec'}) here, "
                   f"{setting['attack_label']} step {want['step_size']} in the paper")
    if not math.isclose(group.eps, float(setting["eps"]), rel_tol=1e-3):
        out.append(f"ε {group.eps_label} here, {setting.get('eps_label', setting['eps'])} in the paper")
    names = [name for _, name in selected_classes(store, list(dict.fromkeys(cells["cell_key"])), tail_only)]
    if names != reference["classes"]:
        out.append("different classes in the columns")
    return out


def eval_fraction(text: Any) -> float:
    if isinstance(text, (int, float)):
        return float(text)
    num, _, den = str(text).partition("/")
    return float(num) / float(den or 1)


# ----------------------------------------------------------------------------- per-cell tables

def cell_class_table(store: ResultStore, cell_key: str, slug: str | None = None) -> Table:
    """One row per class: training count, test support, group, then recall (%) under every attack."""
    frame = store.classes[store.classes["cell_key"] == cell_key]
    records = store.attack_records(cell_key)
    specs = {name: r["spec"] for name, r in records.items() if isinstance(r.get("spec"), dict)}
    labels, descriptions = attack_labels(store, [cell_key]), attack_descriptions(store, [cell_key])
    attacks = attacks_in(frame)
    first = frame[frame["attack"] == attacks[0]].sort_values("class_index")
    columns = [Column("class", "Class", numeric=False), Column("train_count", "Train count"),
               Column("test_support", "Test support"), Column("group", "Group", numeric=False)]
    columns += [Column(a, attack_label(a, labels), group="Recall (%)", title=descriptions.get(a) or describe_spec(specs.get(a), labels.get(a)))
                for a in attacks]
    body = []
    for r in first.itertuples():
        line = [Cell(r.class_name, r.class_name), Cell(str(r.train_count), r.train_count),
                Cell(str(r.test_support), r.test_support), Cell(str(r.group or "—"), r.group)]
        for a in attacks:
            line.append(_recall_cell(frame[(frame["attack"] == a) & (frame["class_index"] == r.class_index)],
                                     r.class_name))
        body.append(line)
    summary = store.cells[store.cells["cell_key"] == cell_key].set_index("attack")
    n_classes = len(body)
    for label, col in (("balanced", "balanced"), ("accuracy", "accuracy")):
        line = [Cell(f"({label})", label), Cell("", None), Cell("", None), Cell("", None)]
        line += [Cell(pct(summary.loc[a, col]), 100 * summary.loc[a, col], support=summary.loc[a, "examples"])
                 for a in attacks]
        body.append(line)
    for j in range(4, len(columns)):  # classes at their support, the two means at the examples behind them
        set_precision(body[:n_classes], j)
        set_precision(body[n_classes:], j)
    notes = ["Recall per class (%); hover for counts and 95% Wilson intervals. (balanced) is balanced accuracy "
             "for clean inputs and Balanced Robustness under an attack."]
    return Table(f"cell-{slug or slugify(cell_key)}-per-class", "Per-class recall under every attack", columns, body,
                 notes, sortable=True)


def confusion_table(store: ResultStore, cell_key: str, attack: str, slug: str | None = None) -> Table | None:
    """Confusion matrix (rows: true class, columns: predicted) with a heat shade per row share."""
    matrix = store.record(cell_key).confusion_matrix(attack)
    if not matrix:
        return None
    names = store.class_names(cell_key)
    label = attack_label(attack, attack_labels(store, [cell_key]))
    columns = [Column("true", "true \\ predicted", numeric=False)]
    columns += [Column(f"pred_{j}", name, group=f"Predicted under {label}") for j, name in enumerate(names)]
    body = []
    for i, counts in enumerate(matrix):
        total = sum(counts) or 1
        body.append([Cell(names[i], names[i])] + [
            Cell(str(v), v, heat=v / total, title=f"true {names[i]}, predicted {names[j]}: {v} of {sum(counts)}")
            for j, v in enumerate(counts)])
    return Table(f"cell-{slug or slugify(cell_key)}-confusion-{slugify(attack)}",
                 f"Confusion matrix under {label}", columns, body,
                 ["Rows: true class; columns: predicted class; shade: share of the row."])


def cascade_table(record: CellRecord, attack: str, slug: str) -> Table | None:
    """AutoAttack's survivor cascade of one attack record (``cascade``: stages, robust_per_class per stage,
    examples_per_class): robust examples per class after each stage, their total and share. None when the
    record has no cascade or a malformed one (wrong lengths)."""
    run = record.attack_records.get(attack) or {}
    cascade = run.get("cascade")
    if not isinstance(cascade, dict):
        return None
    stages, robust, examples = cascade.get("stages"), cascade.get("robust_per_class"), cascade.get(
        "examples_per_class")
    names = record.classes
    if not (isinstance(stages, list) and isinstance(robust, list) and isinstance(examples, list)
            and len(stages) == len(robust) and len(examples) == len(names)
            and all(isinstance(r, list) and len(r) == len(names) for r in robust)):
        return None
    total = sum(int(e) for e in examples)
    columns = [Column("stage", "After stage", numeric=False)]
    columns += [Column(f"class_{j}", name, group="Robust examples per class") for j, name in enumerate(names)]
    columns += [Column("total", "Total"), Column("share", "Robust (%)")]
    body = [[Cell("examples", "examples", title="examples per class the cascade ran on")]
            + [Cell(str(e), int(e)) for e in examples] + [Cell(str(total), total), Cell("", None)]]
    for stage, counts in zip(stages, robust):
        robust_total = sum(int(v) for v in counts)
        body.append([Cell(str(stage), str(stage))]
                    + [Cell(str(v), int(v), title=f"{names[j]}: {v} of {examples[j]} still robust after {stage}")
                       for j, v in enumerate(counts)]
                    + [Cell(str(robust_total), robust_total),
                       Cell(pct(robust_total / total) if total else "—",
                            100 * robust_total / total if total else None, support=total or None)])
    set_precision(body, len(columns) - 1)
    label = attack_label(attack, record_labels({attack: run}))
    notes = [f"{label}: examples still correctly classified after each stage of the cascade (each stage attacks "
             "only the survivors of the stages before it, so the counts never increase); the last row is the "
             "attack's robust count."]
    if any(int(b) > int(a) for before, after in zip(robust, robust[1:]) for a, b in zip(before, after)):
        notes.append("Warning: some count increases from one stage to the next; a cascade should never do that.")
    return Table(f"{slug}-cascade-{slugify(attack)}", f"Cascade of {label}", columns, body, notes)


def key_value_table(slug: str, title: str, record: dict) -> Table:
    """A flat record (cost, method diagnostics) as two columns, values as words (``readable``)."""
    body = []
    for key, value in record.items():
        text = readable(value)
        body.append([Cell(str(key), str(key)), Cell(text, text)])
    return Table(slug, title, [Column("key", "Field", numeric=False), Column("value", "Value", numeric=False)], body,
                 kind="record")


def readable(value: Any) -> str:
    """A record value for a reader: none for empty or null, a list of numbers or words joined by commas,
    a mapping as "key value; ...", anything deeper as compact JSON."""
    import json

    if value is None or value == [] or value == {} or value == "":
        return "none"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Real):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, numbers.Real)) for v in value):
        return ", ".join(readable(v) for v in value)
    if isinstance(value, dict) and all(isinstance(v, (str, numbers.Real, type(None))) for v in value.values()):
        return "; ".join(f"{k} {readable(v)}" for k, v in value.items())
    return json.dumps(value, default=str)
