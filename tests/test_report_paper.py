"""Paper-ready report output: settings named by what differs, audit sentences, compact LaTeX, edge-case plots."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.report import build_report
from benchmark.report.naming import setting_labels
from test_report import PageTables, column, table
from test_report_fixtures import make_cell


def with_config(cell: Path, **changes) -> Path:
    """Rewrite a fixture cell's resolved config (dotted keys: method_hparams.tau)."""
    metrics = json.loads((cell / "metrics.json").read_text())
    for dotted, value in changes.items():
        *path, leaf = dotted.split(".")
        node = metrics["config"]
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    (cell / "metrics.json").write_text(json.dumps(metrics))
    return cell


def test_two_settings_of_one_method_are_named_by_the_hyperparameter_that_differs(tmp_path):
    results = tmp_path / "results"
    for tau, seed in ((1.0, 0), (1.5, 0), (1.5, 1)):
        with_config(make_cell(results, "at_bsl", 10, seed, key=f"bsl-{tau}-{seed}"),
                    **{"method_hparams.tau": tau, "method_args.tau": tau})
    make_cell(results, "at", 10, 0)
    html = build_report(results, tmp_path / "reports").read_text()
    board = table(html, "leaderboard-")
    names = {r[column(board, "Method")]["attrs"]["data-sort"] for r in board["rows"]}
    assert names == {"at", "at_bsl (τ=1.5)", "at_bsl (τ=1)"}
    seeds = {r[column(board, "Method")]["attrs"]["data-sort"]: r[column(board, "Seeds")]["text"] for r in board["rows"]}
    assert seeds["at_bsl (τ=1.5)"] == "2"  # the seeds of one setting stay one row
    per_class = table(html, "per-class-")
    assert {r[0]["text"] for r in per_class["rows"]} == names


def test_setting_labels_name_schedule_and_attack_fields_and_fall_back_to_the_hash():
    base = {"epochs": 100, "train_attack_spec": {"steps": 10, "eps": 0.031}, "seed": 0, "data_root": "/a"}
    other = {"epochs": 50, "train_attack_spec": {"steps": 7, "eps": 0.031}, "seed": 3, "data_root": "/b"}
    assert setting_labels("at", {"s1": base, "s2": other}) == {"s1": "at (epochs=100, train steps=10)",
                                                              "s2": "at (epochs=50, train steps=7)"}
    same = dict(base, seed=5, data_root="/elsewhere")  # seed and location are not settings
    assert setting_labels("at", {"s1": base, "s2": same}) == {"s1": "at [s1]", "s2": "at [s2]"}
    many = {f"s{i}": {"a": i, "b": i, "c": i, "d": i} for i in range(2)}
    assert setting_labels("m", many)["s1"] == "m (a=1, b=1, c=1, +1 more)"
    lists = {"s1": {"eval_attack_specs": [{"kind": "pgd", "steps": 20, "name": "pgd20"}]},
             "s2": {"eval_attack_specs": [{"kind": "fgsm", "name": "fgsm"}]}}
    assert setting_labels("at", lists) == {"s1": "at (eval_attack_specs=variant 1)",
                                           "s2": "at (eval_attack_specs=variant 2)"}
