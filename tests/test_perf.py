"""``python -m benchmark.tools.perf``: the tiny CPU configuration end to end, the FLOP rule, and the device table."""
from __future__ import annotations

import json
import statistics

import pytest
import torch

from benchmark.data.loader import stratified_subset, to_float
from benchmark.tools.perf import PEAK_TFLOPS, device_family, forward_flops_per_image, main, time_autoattack
from benchmark.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")
PATH_FIELDS = ("images", "seconds", "images_per_s", "epoch_seconds", "peak_memory_mb", "achieved_tflops",
               "precision", "peak_tflops", "percent_of_peak")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("perf") / "perf.json"
    assert main(["--tiny", "--device", "cpu", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_tiny_run_writes_every_field_with_a_positive_ratio(tiny_run):
    for key in ("device", "torch", "settings", "flops", "peak_tflops", "naive", "fair", "fast", "speedup", "ratios",
                "eval_pgd"):
        assert key in tiny_run
    assert tiny_run["device"] == "cpu" and tiny_run["settings"]["tiny"] is True
    assert tiny_run["paths"] == ["naive", "fair", "fast"]  # no bf16, no CUDA graphs, no --compile on the CPU
    for path in ("naive", "fair", "fast"):
        record = tiny_run[path]
        assert set(PATH_FIELDS) <= set(record)
        assert record["images"] == tiny_run["settings"]["timed_images"] and record["images_per_s"] > 0
        assert record["epoch_seconds"] == pytest.approx(tiny_run["settings"]["epoch_images"] / record["images_per_s"])
        assert record["percent_of_peak"] is None and record["peak_memory_mb"] is None  # CPU: no table, no CUDA memory
    assert tiny_run["speedup"] > 0
    assert tiny_run["speedup"] == pytest.approx(tiny_run["fast"]["images_per_s"] / tiny_run["naive"]["images_per_s"])
    assert tiny_run["fast"]["settings"] == {"channels_last": False, "cudnn_benchmark": False, "torch_compile": False,
                                            "amp": "none", "cuda_graphs": False}
    assert tiny_run["eval_pgd"]["attack"]["steps"] == 20 and tiny_run["eval_pgd"]["images_per_s"] > 0


def test_each_path_reports_the_median_and_spread_of_its_interleaved_windows(tiny_run):
    settings = tiny_run["settings"]
    per_window = settings["steps_per_window"] * settings["batch_size"]
    assert settings["windows"] == 3 and settings["timed_images"] == 3 * per_window
    for path in tiny_run["paths"]:
        record = tiny_run[path]
        rates = [per_window / s for s in record["window_seconds"]]
        assert record["windows"] == 3 and len(rates) == 3
        assert record["images_per_s"] == pytest.approx(statistics.median(rates))
        assert record["images_per_s_min"] == pytest.approx(min(rates))
        assert record["images_per_s_max"] == pytest.approx(max(rates))
        assert record["spread"] == pytest.approx((max(rates) - min(rates)) / statistics.median(rates))
        assert record["seconds"] == pytest.approx(sum(record["window_seconds"]))
    ratios = tiny_run["ratios"]
    assert ratios["naive"]["vs_naive"] == 1 and ratios["fair"]["vs_fair"] == 1
    fast, fair = tiny_run["fast"]["images_per_s"], tiny_run["fair"]["images_per_s"]
    assert ratios["fast"]["vs_fair"] == pytest.approx(fast / fair)
    assert tiny_run["fair"]["settings"] == {"workers": 0, "cudnn_benchmark": False, "pinned": False}  # CPU


@pytest.mark.parametrize("argv, message", [(["--windows", "2"], "--windows must be at least 3"),
                                           (["--paths", "naive,warp"], "unknown path(s) warp"),
                                           (["--images", "16"], "at least one batch per window")])
def test_bad_timing_options_are_refused_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--tiny", "--device", "cpu", *argv])
    assert message in str(stop.value) and "\n" not in str(stop.value)


def test_paths_option_times_only_the_paths_asked_for(tmp_path):
    out = tmp_path / "perf.json"
    assert main(["--tiny", "--device", "cpu", "--paths", "fair,captured", "--no-host-syncs", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["paths"] == ["fair"] and result["captured"] == {"skipped": "needs CUDA (CUDA graphs)"}
    assert "naive" not in result and "fast" not in result and "host_syncs" not in result
    assert result["ratios"] == {"fair": {"vs_naive": None, "vs_fair": 1.0}}


def test_tiny_run_counts_host_syncs_per_step_of_every_registered_method(tiny_run):
    from methods import get_method, list_methods

    syncs = tiny_run["host_syncs"]
    assert set(syncs) == set(list_methods())
    for name, record in syncs.items():
        assert record["graph_safe"] is get_method(name).graph_safe
        assert (record["syncs"] == 0) == record["graph_safe"], (name, record)  # las_at's policy reads the host
    assert any("las_at.py" in call for call in syncs["las_at"]["calls"])
    assert tiny_run["captured"] == {"skipped": "needs CUDA (CUDA graphs)"} and "captured_check" not in tiny_run


def test_flop_rule_matches_the_ops_counted_in_one_step_of_each_path(tiny_run):
    flops = tiny_run["flops"]
    assert flops["forward_equivalents_per_image"] == 23  # PGD-10: 10 × 2 + 3
    assert flops["per_image"] == pytest.approx(23 * flops["forward_per_image"])
    # ours and the fair loop: input-only gradients in the attack (the first layer's input gradient is not
    # needed in the update)
    assert flops["counted_per_image"]["fast"] == pytest.approx(flops["per_image"], rel=0.02)
    assert flops["counted_per_image"]["fair"] == pytest.approx(flops["per_image"], rel=0.02)
    # the naive loop also computes weight gradients in every attack step: ≈ 10 × 3 + 3 = 33 forwards
    assert flops["counted_per_image"]["naive"] == pytest.approx(33 * flops["forward_per_image"], rel=0.02)


def test_forward_flops_of_a_linear_layer_are_counted_exactly():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    assert forward_flops_per_image(model, torch.rand(4, 3, 2, 2)) == 2 * 12 * 5


@pytest.mark.parametrize("name, family", [("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"),
                                          ("NVIDIA H200", "H200"), ("NVIDIA A100-SXM4-80GB", "A100"),
                                          ("NVIDIA A100-PCIE-40GB", "A100"), ("NVIDIA H100 NVL", None),
                                          ("NVIDIA GeForce RTX 4090", None)])
def test_device_names_map_to_the_peak_table(name, family):
    assert device_family(name) == family
    if family is not None:
        assert PEAK_TFLOPS[family]["bf16"] > PEAK_TFLOPS[family]["tf32"] > PEAK_TFLOPS[family]["fp32"]


def test_autoattack_timing_reports_accuracies_within_the_ball(clean_mnist_model, mnist5k):
    idx = torch.as_tensor(stratified_subset(mnist5k.y_test, 1, seed=0))
    record = time_autoattack(clean_mnist_model, to_float(mnist5k.x_test[idx]), mnist5k.y_test[idx], 0.3,
                             torch.device("cpu"), n_classes=10, seed=0)
    assert record["images"] == 10 and record["seconds"] > 0 and record["seed"] == 0
    assert 0 <= record["robust_accuracy"] <= record["clean_accuracy"] <= 1
    assert record["max_linf"] <= 0.3 + 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_small_cuda_run_fills_the_gpu_fields(tmp_path):
    out = tmp_path / "perf.json"
    assert main(["--batch-size", "32", "--images", "96", "--windows", "3", "--warmup-steps", "1",
                 "--eval-images", "128", "--eval-batch-size", "64", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["tiny"] is False and result["fast"]["peak_memory_mb"] > 0
    assert result["settings"]["timer"] == "CUDA events"
    assert result["paths"] == ["naive", "fair", "fast", "fast_fp32", "captured"]
    assert result["fair"]["settings"]["pinned"] is True and result["ratios"]["captured"]["vs_fair"] > 0
    graph = result["eval_pgd_captured"]["cuda_graph"]  # two full evaluation batches: one capture, two replays
    assert graph == {"captures": 1, "replays": 2, "eager_batches": 0, "failed": None}
    assert abs(result["eval_pgd_captured"]["robust_accuracy"] - result["eval_pgd"]["robust_accuracy"]) <= 0.05
    assert result["fast"]["settings"]["channels_last"] is True and result["fast"]["settings"]["amp"] == "bf16"
    assert "fast_fp32" in result and result["speedup"] > 0
    check = result["captured_check"]  # the captured step gives the eager step's losses
    assert check["matches"], check
    assert result["captured"]["graph"]["replays"] > 0 and result["captured"]["graph"]["failed"] is None
    assert result["host_syncs"]["at"]["syncs"] == 0 and result["host_syncs"]["las_at"]["syncs"] > 0
    if result["device_family"] is not None:
        assert result["fast"]["percent_of_peak"] > 0


def test_autoattack_from_a_trained_cell_reads_its_checkpoint_and_data(tmp_path, mnist5k, monkeypatch):
    """The path ``benchmark.tools.gpu_check`` takes: checkpoint + config of a cell, its test split, AutoAttack."""
    monkeypatch.setattr("benchmark.data.prepare.load_dataset", lambda *args, **kwargs: mnist5k)  # loaded once
    from benchmark.config import Config
    from benchmark.data.prepare import prepare_cell_data
    from benchmark.train import train
    from methods import create_method

    cfg = Config(model="small_cnn", model_args={"width": 0.25}, epochs=1, batch_size=400, eps=0.5, device="cpu",
                 train_attack={"kind": "pgd", "steps": 1, "step_size": "eps/4", "start": "normal"},
                 monitor_attack={"kind": "pgd", "steps": 1, "step_size": "eps/4", "start": "uniform"},
                 monitor_per_class=1).validate()
    torch.manual_seed(0)
    method = create_method(cfg.method)
    model = create_model(cfg.model, 10, 1, **cfg.model_args)
    cell = tmp_path / cfg.key()
    cell.mkdir()
    train(cfg.resolve(), prepare_cell_data(cfg), method, model, cell, torch.device("cpu"), progress=False)
    out = tmp_path / "autoattack.json"
    assert main(["--autoattack-from", str(cell), "--autoattack-images", "10", "--device", "cpu",
                 "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["cell"] == cell.name and record["trained_epochs"] == 1
    assert (record["images"], record["n_classes"], record["seed"], record["version"]) == (10, 10, 0, "standard")
    assert 0 <= record["robust_accuracy"] <= record["clean_accuracy"] <= 1
