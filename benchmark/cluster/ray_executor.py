"""``--executor ray``: each cell is one Ray task asking for its CPUs and (a share of) a GPU.

Ray packs tasks onto nodes by those numbers (``num_gpus=0.25`` puts four small cells on one GPU; Ray
sets ``CUDA_VISIBLE_DEVICES`` for each task). A worker process that dies mid-cell (killed, OOM, a lost
node) is retried by Ray itself up to ``max_retries`` times and the retry resumes from the cell's last
checkpoint; an exception inside the cell is not retried (it would fail again) and is recorded as the
cell's failure. ``address`` is passed to ``ray.init``: ``auto`` (a cluster started with ``ray start``),
``ray://host:10001`` (Ray Client), or None for a local instance on this machine.
"""
from __future__ import annotations

from ..plan import Plan
from . import require
from .driver import drive
from .resources import Resources
from .storage import Store


def _run_ray_cell(plan: Plan, store: Store, force: bool, retry_failed: bool, threads: int) -> dict:
    """The task body: one cell in this worker, ``threads`` intra-op threads (the CPUs Ray granted)."""
    import torch

    torch.set_num_threads(max(1, threads))
    return store.run(plan, force=force, progress=False, retry_failed=retry_failed)


class RayExecutor:
    def __init__(self, address: str | None = None, num_cpus: int | None = None, num_gpus: float | None = None,
                 max_retries: int = 2, init_kwargs: dict | None = None):
        self.ray = require("ray")
        self.address, self.max_retries = address, max_retries
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.init_kwargs = init_kwargs or {}

    def connect(self) -> None:
        if not self.ray.is_initialized():
            self.ray.init(address=self.address, log_to_driver=True, **self.init_kwargs)

    def default_device(self) -> str:
        """cuda when the cluster has GPUs, else cpu (the plans' speed switches resolve for it)."""
        self.connect()
        return "cuda" if self.ray.cluster_resources().get("GPU", 0) > 0 else "cpu"

    def resources(self, plan: Plan) -> Resources:
        return Resources.for_plan(plan).override(num_gpus=self.num_gpus, num_cpus=self.num_cpus)

    def describe_plan(self, plan: Plan) -> str:
        r = self.resources(plan)
        return f"ray task num_cpus={r.num_cpus} num_gpus={r.num_gpus:g} max_retries={self.max_retries}"

    def run(self, cells: list[Plan], results_dir, force: bool, progress: bool, report,
            retry_failed: bool = False) -> list[dict]:
        ray = self.ray
        self.connect()
        store = results_dir if isinstance(results_dir, Store) else Store(results_dir)
        backend = _RayBackend(self, ray, store, force, retry_failed, cells)
        return drive(backend, cells, store, force, report, retry_failed=retry_failed,
                     max_retries=0)  # Ray retries dead workers itself (max_retries on the task)


class _RayBackend:
    def __init__(self, executor: RayExecutor, ray, store: Store, force: bool, retry_failed: bool, cells):
        self.executor, self.ray, self.store = executor, ray, store
        self.force, self.retry_failed, self.cells = force, retry_failed, cells
        self.remote = ray.remote(_run_ray_cell)

    def slots(self) -> int:
        """Cells running at once: the cluster's CPUs (and GPUs) over what one cell asks for."""
        if not self.cells:
            return 1
        total = self.ray.cluster_resources()
        r = self.executor.resources(self.cells[0])
        fits = [total.get("CPU", 0) // r.num_cpus]
        if r.num_gpus:
            fits.append(total.get("GPU", 0) // r.num_gpus)
        return max(1, int(min(fits)))

    def submit(self, plan: Plan, attempt: int):
        r = self.executor.resources(plan)
        options = dict(num_cpus=r.num_cpus, num_gpus=r.num_gpus, max_retries=self.executor.max_retries,
                       retry_exceptions=False, name=f"cell {plan.key}")
        return self.remote.options(**options).remote(plan, self.store, self.force, self.retry_failed, r.num_cpus)

    def describe(self, handle) -> str:
        return f"(ray task {handle.task_id().hex()[:12]})"

    def wait(self, handles, timeout: float):
        done, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        if done:  # collect every other finished one too
            more, _ = self.ray.wait(handles, num_returns=len(handles), timeout=0)
            done = list({h: None for h in done + more})
        return done

    def outcome(self, handle):
        try:
            return self.ray.get(handle), False, ""
        except self.ray.exceptions.RayTaskError as err:  # the cell raised: not retried
            cause = str(err.cause) if getattr(err, "cause", None) is not None else str(err).strip().splitlines()[-1]
            return None, False, f"{type(getattr(err, 'cause', err)).__name__}: {cause}"
        except (self.ray.exceptions.WorkerCrashedError, self.ray.exceptions.RayError) as err:
            lines = str(err).strip().splitlines()
            return None, False, f"{type(err).__name__}: {lines[0] if lines else err} (Ray retried it {self.executor.max_retries} time(s))"

    def cancel(self, handles) -> None:
        for handle in handles:
            try:
                self.ray.cancel(handle, force=True)
            except Exception:
                pass
