"""Writers of every registered dataset's real on-disk format, at toy sizes (tests/ is on sys.path under pytest).

The data tests of each family (test_data_loaders, test_data_tinyimagenet, test_data_medmnist) and the dataset
contract (test_contracts) share them. ``WRITERS`` maps a registered dataset that is read from disk to
``writer(root) -> classes written``: it writes the files ``load_dataset(name, root)`` reads, in the layout the
dataset is published in. A new dataset read from disk adds its writer here (the contract test fails until it does).
"""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IDX_STEMS = {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
             ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte"}


def random_split(rng: np.random.RandomState, num_classes: int, per_class: int, pixels: int):
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    return rng.randint(0, 256, size=(len(labels), pixels), dtype=np.uint8), labels


def write_pickle(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as stream:
        pickle.dump(entry, stream, protocol=2)


def write_cifar10(root: Path) -> dict:
    """Five train batches and a test batch with CIFAR-10's keys: data uint8 [N, 3072], labels a list of ints."""
    rng = np.random.RandomState(0)
    folder = root / "cifar-10-batches-py"
    written = {"train": [], "test": []}
    for file in [f"data_batch_{n}" for n in range(1, 6)] + ["test_batch"]:
        data, labels = random_split(rng, 10, 1 if file != "test_batch" else 2, 3072)
        write_pickle(folder / file, {"batch_label": f"{file} of 6", "labels": labels.tolist(), "data": data,
                                     "filenames": [f"img_{i}.png" for i in range(len(labels))]})
        written["test" if file == "test_batch" else "train"].append((data, labels))
    write_pickle(folder / "batches.meta", {"num_cases_per_batch": 10, "label_names": CIFAR10_NAMES, "num_vis": 3072})
    return {split: tuple(np.concatenate(parts) for parts in zip(*batches)) for split, batches in written.items()}


def write_cifar100(root: Path) -> dict:
    """CIFAR-100's train/test/meta pickles: fine and coarse labels, fine names in the meta file."""
    rng = np.random.RandomState(1)
    folder = root / "cifar-100-python"
    written = {}
    for split, per_class in (("train", 3), ("test", 1)):
        data, labels = random_split(rng, 100, per_class, 3072)
        write_pickle(folder / split, {"filenames": [f"img_{i}.png" for i in range(len(labels))],
                                      "batch_label": f"{split} batch 1 of 1", "fine_labels": labels.tolist(),
                                      "coarse_labels": (labels // 5).tolist(), "data": data})
        written[split] = (data, labels)
    write_pickle(folder / "meta", {"fine_label_names": [f"fine_{c}" for c in range(100)],
                                   "coarse_label_names": [f"coarse_{c}" for c in range(20)]})
    return written


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte idx file: two zero bytes, type 0x08, rank, then big-endian int32 dims."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dataset(folder: Path, compressed: bool) -> dict:
    rng = np.random.RandomState(2)
    folder.mkdir(parents=True)
    written = {}
    for split, per_class in (("train", 3), ("test", 2)):
        pixels, labels = random_split(rng, 10, per_class, 28 * 28)
        images = pixels.reshape(-1, 28, 28)
        for kind, array in (("images", images), ("labels", labels)):
            stem = IDX_STEMS[(split, kind)]
            if compressed:
                with gzip.open(folder / f"{stem}.gz", "wb") as stream:
                    stream.write(idx_bytes(array))
            else:
                (folder / stem).write_bytes(idx_bytes(array))
        written[split] = (images, labels)
    return written


WNIDS = ["n01443537", "n01629819", "n01641577"]
WORDS = {  # as words.txt writes them: several names, comma-separated; plus ids of other ImageNet classes
    "n00001740": "entity",
    "n01443537": "goldfish, Carassius auratus",
    "n01629819": "European fire salamander, Salamandra salamandra",
    "n01641577": "bullfrog, Rana catesbeiana",
    "n01644373": "tree frog, tree-frog",
}
# Per class: (file name, colour); names deliberately not in sorted order. Class 1 holds a greyscale JPEG.
TRAIN = {
    "n01443537": [("n01443537_1.JPEG", (200, 40, 40)), ("n01443537_0.JPEG", (40, 200, 40))],
    "n01629819": [("n01629819_0.JPEG", 128), ("n01629819_7.JPEG", (40, 40, 200))],
    "n01641577": [("n01641577_3.JPEG", (250, 250, 20)), ("n01641577_2.JPEG", (20, 250, 250))],
}
VAL = [("val_2.JPEG", "n01641577", (90, 90, 200)), ("val_0.JPEG", "n01443537", (200, 90, 90)),
       ("val_10.JPEG", "n01629819", (90, 200, 90)), ("val_1.JPEG", "n01629819", 60)]


def write_jpeg(path: Path, colour, size: int = 64) -> None:
    """A solid-colour JPEG; an int colour makes a greyscale ("L") JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if isinstance(colour, int) else "RGB"
    Image.new(mode, (size, size), colour).save(path, format="JPEG", quality=95)


def write_tiny_imagenet(root: Path) -> Path:
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("".join(f"{wnid}\n" for wnid in WNIDS))
    (folder / "words.txt").write_text("".join(f"{wnid}\t{names}\n" for wnid, names in WORDS.items()))
    for wnid, images in TRAIN.items():
        for file, colour in images:
            write_jpeg(folder / "train" / wnid / "images" / file, colour)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(f"{f}\t0\t0\t63\t63\n" for f, _ in images))
    for file, _, colour in VAL:
        write_jpeg(folder / "val" / "images" / file, colour)
    (folder / "val" / "val_annotations.txt").write_text(
        "".join(f"{file}\t{wnid}\t0\t8\t60\t62\n" for file, wnid, _ in VAL))
    write_jpeg(folder / "test" / "images" / "test_0.JPEG", (1, 2, 3))  # unlabelled: never read
    return folder


TRAIN_COUNTS = [228, 359, 769, 80, 779, 4693, 99]
VAL_COUNTS = [3, 5, 11, 1, 11, 67, 2]
TEST_COUNTS = [7, 10, 22, 2, 22, 134, 3]
SMALL_TRAIN = [3, 4, 6, 1, 6, 20, 2]  # for the tests that only need the format


def medmnist_split(rng: np.random.RandomState, counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """MedMNIST's arrays: images uint8 [N, 28, 28, 3] (HWC), labels uint8 [N, 1], classes shuffled together."""
    labels = rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.uint8)[:, None]
    return rng.randint(0, 256, size=(len(labels), 28, 28, 3), dtype=np.uint8), labels


def write_dermamnist(root: Path, train=SMALL_TRAIN, val=VAL_COUNTS, test=TEST_COUNTS, compressed=False,
                     **replace) -> dict:
    rng = np.random.RandomState(0)
    arrays = {}
    for split, counts in (("train", train), ("val", val), ("test", test)):
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = medmnist_split(rng, counts)
    arrays.update(replace)
    arrays = {key: value for key, value in arrays.items() if value is not None}
    root.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compressed else np.savez)(root / "dermamnist.npz", **arrays)
    return arrays



IMAGEFOLDER_CLASSES = ["cat", "dog", "fox"]


def write_imagefolder(root: Path, counts=(6, 5, 4), test_per_class: int = 2, size=(12, 10), mode: str = "RGB") -> dict:
    """torchvision's ImageFolder layout, real PNG files: root/train/<class>/<n>.png and root/test/<class>/<n>.png
    (classes IMAGEFOLDER_CLASSES); returns the written pixels per split as uint8 [N, C, H, W] and labels."""
    rng = np.random.RandomState(3)
    written = {}
    for split, per_class in (("train", list(counts)), ("test", [test_per_class] * len(counts))):
        images, labels = [], []
        for label, (name, count) in enumerate(zip(IMAGEFOLDER_CLASSES, per_class)):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for n in range(count):
                channels = 1 if mode == "L" else 3
                pixels = rng.randint(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
                Image.fromarray(pixels[..., 0] if mode == "L" else pixels).save(root / split / name / f"{n:03d}.png")
                images.append(pixels.transpose(2, 0, 1))
                labels.append(label)
        written[split] = (np.stack(images), np.array(labels))
    return written


def _idx(folder: str, compressed: bool):
    def write(root: Path) -> int:
        write_idx_dataset(root / folder / "raw", compressed)
        return 10
    return write


def _written(writer, classes: int):
    def write(root: Path) -> int:
        writer(root)
        return classes
    return write


WRITERS = {  # dataset name -> writer(root) -> how many classes the files hold
    "mnist": _idx("MNIST", compressed=True),
    "fashion_mnist": _idx("FashionMNIST", compressed=False),
    "cifar10": _written(write_cifar10, 10),
    "cifar100": _written(write_cifar100, 100),
    "tinyimagenet": _written(write_tiny_imagenet, len(WNIDS)),  # 3 of its 200 classes: enough for the format
    "dermamnist": _written(write_dermamnist, len(SMALL_TRAIN)),
    "imagefolder": _written(write_imagefolder, len(IMAGEFOLDER_CLASSES)),
}
