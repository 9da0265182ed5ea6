"""The data of one cell: the dataset, its long-tailed training subset and the chosen test split."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .datasets import load_dataset
from .longtail import make_longtail


@dataclass
class CellData:
    """Tensors (uint8 images, int64 labels) and the records that go into metrics.json."""

    name: str
    classes: list[str]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_counts: list[int]
    train_indices: np.ndarray
    test_indices: np.ndarray | None  # None: the full (balanced) test split

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])


def prepare_cell_data(cfg) -> CellData:
    """Long-tailed training subset (its own subset seed); balanced test split unless ``test_split: longtail``,
    which applies the same IR to the test split as the TAET authors' code does."""
    data = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download)
    train = make_longtail(data.y_train, data.num_classes, cfg.imbalance_ratio, seed=cfg.subset_seed)
    x_test, y_test, test_indices = data.x_test, data.y_test, None
    if cfg.test_split == "longtail":
        test = make_longtail(data.y_test, data.num_classes, cfg.imbalance_ratio, seed=cfg.subset_seed)
        test_indices = test.indices
        x_test, y_test = data.x_test[torch.as_tensor(test.indices)], data.y_test[torch.as_tensor(test.indices)]
    idx = torch.as_tensor(train.indices)
    return CellData(name=data.name, classes=list(data.classes), x_train=data.x_train[idx], y_train=data.y_train[idx],
                    x_test=x_test, y_test=y_test, train_counts=list(train.counts), train_indices=train.indices,
                    test_indices=test_indices)
