"""Long-tailed subsets: the published CIFAR-LT counts, and draws that depend only on the subset seed."""
import numpy as np
import pytest
import torch

from benchmark.data import longtail_counts, make_longtail
from benchmark.errors import UsageError

CIFAR10_LT_IR10 = [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]
CIFAR10_LT_IR100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def balanced_labels(per_class: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Shuffled labels with `per_class` of each class, like a CIFAR split."""
    return np.random.RandomState(seed).permutation(np.repeat(np.arange(num_classes), per_class))


def test_counts_match_cifar10_lt_builders():
    assert longtail_counts(5000, 10, 10) == CIFAR10_LT_IR10
    assert longtail_counts(5000, 10, 100) == CIFAR10_LT_IR100


def test_counts_head_and_tail_of_cifar100_lt():
    counts = longtail_counts(500, 100, 100)
    assert len(counts) == 100 and counts[0] == 500 and counts[-1] == 5
    assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_ir_one_is_balanced():
    assert longtail_counts(5000, 10, 1) == [5000] * 10


def test_single_class_keeps_n_max():
    assert longtail_counts(7, 1, 10) == [7]


@pytest.mark.parametrize("ir", [0.5, 0.0, -3.0, float("nan")])
def test_ir_below_one_is_a_usage_error(ir):
    with pytest.raises(UsageError, match="imbalance ratio"):
        longtail_counts(5000, 10, ir)


def test_ir_that_empties_the_tail_is_a_usage_error():
    with pytest.raises(UsageError, match="tail class empty"):
        longtail_counts(50, 10, 100)


def test_subset_has_exact_counts_of_the_right_classes():
    labels = balanced_labels(50, 10)
    subset = make_longtail(torch.from_numpy(labels), num_classes=10, ir=10, seed=3)
    assert subset.counts == longtail_counts(50, 10, 10)
    assert subset.indices.dtype == np.int64
    assert np.all(np.diff(subset.indices) > 0)  # sorted and unique
    assert np.bincount(labels[subset.indices], minlength=10).tolist() == subset.counts
    assert subset.ir == 10.0 and subset.seed == 3


def test_subset_is_deterministic_per_seed_and_differs_across_seeds():
    labels = balanced_labels(50, 10)
    first = make_longtail(labels, 10, 10, seed=1)
    again = make_longtail(labels, 10, 10, seed=1)
    other = make_longtail(labels, 10, 10, seed=2)
    np.testing.assert_array_equal(first.indices, again.indices)
    assert not np.array_equal(first.indices, other.indices)


def test_subset_ignores_global_rng_state():
    labels = balanced_labels(50, 10)
    np.random.seed(123)
    torch.manual_seed(123)
    first = make_longtail(labels, 10, 10, seed=0)
    np.random.seed(456)
    torch.manual_seed(456)
    np.testing.assert_array_equal(first.indices, make_longtail(labels, 10, 10, seed=0).indices)


def test_subset_reproduces_the_ldam_draw():
    """LDAM seeds the global numpy RNG once and shuffles each class's indices in class order."""
    labels = balanced_labels(50, 10)
    counts = longtail_counts(50, 10, 10)
    np.random.seed(0)
    expected = []
    for label, count in enumerate(counts):
        class_indices = np.where(labels == label)[0]
        np.random.shuffle(class_indices)
        expected.extend(class_indices[:count])
    np.testing.assert_array_equal(make_longtail(labels, 10, 10, seed=0).indices, np.sort(expected))


def test_long_tailed_test_split_uses_the_test_class_size():
    test_labels = balanced_labels(100, 10, seed=7)
    subset = make_longtail(test_labels, 10, 10, seed=0)
    assert subset.counts == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    assert np.bincount(test_labels[subset.indices], minlength=10).tolist() == subset.counts


def test_default_n_max_is_the_smallest_class():
    labels = np.concatenate([balanced_labels(50, 10), np.zeros(20, dtype=np.int64)])
    assert make_longtail(labels, 10, 1).counts == [50] * 10


def test_too_few_examples_for_n_max_is_a_usage_error():
    with pytest.raises(UsageError, match="class 0 has 50 examples"):
        make_longtail(balanced_labels(50, 10), 10, 10, n_max=60)


def test_labels_outside_the_classes_are_a_usage_error():
    with pytest.raises(UsageError, match="labels must lie"):
        make_longtail(balanced_labels(50, 10), 5, 10)
