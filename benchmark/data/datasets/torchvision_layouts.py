"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 from torchvision's on-disk layouts, read by our own parsers.

Reading the files directly (not through torchvision's Dataset classes) gives whole-split tensors
ready to keep on the GPU and does not depend on torchvision's md5 checks; torchvision is used
only to download.
"""
from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from benchmark.errors import UsageError

from .base import ImageDataset, register_dataset
from .embedded import DIGIT_CLASSES

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


@dataclass(frozen=True)
class _DiskLayout:
    """Where torchvision keeps a dataset under its root, and how to read it back."""

    title: str  # for messages
    folder: str  # relative to root
    files: tuple[str, ...]
    expected: str  # the files, as a message lists them
    gzip_allowed: bool
    torchvision_class: str  # used to download
    read: Callable[[str, dict[str, Path]], ImageDataset]


def _locate(name: str, layout: _DiskLayout, root: Path, download: bool) -> dict[str, Path]:
    """Paths of the layout's files, downloading first only when asked, so offline runs fail in one line."""
    folder = root / layout.folder
    paths = _find_files(folder, layout)
    if paths is None and download:
        _download(name, layout, root)
        paths = _find_files(folder, layout)
    if paths is None:
        hint = "the download did not produce them" if download else "pass --download to fetch them"
        raise UsageError(f"{name}: expected torchvision's {layout.title} files under {folder} ({layout.expected}); {hint}")
    return paths


def _find_files(folder: Path, layout: _DiskLayout) -> dict[str, Path] | None:
    paths = {}
    for file in layout.files:
        candidates = [folder / file, folder / f"{file}.gz"] if layout.gzip_allowed else [folder / file]
        present = next((path for path in candidates if path.is_file()), None)
        if present is None:
            return None
        paths[file] = present
    return paths


def _download(name: str, layout: _DiskLayout, root: Path) -> None:
    import torchvision.datasets  # slow to import, and needed only here

    try:
        getattr(torchvision.datasets, layout.torchvision_class)(str(root), train=True, download=True)
    except Exception as error:  # no network, bad mirror, full disk: all end the same way for the user
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise UsageError(
            f"{name}: downloading {layout.title} into {root} failed ({reason}); put the files under {root / layout.folder} by hand"
        ) from error


def _read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte idx array (the MNIST format): 0, 0, type 0x08, rank, big-endian int32 dims, data."""
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise UsageError(f"{path}: not an unsigned-byte idx file (bad magic number)")
    rank = raw[3]
    header_size = 4 + 4 * rank
    if len(raw) < header_size:
        raise UsageError(f"{path}: idx header cut short")
    shape = tuple(int(dim) for dim in np.frombuffer(raw, dtype=">i4", count=rank, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header_size)
    if data.size != np.prod(shape, dtype=np.int64):
        raise UsageError(f"{path}: idx data holds {data.size} bytes, its header says {shape}")
    return data.reshape(shape).copy()


def _read_idx_split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _read_idx(images_path), _read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UsageError(f"{images_path} {images.shape} and {labels_path} {labels.shape} do not pair up")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _read_idx_dataset(name: str, paths: dict[str, Path], classes: list[str]) -> ImageDataset:
    x_train, y_train = _read_idx_split(paths["train-images-idx3-ubyte"], paths["train-labels-idx1-ubyte"])
    x_test, y_test = _read_idx_split(paths["t10k-images-idx3-ubyte"], paths["t10k-labels-idx1-ubyte"])
    return ImageDataset(name, x_train, y_train, x_test, y_test, list(classes))


class _ArraysOnly(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of bytes/str keys, numpy uint8 arrays, lists of ints and names)
    and nothing else: a pickle in a data folder that asks for any other class or function (``os.system``)
    is refused instead of run. torchvision uses plain ``pickle.load`` here; a shared data folder is data."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch (only arrays, lists, "
                                     "numbers and strings are data)")


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as stream:
        try:
            return _ArraysOnly(stream, encoding="latin1").load()  # latin1: as torchvision reads the Python 2 pickles
        except pickle.UnpicklingError as err:
            raise pickle.UnpicklingError(f"{path}: {err}") from None


def _read_cifar_batches(paths: list[Path], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    entries = [_unpickle(path) for path in paths]
    images = np.concatenate([np.asarray(entry["data"], dtype=np.uint8) for entry in entries])
    labels = np.concatenate([np.asarray(entry[label_key], dtype=np.int64) for entry in entries])
    # Each row is 1024 red, then 1024 green, then 1024 blue bytes, row-major: already CHW.
    return torch.from_numpy(images.reshape(-1, 3, 32, 32)), torch.from_numpy(labels)


def _read_cifar_dataset(
    name: str, paths: dict[str, Path], train_files: tuple[str, ...], test_file: str, meta_file: str,
    label_key: str, names_key: str,
) -> ImageDataset:
    x_train, y_train = _read_cifar_batches([paths[file] for file in train_files], label_key)
    x_test, y_test = _read_cifar_batches([paths[test_file]], label_key)
    classes = list(_unpickle(paths[meta_file])[names_key])
    return ImageDataset(name, x_train, y_train, x_test, y_test, classes)


_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_EXPECTED = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz"
_CIFAR10_TRAIN = tuple(f"data_batch_{number}" for number in range(1, 6))

_DISK_LAYOUTS = {
    "mnist": _DiskLayout(
        "MNIST", "MNIST/raw", _IDX_FILES, _IDX_EXPECTED, True, "MNIST",
        partial(_read_idx_dataset, classes=DIGIT_CLASSES),
    ),
    "fashion_mnist": _DiskLayout(
        "Fashion-MNIST", "FashionMNIST/raw", _IDX_FILES, _IDX_EXPECTED, True, "FashionMNIST",
        partial(_read_idx_dataset, classes=FASHION_MNIST_CLASSES),
    ),
    "cifar10": _DiskLayout(
        "CIFAR-10", "cifar-10-batches-py", (*_CIFAR10_TRAIN, "test_batch", "batches.meta"),
        "data_batch_1..5, test_batch, batches.meta", False, "CIFAR10",
        partial(_read_cifar_dataset, train_files=_CIFAR10_TRAIN, test_file="test_batch", meta_file="batches.meta",
                label_key="labels", names_key="label_names"),
    ),
    "cifar100": _DiskLayout(
        "CIFAR-100", "cifar-100-python", ("train", "test", "meta"), "train, test, meta", False, "CIFAR100",
        partial(_read_cifar_dataset, train_files=("train",), test_file="test", meta_file="meta",
                label_key="fine_labels", names_key="fine_label_names"),
    ),
}


def _loader(name: str) -> Callable[[Path, bool], ImageDataset]:
    def load(root: Path, download: bool = False) -> ImageDataset:
        layout = _DISK_LAYOUTS[name]
        return layout.read(name, _locate(name, layout, root, download))

    load.__name__ = load.__qualname__ = f"load_{name}"
    return load


_SHAPES = {"mnist": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10),
           "cifar100": ((3, 32, 32), 100)}
for _name, _layout in _DISK_LAYOUTS.items():
    register_dataset(_name, classes=_SHAPES[_name][1], image_shape=_SHAPES[_name][0],
                     layout=f"torchvision's {_layout.title} files under <root>/{_layout.folder}")(_loader(_name))
