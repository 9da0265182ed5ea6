"""Provenance recorded beside every result: the harness commit, package versions, the device and memory."""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


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


def package_versions() -> dict[str, str | int]:
    """Versions that can change a number: recorded beside every result."""
    import numpy
    import torch

    from . import __version__

    versions = {"tailrobust": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
                "torch_num_threads": torch.get_num_threads(),  # float rounding, so a trained model, depends on it
                "numpy": numpy.__version__,
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
