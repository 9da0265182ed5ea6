"""Per-class metrics on hand-made predictions."""
from __future__ import annotations

import numpy as np

from benchmark.metrics import class_groups, confusion_matrix, summarize_evaluation, summarize_predictions


def test_balanced_robustness_is_mean_per_class_recall_on_hand_made_predictions():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2])
    y_adv = np.array([0, 0, 0, 2, 1, 0, 2])  # recalls: 3/4, 1/2, 1/1
    m = summarize_predictions(y_true, y_adv, 3, train_counts=[100, 30, 10])
    assert m["per_class_recall"] == [0.75, 0.5, 1.0]
    assert abs(m["balanced"] - (0.75 + 0.5 + 1.0) / 3) < 1e-12
    assert abs(m["accuracy"] - 5 / 7) < 1e-12  # plain accuracy differs on an imbalanced split
    assert m["worst_class"] == 1 and m["worst_class_recall"] == 0.5
    assert m["per_class_correct"] == [3, 1, 1]


def test_balanced_robustness_equals_accuracy_on_a_balanced_split():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_adv = np.array([0, 1, 1, 1, 0, 0])
    m = summarize_predictions(y_true, y_adv, 3, train_counts=[5, 3, 1])
    assert abs(m["balanced"] - m["accuracy"]) < 1e-12 and abs(m["accuracy"] - 0.5) < 1e-12


def test_class_without_test_examples_is_excluded_and_flagged_not_counted():
    y_true = np.array([0, 0, 2, 2])
    predictions = {"clean": np.array([0, 0, 2, 2]), "pgd20": np.array([0, 1, 2, 1])}
    out = summarize_evaluation(y_true, predictions, 3, train_counts=[50, 20, 10])
    assert out["undefined_classes"] == [1]
    assert out["test_support"] == [2, 0, 2]
    robust = out["attacks"]["pgd20"]
    assert robust["per_class_recall"] == [0.5, None, 0.5]
    assert robust["balanced"] == 0.5  # mean over the two defined classes, not (0.5 + 0 + 0.5) / 3
    assert out["attacks"]["clean"]["balanced"] == 1.0  # not (1 + 1 + 1) / 3 with class 1 counted as 1


def test_head_tail_groups_follow_training_count_rank_not_class_index():
    groups = class_groups([10, 50, 30, 5])
    assert groups == {"head": [1, 2], "tail": [0, 3]}
    y_true = np.array([0, 1, 2, 3])
    m = summarize_predictions(y_true, np.array([0, 0, 2, 0]), 4, train_counts=[10, 50, 30, 5])
    assert m["group_means"] == {"head": 0.5, "tail": 0.5}
    m = summarize_predictions(y_true, np.array([1, 1, 2, 0]), 4, train_counts=[10, 50, 30, 5])
    assert m["group_means"] == {"head": 1.0, "tail": 0.0}


def test_hundred_class_groups_use_many_medium_few_thresholds():
    counts = [500] * 30 + [100] * 10 + [50] * 20 + [20] * 10 + [19] * 30
    groups = class_groups(counts)
    assert len(groups["many"]) == 30 and len(groups["medium"]) == 40 and len(groups["few"]) == 30


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 0, 2]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_worst_case_counts_an_example_only_if_clean_and_every_attack_get_it_right():
    from benchmark.metrics import worst_case_predictions

    y_true = np.array([0, 1, 2, 0, 1])
    predictions = {"clean": np.array([0, 1, 1, 0, 1]),   # example 2 wrong on clean input
                   "fgsm": np.array([0, 2, 1, 0, 1]),    # breaks example 1
                   "pgd20": np.array([0, 1, 0, 2, 1])}   # breaks example 3 only (example 1 survives PGD)
    worst = worst_case_predictions(y_true, predictions)
    assert worst.tolist() == [0, 2, 1, 2, 1]  # first wrong label kept: clean's for 2, fgsm's for 1, pgd's for 3
    out = summarize_evaluation(y_true, predictions, 3, train_counts=[5, 3, 1])
    assert out["attacks"]["worst_case"]["per_class_recall"] == [0.5, 0.5, 0.0]
    assert out["attacks"]["worst_case"]["accuracy"] == 0.4  # below every single attack's 0.6
