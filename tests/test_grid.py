"""A 2 methods × 2 imbalance ratios × 1 seed grid through the CLI on two parallel CPU workers:
--dry-run matches what runs, a second invocation runs nothing, --force re-runs, a changed
hyperparameter is a new cell; plus the grid ETA and summary table."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from benchmark.__main__ import main
from benchmark.config import expand_grid
from benchmark.executors import GridProgress
from benchmark.console import format_grid_summary
from benchmark.runner import run_cell
from toys import TINY_PROFILE

pytestmark = pytest.mark.usefixtures("one_thread")
GRID = ["--methods", "at,taet", "--irs", "10,20", "--seeds", "0", "--epochs", "1"]


def _main(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    profile, results = tmp / "tiny.yaml", tmp / "results"
    profile.write_text(TINY_PROFILE)
    common = ["--profile", str(profile), "--results", str(results), *GRID]
    _, planned = _main(*common, "--dry-run")
    code, printed = _main(*common, "--devices", "cpu,cpu", "--quiet")
    return {"common": common, "results": results, "planned": planned, "code": code, "printed": printed,
            "profile": profile}


def _dry_run(grid) -> dict[str, str]:
    _, text = _main(*grid["common"], "--dry-run")
    return {line.split()[1]: line.split()[0] for line in text.splitlines()}


def test_dry_run_lists_exactly_the_cells_the_grid_then_runs(grid):
    planned = [line.split() for line in grid["planned"].splitlines()]
    assert grid["code"] == 0
    assert [status for status, _ in planned] == ["new"] * 4
    assert {key for _, key in planned} == {p.name for p in grid["results"].iterdir()}
    assert sorted({k.split("-")[1] for _, k in planned}) == ["ir10", "ir20"]
    assert sorted({k.split("-")[2] for _, k in planned}) == ["at", "taet"]
    assert set(_dry_run(grid).values()) == {"done"}


def test_parallel_workers_print_progress_and_a_method_by_ir_summary(grid):
    printed = grid["printed"]
    assert printed.count(" on cpu: ") == 4 and "[4/4 |" in printed
    assert "ETA" in printed  # measured once the first cell finished
    assert "BR worst per method x IR" in printed and "(n=1)" in printed
    assert "train count" not in printed  # --quiet: no per-cell tables


def test_a_second_invocation_runs_nothing_and_leaves_results_untouched(grid):
    metrics = sorted(grid["results"].glob("*/metrics.json"))
    before = [p.stat().st_mtime_ns for p in metrics]
    code, printed = _main(*grid["common"], "--quiet")
    assert code == 0 and printed.count("skip (finished)") == 4 and " run: " not in printed
    assert [p.stat().st_mtime_ns for p in metrics] == before


def test_force_reruns_a_cell_and_keeps_the_old_results(grid):
    common = [a for a in grid["common"]]
    common[common.index("at,taet")] = "at"
    common[common.index("10,20")] = "10"
    code, printed = _main(*common, "--force", "--quiet")
    (cell,) = [p for p in grid["results"].iterdir() if "-ir10-at-" in p.name]
    assert code == 0 and "re-run (--force)" in printed
    assert (cell / "metrics.json").exists() and list((cell / "superseded").glob("*/metrics.json"))


def test_a_changed_hyperparameter_is_a_new_cell_never_a_reuse(grid):
    common = list(grid["common"])
    common[common.index("1", common.index("--epochs"))] = "2"
    statuses = [line.split()[0] for line in _main(*common, "--dry-run")[1].splitlines()]
    assert statuses == ["new"] * 4


def test_a_cell_run_in_a_worker_process_matches_the_same_cell_run_here(grid, tmp_path):
    settings = {**yaml.safe_load(TINY_PROFILE), "methods": ["at"], "imbalance_ratios": [20], "epochs": 1}
    (cfg,) = expand_grid(settings)
    here = run_cell(cfg, tmp_path, progress=False)
    there = json.loads((grid["results"] / cfg.key() / "metrics.json").read_text())
    for attack, values in here["evaluation"]["attacks"].items():
        assert there["evaluation"]["attacks"][attack]["per_class_correct"] == values["per_class_correct"]


def test_eta_counts_remaining_epochs_at_the_measured_speed_split_over_workers(tmp_path):
    cells = expand_grid({**yaml.safe_load(TINY_PROFILE), "methods": ["at", "taet"], "epochs": 4})
    cells = [cfg.resolve() for cfg in cells]
    tracker = GridProgress(cells, tmp_path, workers=1)
    assert tracker.eta_seconds() is None  # nothing measured yet
    tracker.finished(cells[0], {"cost": {"seconds_per_epoch": 2.0, "eval_seconds": 3.0}}, ran=True)
    assert tracker.eta_seconds() == pytest.approx(4 * 2.0 + 3.0)  # taet: the only speed measured so far
    tracker.workers = 2
    assert tracker.eta_seconds() == pytest.approx((4 * 2.0 + 3.0) / 2)


def _fake_metrics(method: str, ir: float, seed: int, robust: float) -> dict:
    attacks = {"clean": {"balanced": 0.9}, "worst_case": {"balanced": robust}}
    return {"config": {"method": method}, "data": {"imbalance_ratio": ir}, "seeds": {"training": seed},
            "evaluation": {"attacks": attacks}, "audit": {"flags": []}}


def test_grid_summary_gives_mean_std_and_seed_count_per_method_and_ir():
    text = format_grid_summary([_fake_metrics("at", 10, 0, 0.40), _fake_metrics("at", 10, 1, 0.50),
                                _fake_metrics("taet", 10, 0, 0.45), _fake_metrics("at", 50, 0, 0.30)])
    row = next(line for line in text.splitlines()[-3:] if line.startswith("at "))
    assert "45.0 ± 7.1 (n=2)" in row and "30.0 ± 0.0 (n=1)" in row
    taet = next(line for line in text.splitlines()[-3:] if line.startswith("taet"))
    assert "45.0 ± 0.0 (n=1)" in taet and taet.rstrip().endswith("-")


def test_devices_of_mixed_types_are_refused_in_one_line(tmp_path, capsys):
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    code = main(["--profile", str(profile), "--results", str(tmp_path / "r"), "--devices", "cpu,0"])
    assert code == 2 and "mixes device types" in capsys.readouterr().err
