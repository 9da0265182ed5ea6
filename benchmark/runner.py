"""Runs cells: one cell = train one method on one long-tailed dataset with one seed, then evaluate.

A cell's folder (``results/<key>``) holds ``config.yaml``, ``indices.json``, ``log.jsonl``, the
checkpoint and, once finished, ``metrics.json``. A finished cell is skipped unless forced (and a
forced re-run moves the old files aside, never overwrites them); an unfinished one resumes.
"""
from __future__ import annotations

import datetime as dt
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from methods import create_method
from .audit import build_audit, zero_gradient_fraction
from .config import Config
from .data.datasets import NATURALLY_IMBALANCED
from .data.prepare import evaluation_subset, prepare_cell_data
from .evaluate import InferenceModel, evaluate
from .metrics import summarize_evaluation
from .models import create_model
from .atomic import save_npz_atomic, write_json_atomic, write_text_atomic
from .cell import (CONFIG_FILE, EVAL_PROGRESS_DIR, INDICES_FILE, PREDICTIONS_FILE, SUPERSEDED_DIR, CellRecord,
                   cell_status, read_record, write_record)
from .provenance import cpu_name, harness_commit, package_versions, peak_rss_mb
from .train import pick_device, seed_everything, train

def _set_aside(cell_dir: Path) -> Path:
    """Move a cell's files into ``superseded/<time>/`` before a forced re-run (never overwrite results)."""
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    target, n = cell_dir / SUPERSEDED_DIR / stamp, 1
    while target.exists():
        n += 1
        target = cell_dir / SUPERSEDED_DIR / f"{stamp}-{n}"
    target.mkdir(parents=True)
    for item in list(cell_dir.iterdir()):
        if item.name != SUPERSEDED_DIR:
            shutil.move(str(item), target / item.name)
    return target


def outside_worst_case(specs: list, eps: float) -> tuple[str, ...]:
    """Attacks scored but left out of the worst case: those at another ε than the cell's (TAET's notebook
    tests at 8/255 after training at 0.031), and torchattacks' AutoAttack, a cross-check of the reference
    that the audit compares per class; run on a smaller subset, it would otherwise shrink the examples the
    worst case (the ranking number) is taken on to its own."""
    return tuple(s.name for s in specs if s.eps != eps or s.kind == "torchattacks_autoattack")


def run_cell(cfg: Config, results_dir: Path, force: bool = False, progress: bool = True) -> dict:
    """Train (or resume) and evaluate one cell; return its metrics (read back if already finished)."""
    cell_dir = Path(results_dir) / cfg.key()
    status = cell_status(cell_dir)
    if status == "done" and not force:
        return read_record(cell_dir).to_json()
    if force and status != "new":  # a forced run starts over, finished or not
        moved = _set_aside(cell_dir)
        print(f"--force: previous files of {cell_dir.name} moved to {moved}", file=sys.stderr)
    cell_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cell_dir / CONFIG_FILE, yaml.safe_dump(cfg.resolved(), sort_keys=False))

    device = pick_device(cfg.device)
    data = prepare_cell_data(cfg)
    write_json_atomic(cell_dir / INDICES_FILE, {
        "train_indices": data.train_indices.tolist(),
        "test_indices": data.test_indices.tolist() if data.test_indices is not None else None,
        "val_indices": data.val_indices.tolist() if data.val_indices is not None else None,
        "subset_seed": cfg.subset_seed})
    seed_everything(cfg.seed)
    method = create_method(cfg.method, **cfg.method_args)
    model = method.wrap_model(create_model(cfg.model, data.num_classes, data.in_channels, **cfg.model_args))
    cost = train(cfg, data, method, model, cell_dir, device, progress=progress)

    x_eval, y_eval, eval_idx = evaluation_subset(cfg, data)
    started = time.perf_counter()
    inference, attack_specs = InferenceModel(model, method), cfg.eval_attack_specs()
    result = evaluate(inference, x_eval, y_eval, attack_specs, cfg.eval_batch_size, device, seed=cfg.seed,
                      progress=progress, num_classes=data.num_classes, progress_dir=cell_dir / EVAL_PROGRESS_DIR)
    audit = build_audit(y_eval.numpy(), result["predictions"], attack_specs, result["records"], data.num_classes,
                        zero_gradient_fraction(inference, x_eval, y_eval, cfg.eval_batch_size, device))
    cost["eval_seconds"] = time.perf_counter() - started
    cost["method_extra_parameters"] = int(getattr(method, "extra_parameters", 0))  # e.g. LAS-AT's policy network
    if device.type == "cuda":
        cost["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        cost["device_name"] = torch.cuda.get_device_name(device)
    else:
        cost["device_name"] = cpu_name()
    cost["peak_rss_mb"] = peak_rss_mb()
    cost["harness_commit"] = harness_commit()
    save_npz_atomic(cell_dir / PREDICTIONS_FILE, y=y_eval.numpy(),
                    eval_indices=np.arange(len(y_eval)) if eval_idx is None else eval_idx,
                    **{f"pred_{name}": pred for name, pred in result["predictions"].items()})
    summary = summarize_evaluation(y_eval.numpy(), result["predictions"], data.num_classes, data.train_counts,
                                   outside_worst_case=outside_worst_case(attack_specs, cfg.eps_value))
    record = CellRecord(
        cell_key=cell_dir.name,
        finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        method={"name": method.name, "preset": cfg.method_preset, "hparams": method.hparams},
        data={"dataset": data.name, "classes": data.classes, "imbalance_ratio": cfg.imbalance_ratio,
              "subset_seed": cfg.subset_seed, "train_counts": data.train_counts,
              "train_size": int(sum(data.train_counts)),
              "test_split": "natural" if data.name in NATURALLY_IMBALANCED else cfg.test_split,
              "balanced_robustness_equals_robust_accuracy": len(set(summary["test_support"]) - {0}) <= 1,
              "eval_examples": int(len(y_eval)),
              "eval_subset": "all" if eval_idx is None else f"{cfg.eval_per_class} per class, seed 0"},
        seeds={"training": cfg.seed, "subset": cfg.subset_seed, "eval_attack_start": cfg.seed},
        evaluation={**summary, "attack_records": result["records"]},
        model_selection=cost.pop("model_selection"),
        method_diagnostics=cost.pop("method_diagnostics", None) or None,  # TAET: its plateau
        audit=audit,
        cost=cost,
        config=cfg.resolved(),
        versions=package_versions(),
    )
    write_record(cell_dir, record)
    shutil.rmtree(cell_dir / EVAL_PROGRESS_DIR, ignore_errors=True)  # partial attack results, now in predictions.npz
    return record.to_json()


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


def run_grid(cells: list[Config], results_dir: Path, force: bool = False, progress: bool = True,
             quiet: bool = False, devices: list[str] | None = None) -> list[dict]:
    """Run every cell (skipping finished ones) with the local or per-device executor; print each cell's
    per-class table as it finishes (unless quiet), then the grid summary."""
    from .executors import make_executor

    unique = list({cfg.key(): cfg for cfg in cells}.values())  # the same cell twice would run twice at once

    def report(metrics: dict) -> None:
        if not quiet:
            print(format_cell_table(metrics), flush=True)

    out = make_executor(devices).run(unique, Path(results_dir), force, progress and not quiet, report)
    if len(out) > 1:
        print(format_grid_summary(out), flush=True)
    return out
