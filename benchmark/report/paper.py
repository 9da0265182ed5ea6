"""Tables for a paper: a compact leaderboard that fits one column of a two-column paper, and the per-class
table split into head and tail classes.

The full leaderboard has 14-23 columns (every attack, paired tests, cost): right for the page, too wide
for a paper. The compact table keeps what a long-tail robustness paper reports: Method | Clean | BR under
PGD-20 | BR under AutoAttack | worst class | tail mean, each as mean ± half-width of its 95% interval
(over training seeds when there are several: Student-t; with one seed, over test-set sampling: a normal
interval of the class-mean recall, 1.96·√(Σ_c p_c(1−p_c)/n_c)/C), at the precision the test support
warrants (``precision``). Its LaTeX is a ``table`` float for ``\\columnwidth`` (booktabs, ``\\small``,
the ± in ``\\scriptsize``); ``estimate_width_pt`` checks the fit from character widths (no TeX is needed
to build a report, so this is an estimate: digits and average letters at 0.5 em) and a table estimated
wider than one column is emitted as ``table*``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..store import CLEAN, WORST_CASE, ResultStore
from . import significance as sig
from .precision import column_decimals, fmt
from .tables import (Cell, Column, Group, Row, Table, attack_label, attack_labels, attacks_in, mark_best,
                     per_class_table,
                     selected_classes)

Z95 = 1.959963984540054
COLUMN_WIDTH_PT = 237.0  # \columnwidth of CVPR/ICCV/ICML/AAAI two-column templates: 3.25-3.3 in
TABCOLSEP_PT = 3.0  # set by the export: \setlength{\tabcolsep}{3pt}
EM_PT = {"small": 9.0, "scriptsize": 7.0}  # in a 10 pt document
HALF = "± 95%"  # export key of a compact cell's half-width (points)
PGD20 = "PGD-20"
AUTOATTACK = "AutoAttack"  # only the reference at its full budget carries this label (see tables.spec_label)


def find_attack(attacks: list[str], labels: dict[str, str], wanted: str) -> str | None:
    """The first of ``attacks`` whose reader's name (``attack_label``) is exactly ``wanted``, else None."""
    return next((a for a in attacks if attack_label(a, labels) == wanted), None)


def _test_halfwidth(frame: pd.DataFrame) -> float | None:
    """95% normal half-width (points) of the mean recall over the classes in ``frame`` (one cell, one
    attack): test-set sampling only."""
    frame = frame[frame["test_support"] > 0]
    if frame.empty:
        return None
    p = frame["correct"].to_numpy(float) / frame["test_support"].to_numpy(float)
    var = float(np.sum(p * (1 - p) / frame["test_support"].to_numpy(float))) / len(frame) ** 2
    return 100 * Z95 * math.sqrt(var)


def _number_cell(values: list[float], supports: list[float], halfwidths: list[float | None], what: str) -> Cell:
    stats = sig.seed_stats(values)
    if not stats.n:
        return Cell(title="not evaluated")
    if stats.interval is not None:
        half, source = 100 * (stats.interval[1] - stats.interval[0]) / 2, f"Student-t over {stats.n} seeds"
    else:
        half, source = (halfwidths[0] if halfwidths else None), "test-set sampling (one seed, normal interval)"
    mean = 100 * stats.mean
    known = [s for s in supports if s and not math.isnan(s)]
    return Cell("", mean, interval=None if half is None else (mean - half, mean + half),
                title=f"{what}: mean ± 95% half-width, {source}", support=min(known) if known else None,
                export={HALF: half, "± source": source})


def compact_table(store: ResultStore, group: Group, rows: list[Row]) -> Table:
    """Method | Clean | BR PGD-20 | BR AutoAttack | Worst class | Tail mean, mean ± 95% half-width."""
    cells = group.select(store.cells)
    classes = group.select(store.classes)
    keys = list(dict.fromkeys(cells["cell_key"]))
    labels = attack_labels(store, keys)
    attacks = attacks_in(cells)
    pgd, aa = find_attack(attacks, labels, PGD20), find_attack(attacks, labels, AUTOATTACK)
    # short headers, so the header row is not what makes the table wider than a column
    parts = [("clean", "Clean", CLEAN, None, "")]
    parts += [(f"br_{a}", short, a, None, "BR (%)") for a, short in ((pgd, PGD20), (aa, "AA")) if a]
    parts += [("worst_class", "Worst", WORST_CASE, "worst", "Class recall (%)"),
              ("tail", "Tail", WORST_CASE, "tail", "Class recall (%)")]
    columns = [Column("method", "Method", numeric=False)]
    columns += [Column(key, label, group=group) for key, label, _, _, group in parts]
    body = []
    for row in rows:
        line = [Cell(row.label, row.label)]
        for key, label, attack, which, _ in parts:
            values, supports, halves = [], [], []
            for cell_key in row.cell_keys:
                summary = cells[(cells["cell_key"] == cell_key) & (cells["attack"] == attack)]
                per_class = classes[(classes["cell_key"] == cell_key) & (classes["attack"] == attack)]
                if summary.empty:
                    continue
                s = summary.iloc[0]
                if which == "worst":
                    value = s["worst_class_recall"]
                    chosen = per_class[per_class["class_index"] == s["worst_class"]] if pd.notna(s["worst_class"]) \
                        else per_class.iloc[0:0]
                elif which == "tail":
                    value = s["tail_mean"]
                    chosen = per_class[per_class["class_index"].isin(store.tail_classes(cell_key))]
                else:
                    value, chosen = s["balanced"], per_class
                values.append(value)
                supports.append(float(chosen["test_support"].sum()) if which else float(s["examples"]))
                halves.append(_test_halfwidth(chosen))
            line.append(_number_cell(values, supports, halves, label))
        body.append(line)
    for j in range(1, len(columns)):
        digits = column_decimals(r[j].support for r in body if r[j].value is not None)
        for r in body:
            c = r[j]
            if c.value is not None:
                half = c.export.get(HALF)
                c.text = fmt(c.value, digits) + (f" ± {fmt(half, digits)}" if half is not None else "")
        for r, mark in zip(body, mark_best([r[j].value for r in body], digits)):
            r[j].mark = mark
    missing = [name for name, key in ((PGD20, pgd), (AUTOATTACK, aa)) if key is None]
    notes = [f"{group.title}. Clean: balanced accuracy (%); BR: Balanced Robustness (mean per-class recall) under "
             "PGD-20 and AutoAttack (AA: the reference, standard version, full budget); Worst: the worst class's "
             "recall, Tail: the tail classes' mean recall, both under the per-example worst case over all attacks. "
             "Mean ± half-width of the 95% interval: Student-t over training seeds, or with one seed a normal "
             "interval over test-set sampling. Bold: a clear best, underlined: a clear second (three or more "
             "rows)."]
    if missing:
        notes.append(f"No column for {' or '.join(missing)}: not evaluated in this group"
                     + (" (AutoAttack counts only at its full budget)." if AUTOATTACK in missing else "."))
    return Table(f"compact-{group.slug}", f"Compact leaderboard · {group.title}", columns, body, notes,
                 kind="compact")


def head_tail_tables(store: ResultStore, group: Group, attack: str | None, rows: list[Row]) -> list[Table]:
    """The per-class table twice: head classes (the larger half by training count) and tail classes."""
    keys = [k for r in rows for k in r.cell_keys]
    record = store.record(keys[0])
    ranked = sorted(range(len(record.classes)), key=lambda c: (-record.train_counts[c], c))
    half = (len(ranked) + 1) // 2
    names = dict(selected_classes(store, keys, False))
    out = []
    for part, members in (("head", ranked[:half]), ("tail", ranked[half:])):
        chosen = [(c, names[c]) for c in sorted(members)]
        table = per_class_table(store, group, attack, False, rows, classes=chosen, part=part)
        keep = [j for j, col in enumerate(table.columns) if col.key not in ("model", "seeds")]  # paper: method only
        table.columns = [table.columns[j] for j in keep]
        table.rows = [[row[j] for j in keep] for row in table.rows]
        table.kind = "compact"
        out.append(table)
    return out


def estimate_width_pt(table: Table) -> float:
    """Width of the LaTeX ``to_latex`` writes for a compact table, in points (an estimate, see above)."""
    total = 0.0
    for j, col in enumerate(table.columns):
        widths = [_text_pt(col.label)]
        for row in table.rows:
            value, _, spread = row[j].text.partition(" ± ")
            widths.append(_text_pt(value) + (_text_pt("±" + spread, "scriptsize") + 1.5 if spread else 0))
        total += max(widths) + 2 * TABCOLSEP_PT
    spans = [(label, n) for label, n in table.group_spans if label]
    return total if not spans else max(total, sum(_text_pt(label) for label, _ in spans))


def _text_pt(text: str, size: str = "small") -> float:
    return 0.5 * EM_PT[size] * len(str(text))


def fits_column(table: Table) -> bool:
    return estimate_width_pt(table) <= COLUMN_WIDTH_PT
