"""MedMNIST: DermaMNIST from MedMNIST's dermamnist.npz (28×28 RGB, 7 classes, naturally long-tailed)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from benchmark.errors import UsageError

from .base import ImageDataset, _download_failed, register_dataset

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


@register_dataset("dermamnist", classes=len(DERMAMNIST_CLASSES), image_shape=(3, DERMAMNIST_SIZE, DERMAMNIST_SIZE),
                  natural_imbalance=True, layout=f"MedMNIST's <root>/{DERMAMNIST_FILE}")
def _load_dermamnist(root: Path, download: bool) -> ImageDataset:
    """DermaMNIST from MedMNIST's `<root>/dermamnist.npz`: 28×28 RGB, 7 classes, train/val/test 7,007/1,003/2,005.

    The file holds `{train,val,test}_images` uint8 [N, 28, 28, 3] and `{train,val,test}_labels`
    uint8 [N, 1]; images become [N, 3, 28, 28] and labels int64 [N]. `test` is the test split and
    `val` is kept in `x_val`/`y_val`. Only the 28×28 file is read (MedMNIST+'s dermamnist_64/128/224.npz
    are not). The training split is long-tailed as published (nevi 4,693 ... dermatofibroma 80), so
    DermaMNIST registers natural_imbalance=True. Download (from MedMNIST's Zenodo record) only when asked.
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
