"""Tiny-ImageNet reader on a tiny tree in the official tiny-imagenet-200 layout, with real JPEGs written by PIL."""
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.utils
from PIL import Image

import benchmark.data.datasets.tinyimagenet as tinyimagenet
from benchmark.data import DATASETS, load_dataset
from benchmark.errors import UsageError

from dataset_files import WNIDS, WORDS, TRAIN, VAL, write_jpeg, write_tiny_imagenet  # noqa: F401  (the writers, shared with test_contracts)


def solid(colour) -> np.ndarray:
    return np.array([colour] * 3 if isinstance(colour, int) else colour, dtype=np.float64)


def assert_colour(image: torch.Tensor, colour) -> None:
    """JPEG is lossy, but a solid colour decodes to within a few levels of itself in every pixel."""
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    error = np.abs(image.numpy().astype(np.float64) - solid(colour)[:, None, None])
    assert error.max() <= 6, (error.max(), colour)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline test")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)


def test_datasets_lists_the_new_names():
    assert "tinyimagenet" in DATASETS and "dermamnist" in DATASETS


def test_reads_shapes_labels_and_class_names(tmp_path):
    write_tiny_imagenet(tmp_path)
    data = load_dataset("tinyimagenet", tmp_path)
    assert data.name == "tinyimagenet"
    assert data.x_train.shape == (6, 3, 64, 64) and data.x_test.shape == (4, 3, 64, 64)
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64 and data.y_test.dtype == torch.int64
    assert data.image_shape == (3, 64, 64) and data.num_classes == 3
    assert data.classes == ["goldfish", "European fire salamander", "bullfrog"]
    assert data.y_train.tolist() == [0, 0, 1, 1, 2, 2]  # wnids.txt order
    assert data.x_val is None and data.y_val is None


def test_files_are_sorted_by_name(tmp_path):
    write_tiny_imagenet(tmp_path)
    data = load_dataset("tinyimagenet", tmp_path)
    train_in_order = [colour for wnid in WNIDS for _, colour in sorted(TRAIN[wnid])]
    for image, colour in zip(data.x_train, train_in_order):
        assert_colour(image, colour)
    val_in_order = sorted(VAL)  # val_0, val_1, val_10, val_2
    assert data.y_test.tolist() == [WNIDS.index(wnid) for _, wnid, _ in val_in_order] == [0, 1, 1, 2]
    for image, (_, _, colour) in zip(data.x_test, val_in_order):
        assert_colour(image, colour)


def test_greyscale_and_cmyk_jpegs_become_rgb(tmp_path):
    folder = write_tiny_imagenet(tmp_path)
    Image.new("CMYK", (64, 64), (0, 0, 0, 0)).save(folder / "train" / WNIDS[2] / "images" / "n01641577_9.JPEG")
    data = load_dataset("tinyimagenet", tmp_path)
    grey = data.x_train[2]  # n01629819_0.JPEG, written as an "L" image of level 128
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert_colour(grey, 128)
    assert data.x_train.shape == (7, 3, 64, 64) and data.y_train.tolist()[-1] == 2
    assert_colour(data.x_train[-1], (255, 255, 255))  # CMYK (0, 0, 0, 0) is white


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
    folder = write_tiny_imagenet(tmp_path)
    first = load_dataset("tinyimagenet", tmp_path)
    cache = folder / "tailrobust-cache.npz"
    assert cache.is_file()
    assert sorted(path.name for path in folder.iterdir()) == ["tailrobust-cache.npz", "test", "train", "val",
                                                              "wnids.txt", "words.txt"]  # no temporary file left

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although the cache is there")

    monkeypatch.setattr(tinyimagenet, "_decode_image", no_decoding)
    second = load_dataset("tinyimagenet", tmp_path)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert second.classes == first.classes and second.name == "tinyimagenet"


def test_cache_serves_without_the_jpegs(tmp_path):
    folder = write_tiny_imagenet(tmp_path)
    first = load_dataset("tinyimagenet", tmp_path)
    for path in sorted(folder.rglob("*.JPEG")):
        path.unlink()
    assert torch.equal(load_dataset("tinyimagenet", tmp_path).x_train, first.x_train)


def test_unreadable_or_stale_cache_is_rebuilt(tmp_path):
    folder = write_tiny_imagenet(tmp_path)
    cache = folder / "tailrobust-cache.npz"
    cache.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="unreadable cache"):
        data = load_dataset("tinyimagenet", tmp_path)
    assert data.x_train.shape == (6, 3, 64, 64)
    (folder / "wnids.txt").write_text("".join(f"{wnid}\n" for wnid in reversed(WNIDS)))
    with pytest.warns(UserWarning, match="does not match"):
        reordered = load_dataset("tinyimagenet", tmp_path)
    assert reordered.classes == ["bullfrog", "European fire salamander", "goldfish"]
    assert torch.equal(reordered.x_train[:2], data.x_train[4:])  # label 0 is now the bullfrog
    assert reordered.y_test.tolist() == [2, 1, 1, 0]


def test_missing_folder_is_one_line_naming_it(tmp_path):
    with pytest.raises(UsageError) as caught:
        load_dataset("tinyimagenet", tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "tiny-imagenet-200") in message and "\n" not in message
    assert "wnids.txt" in message and "val_annotations.txt" in message and "--download" in message


def test_missing_annotations_are_reported(tmp_path):
    folder = write_tiny_imagenet(tmp_path)
    (folder / "val" / "val_annotations.txt").unlink()
    with pytest.raises(UsageError, match="val_annotations.txt"):
        load_dataset("tinyimagenet", tmp_path)


def test_class_without_images_is_reported(tmp_path):
    folder = write_tiny_imagenet(tmp_path)
    for path in (folder / "train" / WNIDS[1] / "images").iterdir():
        path.unlink()
    with pytest.raises(UsageError, match=f"no training images in .*{WNIDS[1]}"):
        load_dataset("tinyimagenet", tmp_path)


def test_unknown_wnid_in_annotations_is_reported(tmp_path):
    folder = write_tiny_imagenet(tmp_path)
    with open(folder / "val" / "val_annotations.txt", "a") as stream:
        stream.write("val_3.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(UsageError, match="line 5"):
        load_dataset("tinyimagenet", tmp_path)


def test_wrong_image_size_is_reported(tmp_path):
    folder = write_tiny_imagenet(tmp_path)
    write_jpeg(folder / "train" / WNIDS[0] / "images" / "n01443537_5.JPEG", (1, 1, 1), size=32)
    with pytest.raises(UsageError, match="expected a 64x64 image, got 32x32"):
        load_dataset("tinyimagenet", tmp_path)
    assert not (folder / "tailrobust-cache.npz").exists()


def test_failed_download_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="downloading Tiny-ImageNet .* failed"):
        load_dataset("tinyimagenet", tmp_path, download=True)


def test_download_fetches_the_official_zip_into_root(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, **kwargs):
        calls.append((url, download_root, kwargs))
        write_tiny_imagenet(Path(download_root))

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fake_download)
    assert load_dataset("tinyimagenet", tmp_path, download=True).x_train.shape == (6, 3, 64, 64)
    assert calls == [("http://cs231n.stanford.edu/tiny-imagenet-200.zip", str(tmp_path),
                      {"md5": "90528d7ca1a48142e341f4ef8d21d0de"})]
    load_dataset("tinyimagenet", tmp_path, download=True)  # present now: no second download
    assert len(calls) == 1
