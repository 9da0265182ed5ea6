"""Evaluate any checkpoint (issue #15, item 2): ``python -m benchmark.evaluate --checkpoint ... --model ...``.

A model trained elsewhere — here the weights of a finished cell, saved as a plain state_dict — is
evaluated per class under the profile's attacks and written as an ``external`` cell: its numbers equal
those of the cell it came from (same weights, same examples, same per-example attack starts), and it
joins the same leaderboard as the built-in methods. A model given as Python works too; a hostile or
mismatched checkpoint is one line and exit 2.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark.evaluate_external import main
from benchmark.store import load_results

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(finished_tiny, tmp_path_factory):
    """A copy of the session's finished tiny cell, and its weights saved as a DataParallel-style state_dict."""
    _, profile, done, cfg = finished_tiny
    tmp = tmp_path_factory.mktemp("external")
    results = tmp / "results"
    shutil.copytree(done, results)
    weights = tmp / "elsewhere.pth"
    state = torch.load(results / cfg.key() / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, weights)  # as DataParallel saves
    return tmp, profile, results, cfg, weights


def _args(profile, results, weights, *extra):
    return ["--checkpoint", str(weights), "--model", "small_cnn", "--model-args", '{"width": 0.25}',
            "--dataset", "mnist5k", "--imbalance-ratio", "10", "--profile", str(profile), "--results", str(results),
            "--no-progress", *extra]


def test_an_outside_checkpoint_gets_the_numbers_of_the_same_weights_and_joins_the_leaderboard(trained, capsys):
    tmp, profile, results, cfg, weights = trained
    assert main(_args(profile, results, weights, "--name", "mine")) == 0
    external = [p for p in results.iterdir() if "-external-" in p.name]
    assert len(external) == 1
    record = json.loads((external[0] / "metrics.json").read_text())
    assert record["method"] == {"name": "external", "preset": "mine", "hparams": {}}
    assert record["external"]["sha256"] and record["external"]["checkpoint"] == str(weights.resolve())
    own = json.loads((results / cfg.key() / "metrics.json").read_text())
    assert record["evaluation"]["attacks"] == own["evaluation"]["attacks"]  # same weights, examples and starts

    store = load_results(results)
    rows = store.cells[store.cells["attack"] == "pgd3"]
    assert set(rows["method"]) == {"at", "external"}
    assert rows[["dataset", "imbalance_ratio", "test_split"]].drop_duplicates().shape[0] == 1  # one leaderboard
    from benchmark.report import build_report

    out = tmp / "report"
    build_report(results, out)
    assert "external.mine" in (out / "index.html").read_text()

    assert main(_args(profile, results, weights, "--name", "mine")) == 0  # already there: not evaluated again
    assert "already evaluated" in capsys.readouterr().out


def test_python_model_module_function_works(trained, tmp_path, monkeypatch):
    _, profile, _, _, weights = trained
    (tmp_path / "my_nets.py").write_text(
        "from benchmark.models import create_model\n\n"
        "def build(num_classes):\n    return create_model('small_cnn', num_classes, 1, width=0.25)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    results = tmp_path / "results"
    args = _args(profile, results, weights, "--name", "py")
    args[args.index("small_cnn")] = "my_nets:build"
    args[args.index("--model-args"):args.index("--model-args") + 2] = []
    assert main(args) == 0
    (cell,) = list(results.iterdir())
    assert "python-build" in cell.name
    assert json.loads((cell / "metrics.json").read_text())["external"]["model"] == "my_nets:build"


def test_a_hostile_checkpoint_is_refused_in_one_line_and_runs_nothing(trained, tmp_path):
    _, profile, _, _, _ = trained
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.pt"
    code = f"import os, torch\nclass P:\n    def __reduce__(self):\n        return os.system, ('touch {marker}',)\ntorch.save(P(), '{hostile}')\n"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    proc = subprocess.run([sys.executable, "-m", "benchmark.evaluate", *_args(profile, tmp_path / "r", hostile)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and not marker.exists()
    assert proc.stderr.count("\n") == 1 and "not a plain-tensor checkpoint" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_of_another_architecture_is_one_line(trained, tmp_path, capsys):
    _, profile, _, _, weights = trained
    args = _args(profile, tmp_path / "r", weights)
    args[args.index('{"width": 0.25}')] = '{"width": 0.5}'
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit model small_cnn" in err
