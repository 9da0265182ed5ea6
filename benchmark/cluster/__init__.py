"""Cluster executors: the same grid as a Ray task per cell (``--executor ray``) or a Slurm job per cell
through submitit (``--executor slurm``). Like the local executors they only decide where and when
``benchmark.runner.run_cell`` runs; the cell folder's checkpoint makes every retry a resume.

Ray and submitit are optional extras (``pip install 'tailrobust[ray]'`` / ``'tailrobust[slurm]'``):
:func:`require` turns a missing one into one line and exit 2.
"""
from __future__ import annotations

import importlib

from ..errors import UsageError

EXTRAS = {"ray": "ray", "slurm": "submitit"}  # executor -> the module its extra installs


def require(executor: str):
    """The module an executor needs, or a one-line UsageError naming the extra to install."""
    module = EXTRAS[executor]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"--executor {executor} needs the {executor!r} extra ({module} is not installed): "
                         f"pip install 'tailrobust[{executor}]'") from None
