"""Live tracking: a tiny cell run with --log tensorboard,mlflow writes real TensorBoard event files and an MLflow
file store, read back here with their own readers (per-epoch loss, accuracies, per-class monitoring recall, lr,
throughput; final per-class metrics; the config and key as parameters); the tracker changes no key; an unknown or
missing tracker is one line, exit 2, before anything runs."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest

from benchmark.__main__ import main
from benchmark.config import Config, expand_grid, load_profile
from benchmark.errors import UsageError
from benchmark.tracking import check_trackers, epoch_scalars, final_scalars
from toys import TINY_PROFILE

pytestmark = pytest.mark.usefixtures("one_thread")
EPOCHS = 2


def _main(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracked")
    profile, results = tmp / "tiny.yaml", tmp / "results"
    profile.write_text(TINY_PROFILE.replace("eval_per_class: 20", "eval_per_class: 10"))
    code, out, err = _main("--profile", str(profile), "--results", str(results), "--epochs", str(EPOCHS),
                           "--log", "tensorboard", "--log", "mlflow", "--quiet")
    assert code == 0, err
    (cell,) = [p for p in results.iterdir() if not p.name.startswith(".")]
    log = [json.loads(line) for line in (cell / "log.jsonl").read_text().splitlines()]
    return {"cell": cell, "results": results, "log": log, "metrics": json.loads((cell / "metrics.json").read_text()),
            "profile": profile}


def test_tensorboard_event_files_hold_every_epoch_and_the_final_per_class_metrics(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked["cell"] / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    log, metrics = tracked["log"], tracked["metrics"]
    for tag, key in (("train/loss", "loss"), ("train/acc", "train_acc"), ("train/lr", "lr"),
                     ("monitor/clean_acc", "monitor_clean_acc")):
        read = [(e.step, e.value) for e in events.Scalars(tag)]
        assert read == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in log], tag
    speed = events.Scalars("train/images_per_s")
    assert [e.value for e in speed] == [pytest.approx(r["examples"] / r["seconds"], rel=1e-5) for r in log]
    monitored = sorted(t for t in tags if t.startswith("monitor_per_class/clean/"))
    assert len(monitored) == 10 and monitored[0] == "monitor_per_class/clean/00_0"
    assert events.Scalars(monitored[3])[-1].value == pytest.approx(log[-1]["monitor_per_class_clean"][3])
    for attack, summary in metrics["evaluation"]["attacks"].items():
        assert events.Scalars(f"final/{attack}/balanced")[0].value == pytest.approx(summary["balanced"])
        assert events.Scalars(f"final_per_class/{attack}/09_9")[0].value == pytest.approx(summary["per_class_recall"][9])
    texts = {t: events.Tensors(t) for t in events.Tags()["tensors"] if t.startswith(("cell_key", "config"))}
    assert tracked["cell"].name.encode() in texts["cell_key/text_summary"][0].tensor_proto.string_val[0]


def test_mlflow_file_store_run_holds_params_curves_and_final_metrics(tracked):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tracked["results"] / ".mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("tailrobust").experiment_id])
    key, log, metrics = tracked["cell"].name, tracked["log"], tracked["metrics"]
    assert run.info.status == "FINISHED" and run.data.tags["cell_key"] == key and run.info.run_name == key
    params = run.data.params
    assert params["cell_key"] == key and params["method"] == "at" and params["epochs"] == str(EPOCHS)
    assert json.loads(params["train_attack_spec.steps"]) == 2 and params["trackers"] == '["tensorboard", "mlflow"]'
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
        [(r["epoch"], pytest.approx(r["loss"])) for r in log]
    robust = next(k for k in log[-1] if k.startswith("monitor_") and k.endswith("_acc") and "clean" not in k)
    assert run.data.metrics[f"monitor/{robust[len('monitor_'):]}"] == pytest.approx(log[-1][robust])
    assert run.data.metrics["final/clean/balanced"] == pytest.approx(metrics["evaluation"]["attacks"]["clean"]["balanced"])
    per_class = [run.data.metrics[f"final_per_class/worst_case/{c:02d}_{c}"] for c in range(10)]
    assert per_class == pytest.approx(metrics["evaluation"]["attacks"]["worst_case"]["per_class_recall"])
    config = json.loads(Path(client.download_artifacts(run.info.run_id, "config.json")).read_text())
    assert config["method_hparams"] == metrics["config"]["method_hparams"]


def test_the_tracker_changes_no_key_and_the_same_cell_is_then_skipped(tracked):
    plain = expand_grid(load_profile(str(tracked["profile"])), {"epochs": EPOCHS})[0]
    assert plain.key() == tracked["cell"].name
    code, out, _ = _main("--profile", str(tracked["profile"]), "--results", str(tracked["results"]), "--epochs",
                         str(EPOCHS), "--dry-run")
    assert code == 0 and out.split()[0] == "done"


def test_an_unknown_or_missing_tracker_is_one_line_exit_2_before_any_folder(tmp_path, monkeypatch):
    code, _, err = _main("--log", "tensorbord", "--results", str(tmp_path / "r"))
    assert code == 2 and err.strip() == ("error: unknown tracker 'tensorbord'; known trackers: tensorboard, mlflow, "
                                         "wandb; did you mean 'tensorboard'?")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    code, _, err = _main("--log", "tensorboard,mlflow", "--results", str(tmp_path / "r"))
    assert code == 2 and err.strip() == "error: --log mlflow needs the mlflow package: pip install 'tailrobust[mlflow]'"
    assert not (tmp_path / "r").exists()
    with pytest.raises(UsageError, match="needs the mlflow package"):
        Config(trackers=["mlflow"]).validate()


def test_comma_lists_and_repeats_name_each_tracker_once():
    assert check_trackers(["tensorboard,mlflow", "tensorboard"]) == ["tensorboard", "mlflow"]


def test_scalars_skip_non_numbers_and_name_classes():
    record = {"epoch": 3, "loss": 1.5, "train_acc": 0.5, "lr": 0.1, "examples": 100, "seconds": 2.0,
              "monitor_note": "text", "monitor_per_class_pgd": [0.5, None], "kl": float("nan")}
    assert epoch_scalars(record, ["cat", "a dog"]) == {
        "train/images_per_s": 50.0, "train/loss": 1.5, "train/acc": 0.5, "train/lr": 0.1, "train/seconds": 2.0,
        "monitor_per_class/pgd/00_cat": 0.5}
    final = final_scalars({"data": {"classes": ["cat", "a dog"]}, "evaluation": {"attacks": {"clean": {
        "accuracy": 0.75, "balanced": 0.7, "group_means": {"head": 0.9, "tail": None},
        "per_class_recall": [0.9, 0.5]}}}})
    assert final == {"final/clean/accuracy": 0.75, "final/clean/balanced": 0.7, "final/clean/group/head": 0.9,
                     "final_per_class/clean/00_cat": 0.9, "final_per_class/clean/01_a_dog": 0.5}


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="wandb is not in the dev extra (its offline run starts a service process); "
                           "pip install 'tailrobust[wandb]' to run this")
def test_wandb_offline_run_is_written_under_the_results_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY_PROFILE.replace("eval_per_class: 20", "eval_per_class: 5"))
    code, _, err = _main("--profile", str(profile), "--results", str(tmp_path / "r"), "--epochs", "1", "--log",
                         "wandb", "--quiet")
    assert code == 0, err
    assert list((tmp_path / "r" / ".wandb" / "wandb").glob("offline-run-*"))
