"""Long-tailed subsets of a balanced split, built the way CIFAR-LT papers build them.

Counts follow the exponential profile of the LDAM / AT-BSL builders (class 0 is the head), and
the examples are drawn with a RandomState of their own, so the same subset comes back for a
`subset_seed` whatever the training seed. The same function builds the long-tailed test split
option (the imbalance ratio applied to the test split, as the TAET authors' code does).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from benchmark.errors import UsageError


def longtail_counts(n_max: int, num_classes: int, ir: float) -> list[int]:
    """n_c = floor(n_max * IR^(-c/(C-1))), computed as LDAM's builder does so counts match its subsets."""
    if not ir >= 1:
        raise UsageError(f"imbalance ratio must be >= 1, got {ir}")
    if num_classes < 1:
        raise UsageError(f"number of classes must be >= 1, got {num_classes}")
    if num_classes == 1:
        return [int(n_max)]
    # LDAM's exact float expression, so a last-bit rounding difference can never make floor
    # disagree with the subsets the published numbers were trained on.
    counts = [int(n_max * (1.0 / ir) ** (c / (num_classes - 1.0))) for c in range(num_classes)]
    if counts[-1] < 1:
        raise UsageError(
            f"imbalance ratio {ir:g} leaves the tail class empty ({n_max} examples in the head class); use IR <= {n_max}"
        )
    return counts


@dataclass
class LongTailSubset:
    """Which examples of a split form the long-tailed subset, and how it was drawn."""

    indices: np.ndarray  # int64, into the original split, sorted ascending
    counts: list[int]  # per class, index = label
    ir: float
    seed: int


def make_longtail(
    labels: torch.Tensor | np.ndarray,
    num_classes: int,
    ir: float,
    seed: int = 0,
    n_max: int | None = None,
) -> LongTailSubset:
    """Per class in class order: shuffle that class's indices and keep the first n_c (LDAM's procedure).

    `n_max` defaults to the smallest class, so every class can supply its count.
    """
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UsageError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    available = np.bincount(labels, minlength=num_classes)
    counts = longtail_counts(int(available.min()) if n_max is None else n_max, num_classes, ir)
    rng = np.random.RandomState(seed)
    chosen = []
    for label, count in enumerate(counts):
        if available[label] < count:
            raise UsageError(f"class {label} has {available[label]} examples, the long tail needs {count}")
        class_indices = np.flatnonzero(labels == label)
        rng.shuffle(class_indices)
        chosen.append(class_indices[:count])
    indices = np.sort(np.concatenate(chosen)).astype(np.int64)
    return LongTailSubset(indices=indices, counts=counts, ir=float(ir), seed=seed)
