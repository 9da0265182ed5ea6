"""Finished means correct and readable (issue 14, item 3).

A non-finite loss, zero optimizer steps or an attack scoring above clean ends the cell as ``failed``
(epoch, step and cause in its record); the grid goes on and exits 1 with a summary; a failed cell runs
again only with ``--retry-failed``; a record that is corrupt, foreign or non-finite is never ``done``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil

import numpy as np
import pytest
import torch

import benchmark.runner as runner_module
from attacks import AttackSpec
from benchmark.__main__ import main
from benchmark.cell import METRICS_FILE, BadCell, cell_status, read_failure, read_record, record_problem
from benchmark.config import Config, expand_grid, load_profile
from benchmark.data.prepare import prepare_cell_data
from benchmark.runner import attack_above_clean, run_cell
from benchmark.store import load_results
from benchmark.train import TrainingFailed, train
from methods import create_method
from benchmark.models import create_model
from toys import TINY_PROFILE

pytestmark = pytest.mark.usefixtures("one_thread")

ONE_EPOCH = TINY_PROFILE.replace("epochs: 2", "epochs: 1").replace("eval_per_class: 20", "eval_per_class: 5")


def _main(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "--no-progress"])
    return code, out.getvalue(), err.getvalue()


def test_nan_loss_fails_the_cell_with_epoch_step_and_cause_and_is_retried_only_when_asked(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text(ONE_EPOCH + "lr: 1.0e+30\n")
    results = tmp_path / "results"
    code, _, err = _main("--profile", str(profile), "--results", str(results))
    (cfg,) = expand_grid(load_profile(str(profile)))
    cell = results / cfg.key()
    assert code == 1
    assert "1 cell(s) failed" in err and "--retry-failed" in err and "non-finite" in err
    assert cell_status(cell) == "failed"
    failure = read_failure(cell)
    assert failure["stage"] == "training" and failure["epoch"] == 0 and isinstance(failure["step"], int)
    assert "non-finite" in failure["cause"]
    with pytest.raises(BadCell, match="failed in training"):  # never counted as done: the store skips it
        read_record(cell)
    store = load_results(results)
    assert not store.records and any("failed in training" in s.reason for s in store.skipped)
    before = (cell / METRICS_FILE).read_bytes()
    code, out, err = _main("--profile", str(profile), "--results", str(results))  # not retried by itself
    assert code == 1 and "skip (failed" in out and (cell / METRICS_FILE).read_bytes() == before
    code, out, err = _main("--profile", str(profile), "--results", str(results), "--retry-failed")
    assert code == 1 and "retry (--retry-failed)" in out and (cell / "superseded").is_dir()


def test_zero_optimizer_steps_fail_in_training(tmp_path):
    cfg = Config(epochs=1, batch_size=64, monitor_per_class=1, model_args={"width": 0.25},
                 train_attack={"kind": "pgd", "steps": 1}, monitor_attack={"kind": "pgd", "steps": 1}).validate()
    data = prepare_cell_data(cfg)
    n = len(data.y_train)
    plan = dataclasses.replace(cfg.resolve("cpu"), batch_size=n + 1)  # past the validator, as a hand-made plan
    method = create_method("at")
    model = method.wrap_model(create_model("small_cnn", data.num_classes, data.in_channels, width=0.25))
    with pytest.raises(TrainingFailed, match="zero optimizer steps") as err:
        train(plan, data, method, model, tmp_path, torch.device("cpu"), progress=False)
    assert err.value.epoch == 0 and err.value.step == 0


def test_batch_larger_than_the_training_set_is_bad_input_before_any_folder(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text(ONE_EPOCH.replace("batch_size: 64", "batch_size: 100000"))
    results = tmp_path / "results"
    code, _, err = _main("--profile", str(profile), "--results", str(results))
    assert code == 2 and "batch_size 100000 is larger than the training set" in err and len(err.strip().splitlines()) == 1
    assert not results.exists()


def test_attack_above_clean_is_caught():
    y = np.array([0, 1, 2, 3])
    assert attack_above_clean(y, {"clean": np.array([0, 1, 0, 0]), "pgd": np.array([0, 0, 0, 0])}) is None
    assert "more than clean" in attack_above_clean(y, {"clean": np.array([0, 1, 0, 0]), "pgd": np.array([0, 1, 2, 0])})
    # an attack on a subset (-1 elsewhere) is compared with clean on its own examples
    assert "pgd" in attack_above_clean(y, {"clean": np.array([0, 0, 0, 3]), "pgd": np.array([0, 1, -1, -1])})


def test_negative_step_size_attack_fails_the_cell_in_evaluation(tmp_path):
    """A hand-made plan past the validator: PGD with a negative step walks toward the label."""
    profile = tmp_path / "p.yaml"
    profile.write_text(ONE_EPOCH)
    (cfg,) = expand_grid(load_profile(str(profile)))
    plan = cfg.resolve("cpu")
    broken = AttackSpec("pgd", plan.eps, 10, -plan.eps / 4, "uniform", name="pgd_negative")
    plan = dataclasses.replace(plan, eval_attacks=(broken,))
    record = run_cell(plan, tmp_path / "results", progress=False)
    assert record["status"] == "failed" and record["failure"]["stage"] == "evaluation"
    assert "pgd_negative" in record["failure"]["cause"]
    assert cell_status(tmp_path / "results" / plan.key) == "failed"


def test_the_grid_goes_on_after_a_failed_cell(tmp_path, monkeypatch):
    profile = tmp_path / "p.yaml"
    profile.write_text(ONE_EPOCH.replace("seeds: [0]", "seeds: [0, 1]"))
    real_train = runner_module.train

    def failing_for_seed_0(plan, *args, **kwargs):
        if plan.seed == 0:
            raise TrainingFailed("non-finite training loss at step 3 (lower lr?)", 0, 3)
        return real_train(plan, *args, **kwargs)

    monkeypatch.setattr(runner_module, "train", failing_for_seed_0)
    results = tmp_path / "results"
    code, out, err = _main("--profile", str(profile), "--results", str(results))
    seed0, seed1 = expand_grid(load_profile(str(profile)))
    assert code == 1
    assert cell_status(results / seed0.key()) == "failed" and cell_status(results / seed1.key()) == "done"
    assert f"FAILED {seed0.key()}: training (epoch 0, step 3)" in err
    assert seed1.key() in out  # its table was printed: the grid went on


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished one-epoch cell (profile, results folder); tests work on copies."""
    tmp = tmp_path_factory.mktemp("finished")
    profile = tmp / "p.yaml"
    profile.write_text(ONE_EPOCH)
    code, _, _ = _main("--profile", str(profile), "--results", str(tmp / "results"))
    assert code == 0
    return profile, tmp / "results"


@pytest.mark.parametrize("damage, reason", [
    (lambda raw: "{ truncated", "unreadable"),
    (lambda raw: "", "unreadable"),
    (lambda raw: json.dumps({**raw, "schema_version": 99}), "schema_version"),
    (lambda raw: json.dumps({**raw, "cell_key": "someone-else"}), "not of"),
    (lambda raw: json.dumps({**raw, "evaluation": {**raw["evaluation"], "x": float("nan")}}), "non-finite"),
    (lambda raw: json.dumps({**raw, "status": "running"}), "status"),
], ids=["truncated", "empty", "foreign-schema", "foreign-key", "nan", "not-complete"])
def test_a_record_that_is_not_finished_is_not_done_and_is_set_aside(finished, tmp_path, damage, reason):
    profile, results = finished[0], tmp_path / "results"
    shutil.copytree(finished[1], results)
    (cfg,) = expand_grid(load_profile(str(profile)))
    cell = results / cfg.key()
    assert cell_status(cell) == "done"
    raw = json.loads((cell / METRICS_FILE).read_text())
    (cell / METRICS_FILE).write_text(damage(raw))
    assert reason in record_problem(cell) and cell_status(cell) == "resumable"
    code, _, err = _main("--profile", str(profile), "--results", str(results))
    assert code == 0 and f"warning: {cell / METRICS_FILE}" in err and cell_status(cell) == "done"
    assert list((cell / "superseded").rglob(METRICS_FILE))  # the bad record was kept aside, not overwritten


# ---- runtime faults: one line naming the file and the cause, exit 1, finished cells untouched -------------

def test_full_disk_is_one_line_exit_1_and_leaves_finished_cells_untouched(finished, tmp_path, monkeypatch):
    import errno

    profile, results = tmp_path / "p.yaml", tmp_path / "results"
    profile.write_text(finished[0].read_text().replace("seeds: [0]", "seeds: [0, 1]"))
    shutil.copytree(finished[1], results)
    done_cell = next(results.iterdir())
    before = {p.name: p.read_bytes() for p in done_cell.iterdir() if p.is_file()}

    def full(path, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(runner_module, "save_npz_atomic", full)
    code, _, err = _main("--profile", str(profile), "--results", str(results))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "No space left on device" in lines[0] and "predictions.npz" in lines[0]
    assert {p.name: p.read_bytes() for p in done_cell.iterdir() if p.is_file()} == before


def test_corrupt_data_is_one_line_exit_1_before_any_folder(tmp_path, monkeypatch):
    import zipfile

    profile, results = tmp_path / "p.yaml", tmp_path / "results"
    profile.write_text(ONE_EPOCH)

    def corrupt(plan):
        raise zipfile.BadZipFile("File is not a zip file")

    monkeypatch.setattr(runner_module, "prepare_cell_data", corrupt)
    code, _, err = _main("--profile", str(profile), "--results", str(results))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "BadZipFile: File is not a zip file" in lines[0], err
    assert not results.exists()


def test_corrupt_dataset_file_is_one_line_naming_it(tmp_path):
    """A disk dataset whose file is garbage: the loader's one line names the file (exit 2, nothing made)."""
    root, results = tmp_path / "root", tmp_path / "results"
    root.mkdir()
    (root / "dermamnist.npz").write_bytes(b"garbage")
    profile = tmp_path / "p.yaml"
    profile.write_text("dataset: dermamnist\nmethods: [at]\nimbalance_ratios: [1]\nepochs: 1\nmodel: small_cnn\n")
    code, _, err = _main("--profile", str(profile), "--data-root", str(root), "--results", str(results))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "dermamnist.npz" in lines[0], err
    assert not results.exists()
