"""Model selection (final / validation-selected / test-selected) and per-class monitoring every k epochs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from benchmark.config import Config, expand_grid
from benchmark.data.prepare import prepare_cell_data
from benchmark.errors import UsageError
from benchmark.runner import run_cell
from benchmark.data.splits import carve_validation
from benchmark.selection import Selector
from toys import TINY_PROFILE, ToyLinear, images

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(**overrides) -> Config:
    (cfg,) = expand_grid({**yaml.safe_load(TINY_PROFILE), **overrides})
    return cfg


def test_validation_carving_takes_a_share_of_each_class_and_never_its_last_image():
    labels = np.array([0] * 40 + [1] * 9 + [2] * 1 + [3] * 2)
    kept, val = carve_validation(labels, 0.1, seed=0)
    assert np.bincount(labels[val], minlength=4).tolist() == [4, 1, 0, 1]  # floor(10%), at least one, not the last
    assert np.bincount(labels[kept], minlength=4).tolist() == [36, 8, 1, 1]
    assert sorted(np.concatenate([kept, val]).tolist()) == list(range(len(labels)))
    again_kept, again_val = carve_validation(labels, 0.1, seed=0)
    assert np.array_equal(val, again_val) and np.array_equal(kept, again_kept)


def test_val_best_carves_the_split_from_training_and_trains_on_the_counts_left():
    plain = prepare_cell_data(_tiny())
    data = prepare_cell_data(_tiny(selection="val_best"))
    val_counts = np.bincount(data.y_val.numpy(), minlength=10)
    assert (np.array(data.train_counts) + val_counts).tolist() == plain.train_counts
    assert val_counts.tolist() == [max(1, int(0.1 * n)) for n in plain.train_counts]
    assert not set(data.val_indices.tolist()) & set(data.train_indices.tolist())
    assert set(data.val_indices.tolist()) | set(data.train_indices.tolist()) == set(plain.train_indices.tolist())


def test_selector_keeps_the_best_scoring_epoch_and_restores_its_weights(tmp_path):
    x = images([[0.9, 0.1, 0.2, 0.0], [0.1, 0.8, 0.0, 0.9], [0.0, 0.2, 0.9, 0.1]])
    y = torch.tensor([0, 1, 2])
    model = ToyLinear()
    method = type("NoState", (), {"state_dict": lambda self: {}, "load_state_dict": lambda self, s: None})()
    selector = Selector("val_best", 1, None, x, y, "balanced", 8, tmp_path / "best.pt")
    device = torch.device("cpu")
    assert selector.observe(0, model, model, method, device) is None  # before select_from
    with torch.no_grad():
        good = model(x).argmax(1).eq(y).float().mean().item()
    assert selector.observe(1, model, model, method, device) == pytest.approx(good)
    best_weights = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.mul_(-1)  # a worse model in epoch 2
    worse = selector.observe(2, model, model, method, device)
    assert worse < good and selector.best_epoch == 1
    selector.restore_best(model, method, device)
    assert torch.equal(model.weight, best_weights)


def test_bad_selection_settings_are_one_line_errors():
    with pytest.raises(UsageError, match="selection must be one of"):
        _tiny(selection="best")
    with pytest.raises(UsageError, match="select_from"):
        _tiny(selection="val_best", select_from=5)
    with pytest.raises(UsageError, match="val_fraction"):
        _tiny(selection="val_best", val_fraction=1.5)


def test_val_fraction_changes_the_cell_only_when_a_validation_split_is_carved():
    assert _tiny(val_fraction=0.2).key() == _tiny().key()
    assert _tiny(selection="val_best", val_fraction=0.2).key() != _tiny(selection="val_best").key()
    assert _tiny(selection="test_best").key() != _tiny().key()


def test_a_validation_selected_cell_records_its_choice_split_and_per_class_monitoring(tmp_path):
    cfg = _tiny(selection="val_best", select_from=0, epochs=2)
    metrics = run_cell(cfg, tmp_path, progress=False)
    cell = tmp_path / cfg.key()
    log = [json.loads(line) for line in (cell / "log.jsonl").read_text().splitlines()]
    scores = [r["selection_score"] for r in log]
    choice = metrics["model_selection"]
    assert choice["rule"] == "val_best" and choice["label"] == "validation-selected"
    assert choice["score"] == max(scores) and choice["epoch"] == int(np.argmax(scores))
    assert (cell / "best.pt").exists()
    indices = json.loads((cell / "indices.json").read_text())
    assert len(indices["val_indices"]) == sum(max(1, int(0.1 * n)) for n in [400, 309, 239, 185, 143, 111, 86, 66, 51, 40])
    assert metrics["data"]["train_counts"] == [360, 279, 216, 167, 129, 100, 78, 60, 46, 36]
    for record in log:
        assert len(record["monitor_per_class_clean"]) == 10 and len(record["monitor_per_class_pgd2"]) == 10
        assert record["monitor_clean_acc"] == pytest.approx(np.mean(record["monitor_per_class_clean"]))


def test_test_selected_cells_say_so_and_monitoring_runs_every_k_epochs(tmp_path):
    cfg = _tiny(selection="test_best", select_from=1, epochs=3, monitor_every=2)
    metrics = run_cell(cfg, tmp_path, progress=False)
    choice = metrics["model_selection"]
    assert choice["label"] == "test-selected" and choice["from_epoch"] == 1 and choice["epoch"] in (1, 2)
    log = [json.loads(line) for line in (tmp_path / cfg.key() / "log.jsonl").read_text().splitlines()]
    assert ["monitor_per_class_clean" in r for r in log] == [False, True, True]  # epoch 2 of 3, and the last
    assert ["selection_score" in r for r in log] == [False, True, True]
    assert metrics["cost"]["seconds_per_epoch"] == pytest.approx(metrics["cost"]["train_seconds"] / 3)
