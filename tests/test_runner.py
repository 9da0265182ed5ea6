"""The runner end to end on a tiny profile: what a finished cell holds, skipping, --force, resume, cell keys.

One uninterrupted run of the tiny profile is made per module (through the CLI's ``main``) and kept
read-only; tests that change a cell work on a copy of it. Torch runs on one intra-op thread: faster
on a shared 2-core machine, and the same thread count in every run keeps results bit-comparable.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

import benchmark.train as train_module
from benchmark.__main__ import main
from benchmark.config import Config, expand_grid, load_profile
from benchmark.runner import cell_status, run_cell
from toys import TINY_PROFILE

# mnist5k: 400 training digits per class; n_c = floor(400 * 10^(-c/9)).
IR10_TRAIN_COUNTS = [400, 309, 239, 185, 143, 111, 86, 66, 51, 40]
STEPS_PER_EPOCH = sum(IR10_TRAIN_COUNTS) // 64  # 1,600 digits, batch 64, drop_last


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class FinishedRun:
    profile: Path
    results: Path
    cell: Path
    cfg: Config
    code: int
    stdout: str


def _cli_args(profile: Path, results: Path, *extra: str) -> list[str]:
    return ["--profile", str(profile), "--results", str(results), "--no-progress", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> FinishedRun:
    """The tiny profile run once, uninterrupted, through the CLI's main(). Do not modify its folder."""
    tmp = tmp_path_factory.mktemp("runner")
    profile = tmp / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    results = tmp / "results"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(_cli_args(profile, results))
    (cfg,) = expand_grid(load_profile(str(profile)))
    return FinishedRun(profile, results, results / cfg.key(), cfg, code, out.getvalue())


def _copy_results(run: FinishedRun, dest: Path) -> Path:
    shutil.copytree(run.results, dest / "results")
    return dest / "results"


def _read_log(cell: Path) -> list[dict]:
    return [json.loads(line) for line in (cell / "log.jsonl").read_text().splitlines()]


def _read_metrics(cell: Path) -> dict:
    return json.loads((cell / "metrics.json").read_text())


# --- a finished cell ------------------------------------------------------------------------------

def test_end_to_end_run_exits_0_and_writes_exactly_one_cell(finished_run):
    assert finished_run.code == 0
    assert [p.name for p in finished_run.results.iterdir()] == [finished_run.cfg.key()]
    assert cell_status(finished_run.cell) == "done"
    assert {p.name for p in finished_run.cell.iterdir()} >= {
        "config.yaml", "indices.json", "log.jsonl", "checkpoint.pt", "metrics.json"}


def test_metrics_json_records_schema_config_seeds_versions_and_cost(finished_run):
    metrics = _read_metrics(finished_run.cell)
    assert metrics["schema_version"] == 1
    assert metrics["cell_key"] == finished_run.cfg.key()
    assert metrics["status"] == "complete"
    assert metrics["config"]["epochs"] == 2 and metrics["config"]["eps_value"] == 0.1
    assert metrics["config"]["model_args"] == {"width": 0.25}
    assert metrics["config"]["train_attack_spec"]["steps"] == 2
    assert metrics["config"]["train_attack_spec"]["step_size"] == pytest.approx(0.025)
    assert metrics["seeds"] == {"training": 0, "subset": 0, "eval_attack_start": 0}
    assert metrics["versions"]["torch"] == torch.__version__
    assert metrics["method"]["name"] == "at" and metrics["method"]["preset"] is None
    cost = metrics["cost"]
    assert cost["train_seconds"] > 0
    assert cost["epochs"] == 2
    assert cost["steps"] == 2 * STEPS_PER_EPOCH
    assert cost["resumed_from_epoch"] is None
    assert cost["device"] == "cpu" and cost["device_name"].endswith("cores)")
    assert cost["seconds_per_epoch"] == pytest.approx(cost["train_seconds"] / 2)
    assert cost["peak_rss_mb"] > 0 and cost["eval_seconds"] > 0
    assert len(cost["harness_commit"]) >= 7
    assert metrics["model_selection"] == {"rule": "final", "label": "final epoch", "metric": "none", "attack": None,
                                          "from_epoch": None, "epoch": 1, "score": None}


def test_metrics_json_records_long_tailed_train_counts_and_eval_subset(finished_run):
    data = _read_metrics(finished_run.cell)["data"]
    assert data["train_counts"] == IR10_TRAIN_COUNTS
    assert data["train_size"] == sum(IR10_TRAIN_COUNTS)
    assert data["test_split"] == "balanced"
    assert data["eval_examples"] == 200  # 20 per class
    assert data["balanced_robustness_equals_robust_accuracy"] is True
    indices = json.loads((finished_run.cell / "indices.json").read_text())
    assert len(indices["train_indices"]) == sum(IR10_TRAIN_COUNTS)
    assert indices["test_indices"] is None


def test_metrics_json_has_clean_and_pgd_per_class_results(finished_run):
    evaluation = _read_metrics(finished_run.cell)["evaluation"]
    assert set(evaluation["attacks"]) == {"clean", "pgd3", "worst_case"}
    assert evaluation["test_support"] == [20] * 10
    worst = evaluation["attacks"]["worst_case"]["per_class_correct"]
    assert all(w <= min(c, p) for w, c, p in zip(worst, evaluation["attacks"]["clean"]["per_class_correct"],
                                                 evaluation["attacks"]["pgd3"]["per_class_correct"]))
    for name, result in evaluation["attacks"].items():
        recall = result["per_class_recall"]
        assert len(recall) == 10, name
        assert all(0.0 <= r <= 1.0 for r in recall), name
        assert recall == [c / 20 for c in result["per_class_correct"]], name
        assert result["balanced"] == pytest.approx(sum(recall) / 10), name
    # the attack really ran: within ε, and not better than clean in total
    record = evaluation["attack_records"]["pgd3"]
    assert 0 < record["max_linf"] <= 0.1 + 1e-6
    assert record["spec"]["steps"] == 3 and record["spec"]["start"] == "uniform"
    assert sum(evaluation["attacks"]["pgd3"]["per_class_correct"]) <= sum(evaluation["attacks"]["clean"]["per_class_correct"])


def test_log_jsonl_has_one_monitoring_line_per_epoch(finished_run):
    log = _read_log(finished_run.cell)
    assert [entry["epoch"] for entry in log] == [0, 1]
    # the common schedule's first decay (AT-BSL's 1-based epoch 75 of 100 = after 74/100 of the budget)
    # falls after epoch 0 of a 2-epoch budget
    assert [entry["lr"] for entry in log] == pytest.approx([0.1, 0.01])
    for entry in log:
        assert entry["examples"] == STEPS_PER_EPOCH * 64
        assert entry["loss"] > 0
        assert 0.0 <= entry["train_acc"] <= 1.0
        assert 0.0 <= entry["monitor_clean_acc"] <= 1.0
        assert 0.0 <= entry["monitor_pgd2_acc"] <= 1.0
        assert "never used to choose a model" in entry["monitor_note"]


def test_checkpoint_holds_the_last_epoch(finished_run):
    state = torch.load(finished_run.cell / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1
    assert state["step"] == 2 * STEPS_PER_EPOCH


def test_run_prints_a_per_class_table_with_clean_and_attack_rows(finished_run):
    out = finished_run.stdout
    assert re.search(rf"^\[1/1 \| 0 done \| elapsed \S+\] run: {finished_run.cfg.key()}$", out, re.M)
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "clean" in rows and "pgd3" in rows
    assert len(rows["clean"].split()) == 1 + 10 + 2  # label, 10 classes, mean, acc
    metrics = _read_metrics(finished_run.cell)
    clean = metrics["evaluation"]["attacks"]["clean"]
    assert rows["clean"].split()[1:11] == [f"{100 * r:.1f}" for r in clean["per_class_recall"]]
    assert "train count" in out and " ".join(map(str, IR10_TRAIN_COUNTS)) in " ".join(out.split())


# --- skipping and --force -------------------------------------------------------------------------

def test_second_run_skips_the_finished_cell_and_leaves_it_untouched(finished_run, tmp_path, capsys):
    results = _copy_results(finished_run, tmp_path)
    cell = results / finished_run.cfg.key()
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in cell.iterdir()}

    assert main(_cli_args(finished_run.profile, results, "--dry-run")) == 0
    assert capsys.readouterr().out.split() == ["done", finished_run.cfg.key()]

    assert main(_cli_args(finished_run.profile, results)) == 0
    out = capsys.readouterr().out
    assert f"skip (finished): {finished_run.cfg.key()}" in out
    assert "clean" in out  # the table is printed from the stored metrics
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in cell.iterdir()}
    assert after == before


def test_force_moves_old_files_to_superseded_and_writes_new_ones(finished_run, tmp_path, capsys):
    results = _copy_results(finished_run, tmp_path)
    cell = results / finished_run.cfg.key()
    old = {p.name: p.read_bytes() for p in cell.iterdir()}

    assert main(_cli_args(finished_run.profile, results, "--force")) == 0
    captured = capsys.readouterr()
    assert "re-run (--force)" in captured.out
    assert "moved to" in captured.err

    (moved,) = list((cell / "superseded").iterdir())
    assert re.fullmatch(r"\d{8}T\d{6}", moved.name)
    assert {p.name: p.read_bytes() for p in moved.iterdir()} == old  # every old file, byte for byte
    new = _read_metrics(cell)
    assert new["cost"]["resumed_from_epoch"] is None  # trained from scratch, not from the old checkpoint
    assert [entry["epoch"] for entry in _read_log(cell)] == [0, 1]  # a new log, not appended to the old one
    assert {p.name for p in cell.iterdir()} == set(old) | {"superseded"}
    # same config and seed on the same thread count: the re-run reproduces the evaluation
    old_metrics = json.loads(old["metrics.json"])
    assert new["evaluation"]["attacks"] == old_metrics["evaluation"]["attacks"]


# --- resume ---------------------------------------------------------------------------------------

class SimulatedCrash(Exception):
    pass


def test_interrupted_run_resumes_from_checkpoint_and_matches_uninterrupted_run(finished_run, tmp_path, monkeypatch):
    cfg = copy.deepcopy(finished_run.cfg)
    cell = tmp_path / cfg.key()
    real_predict = train_module.predict
    calls = []

    def predict_dying_in_epoch_1(*args, **kwargs):
        # calls 1-2: epoch 0's monitoring (clean, attacked), after its training; call 3: epoch 1's,
        # after epoch 1 trained but before its checkpoint: that epoch's work is lost and must be redone.
        calls.append(1)
        if len(calls) == 3:
            raise SimulatedCrash("killed during epoch 1")
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(train_module, "predict", predict_dying_in_epoch_1)
    with pytest.raises(SimulatedCrash):
        run_cell(cfg, tmp_path, progress=False)
    monkeypatch.setattr(train_module, "predict", real_predict)

    assert cell_status(cell) == "resumable"
    assert [entry["epoch"] for entry in _read_log(cell)] == [0]
    assert torch.load(cell / "checkpoint.pt", map_location="cpu", weights_only=True)["epoch"] == 0

    metrics = run_cell(cfg, tmp_path, progress=False)
    assert metrics["cost"]["resumed_from_epoch"] == 1
    assert metrics["cost"]["steps"] == 2 * STEPS_PER_EPOCH
    assert [entry["epoch"] for entry in _read_log(cell)] == [0, 1]

    resumed = torch.load(cell / "checkpoint.pt", map_location="cpu", weights_only=True)
    straight = torch.load(finished_run.cell / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == 1
    assert resumed["model"].keys() == straight["model"].keys()
    unequal = [name for name in straight["model"] if not torch.equal(resumed["model"][name], straight["model"][name])]
    assert unequal == []
    for param_id, state in straight["optimizer"]["state"].items():
        assert torch.equal(resumed["optimizer"]["state"][param_id]["momentum_buffer"], state["momentum_buffer"])
    straight_metrics = _read_metrics(finished_run.cell)
    assert metrics["evaluation"]["attacks"] == straight_metrics["evaluation"]["attacks"]
    assert _read_log(cell)[1]["loss"] == _read_log(finished_run.cell)[1]["loss"]


def test_a_crash_during_evaluation_resumes_the_attack_from_its_saved_batches(tmp_path, monkeypatch):
    import benchmark.evaluate as evaluate_module

    cfg = _tiny_config(eval_batch_size=64)  # 200 evaluated digits: four batches per attack
    straight = run_cell(cfg, tmp_path / "straight", progress=False)
    real, calls = evaluate_module.run_attack_reported, []

    def dies_in_third_batch(spec, *args, **kwargs):
        calls.append(spec.name)
        if calls.count("pgd3") == 3:  # the evaluation attack, not the monitoring one
            raise SimulatedCrash("killed during the evaluation")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "run_attack_reported", dies_in_third_batch)
    with pytest.raises(SimulatedCrash):
        run_cell(cfg, tmp_path / "crashed", progress=False)
    monkeypatch.setattr(evaluate_module, "run_attack_reported", real)
    cell = tmp_path / "crashed" / cfg.key()
    assert (cell / "eval_progress" / "pgd3.npz").exists() and cell_status(cell) == "resumable"

    metrics = run_cell(cfg, tmp_path / "crashed", progress=False)
    assert metrics["cost"]["resumed_from_epoch"] == cfg.epochs  # training was not redone
    assert metrics["evaluation"]["attack_records"]["pgd3"]["resumed"] is True
    assert metrics["evaluation"]["attacks"] == straight["evaluation"]["attacks"]
    assert not (cell / "eval_progress").exists()  # the partial files are gone once predictions.npz is written


# --- cell keys ------------------------------------------------------------------------------------

def _tiny_config(**changes) -> Config:
    (cfg,) = expand_grid(yaml.safe_load(TINY_PROFILE))
    return Config(**{**cfg.to_dict(), **changes}).validate()


def test_same_config_gives_the_same_key():
    assert _tiny_config().key() == _tiny_config().key()
    assert _tiny_config().key() == Config(**_tiny_config().to_dict()).key()


@pytest.mark.parametrize("changes", [
    {"lr": 0.05},
    {"eps": 0.2},
    {"eps": "1/255"},
    {"train_attack": {"kind": "pgd", "steps": 3, "step_size": "eps/4", "start": "normal"}},
    {"train_attack": {"kind": "pgd", "steps": 2, "step_size": "eps/8", "start": "normal"}},
    {"monitor_attack": {"kind": "pgd", "steps": 3, "step_size": "eps/4", "start": "uniform"}},
    {"weight_decay": 1e-3},
    {"epochs": 3},
    {"model_args": {"width": 0.5}},
    {"subset_seed": 1},
], ids=lambda c: ",".join(c))
def test_changing_a_hyperparameter_changes_the_key(changes):
    assert _tiny_config(**changes).key() != _tiny_config().key()


def test_changing_a_method_arg_value_changes_the_key():
    a = _tiny_config(method="taet", method_args={"ce_fraction": 0.25})
    b = _tiny_config(method="taet", method_args={"ce_fraction": 0.5})
    c = _tiny_config(method="taet", method_args={"ce_fraction": 0.25, "class_mean": "present"})
    assert len({a.key(), b.key(), c.key()}) == 3


@pytest.mark.parametrize("changes", [
    {"data_root": "/somewhere/else"}, {"device": "cuda:1"}, {"download": True},
    {"eval_attacks": [{"kind": "pgd", "steps": 4, "step_size": "eps/4", "start": "uniform"}]},  # keyed per attack
    {"eval_batch_size": 7},
], ids=lambda c: ",".join(c))
def test_changing_a_location_or_evaluation_field_keeps_the_key(changes):
    assert _tiny_config(**changes).key() == _tiny_config().key()


def test_key_names_dataset_ratio_method_model_and_seed():
    key = _tiny_config(seed=3).key()
    assert re.fullmatch(r"mnist5k-ir10-at-small_cnn-s3-[0-9a-f]{10}", key)


# --- crashes at awkward moments and repeated forced runs ---

def test_crash_right_after_a_checkpoint_still_leaves_a_complete_log(finished_run, tmp_path, monkeypatch):
    cfg = copy.deepcopy(finished_run.cfg)
    cell = tmp_path / cfg.key()
    real_save = train_module.save_torch_atomic

    def save_then_die_after_epoch_1(path, obj):
        real_save(path, obj)
        if obj["epoch"] == 1:
            raise SimulatedCrash("killed right after the epoch-1 checkpoint")

    monkeypatch.setattr(train_module, "save_torch_atomic", save_then_die_after_epoch_1)
    with pytest.raises(SimulatedCrash):
        run_cell(cfg, tmp_path, progress=False)
    monkeypatch.setattr(train_module, "save_torch_atomic", real_save)

    run_cell(cfg, tmp_path, progress=False)
    assert [entry["epoch"] for entry in _read_log(cell)] == [0, 1]


def test_resume_survives_a_truncated_last_log_line(finished_run, tmp_path):
    results = _copy_results(finished_run, tmp_path)
    cell = results / finished_run.cfg.key()
    (cell / "metrics.json").unlink()  # a run killed after its last checkpoint, before evaluation
    with (cell / "log.jsonl").open("a") as handle:
        handle.write('{"epoch": 2, "lr"')
    assert cell_status(cell) == "resumable"
    run_cell(finished_run.cfg, results, progress=False)
    assert [entry["epoch"] for entry in _read_log(cell)] == [0, 1]


def test_two_forced_reruns_in_the_same_second_keep_both_old_result_sets(finished_run, tmp_path, monkeypatch):
    import datetime as real_dt
    import types

    import benchmark.cell as cell_module

    frozen = real_dt.datetime(2025, 1, 2, 3, 4, 5)
    fake_datetime = types.SimpleNamespace(now=lambda *a: frozen)
    monkeypatch.setattr(cell_module, "dt", types.SimpleNamespace(datetime=fake_datetime, timezone=real_dt.timezone))
    results = _copy_results(finished_run, tmp_path)
    cell = results / finished_run.cfg.key()
    first = cell_module.set_aside(cell)
    shutil.copytree(first, cell, dirs_exist_ok=True)  # as if a forced re-run had finished again
    second = cell_module.set_aside(cell)
    assert first != second and (first / "metrics.json").exists() and (second / "metrics.json").exists()
