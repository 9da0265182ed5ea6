"""``--executor slurm``: each cell is one Slurm job submitted through submitit (one job per cell, so each
gets the resources of its own model).

A job's callable is a ``submitit.helpers.Checkpointable``: on preemption or time-out submitit catches
Slurm's warning signal (USR2, ``--signal=USR2@90``), calls its ``checkpoint`` (the cell folder already
holds the checkpoint of the last epoch, so resubmitting the same call is enough) and requeues the job;
the requeued job runs ``run_cell``, which resumes from that checkpoint. A job that dies without a
result (node failure, OOM, ``scancel``) is submitted again by the driver up to ``max_retries`` times; an
exception raised by the cell is recorded as its failure. ``cluster`` is submitit's: ``slurm``, or
``local`` (the same jobs as local processes; what CI runs where Slurm cannot start).
"""
from __future__ import annotations

import time
from pathlib import Path

from ..plan import Plan
from . import require
from .driver import drive
from .resources import Resources
from .storage import Store, is_url


class CellJob:
    """One cell as a submitit job. Its ``checkpoint`` method is what submitit looks for to requeue a job
    (the protocol of ``submitit.helpers.Checkpointable``, without importing submitit here)."""

    def __init__(self, plan: Plan, store: Store, force: bool, retry_failed: bool, threads: int):
        self.plan, self.store, self.force, self.retry_failed, self.threads = plan, store, force, retry_failed, threads

    def __call__(self) -> dict:
        import torch

        torch.set_num_threads(max(1, self.threads))
        # a requeued job must resume, never start over: only the first start may force
        force, self.force = self.force, False
        return self.store.run(self.plan, force=force, progress=False, retry_failed=self.retry_failed)

    def checkpoint(self):
        """submitit's hook on preemption/time-out: requeue the same cell; it resumes from its checkpoint."""
        from submitit.helpers import DelayedSubmission

        self.force = False
        return DelayedSubmission(self)


class SlurmExecutor:
    def __init__(self, folder: str | None = None, partition: str | None = None, time_min: int | None = None,
                 num_cpus: int | None = None, num_gpus: float | None = None, mem_gb: int | None = None,
                 max_retries: int = 2, cluster: str | None = None, extra: dict | None = None, poll: float = 5.0):
        self.submitit = require("slurm")
        self.folder, self.partition, self.time_min = folder, partition, time_min
        self.num_cpus, self.num_gpus, self.mem_gb = num_cpus, num_gpus, mem_gb
        self.max_retries, self.cluster, self.extra, self.poll = max_retries, cluster, extra or {}, poll

    def default_device(self) -> str:
        """cuda on a real Slurm (the profiles ask for GPUs); this machine's choice for submitit's local jobs."""
        if self.cluster == "local":
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return "cuda"

    def resources(self, plan: Plan) -> Resources:
        return Resources.for_plan(plan).override(num_gpus=self.num_gpus, num_cpus=self.num_cpus,
                                                 mem_gb=self.mem_gb, time_min=self.time_min)

    def parameters(self, plan: Plan) -> dict:
        """submitit's parameters for the cell's job (``slurm_*`` ones reach only a real Slurm)."""
        r = self.resources(plan)
        params = {"timeout_min": r.time_min, "cpus_per_task": r.num_cpus, "mem_gb": r.mem_gb, "tasks_per_node": 1,
                  "nodes": 1, "name": "tailrobust", "slurm_additional_parameters": {"requeue": True}}
        if r.num_gpus:
            params["gpus_per_node"] = max(1, int(round(r.num_gpus)))  # Slurm gives whole GPUs to a job
        if self.partition:
            params["slurm_partition"] = self.partition
        params.update(self.extra)
        return params

    def describe_plan(self, plan: Plan) -> str:
        p = self.parameters(plan)
        bits = [f"partition={p.get('slurm_partition', '(default)')}", f"time={p['timeout_min']}min",
                f"cpus={p['cpus_per_task']}", f"mem={p['mem_gb']}G", f"gpus={p.get('gpus_per_node', 0)}"]
        return "slurm job " + " ".join(bits) + f" max_retries={self.max_retries}"

    def job_folder(self, results) -> Path:
        if self.folder:
            return Path(self.folder)
        if is_url(str(results)):
            return Path(".submitit")
        return Path(str(results)) / ".submitit"

    def run(self, cells: list[Plan], results_dir, force: bool, progress: bool, report,
            retry_failed: bool = False) -> list[dict]:
        store = results_dir if isinstance(results_dir, Store) else Store(results_dir)
        folder = self.job_folder(store.location) / "%j"
        executor = self.submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        backend = _SlurmBackend(self, executor, store, force, retry_failed)
        return drive(backend, cells, store, force, report, retry_failed=retry_failed, max_retries=self.max_retries,
                     poll=self.poll)


class _SlurmBackend:
    def __init__(self, owner: SlurmExecutor, executor, store: Store, force: bool, retry_failed: bool):
        self.owner, self.executor, self.store = owner, executor, store
        self.force, self.retry_failed = force, retry_failed
        self._missing: dict = {}  # job id -> times in a row squeue did not list it
        self._gone: set = set()  # jobs that ended without a result (job.result() would wait for ever)

    def slots(self) -> int:
        return 1  # unknown to the driver: the ETA is that of one cell at a time (an upper bound)

    def submit(self, plan: Plan, attempt: int):
        params = self.owner.parameters(plan)
        self.executor.update_parameters(**params)
        return self.executor.submit(CellJob(plan, self.store, self.force and attempt == 0, self.retry_failed,
                                            params["cpus_per_task"]))

    def describe(self, job) -> str:
        return f"(job {job.job_id})"

    def wait(self, jobs, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            done = [job for job in jobs if job.done()]
            done += [job for job in self._vanished(jobs) if job not in done]
            if done or time.monotonic() >= deadline:
                return done
            time.sleep(min(0.5, timeout))

    def _vanished(self, jobs) -> list:
        """Jobs Slurm no longer lists that left no result, seen twice in a row: submitit asks ``sacct``, which
        a Slurm without accounting (a single-node test cluster) cannot answer, so ask ``squeue`` too."""
        if not jobs or getattr(self.executor, "cluster", "") != "slurm":
            return []
        import subprocess

        ids = [str(job.job_id) for job in jobs]
        try:
            listed = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True,
                                    text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return []
        if listed.returncode != 0 and "Invalid job id" not in listed.stderr:
            return []
        alive = {line.strip().split("_")[0] for line in listed.stdout.splitlines()}
        gone = []
        for job in jobs:
            if str(job.job_id) in alive or job.paths.result_pickle.exists():
                self._missing.pop(job.job_id, None)
                continue
            self._missing[job.job_id] = self._missing.get(job.job_id, 0) + 1
            if self._missing[job.job_id] >= 2:
                self._gone.add(job.job_id)
                gone.append(job)
        return gone

    def outcome(self, job):
        submitit = self.owner.submitit
        if job.job_id in self._gone and not job.paths.result_pickle.exists():
            return None, True, f"job {job.job_id} ended without a result (killed or cancelled)"
        try:
            return job.result(), False, ""
        except submitit.core.utils.FailedJobError as err:  # the cell raised: recorded, not retried
            lines = [line for line in str(err).strip().splitlines() if line.strip()]
            return None, False, lines[-1] if lines else "job failed"
        except submitit.core.utils.UncompletedJobError as err:  # died without a result: retried
            return None, True, f"job {job.job_id} ended without a result ({job.state})"

    def cancel(self, jobs) -> None:
        for job in jobs:
            try:
                job.cancel(check=False)
            except Exception:
                pass

