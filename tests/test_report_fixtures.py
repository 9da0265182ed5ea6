"""A fixture results folder in the real metrics.json schema, for the store, report and browser tests.

Cells start from ``tests/data/report_metrics_template.json`` (a real one-epoch ``at`` cell on the
embedded MNIST digits, IR 10). Per method, IR and seed we draw synthetic predictions (tail classes
weaker, attacks nested: PGD breaks a subset of what FGSM breaks) and summarise them with the harness's
own ``summarize_evaluation``, so every field is what the runner would write.
"""
from __future__ import annotations

import copy
import json
import math
import zlib
from pathlib import Path

import numpy as np

from benchmark.metrics import summarize_evaluation

DATA = Path(__file__).parent / "data"
TEMPLATE = DATA / "report_metrics_template.json"
LOG_TEMPLATE = DATA / "report_log_template.jsonl"
# method -> (clean skill, share of clean-correct head examples that survive FGSM)
SKILL = {"at": (0.92, 0.75), "taet": (0.88, 0.95), "trades": (0.85, 0.85)}
ATTACK_STRENGTH = {"fgsm": 1.0, "pgd20": 0.85, "pgd20_nostart": 0.88, "ta_pgd20_nostart": 0.88}  # P(survive | FGSM)
FLAG = "pgd20_nostart and ta_pgd20_nostart disagree on class 7 (3 of 100 examples)"


def template() -> dict:
    return json.loads(TEMPLATE.read_text())


def longtail_counts(n_max: int, ir: float, classes: int = 10) -> list[int]:
    return [int(math.floor(n_max * ir ** (-c / (classes - 1)))) for c in range(classes)]


def make_cell(root: Path, method: str, ir: float, seed: int, *, preset: str | None = None,
              test_split: str = "balanced", device: str = "cpu", flags: tuple[str, ...] = (),
              per_class_monitor: bool = False, subset_attack: bool = False, selection: str = "final",
              key: str | None = None, predictions: dict[str, np.ndarray] | None = None,
              write_predictions: bool = True, attack_records: dict[str, dict] | None = None) -> Path:
    """Write one finished cell (metrics.json, predictions.npz, log.jsonl) and return its folder.
    ``subset_attack`` adds an AutoAttack run on 10 examples per class only (prediction -1 elsewhere), as the
    runner does on a CPU. ``predictions`` (attack name -> one prediction per test example, clean included)
    replaces the synthetic ones, keeping only their attack records; ``attack_records`` adds fields to
    attack records (a label, a cascade); ``write_predictions=False`` leaves predictions.npz out, as older cells."""
    given, metrics = predictions, template()
    records = metrics["evaluation"]["attack_records"]
    counts = longtail_counts(400, ir)
    rng = np.random.default_rng(zlib.crc32(f"{method}|{preset}|{ir}|{seed}|{test_split}".encode()))
    support = [100] * 10 if test_split == "balanced" else longtail_counts(100, ir)
    y = np.repeat(np.arange(10), support)
    skill, survive = SKILL.get(method, (0.8, 0.6))
    share = np.asarray(counts) / counts[0]  # tail classes are learnt worse
    correct = rng.random(y.size) < skill * (0.35 + 0.65 * share[y])
    wrong = (y + rng.integers(1, 10, y.size)) % 10
    predictions = {"clean": np.where(correct, y, wrong)}
    alive = correct & (rng.random(y.size) < survive * (0.4 + 0.6 * share[y]))  # survives FGSM
    for name, strength in ATTACK_STRENGTH.items():  # each PGD breaks some of what FGSM left
        hit = alive & (rng.random(y.size) < strength) if name != "fgsm" else alive
        predictions[name] = np.where(hit, y, wrong)
    if subset_attack:
        covered = np.concatenate([np.flatnonzero(y == c)[:10] for c in range(10)])
        autoattack = np.full(y.size, -1)
        autoattack[covered] = np.where(hit & (rng.random(y.size) < 0.9), y, wrong)[covered]
        predictions["autoattack"] = autoattack
        records = {**records, "autoattack": {"seconds": 12.5, "max_linf": 0.1, "examples": int(covered.size), "spec": {
            "kind": "autoattack", "eps": 0.1, "version": "standard", "per_class": 10, "name": "autoattack"}}}
    if given is not None:
        predictions = {k: np.asarray(v) for k, v in given.items()}
        records = {k: v for k, v in records.items() if k in predictions}
    for name, extra in (attack_records or {}).items():
        records = {**records, name: {**records.get(name, {}), **extra}}
    metrics["evaluation"] = {**summarize_evaluation(y, predictions, 10, counts), "attack_records": records}
    label = method if preset is None else f"{method}.{preset}"
    key = key or f"mnist5k-ir{ir:g}-{label}-small_cnn-s{seed}-{zlib.crc32(label.encode()) % 10**6:06d}"
    metrics["cell_key"] = key
    metrics["method"] = {"name": method, "preset": preset, "hparams": {}}
    metrics["data"].update(imbalance_ratio=float(ir), train_counts=counts, train_size=sum(counts),
                           test_split=test_split, eval_examples=int(y.size),
                           balanced_robustness_equals_robust_accuracy=test_split == "balanced")
    metrics["seeds"]["training"] = seed
    metrics["config"].update(method=label, seed=seed, imbalance_ratio=float(ir), test_split=test_split)
    metrics["audit"]["flags"] = list(flags)
    labels = {"final": "final epoch", "val_best": "validation-selected", "test_best": "test-selected"}
    metrics["model_selection"] = {"rule": selection, "label": labels[selection], "metric": "balanced",
                                  "attack": None if selection == "final" else "pgd10", "epoch": 0, "score": None}
    metrics["cost"].update(device=device, train_seconds=float(1800 + 600 * rng.random()))
    if device.startswith("cuda"):
        metrics["cost"]["device_name"] = "NVIDIA H100 80GB HBM3"
    cell = Path(root) / key
    cell.mkdir(parents=True)
    (cell / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if write_predictions:  # as the runner writes it
        np.savez(cell / "predictions.npz", y=y, eval_indices=np.arange(y.size),
                 **{f"pred_{name}": pred for name, pred in predictions.items()})
    (cell / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in _log(rng, per_class_monitor)))
    return cell


def _log(rng: np.random.Generator, per_class: bool) -> list[dict]:
    base = json.loads(LOG_TEMPLATE.read_text().splitlines()[0])
    lines = []
    for epoch in range(3):
        line = copy.deepcopy(base)
        line.update(epoch=epoch, loss=1.8 - 0.4 * epoch, train_acc=0.4 + 0.1 * epoch,
                    monitor_clean_acc=0.5 + 0.1 * epoch, monitor_pgd10_acc=0.3 + 0.05 * epoch)
        if per_class:
            line["monitor_per_class_clean"] = [round(float(v), 2) for v in rng.random(10)]
            line["monitor_per_class_pgd10"] = [round(float(v), 2) for v in rng.random(10) * 0.6]
        lines.append(line)
    return lines


def make_results(root: Path) -> Path:
    """Three methods × IR 10, 50 × seeds 0, 1 on the balanced split (trades on CUDA, one cell with an
    audit flag, one with per-class monitoring), plus taet.authors on the long-tailed split with AutoAttack
    on a subset and a test-selected model."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for method in ("at", "taet", "trades"):
        for ir in (10, 50):
            for seed in (0, 1):
                make_cell(root, method, ir, seed, device="cuda" if method == "trades" else "cpu",
                          flags=(FLAG,) if (method, ir, seed) == ("at", 10, 1) else (),
                          per_class_monitor=(method, ir, seed) == ("taet", 10, 0))
    make_cell(root, "taet", 10, 0, preset="authors", test_split="longtail", subset_attack=True, selection="test_best")
    return root


def add_bad_cells(root: Path) -> dict[str, str]:
    """Folders the store must skip: folder name -> a word its reason must contain."""
    root = Path(root)
    (root / "corrupt").mkdir()
    (root / "corrupt" / "metrics.json").write_text('{"schema_version": 1, "status": "comp')
    (root / "unfinished").mkdir()
    (root / "unfinished" / "checkpoint.pt").write_bytes(b"\0")
    (root / "unfinished" / "config.yaml").write_text("method: at\n")
    running = template()
    running["status"] = "running"
    (root / "running").mkdir()
    (root / "running" / "metrics.json").write_text(json.dumps(running))
    future = template()
    future["schema_version"] = 99
    (root / "future").mkdir()
    (root / "future" / "metrics.json").write_text(json.dumps(future))
    broken = template()
    del broken["data"]["train_counts"]
    (root / "no-counts").mkdir()
    (root / "no-counts" / "metrics.json").write_text(json.dumps(broken))
    return {"corrupt": "unreadable", "unfinished": "no metrics.json", "running": "status",
            "future": "schema_version", "no-counts": "train_counts"}


def test_fixture_cells_load_without_skips(tmp_path):
    from benchmark.store import load_results

    store = load_results(make_results(tmp_path / "results"))
    assert store.skipped == []
    assert len(store.metrics) == 13
    assert set(store.cells["attack"]) == {"clean", "fgsm", "pgd20", "pgd20_nostart", "ta_pgd20_nostart", "worst_case",
                                          "autoattack", "worst_case_all_examples"}
