"""How a grid's cells are run: one after another here (default), or one cell per device in parallel
processes (``--devices 0,1``). An executor only decides where and when ``run_cell`` runs; a cluster
executor (Slurm, Ray) would implement the same ``run`` and nothing else.

Progress is reported per cell with the grid's position and an ETA from the epoch and evaluation
times measured so far in this grid. ``run_grid`` runs a grid's resolved plans with one of them and
prints the console tables.
"""
from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .console import format_cell_table, format_failed_cell, format_grid_summary
from .errors import UsageError
from .plan import Plan
from .cell import cell_status
from .cell_lock import describe as describe_owner, is_stale, read_owner, stale_after_default
from .runner import is_locked, plan_status, run_cell

Report = Callable[[dict], None]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


@dataclass
class GridProgress:
    """Cells done / total and an ETA: remaining epochs × measured seconds per epoch (per method where
    measured, else over all methods) plus the mean evaluation time, divided by the parallel workers."""

    cells: list[Plan]
    results_dir: Path
    workers: int = 1
    started: float = field(default_factory=time.perf_counter)
    epoch_seconds: dict[str, list[float]] = field(default_factory=dict)
    eval_seconds: list[float] = field(default_factory=list)
    done: set[str] = field(default_factory=set)

    def finished(self, cfg: Plan, metrics: dict, ran: bool) -> None:
        self.done.add(cfg.key)
        cost = metrics.get("cost", {})
        if ran and cost.get("seconds_per_epoch"):
            self.epoch_seconds.setdefault(cfg.method, []).append(cost["seconds_per_epoch"])
            self.eval_seconds.append(cost.get("eval_seconds", 0.0))

    def eta_seconds(self) -> float | None:
        if not self.epoch_seconds:
            return None
        every = [s for values in self.epoch_seconds.values() for s in values]
        total = 0.0
        for cfg in self.cells:
            if cfg.key in self.done or cell_status(Path(self.results_dir) / cfg.key) == "done":
                continue
            per_epoch = self.epoch_seconds.get(cfg.method, every)
            total += cfg.epochs * sum(per_epoch) / len(per_epoch) + sum(self.eval_seconds) / len(self.eval_seconds)
        return total / self.workers

    def line(self, index: int, verb: str, cfg: Plan, where: str = "") -> str:
        eta = self.eta_seconds()
        elapsed = _duration(time.perf_counter() - self.started)
        tail = f"elapsed {elapsed}" + (f", ETA {_duration(eta)}" if eta is not None else "")
        return f"[{index}/{len(self.cells)} | {len(self.done)} done | {tail}] {verb}{where}: {cfg.key}"


def _verb(status: str, force: bool, retry_failed: bool = False) -> str:
    if force and status != "new":
        return "re-run (--force)"
    if status == "failed":
        return "retry (--retry-failed)" if retry_failed else "skip (failed; --retry-failed runs it again)"
    return {"done": "skip (finished)", "resumable": "resume", "new": "run",
            "evaluate": "evaluate (attacks added; no training)"}[status]


def is_failed(metrics: dict) -> bool:
    """A cell's result is its ``failed`` record (benchmark.cell.write_failure), not metrics."""
    return metrics.get("status") == "failed"


class LocalExecutor:
    """Cells one after another in this process (the default)."""

    def run(self, cells: list[Plan], results_dir: Path, force: bool, progress: bool,
            report: Report, retry_failed: bool = False) -> list[dict]:
        tracker, out = GridProgress(cells, results_dir), []
        for i, cfg in enumerate(cells, 1):
            status = plan_status(cfg, Path(results_dir))
            print(tracker.line(i, _verb(status, force, retry_failed), cfg), flush=True)
            metrics = run_cell(cfg, results_dir, force=force, progress=progress, retry_failed=retry_failed)
            if not is_locked(metrics):
                tracker.finished(cfg, metrics, ran=force or status != "done")
            report(metrics)
            out.append(metrics)
        return out


def _run_on_device(plan: Plan, device: str, results_dir: str, force: bool, retry_failed: bool = False) -> dict:
    """Worker process: one cell on one device, no progress bars (several workers share a terminal)."""
    import torch

    if device == "cpu":
        torch.set_num_threads(1)
    return run_cell(plan.at(device), Path(results_dir), force=force, progress=False, retry_failed=retry_failed)


class DeviceExecutor:
    """One cell per device at a time, each in its own process (spawned: CUDA cannot be forked).

    ``devices`` are torch device names (``cuda:0``, ``cuda:1``; a bare number means a CUDA index);
    ``cpu`` entries are allowed, which is how the tests run it. The device is a location, not part of
    the cell key, so a cell gives the same folder whichever GPU ran it.
    """

    def __init__(self, devices: list[str]):
        self.devices = [f"cuda:{d}" if str(d).isdigit() else str(d) for d in devices]
        if len({d.split(":")[0] for d in self.devices}) > 1:
            raise UsageError(f"--devices mixes device types ({', '.join(self.devices)}): speed settings resolve "
                             "per device type and are part of the cell key, so give one type")

    def run(self, cells: list[Plan], results_dir: Path, force: bool, progress: bool,
            report: Report, retry_failed: bool = False) -> list[dict]:
        # plans resolved for this device type (``resolve_device``): a worker moves one to its own device
        cells = [cfg.at(self.devices[0]) for cfg in cells]
        tracker = GridProgress(cells, results_dir, workers=len(self.devices))
        results: dict[str, dict] = {}
        queue = list(enumerate(cells, 1))
        free = list(self.devices)
        running = {}
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=len(self.devices), mp_context=context) as pool:
            while queue or running:
                while queue and free:
                    i, cfg = queue.pop(0)
                    status = plan_status(cfg, Path(results_dir))
                    device = free.pop(0)
                    print(tracker.line(i, _verb(status, force, retry_failed), cfg, f" on {device}"), flush=True)
                    future = pool.submit(_run_on_device, cfg, device, str(results_dir), force, retry_failed)
                    running[future] = (cfg, device, status)
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    cfg, device, status = running.pop(future)
                    free.append(device)
                    metrics = future.result()  # a failed cell returns its failed record; a crash stops the grid
                    if not is_locked(metrics):
                        tracker.finished(cfg, metrics, ran=force or status != "done")
                    report(metrics)
                    results[cfg.key] = metrics
        return [results[cfg.key] for cfg in cells]


def make_executor(devices: list[str] | None):
    return DeviceExecutor(devices) if devices else LocalExecutor()


def resolve_device(devices: list[str] | None) -> str | None:
    """The device a grid's plans are resolved for: the first of ``devices`` (every worker is of its type),
    or None (each config's own device) for a run in this process."""
    if not devices:
        return None
    return DeviceExecutor(devices).devices[0]


def _after_locked(runner, cells: list[Plan], out: list[dict], results_dir, progress: bool, report: Report,
                  retry_failed: bool, poll_s: float = 5.0, locks: Path | None = None) -> list[dict]:
    """Wait for the cells that were locked by another run, then run them here (a finished one is only read).
    ``locks``: the folder holding the cells' lock files (default ``results_dir``; a cluster store's folder)."""
    locks = Path(results_dir) if locks is None else locks
    by_key = {m.get("cell_key"): m for m in out}
    waiting = [p for p in cells if is_locked(by_key.get(p.key, {}))]
    while waiting:
        print(f"waiting for {len(waiting)} cell(s) locked by another run (Ctrl-C stops; rerun later to finish)",
              flush=True)
        while not (free := [p for p in waiting if _lock_gone(locks / p.key)]):
            time.sleep(poll_s)
        for metrics in runner.run(free, results_dir, False, progress, report, retry_failed=retry_failed):
            by_key[metrics.get("cell_key")] = metrics
        waiting = [p for p in waiting if is_locked(by_key.get(p.key, {}))]
    return [by_key.get(m.get("cell_key"), m) for m in out]


def _lock_gone(cell_dir: Path) -> bool:
    owner = read_owner(cell_dir)
    return owner is None or is_stale(owner, stale_after_default())


def run_grid(cells: list[Plan], results_dir: Path, force: bool = False, progress: bool = True,
             quiet: bool = False, devices: list[str] | None = None, retry_failed: bool = False,
             executor=None, wait_locked: bool = True, poll_s: float = 5.0) -> list[dict]:
    """Run every cell's plan (skipping finished ones) with the local or per-device executor (or ``executor``,
    e.g. a cluster one from ``benchmark.cluster``; ``results_dir`` may then be an fsspec URL); print each
    cell's per-class table as it finishes (unless quiet), then the grid summary. Plans for ``devices``
    are resolved for ``resolve_device(devices)``.

    Cells another live process owns (their lock) are skipped while the rest runs; then, with
    ``wait_locked``, the grid waits for each lock to go (polling every ``poll_s`` seconds) and takes the
    result the owner left (or runs the cell itself if the owner died without finishing it)."""
    unique = list({plan.key: plan for plan in cells}.values())  # the same cell twice would run twice at once

    def report(metrics: dict) -> None:
        if is_locked(metrics):
            print(f"locked: {metrics['cell_key']} is being run by {describe_owner(metrics['owner'])}; "
                  "skipped for now", flush=True)
        elif is_failed(metrics):
            print(format_failed_cell(metrics), flush=True)
        elif not quiet:
            print(format_cell_table(metrics), flush=True)

    where = results_dir if executor is not None else Path(results_dir)
    runner = executor or make_executor(devices)
    out = runner.run(unique, where, force, progress and not quiet, report, retry_failed=retry_failed)
    locks = where if isinstance(where, Path) else getattr(where, "lock_root", None)  # a cluster store's folder
    if wait_locked and locks is not None:
        out = _after_locked(runner, unique, out, where, progress and not quiet, report, retry_failed, poll_s, locks)
    finished = [m for m in out if not is_failed(m) and not is_locked(m)]
    if len(finished) > 1:
        print(format_grid_summary(finished), flush=True)
    return out
