"""The tiny 4-cell grid the cluster tests run (at and taet x IR 10 and 20, one epoch) and its helpers."""
from __future__ import annotations

import contextlib
import io

import yaml

from benchmark.config import expand_grid
from benchmark.executors import run_grid
from toys import TINY_PROFILE

GRID = {"methods": ["at", "taet"], "imbalance_ratios": [10, 20], "seeds": [0], "epochs": 1}


def grid_plans(**changes):
    """The grid's plans resolved for CPU workers (``changes`` override the grid's settings)."""
    return [cfg.resolve("cpu") for cfg in expand_grid({**yaml.safe_load(TINY_PROFILE), **GRID, **changes})]


def quiet_grid(plans, results, executor=None):
    """``run_grid`` without progress or tables: (metrics per cell, what it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        metrics = run_grid(plans, results, progress=False, quiet=True, executor=executor)
    return metrics, out.getvalue()


def per_class(metrics: dict) -> dict:
    return {name: a["per_class_correct"] for name, a in metrics["evaluation"]["attacks"].items()}
