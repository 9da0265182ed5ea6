"""Per-class metrics of predictions: recall, balanced accuracy, Balanced Robustness, group means.

recall_c = correct_c / n_c over the test examples of class c. Balanced accuracy is the mean clean
recall; Balanced Robustness (TAET poster) is the mean recall under an attack. A class with no test
example has undefined recall: it is left out of every mean and listed in ``undefined_classes``,
never counted as 0 or 1. Head/tail groups go by training-count rank, never by class index.
"""
from __future__ import annotations

import numpy as np

WORST_CASE = "worst_case"  # key of the per-example worst case over clean input and all attacks
WORST_CASE_ALL_EXAMPLES = "worst_case_all_examples"  # worst case over the attacks that ran on every example


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j] = number of examples of class i predicted as j."""
    return np.bincount(np.asarray(y_true) * num_classes + np.asarray(y_pred),
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(recall per class with NaN where the class has no test example, test support per class)."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    return recall, support


def class_groups(train_counts: list[int] | np.ndarray) -> dict[str, list[int]]:
    """Head/medium/tail classes by training-count rank (ties broken by class index).

    With 100 classes or more: the CIFAR-100-LT convention (many > 100, medium 20–100, few < 20
    training images). Otherwise: the larger half is ``head``, the smaller half ``tail`` (CIFAR-10-LT:
    the five largest and five smallest classes), as the long-tail papers report them.
    """
    counts = np.asarray(train_counts)
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    if len(counts) >= 100:
        return {
            "many": [c for c in order if counts[c] > 100],
            "medium": [c for c in order if 20 <= counts[c] <= 100],
            "few": [c for c in order if counts[c] < 20],
        }
    half = (len(order) + 1) // 2
    return {"head": order[:half], "tail": order[half:]}


def _nanmean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def summarize_predictions(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int,
                          train_counts: list[int]) -> dict:
    """All per-class and aggregate numbers for one attack's predictions (JSON-ready: NaN -> None)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    recall, support = per_class_recall(y_true, y_pred, num_classes)
    defined = ~np.isnan(recall)
    worst = int(np.nanargmin(recall)) if defined.any() else None
    groups = {name: _nanmean(recall[members]) if members else None
              for name, members in class_groups(train_counts).items()}
    return {
        "accuracy": float((y_true == y_pred).mean()) if y_true.size else None,
        "balanced": _nanmean(recall),
        "worst_class_recall": float(recall[worst]) if worst is not None else None,
        "worst_class": worst,
        "group_means": groups,
        "per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
        "per_class_correct": [int(v) for v in np.diag(confusion_matrix(y_true, y_pred, num_classes))],
        "confusion_matrix": confusion_matrix(y_true, y_pred, num_classes).tolist(),
    }


def worst_case_predictions(y_true: np.ndarray, predictions: dict[str, np.ndarray]) -> np.ndarray:
    """Per-example worst case over clean input and every attack ("robust to all"): an example counts as
    correct only if every prediction is; otherwise it takes the first wrong prediction (clean first)."""
    y_true = np.asarray(y_true)
    worst = y_true.copy()
    for pred in predictions.values():
        still_correct = worst == y_true
        worst = np.where(still_correct & (pred != y_true), pred, worst)
    return worst


def summarize_evaluation(y_true: np.ndarray, predictions: dict[str, np.ndarray], num_classes: int,
                         train_counts: list[int], outside_worst_case: tuple[str, ...] = ()) -> dict:
    """Metrics for clean inputs and every attack; ``balanced`` under an attack is its Balanced Robustness.

    A prediction of -1 marks an example the attack did not run on (an attack limited to a class-stratified
    subset, e.g. AutoAttack on a CPU): that attack is scored on its own examples. ``worst_case`` is taken
    over clean input and *every* attack on the examples they all covered; when some attack covered fewer,
    ``worst_case_all_examples`` adds the worst case over the attacks that covered every example. Attacks
    named in ``outside_worst_case`` (those at another ε than the cell's) are scored but left out of both.
    """
    y_true = np.asarray(y_true)
    support = np.bincount(y_true, minlength=num_classes)
    predictions = dict(predictions)
    inside = {k: p for k, p in predictions.items() if k not in outside_worst_case}
    if len(inside) > 1:  # clean plus at least one attack: add the per-example worst case
        covered = np.logical_and.reduce([pred >= 0 for pred in inside.values()])
        worst = np.full(len(y_true), -1, dtype=np.int64)
        worst[covered] = worst_case_predictions(y_true[covered], {k: p[covered] for k, p in inside.items()})
        complete = {k: p for k, p in inside.items() if (p >= 0).all()}
        if not covered.all() and len(complete) > 1:
            predictions[WORST_CASE_ALL_EXAMPLES] = worst_case_predictions(y_true, complete)
        predictions[WORST_CASE] = worst
    attacks = {}
    for name, pred in predictions.items():
        mask = pred >= 0
        attacks[name] = {**summarize_predictions(y_true[mask], pred[mask], num_classes, train_counts),
                         "examples": int(mask.sum())}
    if WORST_CASE in attacks:
        attacks[WORST_CASE]["over"] = list(inside)
    if WORST_CASE_ALL_EXAMPLES in attacks:
        attacks[WORST_CASE_ALL_EXAMPLES]["over"] = [k for k, p in inside.items() if (p >= 0).all()]
    return {
        "test_support": [int(s) for s in support],
        "undefined_classes": [int(c) for c in np.flatnonzero(support == 0)],
        "groups": class_groups(train_counts),
        "attacks": attacks,
    }
