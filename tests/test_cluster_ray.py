"""--executor ray on a local Ray instance (ray.init(num_cpus=2), no GPU): a 4-cell tiny grid gives the local
executor's metrics, a second submission runs nothing, a worker killed mid-cell is retried and resumes from the
checkpoint with the same metrics, a cell that raises is recorded failed while the rest finish, and a
missing extra is one line."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from benchmark.__main__ import main
from benchmark.config import expand_grid
from toys import TINY_PROFILE

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'tailrobust[ray]')")
from benchmark.cluster.ray_executor import RayExecutor  # noqa: E402

from cluster_grid import GRID, grid_plans as _plans, per_class as _per_class, quiet_grid as _quiet_grid  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_grid(local_ray, four_cell_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray")
    plans = _plans()
    ray_metrics, printed = _quiet_grid(plans, tmp / "ray", RayExecutor(num_cpus=1, num_gpus=0))
    return {"plans": plans, "ray": ray_metrics, "local": four_cell_local, "printed": printed, "results": tmp / "ray"}


def test_four_cell_grid_on_ray_gives_the_local_executors_metrics(ray_grid):
    assert len(ray_grid["ray"]) == 4
    for on_ray, here in zip(ray_grid["ray"], ray_grid["local"]):
        assert on_ray["cell_key"] == here["cell_key"]
        assert _per_class(on_ray) == _per_class(here)
        assert on_ray["evaluation"]["attacks"]["worst_case"]["balanced"] == here["evaluation"]["attacks"]["worst_case"]["balanced"]


def test_ray_driver_prints_grid_progress_and_the_summary(ray_grid):
    printed = ray_grid["printed"]
    assert printed.count("submitted (ray task ") == 4
    assert "[4/4 done | 0 running or queued | 0 failed |" in printed and "ETA" in printed
    assert "BR worst per method x IR" in printed


def test_a_second_ray_submission_runs_nothing(ray_grid):
    records = sorted(ray_grid["results"].glob("*/metrics.json"))
    before = [p.stat().st_mtime_ns for p in records]
    _, printed = _quiet_grid(ray_grid["plans"], ray_grid["results"], RayExecutor(num_cpus=1, num_gpus=0))
    assert printed.count("skip (finished)") == 4 and "submitted" not in printed
    assert [p.stat().st_mtime_ns for p in records] == before


def _ray_worker_pids(key: str) -> list[int]:
    """The process Ray titled after the running task (``ray::cell <key>``, the task's name)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"ray::cell {key}" in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _kill_after_first_epoch(cell_dir: Path, epochs: int, killed: list, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = cell_dir / "log.jsonl"
        lines = log.read_text().count("\n") if log.exists() else 0
        if 1 <= lines < epochs and (cell_dir / "checkpoint.pt").exists():
            for pid in _ray_worker_pids(cell_dir.name):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            if killed:
                return
        time.sleep(0.02)


def _grid_with_a_worker_killed(tmp_path, max_retries: int):
    """A 4-epoch PGD-AT cell on Ray whose worker is SIGKILLed after the first epoch: (plan, its result, what the
    driver printed, pids killed)."""
    (plan,) = _plans(methods=["at"], imbalance_ratios=[10], epochs=4, checkpoint_every_s=0)
    killed: list[int] = []
    killer = threading.Thread(target=_kill_after_first_epoch, args=(tmp_path / "ray" / plan.key, 4, killed))
    killer.start()
    (result,), printed = _quiet_grid([plan], tmp_path / "ray",
                                     RayExecutor(num_cpus=1, num_gpus=0, max_retries=max_retries))
    killer.join()
    return plan, result, printed, killed


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds Ray's worker through /proc (Linux)")
def test_a_worker_killed_mid_cell_is_retried_and_resumes_from_its_checkpoint(local_ray, tmp_path):
    plan, resumed, _, killed = _grid_with_a_worker_killed(tmp_path, max_retries=2)
    assert killed, "the worker was never seen mid-cell"
    assert resumed.get("status") != "failed", resumed
    assert resumed["cost"]["resumed_from_epoch"] >= 1  # the retry started from the checkpoint, not from epoch 0
    (here,), _ = _quiet_grid([plan], tmp_path / "local")
    assert here["cost"]["resumed_from_epoch"] is None
    assert _per_class(resumed) == _per_class(here)


def test_a_cell_that_raises_is_recorded_failed_with_its_cause_and_the_rest_finish(local_ray, tmp_path):
    good = _plans(methods=["at"], imbalance_ratios=[10])
    bad = [cfg.resolve("cpu") for cfg in expand_grid({**yaml.safe_load(TINY_PROFILE), **GRID, "methods": ["at"],
                                                     "imbalance_ratios": [10], "dataset": "mnist",
                                                     "data_root": str(tmp_path / "no-data")})]
    out, printed = _quiet_grid(good + bad, tmp_path / "r", RayExecutor(num_cpus=1, num_gpus=0))
    assert out[0]["status"] == "complete"
    assert out[1]["status"] == "failed" and "UsageError" in out[1]["failure"]["cause"]
    assert json.loads((tmp_path / "r" / bad[0].key / "metrics.json").read_text())["status"] == "failed"
    assert "FAILED" in printed and "1 failed" in printed


def test_executor_ray_without_the_extra_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when the extra is not installed
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    code = main(["--profile", str(profile), "--results", str(tmp_path / "r"), "--executor", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install 'tailrobust[ray]'" in err
    assert not (tmp_path / "r").exists()


def test_ctrl_c_on_the_driver_cancels_the_running_cell_and_keeps_finished_ones(local_ray, tmp_path, capsys):
    import _thread

    finished, unfinished = _plans(methods=["at"], imbalance_ratios=[10]), _plans(methods=["taet"], imbalance_ratios=[10], epochs=6)
    _quiet_grid(finished, tmp_path / "r")  # finished before the interrupted run
    record = tmp_path / "r" / finished[0].key / "metrics.json"
    before = record.stat().st_mtime_ns
    cell_dir = tmp_path / "r" / unfinished[0].key

    def interrupt_once_training():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (cell_dir / "log.jsonl").exists():
            time.sleep(0.02)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_once_training, daemon=True).start()
    with pytest.raises(SystemExit) as stopped:
        _quiet_grid(finished + unfinished, tmp_path / "r", RayExecutor(num_cpus=1, num_gpus=0))
    assert stopped.value.code == 130
    assert "cancelled 1 queued or running cell(s)" in capsys.readouterr().err
    deadline = time.monotonic() + 20
    while _ray_worker_pids(unfinished[0].key) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _ray_worker_pids(unfinished[0].key)  # the task's worker is gone
    time.sleep(1.0)
    assert not (cell_dir / "metrics.json").exists() and (cell_dir / "log.jsonl").read_text().count("\n") < 6
    assert record.stat().st_mtime_ns == before


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds Ray's worker through /proc (Linux)")
def test_a_worker_that_dies_more_often_than_max_retries_is_recorded_failed_with_the_cause(local_ray, tmp_path):
    plan, record, printed, killed = _grid_with_a_worker_killed(tmp_path, max_retries=0)
    assert killed and record["status"] == "failed" and record["failure"]["stage"] == "worker"
    assert "Ray retried it 0 time(s)" in record["failure"]["cause"]
    assert json.loads((tmp_path / "ray" / plan.key / "metrics.json").read_text())["status"] == "failed"
    assert "FAILED: " + plan.key in printed
