"""The report's figures (matplotlib, Agg backend, PNG files beside the HTML).

Each function draws one figure from the results store's tables into ``path`` and returns it. Figures are
small and plain: they show where a tail class breaks, not decoration.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..store import CLEAN, WORST_CASE  # noqa: E402
from .tables import attack_label  # noqa: E402

DPI = 100
# Names come from results folders: "$a$ vs $b$" must print as written, never as mathtext (which could
# crash the report on a bad expression) or through LaTeX, so math parsing is off in every figure.
STYLE = {"axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
         "font.size": 9, "legend.fontsize": 8, "legend.frameon": False,
         "text.usetex": False, "text.parse_math": False}


def method_colors(labels) -> dict[str, str]:
    """One colour per method label for the whole report, so a method looks the same in every figure."""
    palette = plt.get_cmap("tab10").colors
    return {label: to_hex(palette[i % len(palette)]) for i, label in enumerate(sorted(set(labels)))}


def _color(colors: dict[str, str] | None, label: str) -> str | None:
    return (colors or {}).get(label.split(" [")[0].split(" (")[0])  # "at (τ=1.5)", "at [setting]": at's colour


def epoch_axis(ax, epochs: list) -> None:
    """Integer epoch ticks; a single epoch gets one tick and a one-epoch-wide axis, not matplotlib's
    default ±0.04 around it."""
    ax.xaxis.get_major_locator().set_params(integer=True)
    known = sorted({e for e in epochs if isinstance(e, (int, float))})
    if len(known) == 1:
        ax.set_xlim(known[0] - 0.5, known[0] + 0.5)
        ax.set_xticks(known)


def percent_limits(values, minimum_span: float = 10.0) -> tuple[float, float]:
    """Axis limits (percent) around ``values`` that stay inside [0, 100] and span at least
    ``minimum_span`` points, so one point (one cell) or equal values do not give a hair-thin axis."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return 0.0, 100.0
    low, high = min(finite), max(finite)
    pad = max((minimum_span - (high - low)) / 2, 0.05 * (high - low), 1.0)
    low, high = max(0.0, low - pad), min(100.0, high + pad)
    if high - low < minimum_span:  # pressed against 0 or 100
        low, high = (0.0, minimum_span) if low == 0.0 else (100.0 - minimum_span, 100.0)
    return low, high


def value_limits(values) -> tuple[float, float] | None:
    """Limits for a non-negative quantity (a loss) whose values are all equal (one epoch): 0 to 1.25 × it;
    None (matplotlib's own) otherwise."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    if finite and len(set(finite)) == 1:
        v = finite[0]
        return (0.0, 1.25 * v) if v > 0 else (v - 1.0, v + 1.0)
    return None


def _save(fig, path: Path, tight: bool = True) -> Path:
    if tight:  # the layout solver is most of a figure's cost; fixed-margin figures skip it
        fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})  # no version stamp: rebuilds are byte-identical
    plt.close(fig)
    return path


def per_class_bars(classes: pd.DataFrame, labels: dict[str, str], attack: str, path: Path,
                   colors: dict[str, str] | None = None, attack_name: str | None = None) -> Path:
    """Per-class recall under ``attack`` (mean over seeds), one bar per setting, classes in index order;
    ``attack_name`` is the attack's label (default: from its key)."""
    frame = classes[classes["attack"] == attack]
    names = frame.drop_duplicates("class_index").sort_values("class_index")["class_name"].tolist()
    settings = list(labels)
    means = frame.groupby(["setting", "class_index"])["recall"].mean().unstack()
    width = 0.8 / max(len(settings), 1)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(names) * max(1, len(settings) / 3)), 3.2))
        x = np.arange(len(names))
        for i, setting in enumerate(settings):
            values = means.loc[setting].reindex(range(len(names))).to_numpy() * 100 if setting in means.index \
                else np.full(len(names), np.nan)
            ax.bar(x + (i - (len(settings) - 1) / 2) * width, values, width, label=labels[setting],
                   color=_color(colors, labels[setting]))
        ax.set_xticks(x, names, rotation=90 if len(names) > 12 else 0)
        ax.set_ylim(0, 100)
        ax.set_ylabel(f"recall under {attack_name or attack_label(attack)} (%)")
        ax.set_xlabel("class (index order; training counts fall to the right)")
        ax.legend(ncol=min(4, max(1, len(settings))), loc="lower right", bbox_to_anchor=(1.0, 1.0))
        return _save(fig, path)


def br_vs_ir(cells: pd.DataFrame, path: Path, colors: dict[str, str] | None = None) -> Path:
    """Balanced Robustness under the worst case against imbalance ratio, one line per method and model
    (mean ± std over seeds)."""
    frame = cells[cells["attack"] == WORST_CASE]
    several_models = frame["model"].nunique() > 1
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.0, 3.2))
        for (label, model), sub in frame.groupby(["method_label", "model"], sort=True):
            stats = sub.groupby("imbalance_ratio")["balanced"].agg(["mean", "std"]).sort_index()
            ax.errorbar(stats.index, stats["mean"] * 100, yerr=stats["std"].fillna(0) * 100, marker="o",
                        capsize=3, label=f"{label} · {model}" if several_models else label,
                        color=_color(colors, label) if not several_models else None)
        ax.set_ylim(*percent_limits(frame["balanced"] * 100))
        ax.set_xscale("log")
        irs = sorted(frame["imbalance_ratio"].unique())
        ax.set_xticks(irs, [f"{ir:g}" for ir in irs])
        ax.minorticks_off()
        ax.set_xlabel("imbalance ratio (log scale)")
        ax.set_ylabel("Balanced Robustness, worst case (%)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _save(fig, path)


def clean_vs_robust(cells: pd.DataFrame, labels: dict[str, str], path: Path,
                    colors: dict[str, str] | None = None) -> Path:
    """Balanced accuracy against Balanced Robustness under the worst case: one point per cell (seed)."""
    wide = cells.pivot_table(index=["setting", "cell_key"], columns="attack", values="balanced")
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        if CLEAN in wide and WORST_CASE in wide:
            for setting in labels:  # ranked order, as in the leaderboard
                if setting in wide.index.get_level_values("setting"):
                    sub = wide.xs(setting, level="setting")
                    ax.scatter(sub[CLEAN] * 100, sub[WORST_CASE] * 100, label=labels[setting], s=28,
                               color=_color(colors, labels[setting]))
            ax.set_xlim(*percent_limits(wide[CLEAN] * 100))  # one cell: a readable span, not ±0.04
            ax.set_ylim(*percent_limits(wide[WORST_CASE] * 100))
        ax.set_xlabel("balanced accuracy, clean (%)")
        ax.set_ylabel("Balanced Robustness, worst case (%)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _save(fig, path)


def class_counts(names: list[str], counts: list[int], path: Path, title: str = "") -> Path:
    """Training images per class: the long tail the cells were trained on."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(4.5, 0.35 * len(names)), 2.8))
        ax.bar(range(len(names)), counts, color="#4c72b0")
        ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 12 else 0)
        ax.set_ylabel("training images")
        if title:
            ax.set_title(title)
        return _save(fig, path)


def training_curves(log: list[dict], path: Path) -> Path | None:
    """Training loss per epoch (left); training accuracy and the overall monitoring accuracies, clean and
    robust, on the fixed monitoring subset (right)."""
    if not log:
        return None
    epochs = [entry["epoch"] for entry in log]
    monitors = sorted({k for entry in log for k in entry if k.startswith("monitor_") and k.endswith("_acc")})
    with plt.rc_context(STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 2.8))
        losses = [_num(entry.get("loss")) for entry in log]
        left.plot(epochs, losses, marker="o")
        if value_limits(losses):
            left.set_ylim(*value_limits(losses))
        left.set_xlabel("epoch")
        left.set_ylabel("training loss")
        if any("train_acc" in entry for entry in log):
            right.plot(epochs, [100 * _num(entry.get("train_acc")) for entry in log], marker="s", linestyle="--",
                       label="training batches")
        for key in monitors:
            name = key[len("monitor_"):-len("_acc")]
            right.plot(epochs, [100 * _num(entry.get(key)) for entry in log], marker="o",
                       label=f"monitor: {attack_label(name)}")
        right.set_xlabel("epoch")
        right.set_ylabel("accuracy (%)")
        right.set_ylim(0, 100)
        right.legend()
        for ax in (left, right):
            epoch_axis(ax, epochs)
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.17, top=0.96, wspace=0.25)
        return _save(fig, path, tight=False)


def monitor_per_class(log: list[dict], names: list[str], path: Path) -> Path | None:
    """Per-class robust monitoring accuracy over epochs, one line per class, from ``monitor_per_class_<attack>``
    log entries; None when the log has none (the overall accuracy is in ``training_curves`` then)."""
    keys = sorted({k for entry in log for k in entry
                   if k.startswith("monitor_per_class_") and k != "monitor_per_class_clean"})
    if not keys:
        return None
    key, epochs = keys[0], [entry["epoch"] for entry in log]
    series = np.array([entry.get(key) or [math.nan] * len(names) for entry in log], dtype=float) * 100
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.0, 3.0))
        cmap = plt.get_cmap("viridis", max(series.shape[1], 2))
        for c in range(series.shape[1]):
            ax.plot(epochs, series[:, c], color=cmap(c), marker="o" if len(epochs) <= 12 else None, markersize=3,
                    label=names[c] if c < len(names) else str(c))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{attack_label(key[len('monitor_per_class_'):])} recall (%)")
        ax.set_ylim(0, 100)
        epoch_axis(ax, epochs)
        if series.shape[1] <= 12:
            ax.legend(ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="class (index order)")
        return _save(fig, path)


def confusion_heatmap(matrix: list[list[int]], names: list[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix as an image, for class counts too large for an HTML table."""
    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    with plt.rc_context({**STYLE, "axes.grid": False}):
        size = min(12.0, 3 + 0.05 * len(names))
        fig, ax = plt.subplots(figsize=(size, size))
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
        return _save(fig, path)


def _num(value) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan
