"""The report's tables: one small Table model that the HTML template and every export render from, and
the builders for leaderboards, per-class tables in the TAET poster's style, the paper-reported reference
block and the per-cell tables.

Numbers go in as fractions in [0, 1] from the results store and come out as percentages with two
decimals, as the long-tail papers print them. Seeds of one setting are averaged (mean ± sample std, n).
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

from ..store import CLEAN, WORST_CASE, WORST_CASE_ALL_EXAMPLES, ResultStore, tail_classes

Z95 = 1.959963984540054  # two-sided 95% normal quantile
REFERENCE_FILE = Path(__file__).with_name("taet_poster.yaml")
GROUP_KEYS = ["dataset", "imbalance_ratio", "norm", "eps", "test_split"]
SUMMARIES = (WORST_CASE_ALL_EXAMPLES, WORST_CASE)  # derived from the attacks, listed after them
NORM_LABELS = {"Linf": "L∞", "L2": "L2", "L1": "L1"}


# ----------------------------------------------------------------------------- the model

@dataclass
class Column:
    key: str
    label: str
    group: str = ""  # spanning header above this column ("Clean", "Attacked (PGD-20)")
    title: str = ""  # hover text of the header
    numeric: bool = True
    descending_first: bool = True  # first click on the header sorts high to low (False for ranks)


@dataclass
class Cell:
    text: str = "—"
    value: float | str | None = None  # what CSV exports and the sort use (percent for recalls)
    std: float | None = None  # over seeds, same unit as value
    interval: tuple[float, float] | None = None  # 95% Wilson interval, same unit as value
    mark: str = ""  # "best" (bold) or "second" (underlined)
    title: str = ""  # hover text
    href: str | None = None
    links: list[tuple[str, str]] = field(default_factory=list)  # small links after the text (one per seed)
    heat: float | None = None  # 0..1 background intensity (confusion matrices)
    badge: str = ""  # a warning shown beside the text (audit flags), its details in badge_title
    badge_title: str = ""
    tag: str = ""  # a label shown beside the text (model selection other than the final epoch)


@dataclass
class Table:
    slug: str  # file name of its exports and the HTML id
    title: str
    columns: list[Column]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    sortable: bool = False
    kind: str = "measured"  # "measured" or "paper" (a reference, never ranked with measured rows)

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


def attack_label(name: str) -> str:
    """A reader's name for an attack key: pgd20 -> PGD-20, worst_case -> Worst case; others as stored."""
    fixed = {CLEAN: "Clean", WORST_CASE: "Worst case", WORST_CASE_ALL_EXAMPLES: "Worst case (all examples)",
             "fgsm": "FGSM", "autoattack": "AutoAttack", "aa": "AutoAttack"}
    if name in fixed:
        return fixed[name]
    match = re.fullmatch(r"(pgd|cw|lsa|apgd|mim)(\d+)", name)
    return f"{match.group(1).upper()}-{match.group(2)}" if match else name


def describe_spec(spec: dict | None) -> str:
    """One line for an attack spec: what a hover over its column says."""
    if not spec:
        return ""
    kind = str(spec.get("kind", "?"))
    iterative = kind not in ("fgsm", "autoattack")
    parts = [kind + (f" {spec['version']}" if spec.get("version") and kind == "autoattack" else "")]
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


def mark_best(values: list[float | None], digits: int = 2) -> list[str]:
    """'best' / 'second' / '' per value (in the unit shown, percent), as the poster marks them: ties share a
    mark, compared at the printed precision, second = the next distinct value below the best. Fewer than
    two values: no marks."""
    shown = [None if v is None or math.isnan(v) else round(v, digits) for v in values]
    distinct = sorted({v for v in shown if v is not None}, reverse=True)
    if sum(v is not None for v in shown) < 2:
        return [""] * len(values)
    best = distinct[0]
    second = distinct[1] if len(distinct) > 1 else None
    return ["best" if v == best else "second" if v is not None and v == second else "" for v in shown]


def _mean_std(values) -> tuple[float, float | None, int]:
    arr = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))],
                     dtype=float)
    if not arr.size:
        return math.nan, None, 0
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None), int(arr.size)


def _pct_cell(values, title: str = "") -> Cell:
    mean, std, n = _mean_std(values)
    if not n:
        return Cell(title=title or "not evaluated")
    text = pct(mean) if std is None else f"{pct(mean)} ± {pct(std)}"
    return Cell(text=text, value=100 * mean, std=None if std is None else 100 * std, title=title)


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
    for metrics in store.metrics.values():
        for name, record in (metrics.get("evaluation", {}).get("attack_records") or {}).items():
            if isinstance(record, dict) and isinstance(record.get("spec"), dict):
                specs.setdefault(name, record["spec"])
    return specs


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


def setting_rows(group_cells: pd.DataFrame) -> list[Row]:
    """Settings ranked by mean BR under worst_case, best first; ties and missing values by name."""
    rows = []
    labels = group_cells.drop_duplicates("setting").groupby(["method_label", "model"])["setting"].nunique()
    for setting, sub in group_cells.groupby("setting", sort=False):
        first = sub.iloc[0]
        label = first.method_label
        if labels.get((first.method_label, first.model), 1) > 1:  # same method twice: say which config
            label = f"{label} [{setting}]"
        worst = sub[sub["attack"] == WORST_CASE]["balanced"]
        mean = _mean_std(worst.tolist())[0]
        cells = sub.drop_duplicates("cell_key").sort_values(["seed", "cell_key"], key=_seed_key)
        rows.append(Row(setting, label, first.model, cells["cell_key"].tolist(), cells["seed"].tolist(), mean))
    return sorted(rows, key=lambda r: (math.isnan(r.rank_value), -np.nan_to_num(r.rank_value), r.label, r.model))


def _seed_key(series: pd.Series) -> pd.Series:
    return series.map(lambda v: (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)))


def leaderboard(store: ResultStore, group: Group, cell_pages: dict[str, str]) -> Table:
    """Method × (clean, balanced, BR per attack, BR worst case, worst class, tail, n, cost, audit flags)."""
    cells = group.select(store.cells)
    specs = attack_specs(store)
    attacks = [a for a in attacks_in(cells) if a != CLEAN]
    rows = setting_rows(cells)
    tail_name = next((g for g in ("tail", "few") if f"group_{g}" in cells and cells[f"group_{g}"].notna().any()),
                     "tail")
    columns = [Column("rank", "#", numeric=True, descending_first=False, title="rank by BR under the worst case"),
               Column("method", "Method", numeric=False), Column("model", "Model", numeric=False),
               Column("seeds", "Seeds", title="training seeds averaged (mean ± sample std)"),
               Column("clean_acc", "Clean acc.", title="plain accuracy on clean test inputs (%)"),
               Column("balanced_acc", "Balanced acc.", title="mean clean recall over classes (%)")]
    columns += [Column(f"br_{a}", attack_label(a), group="Balanced Robustness (%)",
                       title=_attack_title(a, specs)) for a in attacks]
    columns += [Column("worst_class", "Worst class", title="lowest per-class recall under the worst case (%)"),
                Column("tail", f"{tail_name.capitalize()} mean",
                       title=f"mean recall of the {tail_name} classes (by training count) under the worst case (%)"),
                Column("examples", "Examples", title="test examples evaluated"),
                Column("hours", "Train time", title="training time per seed: GPU-hours on CUDA, else CPU-hours"),
                Column("audit", "Audit", numeric=False, title="audit flags of the cells (see below the table)")]
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
        cells_row = [
            Cell(str(rank), rank),
            Cell(row.label, row.label, links=[(f"s{s}", cell_pages[k]) for s, k in zip(row.seeds, row.cell_keys)
                                             if k in cell_pages], title=f"setting {row.setting}",
                 badge=f"⚠ {len(flags)}" if flags else "", badge_title="audit flags:\n" + "\n".join(flags),
                 tag=", ".join(selection)),
            Cell(row.model, row.model),
            Cell(str(len(row.cell_keys)), len(row.cell_keys), title=f"seeds {seeds}"),
            _pct_cell(clean["accuracy"].tolist()),
            _pct_cell(clean["balanced"].tolist()),
        ]
        cells_row += [_pct_cell(by[a]["balanced"].tolist()) if a in by else Cell(title="not evaluated")
                      for a in attacks]
        worst_classes = [_class_name(store, k, c) for k, c in zip(robust["cell_key"], robust["worst_class"])]
        cells_row += [
            _pct_cell(robust["worst_class_recall"].tolist(),
                      title=f"worst class per seed: {', '.join(worst_classes)}" if worst_classes else ""),
            _pct_cell(robust["tail_mean"].tolist()),
            Cell(" / ".join(map(str, examples)) + "".join(f" ({attack_label(a)} on {n})" for a, n in subsets)
                 if examples else "—", examples[0] if len(examples) == 1 else None,
                 title="test examples; an attack limited to a class-stratified subset is scored on it"
                 if subsets else ""),
            Cell(f"{hours_mean:.3g} {unit}" if n_hours else "—", hours_mean if n_hours else None,
                 title=f"{first['train_seconds'].mean():.0f} s per seed" if n_hours else ""),
            Cell(f"{len(flags)} flag{'s' if len(flags) != 1 else ''}" if flags else "none", "; ".join(flags),
                 title="\n".join(flags)),
        ]
        body.append(cells_row)
    notes = group_notes(store, group)
    for row in rows:
        sub = cells[(cells["setting"] == row.setting)].drop_duplicates("cell_key")
        notes += [f"{row.label} (seed {seed}): audit flag: {flag}"
                  for seed, fl in zip(sub["seed"], sub["flags"]) for flag in fl]
    return Table(f"leaderboard-{group.slug}", group.title, columns, body, notes, sortable=True)


def _class_name(store: ResultStore, cell_key: str, index) -> str:
    names = store.metrics[cell_key]["data"]["classes"]
    return str(names[int(index)]) if isinstance(index, numbers.Real) and not math.isnan(index) else "—"


def _attack_title(attack: str, specs: dict[str, dict]) -> str:
    if attack == WORST_CASE:
        return "per-example worst case over clean input and every attack of the cell, on the examples all ran on"
    if attack == WORST_CASE_ALL_EXAMPLES:
        return "per-example worst case over clean input and the attacks that ran on every example"
    return describe_spec(specs.get(attack)) or attack


def group_notes(store: ResultStore, group: Group) -> list[str]:
    """What a reader must know to read a group's numbers: split semantics, differing attack sets."""
    cells = group.select(store.cells)
    keys = list(dict.fromkeys(cells["cell_key"]))
    equal = [store.metrics[k]["data"].get("balanced_robustness_equals_robust_accuracy") for k in keys]
    notes = []
    if all(e is True for e in equal):
        notes.append(f"Test split {group.test_split}: every class has the same number of test examples, so "
                     "Balanced Robustness equals robust accuracy here.")
    else:
        notes.append(f"Test split {group.test_split}: classes have different numbers of test examples, so "
                     "Balanced Robustness (the mean per-class recall) differs from robust accuracy here.")
    attack_sets = {k: tuple(a for a in store.metrics[k]["evaluation"]["attacks"]) for k in keys}
    if len(set(attack_sets.values())) > 1:
        notes.append("Cells here were evaluated with different attack sets, so their worst cases cover "
                     "different attacks: " + "; ".join(sorted({", ".join(v) for v in attack_sets.values()})) + ".")
    selections = {str((store.metrics[k].get("model_selection") or {}).get("label", "")) for k in keys}
    if "test-selected" in selections:
        notes.append("Rows marked test-selected kept the epoch that scored best on the test set (AT-BSL's rule): "
                     "their numbers are optimistic.")
    attacked = cells[~cells["attack"].isin(SUMMARIES)]
    if (attacked["examples"] < attacked["eval_examples"]).any():
        notes.append("Some attacks ran on a class-stratified subset of the test examples (see Examples); each is "
                     "scored on its own examples, and the worst case covers the examples every attack ran on.")
    examples = {store.metrics[k]["data"].get("eval_examples") for k in keys}
    if len(examples) > 1:
        notes.append(f"Cells were evaluated on different numbers of test examples: {sorted(map(str, examples))}.")
    notes.append("Ranked by Balanced Robustness under the worst case (mean over seeds); click a header to re-sort.")
    return notes


# ----------------------------------------------------------------------------- per-class tables

def selected_classes(store: ResultStore, keys: list[str], tail_only: bool) -> list[tuple[int, str]]:
    """(index, name) of the columns of a per-class table: all classes, or the tail by training-count rank."""
    metrics = store.metrics[keys[0]]
    names = metrics["data"]["classes"]
    chosen = tail_classes(metrics) if tail_only else range(len(names))
    return [(c, str(names[c])) for c in chosen]


def per_class_table(store: ResultStore, group: Group, attack: str | None, tail_only: bool,
                    rows: list[Row] | None = None) -> Table:
    """Poster style: classes as columns, grouped Clean | Attacked, best bold and second underlined per column.
    Each cell is the mean recall over seeds; its hover shows the pooled counts and a 95% Wilson interval."""
    frame = group.select(store.classes)
    rows = rows if rows is not None else setting_rows(group.select(store.cells))
    classes = selected_classes(store, [k for r in rows for k in r.cell_keys], tail_only)
    parts = [(CLEAN, "Clean")] + ([(attack, f"Attacked ({attack_label(attack)})")] if attack else [])
    columns = [Column("method", "Method", numeric=False), Column("model", "Model", numeric=False),
               Column("seeds", "Seeds")]
    columns += [Column(f"{a}_{c}", name, group=label) for a, label in parts for c, name in classes]
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
        marks = mark_best([r[j].value for r in body])
        for r, mark in zip(body, marks):
            r[j].mark = mark
    which = "tail classes (by training count)" if tail_only else "all classes"
    notes = [f"Per-class recall (%) on {which}, mean over seeds; best in bold, second best underlined per column. "
             "Hover a number for its counts and 95% Wilson interval."]
    if attack is None:
        notes.append("No attack was evaluated in this group: clean recall only.")
    elif not (frame["attack"] == attack).any():
        notes.append(f"Attack {attack!r} was not evaluated in this group.")
    suffix = "-tail" if tail_only else ""
    return Table(f"per-class-{group.slug}-{slugify(attack or 'clean')}{suffix}", f"Per-class recall · {group.title}",
                 columns, body, notes)


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
    return Cell(pct(mean), 100 * mean, interval=(100 * low, 100 * high), title=title)


# ----------------------------------------------------------------------------- the paper's numbers

def load_reference(path: Path = REFERENCE_FILE) -> dict:
    return yaml.safe_load(Path(path).read_text())


def reference_table(reference: dict) -> Table:
    """The poster's table as printed, marked by the same rule as ours (a test checks it matches the poster)."""
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
        for r, mark in zip(body, mark_best([r[j].value for r in body])):
            r[j].mark = mark
    citation = (f"{source['title']}, {source['authors'].split(',')[0]} et al., {source['venue']} "
                f"(arXiv {source['arxiv']}): {source['table']}.")
    notes = [f"Paper-reported, not measured here: {citation}",
             f"Setting: {setting['dataset']} IR {setting['imbalance_ratio']}, {setting['model']}, TAET's long-tailed "
             f"test split (per-class test images {', '.join(f'{c} {n}' for c, n in zip(classes, support))}), "
             f"{setting['attack_label']} with step {setting['attack']['step_size']} "
             f"(ε {setting['eps']} per the authors' code; the poster does not state it). Bracketed numbers are "
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
        out.append(f"attack {attack_label(attack) if attack else 'none'} ({describe_spec(spec) or 'no spec'}) here, "
                   f"{setting['attack_label']} step {want['step_size']} in the paper")
    if not math.isclose(group.eps, float(setting["eps"]), rel_tol=1e-3):
        out.append(f"ε {group.eps_label} here, {setting['eps']} in the paper")
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
    specs = attack_specs(store)
    attacks = attacks_in(frame)
    first = frame[frame["attack"] == attacks[0]].sort_values("class_index")
    columns = [Column("class", "Class", numeric=False), Column("train_count", "Train count"),
               Column("test_support", "Test support"), Column("group", "Group", numeric=False)]
    columns += [Column(a, attack_label(a), group="Recall (%)", title=describe_spec(specs.get(a))) for a in attacks]
    body = []
    for r in first.itertuples():
        line = [Cell(r.class_name, r.class_name), Cell(str(r.train_count), r.train_count),
                Cell(str(r.test_support), r.test_support), Cell(str(r.group or "—"), r.group)]
        for a in attacks:
            line.append(_recall_cell(frame[(frame["attack"] == a) & (frame["class_index"] == r.class_index)],
                                     r.class_name))
        body.append(line)
    summary = store.cells[store.cells["cell_key"] == cell_key].set_index("attack")
    for label, col in (("balanced", "balanced"), ("accuracy", "accuracy")):
        line = [Cell(f"({label})", label), Cell("", None), Cell("", None), Cell("", None)]
        line += [Cell(pct(summary.loc[a, col]), 100 * summary.loc[a, col]) for a in attacks]
        body.append(line)
    notes = ["Recall per class (%); hover for counts and 95% Wilson intervals. (balanced) is balanced accuracy "
             "for clean inputs and Balanced Robustness under an attack."]
    return Table(f"cell-{slug or slugify(cell_key)}-per-class", "Per-class recall under every attack", columns, body,
                 notes, sortable=True)


def confusion_table(store: ResultStore, cell_key: str, attack: str, slug: str | None = None) -> Table | None:
    """Confusion matrix (rows: true class, columns: predicted) with a heat shade per row share."""
    metrics = store.metrics[cell_key]
    matrix = metrics["evaluation"]["attacks"].get(attack, {}).get("confusion_matrix")
    if not matrix:
        return None
    names = [str(c) for c in metrics["data"]["classes"]]
    columns = [Column("true", "true \\ predicted", numeric=False)]
    columns += [Column(f"pred_{j}", name, group=f"Predicted under {attack_label(attack)}") for j, name in
                enumerate(names)]
    body = []
    for i, counts in enumerate(matrix):
        total = sum(counts) or 1
        body.append([Cell(names[i], names[i])] + [
            Cell(str(v), v, heat=v / total, title=f"true {names[i]}, predicted {names[j]}: {v} of {sum(counts)}")
            for j, v in enumerate(counts)])
    return Table(f"cell-{slug or slugify(cell_key)}-confusion-{slugify(attack)}",
                 f"Confusion matrix under {attack_label(attack)}", columns, body,
                 ["Rows: true class; columns: predicted class; shade: share of the row."])


def key_value_table(slug: str, title: str, record: dict) -> Table:
    """A flat record (cost, audit) as two columns; nested values are shown as compact JSON."""
    import json

    body = []
    for key, value in record.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        body.append([Cell(str(key), str(key)), Cell(text, text)])
    return Table(slug, title, [Column("key", "Field", numeric=False), Column("value", "Value", numeric=False)], body,
                 kind="record")
