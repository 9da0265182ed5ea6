"""``python -m benchmark.gpu_check``: the project's check on a CUDA machine (``make gpu-check``).

Runs the GPU-marked tests, then the ``gpu-check`` profile (CIFAR ResNet-18 PGD-10 training of
PGD-AT and TAET on synthetic CIFAR-10-shaped data through the real CIFAR loader) in fp32 and in bf16,
and prints one summary: seconds and images/s per training epoch, peak memory, evaluation seconds,
and whether our PGD-20 and torchattacks' agree. Numbers on synthetic data measure speed, not robustness.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/gpu-check", help="where results and summary.json go")
    parser.add_argument("--skip-tests", action="store_true")
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
    rows = summarize(out / "none") + summarize(out / "bf16")
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    print(json.dumps(rows, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
