"""The reference AutoAttack of finished cells next to torchattacks' own AutoAttack class at its defaults.

For each cell under RESULTS that ran ``kind: autoattack`` (the authors' package at its standard budgets),
rebuild the model from its checkpoint, take the very examples AutoAttack ran on (the cell's class-stratified
subset), run torchattacks' ``AutoAttack(version="standard")`` with its default budgets (10 iterations per
APGD/FAB stage; n_classes and seed set), and print per class the robust counts of both next to each other,
with the seconds each took. A closing-note tool, not part of the pipeline.

    python scripts/compare_autoattack.py results [--out comparison.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.data import to_float  # noqa: E402
from benchmark.data.loader import stratified_subset  # noqa: E402
from benchmark.data.prepare import evaluation_subset  # noqa: E402
from benchmark.tools.perf import load_cell_model  # noqa: E402


def compare(cell_dir: Path) -> dict | None:
    import torchattacks

    metrics = json.loads((cell_dir / "metrics.json").read_text())
    records = metrics["evaluation"]["attack_records"]
    name = next((n for n, r in records.items() if (r.get("spec") or {}).get("kind") == "autoattack"
                 and r["spec"].get("version") == "standard" and r.get("cascade")), None)
    if name is None:
        return None
    record, spec = records[name], records[name]["spec"]
    model, cfg, data, _ = load_cell_model(cell_dir, torch.device("cpu"))
    x_eval, y_eval, _ = evaluation_subset(cfg, data)
    idx = np.arange(len(y_eval)) if spec.get("per_class") is None else stratified_subset(y_eval, spec["per_class"], 0)
    x, y = to_float(x_eval[torch.as_tensor(idx)]), y_eval[torch.as_tensor(idx)]
    seed = record.get("seed", cfg.seed)
    started = time.perf_counter()
    attack = torchattacks.AutoAttack(model, norm="Linf", eps=spec["eps"], version="standard",
                                     n_classes=data.num_classes, seed=seed)
    with torch.no_grad():
        x_adv = attack(x, y)
        robust = model(x_adv).argmax(1) == y
    seconds = time.perf_counter() - started
    cascade = record["cascade"]
    return {"cell": cell_dir.name, "attack": name, "examples": int(len(y)),
            "reference": {"stages": cascade["stages"], "robust_per_class": cascade["robust_per_class"],
                          "robust": [sum(c) for c in cascade["robust_per_class"]],
                          "stage_seconds": cascade.get("stage_seconds"), "seconds": record["seconds"]},
            "torchattacks_default": {"robust_per_class": np.bincount(y[robust].numpy(),
                                                                     minlength=data.num_classes).tolist(),
                                     "robust": int(robust.sum()), "seconds": seconds}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [r for cell in sorted(args.results.iterdir()) if (cell / "metrics.json").exists()
            for r in [compare(cell)] if r is not None]
    for r in rows:
        ref, ta = r["reference"], r["torchattacks_default"]
        print(f"{r['cell']} ({r['examples']} examples)")
        for stage, count in zip(ref["stages"], ref["robust"]):
            print(f"  reference after {stage:<8} {count:>4}")
        print(f"  reference {ref['seconds']:.0f} s (stages: {', '.join(f'{s:.1f}' for s in ref['stage_seconds'] or [])})")
        print(f"  torchattacks default: {ta['robust']} robust, {ta['seconds']:.0f} s")
        print(f"  per class, reference final: {ref['robust_per_class'][-1]}")
        print(f"  per class, torchattacks default: {ta['robust_per_class']}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
