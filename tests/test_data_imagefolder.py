"""The ImageFolder dataset family on real PNG/JPEG files: labels from sorted class folders, pixels as written,
greyscale kept, long-tail subsampling with no code, bad layouts as one line, and the folder keyed into the cell."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.config import Config
from benchmark.data import load_dataset
from benchmark.data.datasets.imagefolder import folder_fingerprint
from benchmark.data.prepare import prepare_cell_data
from benchmark.errors import UsageError
from dataset_files import IMAGEFOLDER_CLASSES, write_imagefolder


def test_classes_labels_and_pixels_are_those_of_the_png_files(tmp_path):
    written = write_imagefolder(tmp_path, counts=(6, 5, 4))
    data = load_dataset("imagefolder", tmp_path)
    assert data.classes == IMAGEFOLDER_CLASSES and data.image_shape == (3, 10, 12)
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        pixels, labels = written[split]
        assert x.dtype == torch.uint8 and torch.equal(x, torch.from_numpy(pixels))
        assert y.tolist() == labels.tolist()
    assert np.bincount(data.y_train.numpy()).tolist() == [6, 5, 4]


def test_greyscale_folders_stay_one_channel_and_jpeg_files_are_read(tmp_path):
    write_imagefolder(tmp_path, counts=(2, 2, 2), mode="L")
    Image.fromarray(np.full((10, 12), 7, dtype=np.uint8)).save(tmp_path / "train" / "cat" / "extra.jpg")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image: skipped")
    data = load_dataset("imagefolder", tmp_path)
    assert data.image_shape == (1, 10, 12) and int((data.y_train == 0).sum()) == 3


def test_long_tail_subsampling_follows_the_imbalance_ratio_from_the_smallest_class(tmp_path):
    write_imagefolder(tmp_path, counts=(9, 9, 8))
    cfg = Config(dataset="imagefolder", data_root=str(tmp_path), imbalance_ratio=4, model="small_cnn").validate()
    data = prepare_cell_data(cfg.resolve("cpu"))
    assert data.train_counts == [8, 4, 2] and data.classes == IMAGEFOLDER_CLASSES
    assert len(data.y_test) == 6  # the test split stays balanced


@pytest.mark.parametrize("break_it, message", [
    (lambda root: (root / "test").rename(root / "val"), "has no test/ folder"),
    (lambda root: Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "train" / "dog" / "small.png"),
     "every image must have one size"),
    (lambda root: (root / "test" / "owl").mkdir(), "class folder(s) owl that train/ lacks"),
    (lambda root: (root / "train" / "fox" / "000.png").write_bytes(b"not a png"), "cannot read the image"),
])
def test_a_bad_folder_is_one_line_naming_what_is_wrong(tmp_path, break_it, message):
    write_imagefolder(tmp_path, counts=(2, 2, 1))
    break_it(tmp_path)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset("imagefolder", tmp_path)


def test_a_missing_data_root_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="give data_root"):
        Config(dataset="imagefolder", model="small_cnn").validate().key()


def test_the_folder_listing_is_in_the_cell_key_so_two_folders_never_share_a_cell(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    write_imagefolder(first, counts=(3, 3, 3))
    write_imagefolder(second, counts=(3, 3, 3))

    def key(root):
        return Config(dataset="imagefolder", data_root=str(root), imbalance_ratio=2, model="small_cnn").validate().key()

    assert key(first) == key(second)  # same files (names and sizes): a moved or copied folder keeps its cells
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(second / "train" / "dog" / "new.png")
    assert key(first) != key(second) and folder_fingerprint(first) != folder_fingerprint(second)
