"""Datasets as in-memory tensors, long-tailed subsets of them, batching and augmentation."""
from benchmark.data.datasets import (DATASETS, ImageDataset, dataset_metadata, get_dataset, list_datasets, load_dataset,
                                     register_dataset)
from benchmark.data.loader import iterate_batches, stratified_subset, to_float
from benchmark.data.longtail import LongTailSubset, longtail_counts, make_longtail
from benchmark.data.transforms import AUGMENTATIONS, augment

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "ImageDataset",
    "LongTailSubset",
    "augment",
    "dataset_metadata",
    "get_dataset",
    "iterate_batches",
    "list_datasets",
    "load_dataset",
    "longtail_counts",
    "make_longtail",
    "register_dataset",
    "stratified_subset",
    "to_float",
]
