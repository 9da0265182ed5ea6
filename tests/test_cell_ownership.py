"""A cell is owned by one process and belongs to one config (issue #14, items 2 and 4).

Locks: one owner at a time, a dead owner's lock taken over, another host's lock respected until its
heartbeat is old. Files a cell resumes from carry its key and config hash: a checkpoint copied from
another cell is refused, never resumed. A truncated newest checkpoint falls back to the one before it,
and the result equals an uninterrupted run. A cell key covers the harness version.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import benchmark.cell as cell_module
import benchmark.runner as runner_module
from benchmark.__main__ import main
from benchmark.cell import CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, cell_key, cell_status, config_hash
from benchmark.cell_lock import LOCK_FILE, CellLock, read_owner
from benchmark.evaluate import _load_progress
from benchmark.runner import run_cell
from attacks import AttackSpec
from toys import TINY_PROFILE

pytestmark = pytest.mark.usefixtures("one_thread")


class SimulatedCrash(RuntimeError):
    pass


def _write_lock(cell: Path, **owner) -> Path:
    cell.mkdir(parents=True, exist_ok=True)
    path = cell / LOCK_FILE
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "2026-01-01T00:00:00+00:00",
                                "cell_key": cell.name, **owner}))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- the lock -------------------------------------------------------------------------------------

def test_a_cell_lock_is_exclusive_while_its_owner_lives_and_released_on_exit(tmp_path):
    cell = tmp_path / "cell"
    with CellLock(cell, "cell") as first:
        assert first.acquired
        owner = json.loads((cell / LOCK_FILE).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname() and owner["cell_key"] == "cell"
        with CellLock(cell, "cell") as second:
            assert not second.acquired and second.owner["pid"] == os.getpid()
    assert not (cell / LOCK_FILE).exists()


def test_the_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    cell = tmp_path / "cell"
    _write_lock(cell, pid=_dead_pid(), host=socket.gethostname())
    with CellLock(cell, "cell") as lock:
        assert lock.acquired and lock.took_over["host"] == socket.gethostname()
        assert json.loads((cell / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_lock_from_another_host_is_respected_until_its_heartbeat_is_older_than_the_limit(tmp_path):
    cell = tmp_path / "cell"
    path = _write_lock(cell, pid=_dead_pid(), host="node-7")  # that pid means nothing on this host
    with CellLock(cell, "cell", stale_after_s=3600) as lock:
        assert not lock.acquired and lock.owner["host"] == "node-7"
    old = time.time() - 7200
    os.utime(path, (old, old))
    with CellLock(cell, "cell", stale_after_s=3600) as lock:
        assert lock.acquired and lock.took_over["host"] == "node-7"


def test_an_unparsable_lock_is_respected_while_fresh_and_taken_over_once_old(tmp_path):
    cell = tmp_path / "cell"
    cell.mkdir()
    path = cell / LOCK_FILE
    path.write_text("{half a lock")  # a crash between creating the lock and writing it
    with CellLock(cell, "cell") as lock:
        assert not lock.acquired
    old = time.time() - 120
    os.utime(path, (old, old))
    with CellLock(cell, "cell") as lock:
        assert lock.acquired


def test_the_owner_heartbeat_keeps_the_lock_fresh(tmp_path, monkeypatch):
    import benchmark.cell_lock as lock_module

    monkeypatch.setattr(lock_module, "HEARTBEAT_S", 0.05)
    cell = tmp_path / "cell"
    with CellLock(cell, "cell") as lock:
        old = time.time() - 1000
        os.utime(lock.path, (old, old))
        deadline = time.time() + 5
        while read_owner(cell)["age_s"] > 100 and time.time() < deadline:
            time.sleep(0.05)
        assert read_owner(cell)["age_s"] < 100


# --- cells under their lock -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(finished_tiny):
    """The session's finished tiny cell: (cfg, its folder). Do not modify it."""
    _, _, results, cfg = finished_tiny
    return cfg, results / cfg.key()


def test_a_cell_locked_by_another_live_run_is_not_touched_and_comes_back_locked(finished, tmp_path):
    cfg, _ = finished
    cell = tmp_path / cfg.key()
    _write_lock(cell, pid=12345, host="node-7")
    result = run_cell(cfg, tmp_path, progress=False)
    assert result["status"] == "locked" and result["owner"]["host"] == "node-7"
    assert sorted(p.name for p in cell.iterdir()) == [LOCK_FILE]


def test_the_grid_lists_cells_locked_elsewhere_and_exits_3_without_waiting(finished, tmp_path, capsys):
    cfg, _ = finished
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    _write_lock(tmp_path / "results" / cfg.key(), pid=12345, host="node-7")
    code = main(["--profile", str(profile), "--results", str(tmp_path / "results"), "--no-progress",
                 "--no-wait-locked"])
    err = capsys.readouterr()
    assert code == 3
    assert f"locked: {cfg.key()} is being run by pid 12345 on node-7" in err.out
    assert "1 cell(s) not run here: locked by another run" in err.err


def test_a_checkpoint_copied_from_another_cell_is_refused_and_never_resumed(finished, tmp_path):
    cfg, done_cell = finished
    other = dataclasses.replace(copy.deepcopy(cfg), seed=1)
    cell = tmp_path / other.key()
    cell.mkdir()
    shutil.copy(done_cell / CHECKPOINT_FILE, cell / CHECKPOINT_FILE)  # seed 0's model in seed 1's folder
    before = (cell / CHECKPOINT_FILE).read_bytes()
    result = run_cell(other, tmp_path, progress=False)
    assert result["status"] == "failed" and result["failure"]["stage"] == "resume"
    cause = result["failure"]["cause"]
    assert cfg.key() in cause and other.key() in cause and "refused" in cause
    assert config_hash(cfg.resolved()) in cause and config_hash(other.resolved()) in cause
    assert (cell / CHECKPOINT_FILE).read_bytes() == before  # not resumed, not overwritten
    assert not (cell / "log.jsonl").exists()
    assert cell_status(cell) == "failed"


def test_a_checkpoint_without_key_and_hash_is_refused(finished, tmp_path):
    cfg, done_cell = finished
    cell = tmp_path / cfg.key()
    cell.mkdir()
    state = torch.load(done_cell / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    del state["cell_key"], state["config_hash"]
    torch.save(state, cell / CHECKPOINT_FILE)
    result = run_cell(cfg, tmp_path, progress=False)
    assert result["status"] == "failed" and "carries no cell key or config hash" in result["failure"]["cause"]


def test_a_truncated_newest_checkpoint_falls_back_to_the_one_before_and_matches_an_uninterrupted_run(
        finished, tmp_path, monkeypatch, capsys):
    cfg, done_cell = finished
    cell = tmp_path / cfg.key()

    def crash(*args, **kwargs):
        raise SimulatedCrash("killed after training, before evaluation")

    monkeypatch.setattr(runner_module, "evaluate", crash)
    with pytest.raises(SimulatedCrash):
        run_cell(cfg, tmp_path, progress=False)
    monkeypatch.undo()
    newest = torch.load(cell / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    previous = torch.load(cell / PREVIOUS_CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    assert (newest["epoch"], previous["epoch"]) == (1, 0)
    data = (cell / CHECKPOINT_FILE).read_bytes()
    (cell / CHECKPOINT_FILE).write_bytes(data[: len(data) // 3])  # a disk that filled mid-write, a bad copy

    metrics = run_cell(cfg, tmp_path, progress=False)
    err = capsys.readouterr().err
    assert f"{cell / CHECKPOINT_FILE}: unreadable checkpoint" in err and "superseded" in err
    assert metrics["cost"]["resumed_from_epoch"] == 1  # from the epoch-0 checkpoint: epoch 1 trained again
    straight = json.loads((done_cell / "metrics.json").read_text())
    assert metrics["evaluation"]["attacks"] == straight["evaluation"]["attacks"]
    assert not (cell / PREVIOUS_CHECKPOINT_FILE).exists()  # a finished cell keeps only its final checkpoint
    assert list(cell.glob("superseded/*/checkpoint.pt"))


def test_a_finished_record_carries_the_cell_key_and_config_hash(finished):
    cfg, done_cell = finished
    record = json.loads((done_cell / "metrics.json").read_text())
    assert record["cell_key"] == cfg.key() and record["config_hash"] == config_hash(cfg.resolved())
    state = torch.load(done_cell / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    assert (state["cell_key"], state["config_hash"]) == (cfg.key(), config_hash(cfg.resolved()))
    assert record["versions"]["tailrobust"] == cell_module.__version__
    assert isinstance(record["versions"]["torch_num_threads"], int)  # float rounding depends on it: recorded


def test_evaluation_progress_of_another_cell_is_not_continued(tmp_path, capsys):
    spec = AttackSpec("pgd", 0.1, 3, 0.025, "uniform")
    folder = tmp_path / "cell-a" / "eval_progress"
    folder.mkdir(parents=True)
    meta = {"spec": spec.to_dict(), "examples": 4, "done": 2, "cell_key": "cell-b", "config_hash": "0" * 16}
    np.savez(folder / "pgd.npz", preds=np.array([1, 2, -1, -1]), meta=np.array(json.dumps(meta)))
    assert _load_progress(folder / "pgd.npz", spec, 4, {"cell_key": "cell-a", "config_hash": "1" * 16}) is None
    assert "belongs to cell cell-b" in capsys.readouterr().err
    other_hash = _load_progress(folder / "pgd.npz", spec, 4, {"cell_key": "cell-b", "config_hash": "1" * 16})
    assert other_hash is None  # the same key with another config hash is another config
    mine = {**meta, "cell_key": "cell-a", "config_hash": "1" * 16}
    np.savez(folder / "pgd.npz", preds=np.array([1, 2, -1, -1]), meta=np.array(json.dumps(mine)))
    loaded = _load_progress(folder / "pgd.npz", spec, 4, {"cell_key": "cell-a", "config_hash": "1" * 16})
    assert loaded is not None and loaded["meta"]["done"] == 2


# --- versions -------------------------------------------------------------------------------------

def test_the_cell_key_covers_the_harness_version(finished, monkeypatch):
    cfg, _ = finished
    now = cfg.key()
    monkeypatch.setattr(cell_module, "HARNESS_VERSION", "schema 1, tailrobust 9.9.9")
    assert cell_key(cfg.resolved()) != now
    import benchmark

    assert now.rsplit("-", 1)[1] != cell_key(cfg.resolved()).rsplit("-", 1)[1]
    assert f'version = "{benchmark.__version__}"' in (Path(benchmark.__file__).parents[1] / "pyproject.toml").read_text()


def test_a_finished_cell_of_another_version_is_listed_and_not_counted_as_done(finished, tmp_path, capsys):
    cfg, done_cell = finished
    results = tmp_path / "results"
    old = results / (cfg.key().rsplit("-", 1)[0] + "-0123456789")  # the same config, keyed by another version
    shutil.copytree(done_cell, old)
    record = json.loads((old / "metrics.json").read_text())
    record["cell_key"] = old.name
    record["versions"]["tailrobust"] = "0.1.0"
    (old / "metrics.json").write_text(json.dumps(record))
    plans = [cfg.resolve()]
    assert runner_module.cells_of_other_versions(results, plans) == [(old.name, "0.1.0")]
    from benchmark.__main__ import note_other_versions

    note_other_versions(results, plans)
    assert "made by tailrobust 0.1.0; they are not reused" in capsys.readouterr().err
    assert cell_status(results / cfg.key()) == "new"


def test_a_log_with_a_non_utf8_byte_is_trimmed_with_a_warning_and_the_cell_resumes(finished, tmp_path, capsys):
    cfg, done_cell = finished
    cell = tmp_path / cfg.key()
    shutil.copytree(done_cell, cell)
    (cell / "metrics.json").unlink()  # killed after its last checkpoint, before the record
    with (cell / "log.jsonl").open("ab") as handle:
        handle.write(b'{"epoch": 1, "loss": "\xff\xfe"}\n')
    metrics = run_cell(cfg, tmp_path, progress=False)
    assert "1 unreadable line(s) dropped on resume" in capsys.readouterr().err
    assert [json.loads(line)["epoch"] for line in (cell / "log.jsonl").read_text().splitlines()] == [0, 1]
    assert metrics["evaluation"]["attacks"] == json.loads((done_cell / "metrics.json").read_text())["evaluation"]["attacks"]
