"""The driver loop every cluster executor shares: submit the cells that are not finished, show grid
progress as the local executor does, turn a cell whose worker kept dying into a failed record, and on
Ctrl-C cancel what is still queued or running (finished cells stay as they are).

A backend supplies ``submit(plan, attempt) -> handle``, ``wait(handles, timeout) -> finished handles``,
``outcome(handle) -> (metrics | None, retry: bool, cause)``, ``cancel(handles)`` and ``slots()`` (how many
cells run at once, for the ETA).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..executors import GridProgress, _duration, is_failed
from ..plan import Plan
from .storage import Store


def is_locked(metrics: dict) -> bool:
    """``run_cell``'s answer when another live process owns the cell: skipped, neither done nor failed."""
    return metrics.get("status") == "locked"


class Progress(GridProgress):
    failed: int = 0
    running: int = 0

    def status_line(self, verb: str, cfg: Plan) -> str:
        eta = self.eta_seconds()
        tail = f"elapsed {_duration(time.perf_counter() - self.started)}" + (f", ETA {_duration(eta)}" if eta is not None else "")
        finished = len(self.done) - self.failed  # self.done holds failed cells too (they need no more time)
        return (f"[{finished}/{len(self.cells)} done | {self.running} running or queued | {self.failed} failed | {tail}] "
                f"{verb}: {cfg.key}")


def drive(backend, cells: list[Plan], store: Store, force: bool, report, retry_failed: bool = False,
          max_retries: int = 2, poll: float = 1.0) -> list[dict]:
    results: dict[str, dict] = {}
    tracker = Progress(cells, Path(store.location) if not store.remote else Path(".tailrobust-never"),
                       workers=max(1, backend.slots()))
    tracker.failed = tracker.running = 0
    pending = []
    for i, cfg in enumerate(cells, 1):
        status = store.status(cfg)
        if not force and (status == "done" or (status == "failed" and not retry_failed)):
            verb = "skip (finished)" if status == "done" else "skip (failed; --retry-failed runs it again)"
            print(tracker.line(i, verb, cfg), flush=True)
            metrics = store.record(cfg.key)
            tracker.finished(cfg, metrics, ran=False)
            tracker.failed += is_failed(metrics)
            results[cfg.key] = metrics
            report(metrics)
        else:
            pending.append((i, cfg, status))
    handles: dict = {}
    attempts: dict[str, int] = {}
    try:
        for i, cfg, status in pending:
            handle = backend.submit(cfg, 0)
            handles[handle] = cfg
            attempts[cfg.key] = 0
            tracker.running += 1
            verb = {"resumable": "submitted (resumes)", "failed": "submitted (--retry-failed)",
                    "evaluate": "submitted (adds attacks)"}.get(status, "submitted")
            print(tracker.line(i, f"{verb} {backend.describe(handle)}", cfg), flush=True)
        while handles:
            for handle in backend.wait(list(handles), poll):
                cfg = handles.pop(handle)
                metrics, retry, cause = backend.outcome(handle)
                if metrics is None and retry and attempts[cfg.key] < max_retries:
                    attempts[cfg.key] += 1
                    new = backend.submit(cfg, attempts[cfg.key])
                    handles[new] = cfg
                    print(tracker.status_line(f"retry {attempts[cfg.key]}/{max_retries} ({cause}) "
                                              f"{backend.describe(new)}", cfg), flush=True)
                    continue
                tracker.running -= 1
                if metrics is None:
                    tries = attempts[cfg.key] + 1
                    metrics = store.fail(cfg, "worker", f"{cause} (after {tries} attempt{'s' * (tries > 1)})")
                tracker.failed += is_failed(metrics)
                if not is_locked(metrics):
                    tracker.finished(cfg, metrics, ran=True)
                results[cfg.key] = metrics
                verb = ("locked by another run (skipped)" if is_locked(metrics)
                        else "FAILED" if is_failed(metrics) else "done")
                print(tracker.status_line(verb, cfg), flush=True)
                if not is_locked(metrics):
                    report(metrics)
    except KeyboardInterrupt:
        outstanding = list(handles)
        backend.cancel(outstanding)
        print(f"\ninterrupted: cancelled {len(outstanding)} queued or running cell(s); {len(results)} finished "
              "cell(s) are intact; the same command resumes the rest from their checkpoints", file=sys.stderr, flush=True)
        raise SystemExit(130)
    locked = [m for m in results.values() if is_locked(m)]
    if locked:
        print(f"{len(locked)} cell(s) skipped, locked by another run (run again once it has finished):", flush=True)
        for m in locked:
            print(f"  {m.get('cell_key', '?')}: {m.get('owner', m.get('lock', ''))}", flush=True)
    return [results[cfg.key] for cfg in cells]
