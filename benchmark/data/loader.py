"""Batches and class-stratified subsets of splits that are already held in memory.

The datasets here are small enough to keep whole (on GPU when training there), so batching is
tensor slicing: no DataLoader workers, and the order comes only from the given generator.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from benchmark.errors import UsageError


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    shuffle: bool,
    drop_last: bool,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (xb, yb) in order, or in a permutation drawn from `generator` when `shuffle`."""
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs but {len(y)} labels")
    total = len(x)
    stop = total - total % batch_size if drop_last else total
    order = None
    if shuffle:
        draw_device = generator.device if generator is not None else torch.device("cpu")
        order = host_to_device(torch.randperm(total, generator=generator, device=draw_device), x.device)
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            batch_indices = order[start : start + batch_size]
            yield x[batch_indices], y[batch_indices.to(y.device)]


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 in [0, 1], the range attacks and ε are defined on."""
    return x_uint8.to(torch.float32) / 255.0


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small CPU tensor (random draws of a CPU generator) to a CUDA device without stalling the host:
    a copy from pageable memory waits for the queued GPU work, one from pinned memory does not."""
    if t.device == torch.device(device) or torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def stratified_subset(labels: torch.Tensor | np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of up to `per_class` examples of each class, drawn with a RandomState of its own.

    Its own seed keeps monitoring and attack subsets identical across training seeds and methods.
    """
    if per_class < 1:
        raise UsageError(f"examples per class must be >= 1, got {per_class}")
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    rng = np.random.RandomState(seed)
    chosen = []
    for label in np.unique(labels):
        class_indices = np.flatnonzero(labels == label)
        rng.shuffle(class_indices)
        chosen.append(class_indices[:per_class])
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.empty(0, dtype=np.int64)
