"""Atomic writes for everything a run leaves on disk: a crash never leaves a half-written file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def save_npz_atomic(path: Path, **arrays) -> None:
    import numpy as np

    _atomic_write(path, lambda h: np.savez_compressed(h, **arrays))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
