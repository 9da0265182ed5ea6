"""The data of one cell: the dataset, its long-tailed training subset and the chosen test split.

Balanced datasets (MNIST, CIFAR, Tiny-ImageNet) are made long-tailed by subsampling the training
split at the cell's imbalance ratio. Naturally imbalanced datasets (DermaMNIST: registered with ``natural_imbalance``) are already
long-tailed: every training image is kept, so their cells must say ``imbalance_ratio: 1`` (no extra
imbalance on top of the natural one), and the recorded ``train_counts`` show the natural counts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from benchmark.errors import UsageError

from .datasets import is_naturally_imbalanced, load_dataset
from .longtail import make_longtail
from .splits import carve_validation


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
    test_indices: np.ndarray | None  # None: the full test split (balanced, except for naturally imbalanced data)
    # a validation split carved from the training subset (model selection ``val_best``); None otherwise
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    val_indices: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])


def prepare_cell_data(cfg) -> CellData:
    """The cell's data; with ``selection: val_best`` a validation split is carved from the training subset
    (its own seed: the subset seed) and ``train_counts`` are the counts actually trained on."""
    data = _prepare(cfg)
    if getattr(cfg, "selection", "final") != "val_best":
        return data
    kept, val = carve_validation(data.y_train.numpy(), cfg.val_fraction, seed=cfg.subset_seed)
    k, v = torch.as_tensor(kept), torch.as_tensor(val)
    counts = np.bincount(data.y_train.numpy()[kept], minlength=data.num_classes)
    return CellData(name=data.name, classes=data.classes, x_train=data.x_train[k], y_train=data.y_train[k],
                    x_test=data.x_test, y_test=data.y_test, train_counts=[int(n) for n in counts],
                    train_indices=data.train_indices[kept], test_indices=data.test_indices,
                    x_val=data.x_train[v], y_val=data.y_train[v], val_indices=data.train_indices[val])


def evaluation_subset(cfg, data: CellData) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
    """The examples every method of a comparison is evaluated on: the whole split, or a fixed stratified subset."""
    from .loader import stratified_subset

    if cfg.eval_per_class is None:
        return data.x_test, data.y_test, None
    idx = stratified_subset(data.y_test, int(cfg.eval_per_class), seed=0)
    t = torch.as_tensor(idx)
    return data.x_test[t], data.y_test[t], idx


def _prepare(cfg) -> CellData:
    """Long-tailed training subset (its own subset seed); balanced test split unless ``test_split: longtail``,
    which applies the same IR to the test split as the TAET authors' code does.

    A naturally imbalanced dataset (``is_naturally_imbalanced``) is used as published: all training images
    (train_counts = their per-class counts), the published test split, which is imbalanced like the
    training split (compare methods on per-class / balanced metrics). It needs ``imbalance_ratio: 1``
    and the default ``test_split``; anything else is a UsageError, raised before any file is read, so
    that no two cell keys ever name the same experiment.
    """
    if is_naturally_imbalanced(cfg.dataset):
        _check_natural_settings(cfg)
    data = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download)
    if is_naturally_imbalanced(cfg.dataset):
        counts = np.bincount(data.y_train.numpy(), minlength=data.num_classes)
        return CellData(name=data.name, classes=list(data.classes), x_train=data.x_train, y_train=data.y_train,
                        x_test=data.x_test, y_test=data.y_test, train_counts=[int(n) for n in counts],
                        train_indices=np.arange(len(data.y_train), dtype=np.int64), test_indices=None)
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


def _check_natural_settings(cfg) -> None:
    if float(cfg.imbalance_ratio) != 1:
        raise UsageError(
            f"{cfg.dataset} is used at its natural class imbalance (every training image is kept); "
            f"set imbalance_ratio to 1 (no extra subsampling), got {float(cfg.imbalance_ratio):g}")
    if cfg.test_split != "balanced":
        raise UsageError(
            f"{cfg.dataset}: test_split {cfg.test_split!r} does not apply to a naturally imbalanced dataset; "
            f"its published test split is used as it is (leave test_split at 'balanced')")
