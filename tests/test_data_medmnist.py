"""DermaMNIST reader on a .npz in MedMNIST's real format, and its natural imbalance in prepare_cell_data."""
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.datasets.utils

from benchmark.config import Config
from benchmark.data import DATASETS, load_dataset
from benchmark.data.datasets import NATURALLY_IMBALANCED, dataset_metadata, list_datasets
from benchmark.data.datasets.medmnist import DERMAMNIST_CLASSES
from benchmark.data.prepare import prepare_cell_data
from benchmark.errors import UsageError

# DermaMNIST's published training counts per label (7,007 images); val/test are kept small here.
from dataset_files import TRAIN_COUNTS, VAL_COUNTS, TEST_COUNTS, SMALL_TRAIN, medmnist_split, write_dermamnist  # noqa: F401  (the writers, shared with test_contracts)


def cell(root: Path, **settings) -> SimpleNamespace:
    """The Config fields prepare_cell_data reads."""
    values = dict(dataset="dermamnist", data_root=str(root), download=False, imbalance_ratio=1.0, subset_seed=0,
                  test_split="balanced")
    return SimpleNamespace(**{**values, **settings})


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline test")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)


def test_dermamnist_is_known_and_naturally_imbalanced():
    assert "dermamnist" in DATASETS and "tinyimagenet" in DATASETS
    assert NATURALLY_IMBALANCED == {"dermamnist"} == set(list_datasets(natural_imbalance=True))
    assert dataset_metadata("dermamnist")["classes"] == 7 and dataset_metadata("dermamnist")["image_shape"] == (3, 28, 28)


@pytest.mark.parametrize("compressed", [False, True], ids=["savez", "savez_compressed"])
def test_reads_shapes_channels_and_labels(tmp_path, compressed):
    written = write_dermamnist(tmp_path, compressed=compressed)
    data = load_dataset("dermamnist", tmp_path)
    assert data.name == "dermamnist" and data.num_classes == 7 and data.image_shape == (3, 28, 28)
    assert data.x_train.shape == (42, 3, 28, 28) and data.x_test.shape == (200, 3, 28, 28)
    assert data.x_val.shape == (100, 3, 28, 28)
    for split, images, labels in (("train", data.x_train, data.y_train), ("val", data.x_val, data.y_val),
                                  ("test", data.x_test, data.y_test)):
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64 and labels.shape == (len(images),)
        # channels first: [n, c, h, w] holds the file's [n, h, w, c]
        np.testing.assert_array_equal(images.permute(0, 2, 3, 1).numpy(), written[f"{split}_images"])
        np.testing.assert_array_equal(labels.numpy(), written[f"{split}_labels"][:, 0])
    assert data.x_train[5, 2, 3, 4] == int(written["train_images"][5, 3, 4, 2])
    assert data.x_train.is_contiguous()
    assert torch.bincount(data.y_train).tolist() == SMALL_TRAIN


def test_class_names_are_medmnists():
    assert DERMAMNIST_CLASSES == [
        "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma", "benign keratosis-like lesions",
        "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions",
    ]


def test_flat_labels_are_accepted(tmp_path):
    rng = np.random.RandomState(1)
    _, labels = medmnist_split(rng, TEST_COUNTS)
    write_dermamnist(tmp_path, test_labels=labels[:, 0].astype(np.int64))
    assert load_dataset("dermamnist", tmp_path).y_test.tolist() == labels[:, 0].tolist()


def test_natural_imbalance_keeps_every_training_image(tmp_path):
    write_dermamnist(tmp_path, train=TRAIN_COUNTS)
    data = prepare_cell_data(cell(tmp_path))
    assert data.train_counts == TRAIN_COUNTS and all(type(n) is int for n in data.train_counts)
    assert data.x_train.shape == (7007, 3, 28, 28) and data.in_channels == 3 and data.num_classes == 7
    np.testing.assert_array_equal(data.train_indices, np.arange(7007))
    assert data.test_indices is None and torch.bincount(data.y_test).tolist() == TEST_COUNTS
    assert data.classes == DERMAMNIST_CLASSES


def test_natural_imbalance_with_a_real_config(tmp_path):
    write_dermamnist(tmp_path)
    cfg = Config(dataset="dermamnist", data_root=str(tmp_path), imbalance_ratio=1, model="resnet18").validate()
    assert prepare_cell_data(cfg).train_counts == SMALL_TRAIN


@pytest.mark.parametrize("ir", [10.0, 100.0, 1.5])
def test_other_imbalance_ratios_are_refused_before_reading(tmp_path, ir):
    with pytest.raises(UsageError, match="natural class imbalance.*imbalance_ratio to 1"):
        prepare_cell_data(cell(tmp_path, imbalance_ratio=ir))  # no file written: the check comes first


def test_longtail_test_split_is_refused(tmp_path):
    write_dermamnist(tmp_path)
    with pytest.raises(UsageError, match="test_split 'longtail'"):
        prepare_cell_data(cell(tmp_path, test_split="longtail"))


def test_missing_file_is_one_line_naming_it(tmp_path):
    with pytest.raises(UsageError) as caught:
        load_dataset("dermamnist", tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "dermamnist.npz") in message and "--download" in message and "\n" not in message
    assert "train_images" in message and "test_labels" in message


def test_missing_array_is_reported(tmp_path):
    write_dermamnist(tmp_path, val_labels=None)
    with pytest.raises(UsageError, match="missing array.*val_labels"):
        load_dataset("dermamnist", tmp_path)


def test_channels_first_images_are_refused(tmp_path):
    rng = np.random.RandomState(2)
    write_dermamnist(tmp_path, test_images=rng.randint(0, 256, size=(200, 3, 28, 28), dtype=np.uint8))
    with pytest.raises(UsageError, match=r"test_images should be uint8 \[N, 28, 28, 3\]"):
        load_dataset("dermamnist", tmp_path)


def test_out_of_range_label_is_refused(tmp_path):
    labels = np.zeros((200, 1), dtype=np.uint8)
    labels[3] = 7
    write_dermamnist(tmp_path, test_labels=labels)
    with pytest.raises(UsageError, match=r"test_labels should lie in \[0, 7\)"):
        load_dataset("dermamnist", tmp_path)


def test_not_an_npz_is_a_usage_error(tmp_path):
    (tmp_path / "dermamnist.npz").write_bytes(b"<html>not found</html>")
    with pytest.raises(UsageError, match="not a readable .npz"):
        load_dataset("dermamnist", tmp_path)


def test_failed_download_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="downloading DermaMNIST .* failed"):
        load_dataset("dermamnist", tmp_path, download=True)


def test_download_fetches_medmnists_file(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, root, filename=None, md5=None):
        calls.append((url, root, filename, md5))
        write_dermamnist(Path(root), train=[2] * 7, val=[1] * 7, test=[1] * 7)

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", fake_download)
    assert load_dataset("dermamnist", tmp_path, download=True).x_train.shape == (14, 3, 28, 28)
    assert calls == [("https://zenodo.org/records/10519652/files/dermamnist.npz?download=1", str(tmp_path),
                      "dermamnist.npz", "0744692d530f8e62ec473284d019b0c7")]
