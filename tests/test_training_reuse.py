"""Train once, evaluate many, across evaluation subsets: cells that differ only in what they evaluate on
(``eval_per_class``, ``test_split``) share a training key, and a new one takes a finished twin's trained
model instead of training it again. A model selected on the test split (``test_best``) is not shared."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from benchmark.__main__ import main
from benchmark.atomic import load_torch_plain
from benchmark.cell import cell_key, training_key
from benchmark.config import expand_grid
from toys import TINY_PROFILE

pytestmark = pytest.mark.usefixtures("one_thread")


def _resolved(**changes) -> dict:
    (cfg,) = expand_grid({**yaml.safe_load(TINY_PROFILE), **changes})
    return cfg.resolve("cpu").resolved


def test_the_training_key_ignores_the_evaluation_subset_and_nothing_that_changes_the_weights():
    base = _resolved()
    assert training_key(_resolved(eval_per_class=10, test_split="longtail")) == training_key(base)
    assert cell_key(_resolved(eval_per_class=10)) != cell_key(base)  # still two cells: two evaluations
    for changes in ({"seeds": [1]}, {"epochs": 3}, {"eps": 0.2}, {"imbalance_ratios": [100]}):
        assert training_key(_resolved(**changes)) != training_key(base), changes
    assert training_key(_resolved(selection="test_best", select_from=0)) is None  # the test split picks the model


def test_a_cell_that_differs_only_in_its_evaluation_subset_evaluates_the_finished_twins_model(finished_tiny, tmp_path,
                                                                                             capsys):
    _, _, results, twin_cfg = finished_tiny
    shutil.copytree(results, tmp_path / "results")
    twin = tmp_path / "results" / twin_cfg.key()
    settings = {**yaml.safe_load(TINY_PROFILE), "eval_per_class": 10, "test_split": "longtail"}
    profile = tmp_path / "other-subset.yaml"
    profile.write_text(yaml.safe_dump(settings))
    (cfg,) = expand_grid(settings)
    assert cfg.key() != twin_cfg.key()
    assert main(["--profile", str(profile), "--results", str(tmp_path / "results"), "--dry-run"]) == 0
    assert capsys.readouterr().out == f"new        {cfg.key()}  (evaluates the training of {twin.name})\n"
    assert main(["--profile", str(profile), "--results", str(tmp_path / "results"), "--no-progress", "--quiet"]) == 0
    assert f"the same training as the finished cell {twin.name}" in capsys.readouterr().err
    cell = tmp_path / "results" / cfg.key()
    record = json.loads((cell / "metrics.json").read_text())
    assert record["status"] == "complete" and record["cost"]["training_reused_from"]["cell"] == twin.name
    assert record["data"]["test_split"] == "longtail" and record["data"]["eval_examples"] == 100  # its own subset
    assert (cell / "log.jsonl").read_text() == (twin / "log.jsonl").read_text()  # no epoch ran here
    mine, theirs = (load_torch_plain(d / "checkpoint.pt") for d in (cell, twin))
    assert mine["cell_key"] == cell.name and theirs["cell_key"] == twin.name  # relabelled as this cell's own
    assert (mine["config"]["eval_per_class"], theirs["config"]["eval_per_class"]) == (10, 20)
    assert all(torch.equal(mine["model"][k], theirs["model"][k]) for k in theirs["model"])  # the same weights
    again = main(["--profile", str(profile), "--results", str(tmp_path / "results"), "--no-progress", "--quiet"])
    assert again == 0 and json.loads((cell / "metrics.json").read_text()) == record  # finished: left alone


def test_a_twin_whose_checkpoint_is_not_its_own_is_not_adopted_and_the_cell_trains(finished_tiny, tmp_path, capsys):
    _, _, results, twin_cfg = finished_tiny
    shutil.copytree(results, tmp_path / "results")
    twin = tmp_path / "results" / twin_cfg.key()
    state = load_torch_plain(twin / "checkpoint.pt")
    state["cell_key"] = "mnist5k-ir10-at-small_cnn-s1-0000000000"  # copied in from another cell
    torch.save(state, twin / "checkpoint.pt")
    settings = {**yaml.safe_load(TINY_PROFILE), "eval_per_class": 10}
    profile = tmp_path / "other-subset.yaml"
    profile.write_text(yaml.safe_dump(settings))
    (cfg,) = expand_grid(settings)
    assert main(["--profile", str(profile), "--results", str(tmp_path / "results"), "--no-progress", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"the training of {twin.name} could not be reused (" in err and "belongs to cell" in err
    record = json.loads((tmp_path / "results" / cfg.key() / "metrics.json").read_text())
    assert record["status"] == "complete" and "training_reused_from" not in record["cost"]
    assert record["cost"]["epochs"] == 2 and record["cost"]["steps"] > 0
