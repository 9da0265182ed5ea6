"""Synthetic CIFAR-10-shaped data written in torchvision's on-disk format.

For device checks only (speed, memory, the CUDA code path through the real CIFAR loader): the
images are learnable class templates plus noise, not real photographs, so no number obtained on
them says anything about robustness on CIFAR-10.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def synthetic_images(labels: np.ndarray, rng: np.random.RandomState, templates: np.ndarray) -> np.ndarray:
    """uint8 [N, 3072] rows (CIFAR's channel-major layout): a smooth class template plus pixel noise."""
    noise = rng.normal(0, 40, size=(len(labels), 3, 32, 32))
    images = np.clip(128 + 60 * templates[labels] + noise, 0, 255).astype(np.uint8)
    return images.reshape(len(labels), 3 * 32 * 32)


def write_synthetic_cifar10(root: Path, train_per_class: int = 5000, test_per_class: int = 1000, seed: int = 0) -> Path:
    """Write ``cifar-10-batches-py/`` under ``root`` (5 train batches, test batch, meta) and return root."""
    rng = np.random.RandomState(seed)
    coarse = rng.normal(size=(10, 3, 8, 8))
    templates = np.tanh(coarse.repeat(4, axis=2).repeat(4, axis=3))  # 8×8 blocks upsampled to 32×32
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_labels = rng.permutation(np.repeat(np.arange(10), train_per_class))
    for number, part in enumerate(np.array_split(train_labels, 5), start=1):
        batch = {"batch_label": f"synthetic training batch {number} of 5", "labels": part.tolist(),
                 "data": synthetic_images(part, rng, templates)}
        (folder / f"data_batch_{number}").write_bytes(pickle.dumps(batch, protocol=2))
    test_labels = rng.permutation(np.repeat(np.arange(10), test_per_class))
    (folder / "test_batch").write_bytes(pickle.dumps(
        {"batch_label": "synthetic testing batch", "labels": test_labels.tolist(),
         "data": synthetic_images(test_labels, rng, templates)}, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR10_NAMES, "num_vis": 3072}, protocol=2))
    return Path(root)
