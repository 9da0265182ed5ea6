"""TAET beyond its loss values (tests/test_taet.py): how often a batch holds every class (the two
class-mean readings), the size of HARL's gradient against cross-entropy's, and the clean-stage
diagnostics every TAET cell records."""
from __future__ import annotations

from itertools import combinations
from math import comb

import pytest
import torch
import torch.nn.functional as F

import methods.taet as taet_module
from attacks import AttackSpec
from benchmark.data.loader import iterate_batches
from benchmark.data.longtail import longtail_counts
from methods import TrainContext, create_method
from methods.taet import PLATEAU_MARGIN, harl_terms


def all_classes_present(counts: list[int], batch: int) -> float:
    """P(a batch holds every class) for one batch of a shuffled drop_last epoch: a uniformly random batch-size
    subset of the N examples, so by inclusion-exclusion Σ_S (−1)^|S| C(N − n_S, b) / C(N, b) over class sets S."""
    n = sum(counts)
    total = sum((-1) ** k * comb(n - sum(counts[c] for c in s), batch)
                for k in range(len(counts) + 1) for s in combinations(range(len(counts)), k))
    return total / comb(n, batch)


@pytest.mark.parametrize("ir, percent", [(10, 94), (50, 39), (100, 16)])
def test_how_often_a_cifar10_lt_batch_of_128_holds_every_class(ir, percent):
    counts = longtail_counts(5000, 10, ir)  # CIFAR-10-LT: n_max 5000
    p = all_classes_present(counts, 128)
    assert round(100 * p) == percent
    assert f"{percent}%" in taet_module.__doc__  # the figure the docstring (and method card) states


def test_the_exact_presence_probability_matches_shuffled_drop_last_batches():
    """Seeded simulation with the training loop's own batching: 200 epochs of CIFAR-10-LT IR 50 labels."""
    counts = longtail_counts(5000, 10, 50)
    y = torch.repeat_interleave(torch.arange(10), torch.tensor(counts))
    generator = torch.Generator().manual_seed(0)
    hits = batches = 0
    for _ in range(200):
        for _, yb in iterate_batches(y, y, 128, shuffle=True, drop_last=True, generator=generator):
            hits += int(torch.unique(yb).numel() == 10)
            batches += 1
    p = all_classes_present(counts, 128)
    stderr = (p * (1 - p) / batches) ** 0.5  # batches of one epoch are nearly independent
    assert abs(hits / batches - p) < 4 * stderr


def test_quick_profile_batches_often_miss_a_class():
    """MNIST-5k at IR 10 with batch 64 (the quick profile): the two class-mean readings part there."""
    assert round(100 * all_classes_present(longtail_counts(400, 10, 10), 64)) == 62
    assert "62%" in taet_module.__doc__


# --- gradient scale --------------------------------------------------------------------------------

def _grad(model, loss):
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return torch.cat([g.flatten() for g in grads])


def _harl(per_example, y, alpha=0.1, beta=0.1, gamma=0.1):
    bcl, hdl, rcel = harl_terms(per_example, y, 10)
    return alpha * bcl + beta * hdl + gamma * rcel


def test_on_a_class_balanced_batch_bcl_is_cross_entropy_so_harls_first_term_is_alpha_times_its_gradient(
        clean_mnist_model, mnist5k):
    """BCL = (1/C) Σ_c L_c with L_c the mean over n_c = B/C examples is the batch-mean CE, so α·BCL has
    exactly α times CE's gradient: at the same learning rate the balanced part of HARL steps α = 0.1 as far."""
    from benchmark.data import to_float

    idx = torch.cat([torch.nonzero(mnist5k.y_train == c).flatten()[:8] for c in range(10)])
    x, y = to_float(mnist5k.x_train[idx]), mnist5k.y_train[idx]
    model = clean_mnist_model
    per_example = F.cross_entropy(model(x), y, reduction="none")
    g_ce = _grad(model, per_example.mean())
    per_example = F.cross_entropy(model(x), y, reduction="none")
    g_bcl = _grad(model, _harl(per_example, y, beta=0.0, gamma=0.0))
    assert torch.allclose(g_bcl, 0.1 * g_ce, rtol=1e-4, atol=1e-7)


def test_harl_weights_each_example_by_its_class_count_and_loss_deviation():
    """∂HARL/∂l_i = (1/n_c)·[α/C + (2β/C)(L_c − L̄) + 2γ(r_c − Σ_k r_k²)/S], r = L/S, S = Σ L_k: the per-example
    weights HARL puts on each CE gradient, against CE's 1/B. A class whose loss lies more than α/(2β) = 0.5
    below the mean gets a negative weight from HDL (its adversarial loss is pushed up)."""
    l = torch.tensor([0.1, 0.1, 3.0, 3.0, 2.0, 1.5], requires_grad=True)
    y = torch.tensor([0, 0, 1, 2, 3, 3])
    C = 10
    n = torch.bincount(y, minlength=C).float()
    per_class = torch.zeros(C).index_add(0, y, l.detach()) / n.clamp(min=1)  # [0.1, 3, 3, 1.75, 0, …]
    mean, total = per_class.mean(), per_class.sum()
    r = per_class / total
    expected_c = (0.1 / C + 0.2 / C * (per_class - mean) + 0.2 * (r - (r ** 2).sum()) / total) / n.clamp(min=1)
    (grad,) = torch.autograd.grad(_harl(l, y), l)
    assert torch.allclose(grad, expected_c[y], rtol=1e-5, atol=1e-8)
    # class 0: L_0 − L̄ = 0.1 − 0.785 < −α/(2β) = −0.5, so HDL outweighs BCL and RCEL adds a negative share too
    assert grad[0] < 0 and grad[1] < 0 and (grad[2:] > 0).all()


def test_harl_to_ce_gradient_ratio_is_alpha_times_the_class_reweighting_plus_the_deviation_terms(
        clean_mnist_model, mnist5k):
    """On a long-tailed batch (IR 10 class proportions) the measured ‖∇HARL‖/‖∇CE‖ must lie within the range
    the per-example weights allow when the examples' gradients are summed with those weights: between the
    smallest and largest |B·∂HARL/∂l_i| (each example's weight relative to CE's 1/B)."""
    from benchmark.data import to_float

    counts = [26, 20, 15, 12, 9, 7, 6, 5, 4, 3]  # 107 digits, the IR-10 profile's proportions
    idx = torch.cat([torch.nonzero(mnist5k.y_train == c).flatten()[:k] for c, k in enumerate(counts)])
    x, y = to_float(mnist5k.x_train[idx]), mnist5k.y_train[idx]
    model = clean_mnist_model
    per_example = F.cross_entropy(model(x), y, reduction="none")
    g_ce = _grad(model, per_example.mean())
    per_example = F.cross_entropy(model(x), y, reduction="none")
    leaf = per_example.detach().requires_grad_(True)
    (weights,) = torch.autograd.grad(_harl(leaf, y), leaf)
    g_harl = _grad(model, _harl(per_example, y))
    ratio = float(g_harl.norm() / g_ce.norm())
    relative = (len(y) * weights).abs()
    assert 0 < ratio < 1  # HARL takes a shorter step than CE at the same learning rate
    assert 0.5 * float(relative.min()) <= ratio <= float(relative.max())


# --- clean-stage diagnostics -------------------------------------------------------------------------

def _ctx(epoch, epochs=10):
    return TrainContext(epoch=epoch, epochs=epochs, step=0, num_classes=4, class_counts=torch.tensor([50, 30, 15, 5]),
                        attack=AttackSpec("pgd", 0.1, 2, 0.025, "none"))


def test_taet_records_when_the_clean_stage_left_the_head_class_plateau_and_the_switch():
    method = create_method("taet", ce_epochs=4)
    head = 0.5  # 50 of 100
    accs = [head, head + PLATEAU_MARGIN / 2, 0.8, 0.9, 0.7, 0.8]
    lines = []
    for epoch, acc in enumerate(accs):
        record = {"epoch": epoch, "train_acc": acc, "loss": 1.0, "monitor_clean_acc": acc, "monitor_pgd10_acc": acc / 2}
        lines.append(method.log_epoch(record, _ctx(epoch)))
    assert [line.get("taet_on_plateau") for line in lines] == [True, True, False, False, None, None]
    assert lines[2].get("taet_left_plateau") and "taet_left_plateau" not in lines[3]
    assert lines[3]["taet_stage_switch"] == {"epoch": 3, "train_acc": 0.9, "loss": 1.0, "monitor_clean_acc": 0.9,
                                             "monitor_robust_acc": 0.45, "monitor_attack": "pgd10"}
    d = method.diagnostics()
    assert (d["clean_stage_epochs_on_plateau"], d["left_plateau_epoch"], d["effective_clean_epochs"]) == (2, 2, 2)
    restored = create_method("taet", ce_epochs=4)  # a resumed run gets the same record from the checkpoint
    restored.load_state_dict(method.state_dict())
    assert restored.diagnostics() == d


def test_a_clean_stage_that_never_leaves_the_plateau_has_no_effective_clean_epochs():
    method = create_method("taet", ce_epochs=2)
    for epoch in range(2):
        method.log_epoch({"epoch": epoch, "train_acc": 0.5, "loss": 1.38}, _ctx(epoch))
    d = method.diagnostics()
    assert d["left_plateau_epoch"] is None and d["effective_clean_epochs"] == 0
    assert d["stage_switch"]["monitor_clean_acc"] is None  # not monitored that epoch


def test_a_taet_cell_records_its_clean_stage_in_metrics_json_and_log_jsonl(tmp_path, one_thread):
    """Through the runner: the tiny grid profile with TAET (2 epochs, stage switch after the first)."""
    import json

    import yaml
    from toys import TINY_PROFILE

    from benchmark.config import expand_grid
    from benchmark.runner import run_cell

    profile = yaml.safe_load(TINY_PROFILE)
    profile.update(methods=["taet"], method_args={"taet": {"ce_epochs": 1}})
    (cfg,) = expand_grid(profile)
    metrics = run_cell(cfg, tmp_path, progress=False)
    d = metrics["method_diagnostics"]
    assert d["ce_epochs"] == 1 and d["stage_switch"]["epoch"] == 0
    assert d["stage_switch"]["monitor_clean_acc"] is not None and d["stage_switch"]["monitor_attack"] == "pgd2"
    assert d["clean_stage_epochs_on_plateau"] + d["effective_clean_epochs"] == 1
    lines = [json.loads(line) for line in (tmp_path / cfg.key() / "log.jsonl").read_text().splitlines()]
    assert lines[0]["taet_stage_switch"] == d["stage_switch"] and "taet_on_plateau" in lines[0]
    assert not any(k.startswith("taet_") for k in lines[1])  # stage 2 adds nothing
    # and its report page says how long the clean stage learned
    from benchmark.report.site import build_report

    build_report(tmp_path, tmp_path / "site")
    (page,) = (tmp_path / "site" / "cells").glob("*.html")
    html = page.read_text()
    assert "Method diagnostics" in html and "Clean stage:" in html and "monitor accuracy at the stage switch" in html
