"""Tiny-ImageNet: the official tiny-imagenet-200 folder, JPEGs decoded once and cached as .npz."""
from __future__ import annotations

import os
import tempfile
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmark.errors import UsageError

from .base import ImageDataset, _download_failed, register_dataset

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


@register_dataset("tinyimagenet", classes=200, image_shape=(3, TINYIMAGENET_SIZE, TINYIMAGENET_SIZE),
                  layout=f"the official {TINYIMAGENET_FOLDER} folder under <root>")
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
