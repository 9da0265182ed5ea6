"""Atomic writes for everything a run leaves on disk: a crash never leaves a half-written file."""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


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


def harness_commit() -> str:
    """The git commit of the harness that produced a result (with "+dirty" for uncommitted changes)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + ("+dirty" if dirty else "")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_name() -> str:
    """The processor's model name (Linux), for cost records of CPU runs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def package_versions() -> dict[str, str]:
    """Versions that can change a number: recorded beside every result."""
    import numpy
    import torch

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__,
                "platform": platform.platform(), "cuda": torch.version.cuda or "none"}
    try:
        import torchattacks

        versions["torchattacks"] = torchattacks.__version__
    except ImportError:
        versions["torchattacks"] = "not installed"
    try:
        import torchvision

        versions["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    try:  # the reference AutoAttack, when installed (optional cross-check)
        from importlib.metadata import version

        versions["pyautoattack"] = version("pyautoattack")
    except Exception:
        pass
    if torch.backends.cudnn.is_available():
        versions["cudnn"] = str(torch.backends.cudnn.version())
    return versions
