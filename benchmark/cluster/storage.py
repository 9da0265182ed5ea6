"""Where a grid's results live, as every node sees them: a folder (a shared filesystem, the common case on
clusters) or an fsspec URL (``s3://bucket/results``, ``gs://...``; ``file://`` and ``memory://`` for tests).

A folder is used as is: ``run_cell`` writes there and its lock file keeps one owner per cell. For a URL a
cell runs in a local staging folder (``$TAILROBUST_STAGING`` or the temp dir) seeded with the cell's files
from the store, so a retry on another node resumes from the last checkpoint pushed. While it runs, changed
files are pushed every ``sync_every`` seconds (checkpoints as written); when it ends every file is pushed
and ``metrics.json`` last, each through a temporary name and a move, so the store holds a finished record
only once everything it refers to is there. Only the cell's owner (its task or job) pushes its folder.
Not handled: files a forced re-run moved aside stay in the store under their old names too until the
new record replaces ``metrics.json``; ``lock.json`` stays local to the node.
"""
from __future__ import annotations

import json
import os
import secrets
import tempfile
import threading
from pathlib import Path

from ..cell import CHECKPOINT_FILE, LOCK_FILE, METRICS_FILE, cell_status, read_record, write_failure
from ..errors import UsageError
from ..plan import Plan

LOCAL_ONLY = (LOCK_FILE,)


def is_url(location: str) -> bool:
    return "://" in str(location)


class Store:
    """A results location: :meth:`status`, :meth:`record`, :meth:`fail` for the driver; :meth:`run` in a worker."""

    def __init__(self, location, sync_every: float = 30.0):
        self.location = str(location)
        self.sync_every = sync_every
        self.remote = is_url(self.location)
        if self.remote:
            try:
                import fsspec

                self.fs, self.root = fsspec.core.url_to_fs(self.location)
            except (ImportError, ValueError) as err:  # an unknown protocol names the package to install
                raise UsageError(f"results {self.location}: {err}") from None
            self.root = self.root.rstrip("/")

    def __reduce__(self):  # a worker rebuilds the filesystem from the URL
        return (Store, (self.location, self.sync_every))

    def __str__(self) -> str:
        return self.location

    @property
    def lock_root(self) -> Path | None:
        """The folder whose cells' lock files every process sees (a shared folder); None for a URL, whose
        locks stay on the node that runs the cell."""
        return None if self.remote else Path(self.location)

    # -- the driver's view -------------------------------------------------------------------------------
    def local_dir(self, key: str) -> Path:
        """The folder a cell's files are read from here: the shared folder, or a fresh copy of its record."""
        if not self.remote:
            return Path(self.location) / key
        folder = Path(tempfile.mkdtemp(prefix="tailrobust-view-")) / key
        folder.mkdir()
        remote = f"{self.root}/{key}"
        for name in (METRICS_FILE, CHECKPOINT_FILE):
            if self.fs.exists(f"{remote}/{name}"):
                if name == CHECKPOINT_FILE:
                    (folder / name).touch()  # only its presence matters for the status
                else:
                    self.fs.get_file(f"{remote}/{name}", str(folder / name))
        return folder

    def status(self, plan: Plan) -> str:
        """``benchmark.runner.plan_status`` of the cell in the store: done, evaluate (finished, but the plan asks
        an attack it has not run), failed, resumable or new."""
        from ..runner import plan_status

        folder = self.local_dir(plan.key)
        return plan_status(plan, folder.parent)

    def record(self, key: str) -> dict:
        """A finished cell's record, or a failed cell's failed record."""
        folder = self.local_dir(key)
        if cell_status(folder) == "done":
            return read_record(folder).to_json()
        return json.loads((folder / METRICS_FILE).read_text())

    def fail(self, plan: Plan, stage: str, cause: str) -> dict:
        """Record a cell as failed (its worker kept dying or raised): the driver owns the record then."""
        import datetime as dt

        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        folder = Path(self.location) / plan.key if not self.remote else Path(tempfile.mkdtemp()) / plan.key
        write_failure(folder, stage=stage, cause=cause, config=plan.record(), finished_at=now)
        if self.remote:
            self._push(folder / METRICS_FILE, f"{self.root}/{plan.key}/{METRICS_FILE}")
        return json.loads((folder / METRICS_FILE).read_text())

    # -- in a worker ---------------------------------------------------------------------------------------
    def run(self, plan: Plan, force: bool = False, progress: bool = False, retry_failed: bool = False) -> dict:
        from ..runner import run_cell

        if not self.remote:
            return run_cell(plan, Path(self.location), force=force, progress=progress, retry_failed=retry_failed)
        staging = Path(os.environ.get("TAILROBUST_STAGING") or Path(tempfile.gettempdir()) / "tailrobust-staging")
        cell_dir = staging / plan.key
        self._pull(plan.key, cell_dir)
        pushed: dict[str, tuple] = {}
        stop = threading.Event()

        def sync_loop():
            while not stop.wait(self.sync_every):
                self._sync(cell_dir, plan.key, pushed)

        syncer = threading.Thread(target=sync_loop, name=f"sync {plan.key}", daemon=True)
        syncer.start()
        try:
            metrics = run_cell(plan, staging, force=force, progress=progress, retry_failed=retry_failed)
        finally:
            stop.set()
            syncer.join()
            self._sync(cell_dir, plan.key, pushed)  # everything but the record
        if metrics.get("status") != "locked" and (cell_dir / METRICS_FILE).exists():
            self._push(cell_dir / METRICS_FILE, f"{self.root}/{plan.key}/{METRICS_FILE}")  # the record last
        return metrics

    def _pull(self, key: str, cell_dir: Path) -> None:
        """The store's copy of a cell replaces the staging copy (another node may have advanced it)."""
        remote = f"{self.root}/{key}"
        if not self.fs.exists(remote):
            return
        for path in self.fs.find(remote):
            rel = path[len(remote):].lstrip("/")
            target = cell_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.pull")
            self.fs.get_file(path, str(tmp))
            os.replace(tmp, target)

    def _sync(self, cell_dir: Path, key: str, pushed: dict) -> None:
        """Push the files that changed since the last push, except the record and local-only files."""
        if not cell_dir.exists():
            return
        for path in sorted(p for p in cell_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(cell_dir).as_posix()
            if rel == METRICS_FILE or path.name in LOCAL_ONLY or path.name.startswith("."):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # replaced between listing and reading
                continue
            stamp = (stat.st_mtime_ns, stat.st_size)
            if pushed.get(rel) != stamp:
                try:
                    self._push(path, f"{self.root}/{key}/{rel}")
                except FileNotFoundError:
                    continue
                pushed[rel] = stamp

    def _push(self, local: Path, remote: str) -> None:
        """Copy a local file to the store through a temporary name and a move (no half-written file there)."""
        parent = remote.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.{remote.rsplit('/', 1)[1]}.{secrets.token_hex(4)}.tmp"
        self.fs.put_file(str(local), tmp)
        self.fs.mv(tmp, remote)
