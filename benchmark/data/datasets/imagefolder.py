"""ImageFolder: a user's own data as folders of PNG/JPEG files, one subfolder per class (torchvision's layout).

``dataset: imagefolder`` with ``data_root: <root>`` reads ``<root>/train/<class>/*.png|jpg|jpeg`` and
``<root>/test/<class>/...``; classes are the train subfolders in sorted order (label = position), as torchvision's
``ImageFolder`` numbers them. The training split is made long-tailed like every other dataset (the cell's
imbalance ratio, from the smallest class's count down), so no code is needed. What the cell key knows of the data
is the folder's listing (:func:`folder_fingerprint`: class, file name and size of every image), because here the
folder *is* the dataset: two different folders never share a cell, and a moved folder keeps its cells.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmark.errors import UsageError

from .base import ImageDataset, register_dataset

SPLITS = ("train", "test")
SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_LAYOUT = "<root>/train/<class>/*.png|jpg and <root>/test/<class>/*.png|jpg"


def _class_folders(split: Path) -> list[Path]:
    return sorted((p for p in split.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES
                  and not p.name.startswith("."))


def _index(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Class names and, per split, (file, label) in class then file-name order; one-line errors for bad layouts."""
    if root is None:
        raise UsageError(f"imagefolder reads your own images: give data_root (--data-root), a folder with {_LAYOUT}")
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        raise UsageError(f"imagefolder: {root} has no {' or '.join(missing)}/ folder (expected {_LAYOUT})")
    classes = [p.name for p in _class_folders(root / "train")]
    if not classes:
        raise UsageError(f"imagefolder: {root / 'train'} has no class subfolders (expected {_LAYOUT})")
    extra = sorted({p.name for p in _class_folders(root / "test")} - set(classes))
    if extra:
        raise UsageError(f"imagefolder: {root / 'test'} has class folder(s) {', '.join(extra)} that train/ lacks")
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in SPLITS:
        files[split] = []
        for label, name in enumerate(classes):
            folder = root / split / name
            found = _images(folder) if folder.is_dir() else []
            if split == "train" and not found:
                raise UsageError(f"imagefolder: no PNG/JPEG images in {folder}")
            files[split] += [(path, label) for path in found]
        if not files[split]:
            raise UsageError(f"imagefolder: no PNG/JPEG images under {root / split}")
    return classes, files


def _probe(path: Path) -> tuple[str, tuple[int, int]]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.mode, image.size
    except (OSError, UnidentifiedImageError) as error:
        raise UsageError(f"{path}: cannot read the image ({error})") from None


def _decode(path: Path, mode: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert(mode), dtype=np.uint8)
    except OSError as error:
        raise UsageError(f"{path}: cannot decode the image ({error})") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


_FINGERPRINTS: dict[tuple, str] = {}


def folder_fingerprint(root: str | Path | None) -> str:
    """sha256 of the folder's listing: split, class, file name and byte size of every image, sorted. Cached per
    process until a class folder changes (its mtime moves when a file is added, removed or renamed)."""
    if root is None:
        _index(None)  # the one-line error
    base = Path(root).expanduser().resolve()
    folders = [p for s in SPLITS if (base / s).is_dir() for p in _class_folders(base / s)]
    stamp = (str(base), *((p.name, p.parent.name, p.stat().st_mtime_ns) for p in folders))
    if stamp not in _FINGERPRINTS:
        classes, files = _index(base)
        digest = hashlib.sha256()
        for split in SPLITS:
            for path, label in files[split]:
                digest.update(f"{split}/{classes[label]}/{path.name}\t{path.stat().st_size}\n".encode())
        _FINGERPRINTS[stamp] = digest.hexdigest()
    return _FINGERPRINTS[stamp]


@register_dataset("imagefolder", classes=None, image_shape=None, layout=_LAYOUT,
                  fingerprint=folder_fingerprint)
def _load_imagefolder(root: Path, download: bool) -> ImageDataset:
    """Both splits decoded into uint8 [N, C, H, W]: one channel when every image is greyscale, RGB otherwise
    (palette, CMYK and alpha images are converted). Every image must have the same size (a one-line error names
    the first that differs: resize the folder first). Nothing is downloaded; ``download`` is ignored."""
    classes, files = _index(Path(root) if root is not None else None)
    every = [path for split in SPLITS for path, _ in files[split]]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        probes = list(pool.map(_probe, every))
    size = probes[0][1]
    for path, (_, other) in zip(every, probes):
        if other != size:
            raise UsageError(f"imagefolder: {path} is {other[0]}x{other[1]} but {every[0]} is {size[0]}x{size[1]}; "
                             f"every image must have one size (resize them first)")
    mode = "L" if all(m in GREY_MODES for m, _ in probes) else "RGB"
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = {split: np.stack(list(pool.map(lambda p: _decode(p, mode), [p for p, _ in files[split]])))
                  for split in SPLITS}
    labels = {split: torch.tensor([label for _, label in files[split]], dtype=torch.int64) for split in SPLITS}
    return ImageDataset("imagefolder", torch.from_numpy(arrays["train"]), labels["train"],
                        torch.from_numpy(arrays["test"]), labels["test"], classes)
