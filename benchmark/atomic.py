"""Atomic writes for everything a run leaves on disk: a crash never leaves a half-written file.

Files are created with the user's umask (0644 under the usual 022), as ``open`` would, so a lab-mate in
the group can read a shared results folder; ``tempfile.mkstemp`` alone would make every result 0600.
Checkpoints are read back only as plain tensors and builtins (``load_torch_plain``): a results folder
is data, and a pickle from it never runs code.
"""
from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from .errors import UsageError


class UnsafeFile(UsageError):
    """A file the harness refuses to read because reading it could run code (not plain tensors)."""


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new, exclusively created temporary file beside ``name``, mode 0o666 less the umask (the kernel
    applies the umask and any default ACL, so it is never read or changed from this process)."""
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {folder / name}")


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    _atomic_write(path, lambda h: h.write(json.dumps(data, indent=2, sort_keys=False, allow_nan=False).encode()))


def write_text_atomic(path: Path, text: str) -> None:
    _atomic_write(path, lambda h: h.write(text.encode()))


def save_torch_atomic(path: Path, obj: Any) -> None:
    import torch  # imported here: the report reads results without paying for torch

    _atomic_write(path, lambda h: torch.save(obj, h))


def load_torch_plain(path: Path, map_location=None) -> Any:
    """``torch.load(path, weights_only=True)``: tensors, dicts, lists, tuples, numbers, strings, None.

    Anything else (a pickled class, a function call) is refused with one line naming the file, never
    retried with ``weights_only=False``: the file may come from a shared or copied results folder."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        wants = re.search(r"GLOBAL (\S+)", text)  # torch names the class or function the pickle asks for
        lines = [line.split("WeightsUnpickler error:", 1)[-1].strip() for line in text.splitlines()
                 if "WeightsUnpickler error" in line]
        reason = f"it asks for {wants.group(1)}" if wants else lines[0] if lines else type(err).__name__
        raise UnsafeFile(f"refusing to load {path}: it is not a plain-tensor checkpoint (possibly unsafe: "
                         f"{reason})") from None


def save_npz_atomic(path: Path, **arrays) -> None:
    import numpy as np

    _atomic_write(path, lambda h: np.savez_compressed(h, **arrays))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
