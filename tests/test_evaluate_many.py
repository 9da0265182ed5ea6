"""Train once, evaluate many (issue #15, item 1).

A cell is one trained model: the evaluation attacks are keyed on their own, so adding an attack to a
finished grid evaluates the existing checkpoint under it and trains nothing (zero optimizer steps), and
the batch size of an evaluation changes no prediction of an attack whose random starts are drawn per example.
"""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

import benchmark.train as train_module
from attacks import AttackSpec
from benchmark.__main__ import main
from benchmark.config import expand_grid, load_profile
from benchmark.evaluate import InferenceModel, predict
from benchmark.runner import plan_status
from toys import TINY_PROFILE

pytestmark = pytest.mark.usefixtures("one_thread")
WITH_FGSM = TINY_PROFILE.replace("eval_attacks:\n", "eval_attacks:\n  - {kind: fgsm}\n")


@pytest.fixture(scope="module")
def finished(finished_tiny):
    """The session's finished tiny cell: (tmp, results, cfg). Do not modify it."""
    tmp, _, results, cfg = finished_tiny
    return tmp, results, cfg


def _count_steps(monkeypatch) -> list:
    calls = []
    real = train_module.train_step

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", counting)
    return calls


def test_the_cell_key_leaves_out_the_evaluation_attacks_and_batch_size(finished, tmp_path):
    _, _, cfg = finished
    profile = tmp_path / "more.yaml"
    profile.write_text(WITH_FGSM + "eval_batch_size: 7\n")
    (more,) = expand_grid(load_profile(str(profile)))
    assert more.key() == cfg.key()
    assert dataclasses.replace(cfg, epochs=3).key() != cfg.key()  # what changes the weights still does


def test_adding_an_attack_to_a_finished_grid_evaluates_without_training(finished, tmp_path, monkeypatch, capsys):
    _, done, cfg = finished
    results = tmp_path / "results"
    shutil.copytree(done, results)
    cell = results / cfg.key()
    before = json.loads((cell / "metrics.json").read_text())
    with np.load(cell / "predictions.npz") as stored:
        old_pgd = stored["pred_pgd3"].copy()
    profile = tmp_path / "more.yaml"
    profile.write_text(WITH_FGSM)
    (more,) = expand_grid(load_profile(str(profile)))
    assert plan_status(more.resolve(), results) == "evaluate"

    steps = _count_steps(monkeypatch)
    assert main(["--profile", str(profile), "--results", str(results), "--no-progress", "--quiet"]) == 0
    out = capsys.readouterr()
    assert steps == []  # not one optimizer step: the trained model was evaluated, not retrained
    assert "evaluate (attacks added; no training)" in out.out
    after = json.loads((cell / "metrics.json").read_text())
    assert set(after["evaluation"]["attack_records"]) == {"clean", "fgsm", "pgd3"}
    assert after["evaluation"]["attack_records"]["fgsm"]["eval_key"]
    assert after["evaluation"]["attacks"]["pgd3"] == before["evaluation"]["attacks"]["pgd3"]
    assert after["cost"]["steps"] == before["cost"]["steps"] and after["cost"]["train_seconds"] == before["cost"]["train_seconds"]
    assert after["cost"]["evaluations_added"][0]["attacks"] == ["fgsm"]
    with np.load(cell / "predictions.npz") as stored:
        assert np.array_equal(stored["pred_pgd3"], old_pgd)
        assert (stored["pred_fgsm"] >= 0).all()
    kept = list(cell.glob("superseded/*/metrics.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == before  # the replaced record is kept
    assert plan_status(more.resolve(), results) == "done"

    assert main(["--profile", str(profile), "--results", str(results), "--no-progress", "--quiet"]) == 0
    assert steps == [] and len(list(cell.glob("superseded/*/metrics.json"))) == 1  # nothing left to do


def test_evaluate_only_runs_missing_attacks_and_lists_untrained_cells(finished, tmp_path, monkeypatch, capsys):
    _, done, cfg = finished
    results = tmp_path / "results"
    shutil.copytree(done, results)
    profile = tmp_path / "two.yaml"
    profile.write_text(WITH_FGSM.replace("seeds: [0]", "seeds: [0, 1]"))
    steps = _count_steps(monkeypatch)
    assert main(["--profile", str(profile), "--results", str(results), "--no-progress", "--quiet",
                 "--evaluate-only"]) == 0
    out = capsys.readouterr().out
    assert "--evaluate-only: 1 cell(s) to evaluate, 0 already evaluated under every attack, 1 not trained" in out
    assert steps == []
    keys = [c.key() for c in expand_grid(load_profile(str(profile)))]
    assert sorted(p.name for p in results.iterdir()) == [cfg.key()] and cfg.key() in keys
    assert "fgsm" in json.loads((results / cfg.key() / "metrics.json").read_text())["evaluation"]["attacks"]


def test_the_evaluation_batch_size_changes_no_prediction_of_a_per_example_started_attack():
    torch.manual_seed(0)
    model = InferenceModel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)),
                           type("M", (), {"logits": staticmethod(lambda m, x: m(x))})())
    x, y = torch.rand(23, 1, 4, 4), torch.randint(0, 3, (23,))
    spec = AttackSpec("pgd", 0.3, 3, 0.1, "uniform")
    assert spec.metadata["batch_invariant"]
    small, _ = predict(model, x, y, spec, 4, torch.device("cpu"), torch.Generator().manual_seed(0), seed=5)
    large, _ = predict(model, x, y, spec, 23, torch.device("cpu"), torch.Generator().manual_seed(0), seed=5)
    assert np.array_equal(small, large)
    other_seed, _ = predict(model, x, y, AttackSpec("pgd", 0.3, 0, 0.1, "uniform"), 23, torch.device("cpu"), seed=6)
    same_seed, _ = predict(model, x, y, AttackSpec("pgd", 0.3, 0, 0.1, "uniform"), 5, torch.device("cpu"), seed=5)
    assert same_seed.shape == other_seed.shape == (23,)
    assert spec.evaluation_key(0, 64) == spec.evaluation_key(0, 2000)  # so batch size is in no key of it
    aa = AttackSpec("autoattack", 0.3)
    assert aa.evaluation_key(0, 64) != aa.evaluation_key(0, 2000)  # AutoAttack's draws depend on its batches


def test_per_example_starts_are_the_same_points_whatever_the_batching():
    from attacks.pgd import ExampleSeeds, random_start

    x = torch.full((6, 1, 2, 2), 0.5)
    whole = random_start(x, 0.1, "uniform", ExampleSeeds(3, range(6)))
    parts = torch.cat([random_start(x[:2], 0.1, "uniform", ExampleSeeds(3, [0, 1])),
                       random_start(x[2:], 0.1, "uniform", ExampleSeeds(3, [2, 3, 4, 5]))])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, random_start(x, 0.1, "uniform", ExampleSeeds(4, range(6))))
    assert (whole - x).abs().max() <= 0.1


def test_a_finished_cell_without_its_checkpoint_keeps_its_record_and_says_why(finished, tmp_path, monkeypatch, capsys):
    _, done, cfg = finished
    results = tmp_path / "results"
    shutil.copytree(done, results)
    cell = results / cfg.key()
    (cell / "checkpoint.pt").unlink()  # deleted to save disk
    before = (cell / "metrics.json").read_bytes()
    profile = tmp_path / "more.yaml"
    profile.write_text(WITH_FGSM)
    steps = _count_steps(monkeypatch)
    assert main(["--profile", str(profile), "--results", str(results), "--no-progress", "--quiet"]) == 0
    assert steps == [] and (cell / "metrics.json").read_bytes() == before
    assert "cannot evaluate fgsm: its final checkpoint is gone" in capsys.readouterr().err
