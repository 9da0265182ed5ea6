"""Every report table also as CSV (numbers, for pandas), Markdown (for issues and READMEs) and LaTeX
(booktabs, for papers; best in \\textbf, second best in \\underline, as on the page)."""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from .tables import Table

EXPORT_FORMATS = ("csv", "md", "tex")


def header(col) -> str:
    return f"{col.group} {col.label}".strip() if col.group else col.label


def to_frame(table: Table) -> pd.DataFrame:
    """Numbers as they are (percent for recalls), with ``<column> std``, ``<column> ci95 low/high`` and
    ``<column> <key>`` for each of a cell's ``export`` fields (a paired test's name, n, b, c) beside any
    column that has them."""
    data: dict[str, list] = {}
    for j, col in enumerate(table.columns):
        cells = [row[j] for row in table.rows]
        data[header(col)] = [c.value for c in cells]
        if any(c.std is not None for c in cells):
            data[f"{header(col)} std"] = [c.std for c in cells]
        if any(c.interval is not None for c in cells):
            data[f"{header(col)} ci95 low"] = [c.interval[0] if c.interval else None for c in cells]
            data[f"{header(col)} ci95 high"] = [c.interval[1] if c.interval else None for c in cells]
        for key in dict.fromkeys(k for c in cells for k in c.export):  # test name, n, ... (see Cell.export)
            data[f"{header(col)} {key}"] = [c.export.get(key) for c in cells]
    return pd.DataFrame(data, columns=list(data))


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value):
    """A string a spreadsheet would run as a formula (leading ``=``, ``+``, ``-``, ``@``, tab or CR) gets a
    leading ``'``, so it opens as text; numbers, and strings that are just a number such as ``-0.25``,
    stay as they are. Names in a table come from results folders, which anyone may have written."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_STARTS):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def to_csv(table: Table) -> str:
    """The table as CSV, formulas neutralized (``csv_safe``) in headers and text cells; numbers untouched."""
    frame = to_frame(table)
    frame.columns = [csv_safe(c) for c in frame.columns]
    for j in range(frame.shape[1]):
        if not pd.api.types.is_numeric_dtype(frame.dtypes.iloc[j]):  # text (object or string dtype)
            frame.iloc[:, j] = frame.iloc[:, j].map(csv_safe)
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(table: Table) -> str:
    marks = {"best": "**{}**", "second": "<u>{}</u>", "": "{}"}
    heads = [_md_escape(f"{c.group}: {c.label}" if c.group else c.label) for c in table.columns]
    lines = [f"**{_md_escape(table.title)}**", "", "| " + " | ".join(heads) + " |",
             "|" + "|".join("---:" if c.numeric else ":---" for c in table.columns) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join(marks[c.mark].format(_md_escape(c.text)) for c in row) + " |")
    lines += [""] + [f"{_md_escape(n)}  " for n in table.notes]
    return "\n".join(lines).rstrip() + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "—": "--", "–": "--", "ε": r"$\varepsilon$", "∞": r"$\infty$",
                  "·": r"$\cdot$", "≈": r"$\approx$", "×": r"$\times$", "<": r"\textless{}", ">": r"\textgreater{}"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return "".join(_LATEX_SYMBOLS.get(ch, ch) for ch in out)


_LATEX_MARKS = {"best": r"\textbf{%s}", "second": r"\underline{%s}", "": "%s"}


def _latex_header(table: Table) -> list[str]:
    r"""The column-group row with its rules (when the table has groups), the column labels and ``\midrule``."""
    lines = []
    if table.has_groups:
        spans, rules, start = [], [], 1
        for label, n in table.group_spans:
            spans.append(rf"\multicolumn{{{n}}}{{c}}{{{latex_escape(label)}}}" if label else " & ".join([""] * n))
            if label:
                rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
            start += n
        lines += [" & ".join(spans) + r" \\", " ".join(rules)]
    return lines + [" & ".join(latex_escape(c.label) for c in table.columns) + r" \\", r"\midrule"]


def to_latex(table: Table) -> str:
    if table.kind == "compact":
        return to_latex_float(table)
    lines = [f"% {latex_escape(table.title)}"] + [f"% {latex_escape(n)}" for n in table.notes]
    lines += [r"% needs \usepackage{booktabs}",
              r"\begin{tabular}{" + "".join("r" if c.numeric else "l" for c in table.columns) + "}", r"\toprule"]
    lines += _latex_header(table)
    for row in table.rows:
        lines.append(" & ".join(_LATEX_MARKS[c.mark] % latex_escape(c.text) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _latex_number(cell) -> str:
    r"""``58.6 ± 1.4`` as ``58.6\,{\scriptsize$\pm$1.4}``, the mark on the value only."""
    value, _, spread = cell.text.partition(" ± ")
    text = _LATEX_MARKS[cell.mark] % latex_escape(value)
    return text + (rf"\,{{\scriptsize$\pm${latex_escape(spread)}}}" if spread else "")


def to_latex_float(table: Table) -> str:
    r"""A paper table (``paper.py``): a ``table`` float sized for one column of a two-column paper, or
    ``table*`` when its estimated width (``paper.estimate_width_pt``) exceeds ``\columnwidth``."""
    from .paper import COLUMN_WIDTH_PT, estimate_width_pt

    width = estimate_width_pt(table)
    env = "table" if width <= COLUMN_WIDTH_PT else "table*"
    lines = [f"% {latex_escape(table.title)}"] + [f"% {latex_escape(n)}" for n in table.notes]
    lines += [f"% estimated width {width:.0f} pt (\\columnwidth of a two-column paper: about "
              f"{COLUMN_WIDTH_PT:.0f} pt): {'one column' if env == 'table' else 'both columns (table*)'}",
              r"% needs \usepackage{booktabs}", rf"\begin{{{env}}}[t]", r"\centering", r"\small",
              r"\setlength{\tabcolsep}{3pt}",
              r"\begin{tabular}{" + "".join("r" if c.numeric else "l" for c in table.columns) + "}", r"\toprule"]
    lines += _latex_header(table)
    for row in table.rows:
        lines.append(" & ".join(_latex_number(c) if col.numeric else latex_escape(c.text)
                                for c, col in zip(row, table.columns)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{latex_escape(table.title)}}}",
              rf"\label{{tab:{table.slug}}}", rf"\end{{{env}}}"]
    return "\n".join(lines) + "\n"


def write_exports(table: Table, folder: Path) -> dict[str, str]:
    """Write <slug>.csv/.md/.tex into ``folder``; return format -> file name."""
    writers = {"csv": to_csv, "md": to_markdown, "tex": to_latex}
    names = {}
    for fmt in EXPORT_FORMATS:
        name = f"{table.slug}.{fmt}"
        (folder / name).write_text(writers[fmt](table), encoding="utf-8")
        names[fmt] = name
    return names
