"""The device check's pieces that run anywhere, and the CUDA path itself where a GPU is present."""
from __future__ import annotations

import json
import math

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
