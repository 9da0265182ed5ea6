"""``python -m benchmark.tools.gpu_check``: the project's check on a CUDA machine (``make gpu-check``).

Runs the GPU-marked tests, then the ``gpu-check`` profile (CIFAR ResNet-18 PGD-10 training of
PGD-AT and TAET on synthetic CIFAR-10-shaped data through the real CIFAR loader) in fp32 and in bf16,
and prints one summary: seconds and images/s per training epoch, peak memory, evaluation seconds,
and whether our PGD-20 and torchattacks' agree. Numbers on synthetic data measure speed, not robustness.
Then ``benchmark.tools.perf`` (CIFAR ResNet-18 PGD-10 AT: naive loop vs our fast path, PGD-20 evaluation) and
the authors' AutoAttack (standard, n_classes=10, seed=0; per-stage seconds) on 200 synthetic test images
of the trained fp32 PGD-AT cell (on a non-robust model the cascade ends after APGD-CE, so this times
little of the real cost), each in a subprocess with a time limit: a failure shows in the summary, not as a crash.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


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


def timed_step(command: list[str], out_json: Path, timeout: float) -> dict:
    """Run one step of the check in a subprocess that writes ``out_json``; its record, or {"error": why}."""
    try:
        code = subprocess.call(command, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    except OSError as err:
        return {"error": f"could not start: {err}"}
    if code != 0:
        return {"error": f"exit code {code}"}
    try:
        return json.loads(out_json.read_text())
    except (OSError, ValueError) as err:
        return {"error": f"no readable {out_json.name}: {err}"}


def perf_summary(record: dict) -> dict:
    """The lines of a ``benchmark.tools.perf`` record worth a glance: images/s, s/epoch, % of peak, memory, ratio."""
    if "error" in record:
        return record
    keep = ("images_per_s", "epoch_seconds", "achieved_tflops", "percent_of_peak", "peak_memory_mb")
    out = {"device": record["device"], "fast_settings": record["fast"]["settings"],
           "speedup_fast_over_naive": round(record["speedup"], 2)}
    for path in ("naive", "fast", "fast_fp32", "eval_pgd"):
        if path in record:
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
    parser.add_argument("--perf-compile", action="store_true", help="also time the fast path with torch.compile")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible; nothing to check here", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}", flush=True)
    status = 0
    if not args.skip_tests:
        status = subprocess.call([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"])
    from .synthetic import write_synthetic_cifar10

    out = Path(args.out)
    with tempfile.TemporaryDirectory() as data_root:
        write_synthetic_cifar10(Path(data_root))
        for amp in ("none", "bf16"):
            status |= subprocess.call([sys.executable, "-m", "benchmark", "--profile", "gpu-check", "--device", "cuda",
                                       "--amp", amp, "--data-root", data_root, "--results", str(out / amp),
                                       "--no-progress"])
        timings = {}
        if not args.skip_perf:
            perf = [sys.executable, "-m", "benchmark.tools.perf"]
            timings["perf"] = perf_summary(timed_step(perf + ["--out", str(out / "perf.json")], out / "perf.json", 240))
            if args.perf_compile:
                timings["perf_compile"] = perf_summary(timed_step(
                    perf + ["--compile", "--no-fast-fp32", "--out", str(out / "perf-compile.json")],
                    out / "perf-compile.json", 300))
            cell = at_cell(out / "none")
            timings["autoattack"] = {"error": "no finished fp32 PGD-AT cell to attack"} if cell is None else timed_step(
                perf + ["--autoattack-from", str(cell), "--data-root", data_root, "--autoattack-images", "200",
                        "--out", str(out / "autoattack.json")], out / "autoattack.json", 240)
            status |= int(any("error" in record for record in timings.values()))
    try:
        rows = summarize(out / "none") + summarize(out / "bf16")
    except (OSError, KeyError, ValueError) as err:
        rows, status = [{"error": f"summarize: {err!r}"}], 1
    summary = {"cells": rows, **timings}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
