"""One process owns a cell at a time: a lock file in the cell's folder.

Two grids on one results folder (two terminals, two lab-mates, a cluster job and its requeued copy) would
otherwise train the same cell twice, log every epoch twice and resume from each other's live checkpoint.
``lock.json`` is created with ``O_CREAT | O_EXCL`` (atomic on POSIX filesystems, NFS included since v3)
and holds the owner's pid, host, start time and the cell key. A daemon thread of the owner touches it every
``HEARTBEAT_S`` seconds (through hours of AutoAttack as through training), so its modification time is a
heartbeat.

A lock whose owner is gone is taken over:
- on the same host, when its pid no longer runs (a killed grid, a crashed worker);
- from another host, only once its heartbeat is older than ``stale_after_s`` (default 6 hours, the
  ``TAILROBUST_LOCK_STALE_S`` environment variable changes it): this host cannot see that process.

Taking over renames the stale lock first (only one of two racing processes' renames succeeds), then
creates a new one exclusively, so two processes never both believe they own a cell.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .cell import LOCK_FILE

DEFAULT_STALE_AFTER_S = 6 * 3600.0
HEARTBEAT_S = 60.0


def stale_after_default() -> float:
    try:
        return float(os.environ.get("TAILROBUST_LOCK_STALE_S", DEFAULT_STALE_AFTER_S))
    except ValueError:
        return DEFAULT_STALE_AFTER_S


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    """A killed child that its parent has not reaped yet still answers kill(pid, 0): read its state."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return fields[0] != "Z"


def read_owner(cell_dir: Path) -> dict | None:
    """The lock's content (pid, host, started, cell_key, age_s), or None when the cell is not locked.
    A lock file that cannot be parsed (a crash between create and write) is reported as owner unknown."""
    path = Path(cell_dir) / LOCK_FILE
    try:
        text = path.read_text(encoding="utf-8")
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return {"pid": -1, "host": "?", "started": "?", "age_s": 0.0}
    try:
        owner = json.loads(text)
        if not isinstance(owner, dict):
            raise ValueError
    except ValueError:
        owner = {"pid": -1, "host": "?", "started": "?"}
    owner["age_s"] = age
    return owner


def describe(owner: dict) -> str:
    return f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('started')}"


def is_stale(owner: dict, stale_after_s: float) -> bool:
    """The owner is gone: a dead pid on this host, or no heartbeat for ``stale_after_s`` (any host; an
    unparsable lock counts from its file's age, so a crash between create and write is taken over too)."""
    if owner.get("age_s", 0.0) > stale_after_s:
        return True
    if owner.get("host") == socket.gethostname():
        pid = owner.get("pid")
        return isinstance(pid, int) and pid > 0 and not _pid_alive(pid)
    return owner.get("host") == "?" and owner.get("age_s", 0.0) > 60.0


@dataclass
class CellLock:
    """``with CellLock(cell_dir, key) as lock:`` — ``lock.acquired`` says whether this process owns the cell;
    ``lock.owner`` then names the other one. Released (the file removed) on exit if acquired."""

    cell_dir: Path
    cell_key: str
    stale_after_s: float | None = None
    acquired: bool = False
    owner: dict | None = None
    took_over: dict | None = None  # the stale lock this process replaced, for the log
    _stop: threading.Event | None = None

    @property
    def path(self) -> Path:
        return Path(self.cell_dir) / LOCK_FILE

    def _create(self) -> bool:
        body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "cell_key": self.cell_key,
                           "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def acquire(self) -> bool:
        Path(self.cell_dir).mkdir(parents=True, exist_ok=True)
        stale_after = stale_after_default() if self.stale_after_s is None else self.stale_after_s
        for _ in range(3):
            if self._create():
                self.acquired, self.owner = True, None
                self._start_heartbeat()
                return True
            owner = read_owner(self.cell_dir)
            if owner is None:  # released between our create and read: try again
                continue
            if not is_stale(owner, stale_after):
                self.owner = owner
                return False
            aside = self.path.with_name(f".{LOCK_FILE}.stale-{secrets.token_hex(4)}")
            try:
                os.rename(self.path, aside)  # of two racing takers-over, one rename finds the file
            except FileNotFoundError:
                continue
            aside.unlink(missing_ok=True)
            self.took_over = owner
        self.owner = read_owner(self.cell_dir)
        return False

    def heartbeat(self) -> None:
        """Touch the lock: the owner is alive."""
        if self.acquired:
            try:
                os.utime(self.path)
            except OSError:
                pass

    def _start_heartbeat(self) -> None:
        self._stop = threading.Event()

        def beat(stop: threading.Event) -> None:
            while not stop.wait(HEARTBEAT_S):
                self.heartbeat()

        threading.Thread(target=beat, args=(self._stop,), daemon=True, name=f"lock {self.cell_key}").start()

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self.acquired:
            owner = read_owner(self.cell_dir)
            if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self.acquired = False

    def __enter__(self) -> "CellLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
