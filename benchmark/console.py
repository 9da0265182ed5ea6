"""Plain-text tables for the terminal: one cell's per-class recall, and the grid at a glance."""
from __future__ import annotations

import numpy as np


def format_cell_table(metrics: dict) -> str:
    """Per-class clean and attacked recall (%) of one cell, one row per attack, as plain text."""
    data, ev = metrics["data"], metrics["evaluation"]
    width = 8  # class names are cut to 7 characters so columns stay apart
    label = max(14, *(len(name) + 2 for name in ev["attacks"]))
    names = "".join(f"{str(c)[:width - 1]:>{width}}" for c in data["classes"])
    subsets = [f"{name} on {m['examples']}" for name, m in ev["attacks"].items()
               if m.get("examples", data["eval_examples"]) != data["eval_examples"]]
    lines = [f"{metrics['cell_key']}  (test split: {data['test_split']}, {data['eval_examples']} examples"
             + (f"; {', '.join(subsets)}" if subsets else "") + ")",
             f"{'':<{label}}{names}{'mean':>9}{'acc':>8}",
             f"{'train count':<{label}}" + "".join(f"{n:>{width}}" for n in data["train_counts"])]
    for attack, m in ev["attacks"].items():
        cells = "".join(f"{'-' if r is None else f'{100 * r:.1f}':>{width}}" for r in m["per_class_recall"])
        lines.append(f"{attack:<{label}}{cells}{_pct(m['balanced'], 9)}{_pct(m['accuracy'], 8)}")
    lines.append("mean = balanced accuracy (clean) / Balanced Robustness (attacks); acc = plain accuracy")
    lines += [f"AUDIT: {flag}" for flag in metrics.get("audit", {}).get("flags", [])]
    return "\n".join(lines)


def _pct(value: float | None, width: int) -> str:
    return f"{'-' if value is None else f'{100 * value:.1f}':>{width}}"


def format_grid_summary(all_metrics: list[dict]) -> str:
    """The grid at a glance: one row per cell, then worst-case Balanced Robustness per method × IR
    (mean ± std over seeds, with the number of seeds)."""
    lines = [f"{'method':<14}{'IR':>6}{'seed':>6}{'bal.acc':>9}{'BR worst':>10}  flags"]
    table: dict[str, dict[float, list[float]]] = {}
    for m in all_metrics:
        attacks = m["evaluation"]["attacks"]
        robust = attacks.get("worst_case", attacks["clean"])["balanced"]
        flags = len(m.get("audit", {}).get("flags", []))
        method, ir = m["config"]["method"], float(m["data"]["imbalance_ratio"])
        lines.append(f"{method:<14}{ir:>6g}{m['seeds']['training']:>6}"
                     f"{_pct(attacks['clean']['balanced'], 9)}{_pct(robust, 10)}  {flags or '-'}")
        if robust is not None:
            table.setdefault(method, {}).setdefault(ir, []).append(100 * robust)
    lines.append("BR worst = Balanced Robustness under the per-example worst case over all attacks (%)")
    irs = sorted({ir for row in table.values() for ir in row})
    lines += ["", "BR worst per method x IR (mean ± std over seeds, n seeds)",
              f"{'method':<14}" + "".join(f"{'IR ' + format(ir, 'g'):>20}" for ir in irs)]
    for method, row in table.items():
        cells = []
        for ir in irs:
            values = row.get(ir)
            if not values:
                cells.append(f"{'-':>20}")
                continue
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            cells.append(f"{f'{np.mean(values):.1f} ± {std:.1f} (n={len(values)})':>20}")
        lines.append(f"{method:<14}" + "".join(cells))
    return "\n".join(lines)


def format_failed_cell(record: dict) -> str:
    """One line for a ``failed`` cell: its key, stage, epoch and step, and cause."""
    f = record.get("failure") or {}
    where = ", ".join(f"{k} {f[k]}" for k in ("epoch", "step") if f.get(k) is not None)
    return (f"FAILED {record.get('cell_key', '?')}: {f.get('stage', '?')}" + (f" ({where})" if where else "")
            + f": {f.get('cause', 'no cause recorded')}")


def format_failed_summary(records: list[dict], retry_command: str = "python -m benchmark ... --retry-failed") -> str:
    """The end of a grid with failed cells: one line each and how to run them again."""
    lines = [f"{len(records)} cell(s) failed:"] + [f"  {format_failed_cell(r)}" for r in records]
    lines.append(f"fix the cause, then run them again with: {retry_command} (a failed cell is never retried "
                 "without it)")
    return "\n".join(lines)
