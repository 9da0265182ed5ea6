"""``python -m benchmark.tools.gpu_check``: the project's check on a CUDA machine (``make gpu-check``).

Runs the GPU-marked tests, then the ``gpu-check`` profile (CIFAR ResNet-18 PGD-10 training of
PGD-AT and TAET on synthetic CIFAR-10-shaped data through the real CIFAR loader) in fp32 and in bf16,
and prints one summary: seconds and images/s per training epoch, peak memory, evaluation seconds,
and whether our PGD-20 and torchattacks' agree. Numbers on synthetic data measure speed, not robustness.
Then ``benchmark.tools.perf`` (CIFAR ResNet-18 PGD-10 AT in interleaved windows: the naive loop, a fair
reference loop, our fast path, the captured step and its loss check against the eager one, host syncs per step of every method, PGD-20 evaluation) and the authors'
AutoAttack (standard, n_classes=10, seed=0; per-stage seconds and survivors) on 200 synthetic test images of
the fp32 PGD-AT cell the check has just trained (3 epochs of PGD-10 AT on the synthetic templates: robust
at 8/255, so the cascade goes past APGD-CE; the summary says how many images each stage still had to attack,
and the time for 10,000 images is given only as a labelled extrapolation). Every stage runs in a subprocess
with a time limit (``--budget-s`` in all, 480 s by default, shared out in STAGE_SHARES): a failure or a
timeout shows in the summary block, not as a crash.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# Share of the time budget each stage may take (they run in this order; a stage that ends early leaves its time
# to none of the others: each limit is fixed up front, so the whole check ends within the budget).
STAGE_SHARES = {"tests": 0.15, "train_none": 0.20, "train_bf16": 0.20, "perf": 0.25, "autoattack": 0.20}
AUTOATTACK_IMAGES = 200


def summarize(results: Path) -> list[dict]:
    rows = []
    for metrics_path in sorted(results.glob("*/metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        log = [json.loads(line) for line in (metrics_path.parent / "log.jsonl").read_text().splitlines()]
        attacks = metrics["evaluation"]["attacks"]
        predictions = np.load(metrics_path.parent / "predictions.npz")
        y, ours, theirs = predictions["y"], predictions["pred_pgd20_nostart"], predictions["pred_ta_pgd20_nostart"]
        rows.append({
            "cell": metrics["cell_key"], "amp": metrics["config"]["amp"],
            "speed": {k: metrics["config"].get(k) for k in ("channels_last", "cudnn_benchmark", "torch_compile")},
            "epoch_seconds": [round(r["seconds"], 2) for r in log],
            "images_per_s": [round(r["examples"] / r["seconds"]) for r in log],
            "peak_memory_mb": round(metrics["cost"].get("peak_memory_mb", 0)),
            "eval_seconds": {k: round(v["seconds"], 2) for k, v in metrics["evaluation"]["attack_records"].items()},
            "clean_acc": attacks["clean"]["accuracy"], "pgd20_acc": attacks["pgd20"]["accuracy"],
            "ours_vs_torchattacks_pgd20_acc": [attacks["pgd20_nostart"]["accuracy"],
                                               attacks["ta_pgd20_nostart"]["accuracy"]],
            # robust-or-not differs (what accuracy counts) / the predicted label differs (also among wrong labels)
            "ours_vs_torchattacks_correctness_disagreements": int(((ours == y) != (theirs == y)).sum()),
            "ours_vs_torchattacks_label_disagreements": int((ours != theirs).sum()),
        })
    return rows


def timed_step(command: list[str], out_json: Path | None, timeout: float) -> dict:
    """Run one step of the check in a subprocess with a time limit; its ``out_json`` record (or {} when it
    writes none), or {"error": why}."""
    try:
        code = subprocess.call(command, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    except OSError as err:
        return {"error": f"could not start: {err}"}
    if code != 0:
        return {"error": f"exit code {code}"}
    if out_json is None:
        return {}
    try:
        return json.loads(out_json.read_text())
    except (OSError, ValueError) as err:
        return {"error": f"no readable {out_json.name}: {err}"}


def autoattack_summary(record: dict, full: int = 10_000) -> dict:
    """Per-stage seconds and the images each stage still attacked, and the time for ``full`` images as a
    labelled linear extrapolation (a robust model keeps more survivors, so it costs more per image)."""
    if "error" in record:
        return record
    attacked = [record["images"], *record["robust_after_stage"][:-1]]  # stage k attacks stage k-1's survivors
    per_image = record["seconds"] / record["images"]
    return {"images": record["images"], "seconds": round(record["seconds"], 1),
            "clean_accuracy": record["clean_accuracy"], "robust_accuracy": record["robust_accuracy"],
            "stages": [{"stage": name, "seconds": round(sec, 1), "attacked": n, "survivors": left}
                       for name, sec, n, left in zip(record["stages"], record["stage_seconds"], attacked,
                                                     record["robust_after_stage"])],
            "went_past_apgd_ce": len(record["robust_after_stage"]) > 1 and record["robust_after_stage"][0] > 0,
            f"extrapolated_seconds_for_{full}_images": round(per_image * full),
            "extrapolation_note": f"linear in images from {record['images']}: an extrapolation, not a measurement"}


def format_summary(summary: dict) -> str:
    """The one block the check ends with: device, stages (seconds or error), training, perf, AutoAttack."""
    lines = ["==================== gpu-check summary ====================", summary.get("device", "?")]
    for name, stage in summary.get("stages", {}).items():
        lines.append(f"stage {name:<11} {stage.get('error') or 'ok'} ({stage['seconds']:.0f} s of {stage['limit_s']:.0f})")
    for row in summary.get("cells", []):
        if "error" in row:
            lines.append(f"cells: {row['error']}")
            continue
        lines.append(f"train {row['cell'][:40]:<40} amp {row['amp']:<4} {row['images_per_s'][-1]:>6} img/s  "
                     f"peak {row['peak_memory_mb']} MB  clean {row['clean_acc']:.3f}  pgd20 {row['pgd20_acc']:.3f}")
    perf = summary.get("perf") or {}
    if "error" in perf:
        lines.append(f"perf: {perf['error']}")
    elif perf:
        for path in [*perf.get("paths", []), "eval_pgd", "eval_pgd_captured"]:
            if path in perf:
                r = perf[path]
                ratios = perf.get("ratios", {}).get(path, {})
                lines.append(f"perf {path:<17} {r.get('images_per_s')} img/s (windows {r.get('images_per_s_min', '-')}-"
                             f"{r.get('images_per_s_max', '-')})  {r.get('epoch_seconds', '-')} s/epoch  "
                             f"{r.get('percent_of_peak')} % of peak  {r.get('peak_memory_mb')} MB  "
                             f"x naive {ratios.get('vs_naive', '-')}  x fair {ratios.get('vs_fair', '-')}")
        lines.append(f"perf fast/naive {perf.get('speedup_fast_over_naive')}x  captured/naive "
                     f"{perf.get('speedup_captured_over_naive')}x  captured vs eager loss: {perf.get('captured_check')}")
        if "eval_captured_speedup" in perf:
            lines.append(f"perf eval captured/eager {perf['eval_captured_speedup']}x  robust accuracy eager vs "
                         f"captured: {perf.get('eval_robust_accuracy_eager_vs_captured')}")
        lines.append(f"host syncs per step: {perf.get('host_syncs')}")
    aa = summary.get("autoattack") or {}
    if "error" in aa:
        lines.append(f"autoattack: {aa['error']}")
    elif aa:
        lines.append(f"autoattack {aa['images']} images {aa['seconds']} s  clean {aa['clean_accuracy']:.3f}  "
                     f"robust {aa['robust_accuracy']:.3f}  past APGD-CE: {aa['went_past_apgd_ce']}")
        for stage in aa["stages"]:
            lines.append(f"  {stage['stage']:<8} {stage['seconds']:>7} s  attacked {stage['attacked']:>4}  "
                         f"left {stage['survivors']:>4}")
        key = next(k for k in aa if k.startswith("extrapolated_seconds_for_"))
        lines.append(f"  {key.replace('_', ' ')}: {aa[key]} ({aa['extrapolation_note']})")
    lines.append("===========================================================")
    return "\n".join(lines)


def perf_summary(record: dict) -> dict:
    """The lines of a ``benchmark.tools.perf`` record worth a glance: images/s, s/epoch, % of peak, memory, ratio."""
    if "error" in record:
        return record
    keep = ("images_per_s", "images_per_s_min", "images_per_s_max", "epoch_seconds", "achieved_tflops",
            "percent_of_peak", "peak_memory_mb")
    paths = record.get("paths", [])
    out = {"device": record["device"], "paths": paths,
           "fast_settings": record["fast"]["settings"] if "settings" in record.get("fast", {}) else None,
           "speedup_fast_over_naive": None if record.get("speedup") is None else round(record["speedup"], 2),
           "ratios": {path: {k: None if v is None else round(v, 2) for k, v in r.items()}
                      for path, r in record.get("ratios", {}).items()}}
    if "captured_speedup" in record:
        out["speedup_captured_over_naive"] = round(record["captured_speedup"], 2)
        check = record["captured_check"]
        out["captured_check"] = {"matches": check["matches"], "max_relative_difference": check["max_relative_difference"],
                                 "steps": check["steps"]}
    out["host_syncs"] = {name: r["syncs"] for name, r in record.get("host_syncs", {}).items()}
    if "eval_captured_speedup" in record:
        out["eval_captured_speedup"] = round(record["eval_captured_speedup"], 2)
        out["eval_robust_accuracy_eager_vs_captured"] = [record["eval_pgd"].get("robust_accuracy"),
                                                         record["eval_pgd_captured"].get("robust_accuracy")]
    keep = (*keep, "robust_accuracy")
    for path in [*paths, "eval_pgd", "eval_pgd_captured"]:
        if path in record and "skipped" not in record[path]:
            out[path] = {k: None if record[path].get(k) is None else round(record[path][k], 2)
                         for k in keep if k in record[path]}
    return out


def at_cell(results: Path) -> Path | None:
    """The finished PGD-AT cell under ``results`` (its checkpoint is what AutoAttack is timed on)."""
    for metrics_path in sorted(results.glob("*/metrics.json")):
        if json.loads(metrics_path.read_text())["method"]["name"] == "at":
            return metrics_path.parent
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/gpu-check", help="where results and summary.json go")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-perf", action="store_true", help="skip the perf and AutoAttack timings")
    parser.add_argument("--perf-compile", action="store_true", help="also time the fast and captured paths with the model compiled (adds the compile time to the perf stage)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="time limit of the whole check in seconds, shared out over its stages (default 480)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible; nothing to check here", file=sys.stderr)
        return 2
    device = f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    print(device, flush=True)
    limits = {name: share * args.budget_s for name, share in STAGE_SHARES.items()}
    stages: dict[str, dict] = {}

    def stage(name: str, command: list[str], out_json: Path | None = None, limit: float | None = None) -> dict:
        limit = limits[name] if limit is None else limit
        started = time.perf_counter()
        record = timed_step(command, out_json, limit)
        stages[name] = {"seconds": time.perf_counter() - started, "limit_s": limit, "error": record.get("error")}
        return record

    if not args.skip_tests:
        stage("tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"])
    from .synthetic import write_synthetic_cifar10

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    with tempfile.TemporaryDirectory() as data_root:
        write_synthetic_cifar10(Path(data_root))
        for amp in ("none", "bf16"):
            stage(f"train_{amp}", [sys.executable, "-m", "benchmark", "--profile", "gpu-check", "--device", "cuda",
                                   "--amp", amp, "--data-root", data_root, "--results", str(out / amp),
                                   "--no-progress"])
        if not args.skip_perf:
            perf = [sys.executable, "-m", "benchmark.tools.perf"]
            compiled = ["--compile"] if args.perf_compile else []
            timings["perf"] = perf_summary(stage("perf", perf + compiled + ["--out", str(out / "perf.json")],
                                                 out / "perf.json"))
            cell = at_cell(out / "none")  # the PGD-AT model this check trained: robust on the synthetic data
            timings["autoattack"] = {"error": "no finished fp32 PGD-AT cell to attack"} if cell is None else \
                autoattack_summary(stage("autoattack", perf + [
                    "--autoattack-from", str(cell), "--data-root", data_root, "--autoattack-images",
                    str(AUTOATTACK_IMAGES), "--out", str(out / "autoattack.json")], out / "autoattack.json"))
    try:
        rows = summarize(out / "none") + summarize(out / "bf16")
    except (OSError, KeyError, ValueError) as err:
        rows = [{"error": f"summarize: {err!r}"}]
    summary = {"device": device, "stages": stages, "cells": rows, **timings}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary), flush=True)
    failed = any(s["error"] for s in stages.values()) or any("error" in r for r in [*rows, *timings.values()])
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
