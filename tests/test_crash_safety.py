"""Crash safety stays proven (issue #14, item 7): SIGKILL at six moments, and two grids on one folder.

A two-cell grid runs in a subprocess (tests/sigkill_driver.py) that kills itself with SIGKILL at one
moment; the same command is started again, dying at the next moment, and so on, then once to the end.
After every kill nothing partial reads as finished; once the first cell has finished its files stay
byte-identical; at the end no temporary file, lock or fallback checkpoint remains and the metrics equal
an uninterrupted run's. A second test starts two grid processes on one folder at once: every cell is
trained exactly once.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.cell import cell_status
from benchmark.config import expand_grid, load_profile
from toys import TINY_PROFILE

DRIVER = Path(__file__).with_name("sigkill_driver.py")
ROOT = Path(__file__).resolve().parents[1]
GRID = TINY_PROFILE.replace("seeds: [0]", "seeds: [0, 1]") + "eval_batch_size: 64\n"  # checkpoints every epoch
STEPS_PER_EPOCH = 25  # 1,600 long-tailed digits, batch 64, drop_last


def _start(moment: str, profile: Path, results: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(DRIVER), moment, "--", "--profile", str(profile), "--results",
                             str(results), "--no-progress", "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _run(moment: str, profile: Path, results: Path, *extra: str) -> subprocess.CompletedProcess:
    return _finish(_start(moment, profile, results, *extra))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _attacks(cell: Path) -> dict:
    return json.loads((cell / "metrics.json").read_text())["evaluation"]["attacks"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crash")
    profile = tmp / "grid.yaml"
    profile.write_text(GRID)
    keys = [cfg.key() for cfg in expand_grid(load_profile(str(profile)))]
    return tmp, profile, keys


def test_sigkill_at_six_moments_loses_nothing_finished_and_resumes_to_the_uninterrupted_result(grid):
    tmp, profile, (first, second) = grid
    reference, results = tmp / "reference", tmp / "killed"
    uninterrupted = _start("none:0", profile, reference)  # beside the chain: one thread each, on two cores
    try:
        _kill_chain_then_finish(profile, results, first, second)
        straight = _finish(uninterrupted)
    finally:
        if uninterrupted.poll() is None:
            uninterrupted.kill()
    assert straight.returncode == 0, straight.stderr[-2000:]
    for key in (first, second):
        assert _attacks(results / key) == _attacks(reference / key), key


def _kill_chain_then_finish(profile: Path, results: Path, first: str, second: str) -> None:
    kills = [  # in the order a run meets them, each restart getting one moment further
        ("train_step:10", set()),  # cell 1, epoch 0
        ("checkpoint_between:2", set()),  # cell 1, epoch 1: only checkpoint.prev.pt is on disk
        ("checkpoint_midwrite:1", set()),  # cell 1, epoch 1 again: a half-written temporary file
        ("eval_progress:2", set()),  # cell 1, evaluation: two batches of the attack saved
        ("before_record:1", set()),  # cell 1: predictions.npz written, metrics.json not yet
        (f"train_step:{STEPS_PER_EPOCH + 5}", {first}),  # cell 2, epoch 1: cell 1 is finished
    ]
    finished_snapshot = None
    for moment, done in kills:
        proc = _run(moment, profile, results)
        assert proc.returncode == -signal.SIGKILL, (moment, proc.returncode, proc.stderr[-2000:])
        assert {k for k in (first, second) if cell_status(results / k) == "done"} == done, moment
        for key in (first, second):
            if key not in done:
                assert not (results / key / "metrics.json").exists(), moment  # nothing partial reads as finished
        if first in done:
            if finished_snapshot is None:
                finished_snapshot = _snapshot(results / first)
            assert _snapshot(results / first) == finished_snapshot, moment

    last = _run("none:0", profile, results)
    assert last.returncode == 0, last.stderr[-2000:]
    assert _snapshot(results / first) == finished_snapshot  # a finished cell is never touched again
    leftovers = [p.name for p in results.rglob("*") if p.name.endswith(".tmp") or p.name in
                 ("lock.json", "checkpoint.prev.pt", "eval_progress")]
    assert leftovers == []
    for key in (first, second):
        assert cell_status(results / key) == "done"
    log = [json.loads(line) for line in (results / second / "log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [0, 1]  # the epoch cut short was trimmed and trained again
    assert json.loads((results / second / "metrics.json").read_text())["cost"]["resumed_from_epoch"] == 1


def test_two_grid_processes_on_one_folder_train_every_cell_exactly_once(grid, tmp_path):
    _, _, _ = grid
    profile = tmp_path / "three.yaml"
    profile.write_text(TINY_PROFILE.replace("seeds: [0]", "seeds: [0, 1, 2]").replace("epochs: 2", "epochs: 1"))
    keys = [cfg.key() for cfg in expand_grid(load_profile(str(profile)))]
    results = tmp_path / "shared"
    procs = [_finish(p) for p in [_start("none:0", profile, results) for _ in range(2)]]
    assert [p.returncode for p in procs] == [0, 0], [p.stderr[-1500:] for p in procs]
    for key in keys:
        cell = results / key
        assert cell_status(cell) == "done"
        log = (cell / "log.jsonl").read_text().splitlines()
        assert len(log) == 1, key  # one epoch, logged once: trained by exactly one process
        metrics = json.loads((cell / "metrics.json").read_text())
        assert metrics["cost"]["resumed_from_epoch"] is None and metrics["cost"]["steps"] == STEPS_PER_EPOCH
        assert not (cell / "lock.json").exists() and not list(cell.glob("superseded"))
