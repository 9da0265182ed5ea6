"""What every dataset family shares: the in-memory ``ImageDataset`` and the dataset registry.

A family module registers each of its datasets with ``@register_dataset(name, **metadata)`` on its loader
``fn(root: Path | None, download: bool) -> ImageDataset``. The metadata say what the dataset is without
loading it: ``classes`` (how many), ``image_shape`` (C, H, W), ``natural_imbalance`` (the training split is
long-tailed as published, so cells keep it as it is: see ``benchmark.data.prepare``), ``normalization``
(the per-channel mean and std a model should use by default; None for every dataset here: the harness
feeds models raw [0, 1] pixels, as AT-BSL trains ResNet-18, unless a profile gives ``model_args`` mean/std),
``embedded`` (ships with a package, needs no files) and ``layout`` (what it reads, for messages).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.errors import UsageError
from benchmark.registry import Registry

DatasetLoader = Callable[[Path | None, bool], "ImageDataset"]
_DATASETS: Registry[DatasetLoader] = Registry("dataset")  # dataset name -> loader(root, download)


@dataclass
class ImageDataset:
    """Train and test splits held in memory: images uint8 [N, C, H, W], labels int64 [N].

    `x_val`/`y_val` hold a published validation split where the dataset has one (DermaMNIST); None otherwise.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]  # index = label
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


def register_dataset(name: str, *, classes: int | None, image_shape: tuple[int, int, int] | None,
                     natural_imbalance: bool = False,
                     normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None, embedded: bool = False,
                     layout: str = "", **metadata):
    """Decorator: register ``loader(root, download) -> ImageDataset`` as dataset ``name`` with its metadata.

    ``classes`` and ``image_shape`` None: whatever the files hold (imagefolder). A ``fingerprint(root) -> str``
    in the metadata says the files under ``root`` are the dataset: the config keys cells by it."""
    return _DATASETS.register(name, classes=classes, image_shape=None if image_shape is None else tuple(image_shape),
                              natural_imbalance=natural_imbalance, normalization=normalization, embedded=embedded,
                              layout=layout, **metadata)


def list_datasets(pattern: str | None = None, **metadata) -> list[str]:
    """Registered dataset names, sorted; ``pattern`` (fnmatch) and metadata values (``natural_imbalance=True``) filter."""
    names = _DATASETS.list(pattern)
    return [n for n in names if n in _DATASETS.where(**metadata)] if metadata else names


def get_dataset(name: str) -> DatasetLoader:
    """The loader of dataset ``name``; "unknown dataset 'x'; known datasets: …" otherwise."""
    return _DATASETS.get(name)


def dataset_metadata(name: str) -> dict:
    """What ``name`` was registered with (classes, image_shape, natural_imbalance, normalization, ...)."""
    return _DATASETS.metadata(name)


def is_naturally_imbalanced(name: str) -> bool:
    """Whether ``name`` is used at the class imbalance it comes with (False for a name nobody registered)."""
    return name in _DATASETS and bool(_DATASETS.metadata(name)["natural_imbalance"])


def registration_order() -> tuple[str, ...]:
    """Every registered dataset, in the order the families registered them (the embedded one first)."""
    return tuple(_DATASETS.entries())


def load_dataset(name: str, root: str | Path | None = None, download: bool = False) -> ImageDataset:
    """Load dataset `name`; `root` is the folder torchvision would be given (ignored for embedded datasets).

    Under `root`: MNIST/raw, FashionMNIST/raw, cifar-10-batches-py, cifar-100-python (torchvision's
    layouts), tiny-imagenet-200 (the official zip, extracted) and dermamnist.npz (MedMNIST's file).
    Files are downloaded only when `download` is true; otherwise a missing file is a one-line UsageError.
    """
    loader = get_dataset(name)
    if dataset_metadata(name)["embedded"]:
        return loader(None, download)
    if root is None:
        embedded = ", ".join(n for n in registration_order() if dataset_metadata(n)["embedded"])
        raise UsageError(f"{name} is read from disk: give its data folder (data_root); only {embedded} is embedded")
    return loader(Path(root).expanduser(), download)


def _download_failed(name: str, what: str, root: Path, where: Path, error: Exception) -> UsageError:
    reason = (str(error).splitlines() or [type(error).__name__])[0]
    return UsageError(f"{name}: downloading {what} into {root} failed ({reason}); put the files under {where} by hand")
