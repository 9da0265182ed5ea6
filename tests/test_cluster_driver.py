"""The driver loop shared by the Ray and Slurm executors (benchmark/cluster/driver.py), with a backend that
runs cells in this process: a cell whose worker keeps dying is retried ``max_retries`` times, then recorded
failed with its cause while the rest finish; a cell another live run holds ("locked") is listed as skipped,
neither done nor failed, and the grid then waits for its lock to go and submits it; the CLI's end-of-grid
summary names failed cells and the retry command; ``--evaluate-only`` submits only finished cells that lack an
attack."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import subprocess
import sys

import pytest
import yaml

import benchmark.cluster.cli as cluster_cli
from benchmark.__main__ import main
from benchmark.cell_lock import LOCK_FILE
from benchmark.cluster.driver import drive
from benchmark.executors import run_grid
from benchmark.cluster.storage import Store
from benchmark.config import expand_grid
from benchmark.console import format_failed_summary
from toys import TINY_PROFILE

pytestmark = pytest.mark.usefixtures("one_thread")


class InProcess:
    """Runs each submitted cell here; ``dies`` names cells whose 'worker' dies every time, ``locked`` cells
    another run holds."""

    def __init__(self, store, dies=(), locked=()):
        self.store, self.dies, self.locked, self.submitted, self.plans = store, set(dies), set(locked), [], {}

    def slots(self):
        return 1

    def submit(self, plan, attempt):
        self.submitted.append((plan.key, attempt))
        self.plans[plan.key] = plan
        return (plan.key, attempt)  # a handle is hashable, as Ray's ObjectRefs and submitit's jobs are

    def describe(self, handle):
        return f"(attempt {handle[1]})"

    def wait(self, handles, timeout):
        return handles[:1]

    def outcome(self, handle):
        plan = self.plans[handle[0]]
        if plan.key in self.dies:
            return None, True, "worker died (SIGKILL)"
        if plan.key in self.locked:
            return {"status": "locked", "cell_key": plan.key, "owner": "pid 4242 on node7"}, False, ""
        return self.store.run(plan), False, ""

    def cancel(self, handles):
        pass


class InProcessExecutor:
    """A cluster executor as ``run_grid`` sees one (``run`` over the driver loop), whose backend runs the cells
    in this process; ``backends`` keeps one per pass over the grid."""

    def __init__(self, after_pass=None):
        self.backends, self.after_pass = [], after_pass

    def run(self, cells, results_dir, force, progress, report, retry_failed=False):
        backend = InProcess(results_dir)
        self.backends.append(backend)
        out = drive(backend, cells, results_dir, force, report, retry_failed=retry_failed, poll=0)
        if self.after_pass is not None:
            self.after_pass()
        return out

    def describe_plan(self, plan):
        return "in process"


def _plans():
    cells = expand_grid({**yaml.safe_load(TINY_PROFILE), "methods": ["at", "taet", "mart"], "epochs": 1})
    return [cfg.resolve("cpu") for cfg in cells]


def test_a_cell_whose_worker_keeps_dying_is_recorded_failed_and_the_rest_finish(tmp_path):
    plans, store = _plans(), Store(tmp_path)
    dying, locked, good = plans
    backend = InProcess(store, dies=[dying.key], locked=[locked.key])
    reported, out = [], io.StringIO()
    with contextlib.redirect_stdout(out):
        results = drive(backend, plans, store, force=False, report=reported.append, max_retries=2, poll=0)
    printed = out.getvalue()
    assert [a for k, a in backend.submitted if k == dying.key] == [0, 1, 2]  # first run + 2 retries
    failure = results[0]["failure"]
    assert results[0]["status"] == "failed" and failure["stage"] == "worker"
    assert failure["cause"] == "worker died (SIGKILL) (after 3 attempts)"
    on_disk = json.loads((tmp_path / dying.key / "metrics.json").read_text())
    assert on_disk["status"] == "failed" and on_disk["cell_key"] == dying.key
    assert results[1]["status"] == "locked" and not (tmp_path / locked.key / "metrics.json").exists()
    assert results[2]["status"] == "complete"
    assert "retry 2/2 (worker died (SIGKILL))" in printed
    assert "1 cell(s) skipped, locked by another run" in printed and "pid 4242 on node7" in printed
    assert "[1/3 done | 0 running or queued | 1 failed |" in printed  # the locked cell is not counted done
    assert sorted(m.get("cell_key") for m in reported) == sorted([dying.key, good.key])  # a locked cell: no table
    summary = format_failed_summary([results[0]], "python -m benchmark --executor ray --retry-failed")
    assert dying.key in summary and "--retry-failed" in summary


def test_a_failed_cell_is_not_submitted_again_without_retry_failed(tmp_path):
    plans, store = _plans()[:1], Store(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        drive(InProcess(store, dies=[plans[0].key]), plans, store, force=False, report=lambda m: None, max_retries=0)
        again = InProcess(store)
        (result,) = drive(again, plans, store, force=False, report=lambda m: None)
    assert again.submitted == [] and result["status"] == "failed"


def test_a_finished_cell_the_plan_asks_a_new_attack_of_is_submitted_to_add_it(tmp_path):
    settings = {**yaml.safe_load(TINY_PROFILE), "epochs": 1}
    (first,) = [cfg.resolve("cpu") for cfg in expand_grid(settings)]
    more = {**settings, "eval_attacks": settings["eval_attacks"] + [{"kind": "fgsm"}]}
    (second,) = [cfg.resolve("cpu") for cfg in expand_grid(more)]
    assert first.key == second.key  # the attacks are not part of the cell key
    store, out = Store(tmp_path), io.StringIO()
    with contextlib.redirect_stdout(out):
        drive(InProcess(store), [first], store, force=False, report=lambda m: None)
        backend = InProcess(store)
        (record,) = drive(backend, [second], store, force=False, report=lambda m: None)
    assert backend.submitted == [(second.key, 0)] and "submitted (adds attacks)" in out.getvalue()
    assert "fgsm" in record["evaluation"]["attacks"]


def test_a_cell_locked_by_a_live_run_is_waited_for_then_submitted_once_its_owner_is_gone(tmp_path):
    (plan,) = _plans()[:1]
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (tmp_path / plan.key).mkdir()
    (tmp_path / plan.key / LOCK_FILE).write_text(json.dumps({
        "pid": owner.pid, "host": socket.gethostname(), "started": "2026-12-01T00:00:00+00:00", "cell_key": plan.key}))
    def other_run_dies():  # after the first pass, leaving its lock behind
        owner.kill()
        owner.wait()

    executor, out = InProcessExecutor(after_pass=other_run_dies), io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            (result,) = run_grid([plan], Store(tmp_path), progress=False, quiet=True, executor=executor, poll_s=0.05)
    finally:
        owner.kill()
        owner.wait()
    assert result["status"] == "complete" and result["cell_key"] == plan.key
    assert [b.submitted for b in executor.backends] == [[(plan.key, 0)], [(plan.key, 0)]]  # locked, then run
    assert "waiting for 1 cell(s) locked by another run" in out.getvalue()


def test_evaluate_only_on_a_cluster_submits_only_finished_cells_that_lack_an_attack(finished_tiny, tmp_path,
                                                                                   monkeypatch, capsys):
    _, _, results, cfg = finished_tiny
    shutil.copytree(results, tmp_path / "results")
    settings = yaml.safe_load(TINY_PROFILE)
    settings.update(methods=["at", "taet"], eval_attacks=settings["eval_attacks"] + [{"kind": "fgsm"}])
    profile = tmp_path / "more.yaml"
    profile.write_text(yaml.safe_dump(settings))
    executor = InProcessExecutor()
    monkeypatch.setattr(cluster_cli, "make", lambda args: executor)
    monkeypatch.setattr(cluster_cli, "plan_device", lambda executor, args: "cpu")
    code = main(["--profile", str(profile), "--results", str(tmp_path / "results"), "--executor", "ray",
                 "--evaluate-only", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "--evaluate-only: 1 cell(s) to evaluate, 0 already evaluated under every attack, 1 not trained" in printed
    assert [key for b in executor.backends for key, _ in b.submitted] == [cfg.key()]  # taet's cell is not made
    record = json.loads((tmp_path / "results" / cfg.key() / "metrics.json").read_text())
    assert "fgsm" in record["evaluation"]["attacks"]
    assert sorted(p.name for p in (tmp_path / "results").iterdir() if not p.name.startswith(".")) == [cfg.key()]
