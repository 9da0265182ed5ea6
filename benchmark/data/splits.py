"""Splits carved from a cell's long-tailed training subset (the validation split of ``selection: val_best``)."""
from __future__ import annotations

import numpy as np


def carve_validation(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, validation) positions: ``fraction`` of each class (at least one, never a class's last image)."""
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    kept, val = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rng.shuffle(members)
        n_val = min(max(1, int(np.floor(fraction * len(members)))), len(members) - 1)
        val.append(members[:n_val])
        kept.append(members[n_val:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(val))
