"""The device check's pieces that run anywhere, and the CUDA path itself where a GPU is present."""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from benchmark.data import load_dataset
from benchmark.tools.gpu_check import main as gpu_check_main
from benchmark.tools.synthetic import CIFAR10_NAMES, write_synthetic_cifar10


def test_synthetic_cifar10_is_read_by_the_real_cifar_loader(tmp_path):
    write_synthetic_cifar10(tmp_path, train_per_class=6, test_per_class=3)
    data = load_dataset("cifar10", tmp_path)
    assert data.x_train.shape == (60, 3, 32, 32) and data.x_train.dtype == torch.uint8
    assert data.x_test.shape == (30, 3, 32, 32)
    assert torch.bincount(data.y_train).tolist() == [6] * 10
    assert data.classes == CIFAR10_NAMES


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_refuses_without_cuda(capsys):
    assert gpu_check_main(["--skip-tests"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_one_training_epoch_and_evaluation_run_on_cuda(tmp_path, amp):
    from benchmark.config import Config
    from benchmark.runner import run_cell

    cfg = Config(dataset="mnist5k", method="taet", method_args={"ce_epochs": 0}, model="small_cnn",
                 model_args={"width": 0.25}, epochs=1, batch_size=64, eps=0.1,
                 train_attack={"kind": "pgd", "steps": 2, "step_size": "eps/4", "start": "normal"},
                 eval_attacks=[{"kind": "pgd", "steps": 3, "step_size": "eps/4", "start": "uniform"}],
                 eval_per_class=10, monitor_per_class=2, device="cuda", amp=amp).validate()
    metrics = run_cell(cfg, tmp_path, progress=False)
    assert metrics["cost"]["device"].startswith("cuda")
    assert metrics["cost"]["peak_memory_mb"] > 0
    log = (tmp_path / metrics["cell_key"] / "log.jsonl").read_text().splitlines()
    assert len(log) == 1 and math.isfinite(json.loads(log[0])["loss"])


def test_a_stage_past_its_time_limit_is_an_error_in_the_summary_not_a_crash(tmp_path):
    from benchmark.tools.gpu_check import timed_step

    record = timed_step([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "x.json", timeout=0.5)
    assert set(record) == {"error"} and record["error"].startswith("timed out after")
    assert timed_step([sys.executable, "-c", "raise SystemExit(3)"], None, timeout=30) == {"error": "exit code 3"}
    assert timed_step([sys.executable, "-c", "pass"], None, timeout=30) == {}


def test_the_summary_block_shows_each_stage_perf_and_autoattack_with_a_labelled_extrapolation(
        clean_mnist_model, mnist5k, tmp_path):
    from benchmark.data.loader import stratified_subset, to_float
    from benchmark.tools.gpu_check import autoattack_summary, format_summary, perf_summary, timed_step
    from benchmark.tools.perf import main as perf_main, time_autoattack

    idx = torch.as_tensor(stratified_subset(mnist5k.y_test, 1, seed=0))
    record = time_autoattack(clean_mnist_model, to_float(mnist5k.x_test[idx]), mnist5k.y_test[idx], 0.3,
                             torch.device("cpu"), n_classes=10, seed=0)
    aa = autoattack_summary(record)
    assert aa["stages"][0]["attacked"] == record["images"] == 10
    for before, stage in zip(aa["stages"], aa["stages"][1:]):
        assert stage["attacked"] == before["survivors"]  # each stage attacks what the one before left
    assert aa["extrapolated_seconds_for_10000_images"] == round(record["seconds"] / 10 * 10_000)
    assert "extrapolation, not a measurement" in aa["extrapolation_note"]

    assert perf_main(["--tiny", "--device", "cpu", "--out", str(tmp_path / "perf.json")]) == 0
    perf = perf_summary(json.loads((tmp_path / "perf.json").read_text()))
    assert perf["host_syncs"]["at"] == 0 and perf["host_syncs"]["las_at"] > 0
    slow = timed_step([sys.executable, "-c", "import time; time.sleep(30)"], None, timeout=0.5)
    summary = {"device": "cpu (test)", "stages": {"tests": {"seconds": 0.5, "limit_s": 0.5, "error": slow["error"]}},
               "cells": [], "perf": perf, "autoattack": aa}
    block = format_summary(summary)
    assert block.startswith("=" * 20) and block.count("gpu-check summary") == 1
    assert "stage tests" in block and "timed out" in block
    assert "perf fast" in block and "host syncs per step" in block
    assert "extrapolated seconds for 10000 images" in block and "APGD-CE" in block.upper()
