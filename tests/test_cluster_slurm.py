"""--executor slurm through submitit: against the single-node Slurm that scripts/ci_slurm.sh starts when it
can (the CI calls it), otherwise the same grid through submitit's local executor and the Slurm-only tests
skip with the reason the script wrote. The 4-cell tiny grid gives the local executor's metrics, a second
submission runs nothing, a job signalled as preempted mid-cell (``scancel --signal=USR2``) is requeued and
resumes from its checkpoint, a job killed outright is submitted again, --dry-run prints the jobs."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from benchmark.__main__ import main
from toys import TINY_PROFILE

pytest.importorskip("submitit", reason="submitit is not installed (pip install 'tailrobust[slurm]')")
from benchmark.cluster.resources import parse_time  # noqa: E402
from benchmark.cluster.slurm_executor import SlurmExecutor  # noqa: E402

from cluster_grid import grid_plans as _plans, per_class as _per_class, quiet_grid as _quiet_grid  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
STATUS_FILE = Path(os.environ.get("TAILROBUST_SLURM_STATUS", "/tmp/tailrobust-slurm.status"))


def slurm_unavailable() -> str | None:
    """None when a Slurm partition answers here; else why not (the line scripts/ci_slurm.sh wrote)."""
    written = STATUS_FILE.read_text().strip() if STATUS_FILE.exists() else ""
    if written.startswith("unavailable"):
        return f"Slurm {written} (scripts/ci_slurm.sh)"
    if not shutil.which("sbatch"):
        return "Slurm unavailable: sbatch is not on PATH and scripts/ci_slurm.sh has not run here"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"Slurm unavailable: sinfo did not answer ({err})"
    return None if {"idle", "mix", "alloc"} & set(states) else f"Slurm unavailable: no usable node (sinfo: {states})"


REASON = slurm_unavailable()
CLUSTER = "local" if REASON else "slurm"
needs_slurm = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _executor(**kw) -> SlurmExecutor:
    return SlurmExecutor(cluster=CLUSTER, num_cpus=1, num_gpus=0, mem_gb=2, time_min=10, poll=0.5, **kw)


@pytest.fixture(scope="module")
def slurm_grid(four_cell_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slurm")
    plans = _plans()
    started = time.perf_counter()
    jobs, printed = _quiet_grid(plans, tmp / "slurm", _executor())
    seconds = time.perf_counter() - started
    local = four_cell_local
    print(f"4-cell grid through submitit ({CLUSTER}): {seconds:.1f} s")
    return {"plans": plans, "jobs": jobs, "local": local, "printed": printed, "results": tmp / "slurm"}


def test_four_cell_grid_through_submitit_gives_the_local_executors_metrics(slurm_grid):
    assert len(slurm_grid["jobs"]) == 4
    for job, here in zip(slurm_grid["jobs"], slurm_grid["local"]):
        assert job["cell_key"] == here["cell_key"] and _per_class(job) == _per_class(here)
    assert slurm_grid["printed"].count("submitted (job ") == 4
    assert "[4/4 done | 0 running or queued | 0 failed |" in slurm_grid["printed"]


def test_a_second_submission_submits_no_job(slurm_grid):
    records = sorted(slurm_grid["results"].glob("*/metrics.json"))
    before = [p.stat().st_mtime_ns for p in records]
    _, printed = _quiet_grid(slurm_grid["plans"], slurm_grid["results"], _executor())
    assert printed.count("skip (finished)") == 4 and "submitted" not in printed
    assert [p.stat().st_mtime_ns for p in records] == before


def _scancel(*args: str):
    return lambda job_id, jobs_dir: subprocess.run(["scancel", *args, job_id], check=True)


def _kill_worker(job_id: str, jobs_dir: Path):
    """SIGKILL the job's Python process on the (single, local) node, as a node crash or the OOM killer would.
    (submitit hands the worker its folder as ``.../%j``, so the worker is told from srun by its argv[0].)"""
    pids = subprocess.run(["pgrep", "-f", "submitit.core._submit"], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")
        except OSError:
            continue
        if "python" in Path(argv[0]).name and argv[-1] == f"{jobs_dir}/%j":
            os.kill(int(pid), signal.SIGKILL)


def _signal_job_after_first_epoch(cell_dir: Path, epochs: int, act, sent: list, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = cell_dir / "log.jsonl"
        lines = log.read_text().count("\n") if log.exists() else 0
        if 1 <= lines < epochs:
            ids = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i", "-n", "tailrobust"], capture_output=True,
                                 text=True).stdout.split()
            for job_id in ids:
                act(job_id, cell_dir.parent / ".submitit")
                sent.append(job_id)
            if sent:
                return
        time.sleep(0.05)


def _interrupted_cell(tmp_path, act):
    (plan,) = _plans(methods=["at"], imbalance_ratios=[10], epochs=5, checkpoint_every_s=0)
    sent: list[str] = []
    signaller = threading.Thread(target=_signal_job_after_first_epoch,
                                 args=(tmp_path / "slurm" / plan.key, 5, act, sent))
    signaller.start()
    (metrics,), printed = _quiet_grid([plan], tmp_path / "slurm", _executor())
    signaller.join()
    (here,), _ = _quiet_grid([plan], tmp_path / "local")
    return metrics, here, printed, sent


@needs_slurm
def test_a_preempted_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path):
    metrics, here, printed, sent = _interrupted_cell(tmp_path, _scancel("--signal=USR2"))  # Slurm's preemption warning
    assert sent, "the job was never seen mid-cell"
    assert metrics.get("status") == "complete", metrics
    assert metrics["cost"]["resumed_from_epoch"] >= 1  # the requeued job started from the checkpoint
    assert "retry" not in printed  # submitit requeued the same job; the driver did not resubmit
    assert _per_class(metrics) == _per_class(here)


@needs_slurm
def test_a_killed_job_is_submitted_again_and_resumes(tmp_path):
    # The worker dies without a result. Not a plain scancel: that sends SIGTERM, which submitit ignores, and
    # SIGKILL only KillWait seconds later, so a tiny cell can finish correctly in between (CI saw it do so).
    metrics, here, printed, sent = _interrupted_cell(tmp_path, _kill_worker)
    assert sent and "retry 1/2" in printed
    assert metrics.get("status") == "complete" and metrics["cost"]["resumed_from_epoch"] >= 1
    assert _per_class(metrics) == _per_class(here)


def test_dry_run_prints_the_job_each_unfinished_cell_would_be(tmp_path, capsys):
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    code = main(["--profile", str(profile), "--results", str(tmp_path / "r"), "--methods", "at,taet", "--executor",
                 "slurm", "--slurm-partition", "gpu", "--slurm-time", "1-02:00:00", "--num-gpus", "0.25",
                 "--slurm-mem", "8", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and len(lines) == 2 and not (tmp_path / "r").exists()
    for line in lines:
        assert line.startswith("new ") and "slurm job partition=gpu time=1560min cpus=2 mem=8G gpus=1" in line


def test_slurm_time_formats_are_read_as_minutes():
    assert [parse_time(t) for t in ("90", "1:30:00", "45:30", "2-00", "1-02:30")] == [90, 90, 46, 2880, 1590]


def test_executor_slurm_without_the_extra_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "submitit", None)
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    code = main(["--profile", str(profile), "--results", str(tmp_path / "r"), "--executor", "slurm"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install 'tailrobust[slurm]'" in err
