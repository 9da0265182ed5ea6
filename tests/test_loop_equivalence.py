"""The harness's training loop (benchmark.train.train) against minimal loops written from each authors'
training script, step by step: same initial weights, same batch order, same attack start noise, the same
weights (parameters and BatchNorm buffers) at the end.

The minimal loops follow the authors' order of operations, written here from reading their scripts:
  * AT-BSL (train_at_bsl_cifar10.py), TRADES (train_trades_cifar10.py), MART (train_*.py), RoBal (train.py):
    lr set at the start of each epoch (``adjust_learning_rate``), ``model.train()``, then per batch
    ``zero_grad``, the loss function (inside: ``model.eval()``, PGD from x + 0.001·N(0, 1), ``model.train()``,
    the outer forwards), ``backward``, ``step``. PGD-AT is AT-BSL's loop with plain CE.
  * TAET (code/TAET/TAET.ipynb): ``model.train()``; per batch ``zero_grad``, a clean forward whose output is
    never used, then in stage 1 a second clean forward and CE, in stage 2 HARL (eval-mode PGD, train mode,
    forward on x_adv, class-mean losses); ``backward``, ``step``; ``MultiStepLR.step()`` after each epoch.

The test model has BatchNorm, so the train/eval switches and the number and order of forward passes are
visible in the result (running statistics, and through them every eval-mode attack). It has no dropout: a
dropout mask would draw from the same global generator as the attack's start noise, and the forward counts
that differ on purpose (below) would shift every later draw.

Where the harness differs from the authors' loop on purpose, the minimal loop has that difference as an
option: with the harness's choice the weights agree, with the authors' they do not, so each difference is
exactly that option and nothing else:
  * ``extra_forwards``: TAET's unused clean forward (and stage 1's second clean forward), TRADES's second
    clean forward, RoBal's second forward of x_adv. Each updates BatchNorm running statistics once more per step.
  * ``clamp_start``: our PGD clamps the start x + 0.001·N(0, 1) to [0, 1]; the authors' PGDs take the first
    gradient at the unclamped point. On images with no pixel within 0.02 of 0 or 1 the two are the same
    point (the noise would need 20 σ), and the authors' exact loop then equals the harness.
A resume from the checkpoint in a new process must equal an uninterrupted run.

Tolerance. Both sides run float32 on the CPU with one thread. The loops compute the same quantities in
mathematically equal forms that may round differently: a per-class mean as a masked sum (the authors) or
index_add (ours), softmax then log (the authors' KL and MART) or log_softmax, CE mean (the authors' attack)
or sum (ours; the same sign of the gradient). Each such difference is a few ulp (relative 1e-7) per step,
and 40 SGD steps at lr ≤ 0.05 with momentum 0.9 amplify an early perturbation of the weights by at most
about (1 + lr·‖H‖)^40 for a Hessian norm ‖H‖ of order 1-10 on this tiny net, i.e. it stays below
~1e-5 relative. We therefore require |Δ| ≤ 1e-5·max(1, |w|) on every parameter and buffer (``TOL``;
absolute for weights below 1, relative for the BatchNorm running variances, which reach ~20), and the
deliberate differences above move the weights by more than 100× that (asserted), so the test would see a
real loop difference. Measured: AT, AT-BSL, TRADES and MART agree bit for bit, TAET to 6e-8 and
RoBal-N to 1e-6 (a few ulp, from the reordered sums above); the authors' extra forwards move the weights
by 0.04 (TAET), 0.13 (TRADES) and 0.30 (RoBal-N), the unclamped start by 0.02 (AT).
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.config import Config
from benchmark.data.longtail import make_longtail
from benchmark.data.prepare import CellData
from benchmark.models.base import Classifier
from benchmark.train import train
from methods import create_method

TOL = 1e-5  # max |Δ| over all parameters and buffers (see the module docstring)
SENSITIVE = 100 * TOL  # a deliberate loop difference must move the weights by more than this
ROOT = Path(__file__).resolve().parent.parent

# The harness settings of every comparison: 4 epochs of 10 batches of 32 (40 steps), lr ×0.1 after
# epochs 2 and 3 (so the schedule is exercised), PGD-3 at ε/4 from x + 0.001·N(0, 1).
EPOCHS, BATCH, LR, MOMENTUM, WD = 4, 32, 0.05, 0.9, 5e-4
MILESTONES = [2, 3]
EPS, STEPS = 0.1, 3
N_TRAIN = 320
CE_EPOCHS = 2  # TAET's stage switch after 20 of the 40 steps


class TinyBNNet(Classifier):
    """conv(1→6, 3, stride 2) BN ReLU conv(6→8, 3, stride 2) BN ReLU, global average pool, linear(8→10)."""

    def __init__(self, num_classes: int = 10):
        super().__init__(num_classes=num_classes, feature_dim=8)
        self.body = nn.Sequential(nn.Conv2d(1, 6, 3, stride=2), nn.BatchNorm2d(6), nn.ReLU(),
                                  nn.Conv2d(6, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(8, num_classes)

    def _forward_backbone(self, x):
        return self.body(x)


# --------------------------------------------------------------------------------------------------
# Minimal loops, from the authors' scripts
# --------------------------------------------------------------------------------------------------

def authors_pgd(model, x, y, eps, steps, step_size, objective="ce", clamp_start=False):
    """The authors' L∞ PGD: eval mode, x + 0.001·randn (global generator), sign steps on the batch-mean CE
    (TRADES: the summed KL to the clean softmax), projection and [0, 1] clamp after each step, train mode."""
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn(x.shape).detach()
    if clamp_start:  # the harness's start (attacks.pgd.random_start)
        x_adv = x_adv.clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            if objective == "kl":  # Σ KL(p(x) ‖ p(x_adv)), written with log-softmax on both sides (see _trades_loss)
                log_p = F.log_softmax(model(x), dim=1)
                loss = (log_p.exp() * (log_p - F.log_softmax(model(x_adv), dim=1))).sum()
            else:
                loss = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    model.train()
    return x_adv.detach()


def _at_loss(model, x, y, ctx, o):
    return F.cross_entropy(model(authors_pgd(model, x, y, EPS, STEPS, EPS / 4, clamp_start=o["clamp_start"])), y)


def _at_bsl_loss(model, x, y, ctx, o):
    x_adv = authors_pgd(model, x, y, EPS, STEPS, EPS / 4, clamp_start=o["clamp_start"])
    return F.cross_entropy(model(x_adv) + torch.log(ctx["counts"]), y)


def _trades_loss(model, x, y, ctx, o):
    """trades_loss. The KL is written Σ exp(log p)·(log p − log q) with log-softmax on both sides, not the
    authors' KLDivLoss(log q, softmax) (whose p = softmax rounds differently from exp(log_softmax)): at
    x + 0.001·N the KL's input gradient is so small that those last-bit differences flip its sign on ~0.15%
    of pixels in the first PGD step (measured: 37 of 25,088), and sign() turns an ulp into a step of ε/4.
    The loop, not the rounding of an equal formula, is what this file tests (test_method_trades checks the
    loss itself against the authors' form)."""
    x_adv = authors_pgd(model, x, None, EPS, STEPS, EPS / 4, objective="kl", clamp_start=o["clamp_start"])
    logits = model(x)
    natural = F.cross_entropy(logits, y)
    log_p = F.log_softmax(model(x) if o["extra_forwards"] else logits, dim=1)  # the authors forward x again
    robust = (log_p.exp() * (log_p - F.log_softmax(model(x_adv), dim=1))).sum() / len(x)
    return natural + 6.0 * robust


def _mart_loss(model, x, y, ctx, o):
    """mart_loss, with log p = log_softmax and p = exp(log p) in the KL (the authors: p = softmax, KLDivLoss
    takes log p): the same formula, rounded like the harness's, for the reason given at _trades_loss
    (with the authors' float forms the weights drift apart by 9e-4 in 40 steps)."""
    x_adv = authors_pgd(model, x, y, EPS, STEPS, EPS / 4, clamp_start=o["clamp_start"])
    logits = model(x)
    logits_adv = model(x_adv)
    adv_probs = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    log_nat = F.log_softmax(logits, dim=1)  # log p as log_softmax, p = exp(log p): see the docstring
    nat_probs = log_nat.exp()
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = (nat_probs * (log_nat - torch.log(adv_probs + 1e-12))).sum(1)
    return loss_adv + 6.0 * (kl * (1.0000001 - true_probs)).sum() / len(x)


def _robal_n_loss(model, x, y, ctx, o):
    """RoBal-N's add_reg_train with MultiMarginLoss (s 10, m 0.1, τ_b 1.2 on log π) and the TRADES KL (β 6)."""
    x_adv = authors_pgd(model, x, y, EPS, STEPS, EPS / 4, clamp_start=o["clamp_start"])
    cos_adv = model(x_adv)
    margin = 0.1 * F.one_hot(y, cos_adv.shape[1]).float()
    counts = ctx["counts"].double()
    log_prior = torch.log(counts / counts.sum()).float()  # the authors' bias comes from float64 counts
    loss = F.cross_entropy(10.0 * (cos_adv - margin) + 1.2 * log_prior, y)
    nat_probs = F.softmax(model(x), dim=1)
    adv_probs = F.softmax(model(x_adv) if o["extra_forwards"] else cos_adv, dim=1)  # the authors forward x_adv again
    return loss + 6.0 * F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="sum") / len(x)


def harl(outputs, y, num_classes, alpha=0.1, beta=0.1, gamma=0.1):
    """HARL as the authors' HARL.py computes it from the adversarial outputs (class loop, absent class = 0)."""
    per_example = F.cross_entropy(outputs, y, reduction="none")
    class_losses = torch.zeros(num_classes)
    for c in range(num_classes):
        mask = (y == c).float()
        class_losses[c] = (per_example * mask).sum() / (mask.sum() + 1e-10)
    mean = class_losses.mean()
    normalized = class_losses / (class_losses.sum() + 1e-10)
    return alpha * mean + beta * ((class_losses - mean) ** 2).mean() + gamma * (normalized ** 2).sum()


def _taet_loss(model, x, y, ctx, o):
    if o["extra_forwards"]:
        model(x)  # the notebook's `outputs = model(inputs)` before the stage test, unused in stage 2
    if ctx["epoch"] < o["ce_epochs"]:
        return F.cross_entropy(model(x), y)
    x_adv = authors_pgd(model, x, y, o["eps"], o["steps"], o["step_size"], clamp_start=o["clamp_start"])
    return harl(model(x_adv), y, ctx["num_classes"])


AUTHORS_LOSSES = {"at": _at_loss, "at_bsl": _at_bsl_loss, "trades": _trades_loss, "mart": _mart_loss,
                  "robal_n": _robal_n_loss, "taet": _taet_loss}


def authors_loop(name, model, x_uint8, y, counts, *, seed, epochs=EPOCHS, batch=BATCH, lr=LR, milestones=MILESTONES,
                 extra_forwards=False, clamp_start=True, drop_last=True, ce_epochs=CE_EPOCHS, eps=EPS, steps=STEPS,
                 step_size=None, on_epoch_end=None):
    """Train ``model`` in place with the authors' loop for ``name``; the batch order is a randperm per epoch
    from a generator seeded ``seed`` (the harness's shuffle), the start noise the global generator's.
    ``eps``/``steps``/``step_size`` (default ε/4) set TAET's attack (scripts/taet_loop_study.py runs it on
    the quick profile); ``on_epoch_end(epoch, model)`` is called after each epoch's scheduler step."""
    o = {"extra_forwards": extra_forwards, "clamp_start": clamp_start, "ce_epochs": ce_epochs, "eps": eps,
         "steps": steps, "step_size": eps / 4 if step_size is None else step_size}
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WD)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1) if name == "taet" else None
    generator = torch.Generator().manual_seed(seed)
    ctx = {"counts": torch.tensor(counts, dtype=torch.float32), "num_classes": len(counts)}
    n = len(y)
    for epoch in range(epochs):
        if scheduler is None:  # adjust_learning_rate(optimizer, epoch) at the start of the epoch
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.1 ** sum(epoch >= m for m in milestones)
        ctx["epoch"] = epoch
        model.train()
        order = torch.randperm(n, generator=generator)
        stop = n - n % batch if drop_last else n
        for start in range(0, stop, batch):
            idx = order[start:start + batch]
            xb, yb = x_uint8[idx].to(torch.float32) / 255.0, y[idx]
            optimizer.zero_grad()
            loss = AUTHORS_LOSSES[name](model, xb, yb, ctx, o)
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
    return model


# --------------------------------------------------------------------------------------------------
# The harness side
# --------------------------------------------------------------------------------------------------

METHOD_ARGS = {"taet": {"ce_epochs": CE_EPOCHS}}


def cell_data(mnist5k, interior: bool = False, n: int = N_TRAIN) -> CellData:
    """``n`` digits of the IR-10 long-tailed subset (seeded); ``interior`` maps pixels into [5, 250]/255."""
    lt = make_longtail(mnist5k.y_train, 10, 10, seed=0)
    pick = np.sort(np.random.RandomState(0).permutation(lt.indices)[:n])
    x, y = mnist5k.x_train[torch.as_tensor(pick)], mnist5k.y_train[torch.as_tensor(pick)]
    if interior:
        x = (5 + x.to(torch.int32) * 245 // 255).to(torch.uint8)
    counts = [int(c) for c in np.bincount(y.numpy(), minlength=10)]
    return CellData(name="mnist5k", classes=[str(c) for c in range(10)], x_train=x, y_train=y,
                    x_test=mnist5k.x_test[:40], y_test=mnist5k.y_test[:40], train_counts=counts,
                    train_indices=pick, test_indices=None)


def harness_config(name: str, seed: int = 0, drop_last: bool = True) -> Config:
    return Config(dataset="mnist5k", method=name, method_args=METHOD_ARGS.get(name, {}), seed=seed, epochs=EPOCHS,
                  batch_size=BATCH, lr=LR, momentum=MOMENTUM, weight_decay=WD, milestones=list(MILESTONES),
                  drop_last=drop_last, eps=EPS,
                  train_attack={"kind": "pgd", "steps": STEPS, "step_size": "eps/4", "start": "normal"},
                  monitor_every=1000, monitor_per_class=1, device="cpu",
                  checkpoint_every_s=0).validate()  # a checkpoint every epoch: the resume tests crash between epochs


def initial_model(name: str, init_seed: int = 0):
    """The method's model (RoBal: cosine head) with weights from ``init_seed``."""
    torch.manual_seed(init_seed)
    method = create_method(name, **METHOD_ARGS.get(name, {}))
    return method, method.wrap_model(TinyBNNet())


def run_harness(name, data, cell_dir, init, seed=0, drop_last=True, crash_at_epoch=None):
    """benchmark.train.train from the weights ``init``; ``crash_at_epoch`` raises when that epoch starts
    (after the previous epoch's checkpoint is on disk)."""
    method, model = initial_model(name)
    model.load_state_dict(init)
    Path(cell_dir).mkdir(parents=True, exist_ok=True)
    if crash_at_epoch is not None:
        def crash(ctx):
            if ctx.epoch == crash_at_epoch:
                raise KeyboardInterrupt("simulated crash")
        method.on_epoch_start = crash
    torch.manual_seed(1000 + seed)  # the attack noise stream (the runner seeds it with seed_everything)
    train(harness_config(name, seed, drop_last).resolve(), data, method, model, Path(cell_dir),
          torch.device("cpu"), progress=False)
    return model


def run_authors(name, data, init, seed=0, **options):
    _, model = initial_model(name)
    model.load_state_dict(init)
    torch.manual_seed(1000 + seed)
    return authors_loop(name, model, data.x_train, data.y_train, data.train_counts, seed=seed, **options)


def max_difference(a, b) -> float:
    """max |Δ| / max(1, |w|) over the floating-point entries of two models (or state dicts): absolute for
    weights below 1, relative above (BatchNorm running variances reach ~20 here)."""
    sa, sb = (m.state_dict() if isinstance(m, nn.Module) else m for m in (a, b))
    assert sa.keys() == sb.keys()
    return max(float(((sa[k].double() - sb[k].double()).abs() / sa[k].double().abs().clamp(min=1.0)).max())
               for k in sa if sa[k].is_floating_point())


@pytest.fixture(scope="module")
def data(mnist5k):
    return cell_data(mnist5k)


@pytest.fixture(scope="module")
def inits():
    return {name: copy.deepcopy(initial_model(name)[1].state_dict()) for name in AUTHORS_LOSSES}


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(AUTHORS_LOSSES))
def test_harness_loop_equals_the_authors_loop(name, data, inits, tmp_path, one_thread):
    harness = run_harness(name, data, tmp_path, inits[name])
    authors = run_authors(name, data, inits[name])
    assert max_difference(harness, authors) <= TOL
    assert max_difference(harness, inits[name]) > 1e-2  # it trained


@pytest.mark.parametrize("name", ["taet", "trades", "robal_n"])
def test_the_authors_extra_forwards_are_the_only_difference(name, data, inits, tmp_path, one_thread):
    """The same loop with the authors' additional train-mode forwards differs, in BatchNorm running statistics
    and, through eval-mode attacks on them, in the weights."""
    harness = run_harness(name, data, tmp_path, inits[name])
    authors = run_authors(name, data, inits[name], extra_forwards=True)
    assert max_difference(harness, authors) > SENSITIVE
    stats = [k for k in harness.state_dict() if "running_mean" in k]
    assert any(not torch.allclose(harness.state_dict()[k], authors.state_dict()[k], atol=SENSITIVE) for k in stats)


def test_the_start_clamp_is_the_only_difference_from_the_authors_pgd(mnist5k, inits, tmp_path, one_thread):
    """The authors' exact PGD (unclamped start) equals the harness on images away from 0 and 1, and differs on
    raw MNIST, where most pixels are exactly 0: the start clamp is the whole difference."""
    interior = cell_data(mnist5k, interior=True)
    harness = run_harness("at", interior, tmp_path / "interior", inits["at"])
    assert max_difference(harness, run_authors("at", interior, inits["at"], clamp_start=False)) <= TOL
    raw = cell_data(mnist5k)
    harness = run_harness("at", raw, tmp_path / "raw", inits["at"])
    assert max_difference(harness, run_authors("at", raw, inits["at"], clamp_start=False)) > SENSITIVE


def test_taet_keeps_the_last_partial_batch_like_the_authors_loader(mnist5k, inits, tmp_path, one_thread):
    """The notebook's DataLoader has no drop_last; the harness's drop_last: false is the same loop."""
    data = cell_data(mnist5k, n=N_TRAIN + 13)  # 10 batches of 32 and one of 13 per epoch
    harness = run_harness("taet", data, tmp_path, inits["taet"], drop_last=False)
    assert max_difference(harness, run_authors("taet", data, inits["taet"], drop_last=False)) <= TOL
    assert max_difference(harness, run_authors("taet", data, inits["taet"], drop_last=True)) > SENSITIVE


def _resume_in_child(cell_dir: str, out: str) -> None:
    """Entry point of the resumed process: a fresh model (other initial weights) and method, then train()."""
    torch.set_num_threads(1)
    from benchmark.data import load_dataset

    data = cell_data(load_dataset("mnist5k"))
    method, model = initial_model("taet", init_seed=123)
    torch.manual_seed(999)  # any state: the checkpoint's RNG states must take over
    train(harness_config("taet").resolve(), data, method, model, Path(cell_dir), torch.device("cpu"), progress=False)
    torch.save(model.state_dict(), out)


def test_a_resume_in_a_new_process_across_the_stage_switch_equals_an_uninterrupted_run(data, inits, tmp_path,
                                                                                        one_thread):
    uninterrupted = run_harness("taet", data, tmp_path / "straight", inits["taet"])
    with pytest.raises(KeyboardInterrupt):  # crash when stage 2 is about to start: epochs 0-1 are checkpointed
        run_harness("taet", data, tmp_path / "resumed", inits["taet"], crash_at_epoch=CE_EPOCHS)
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    out = tmp_path / "resumed.pt"
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import test_loop_equivalence as t; "
            f"t._resume_in_child({str(tmp_path / 'resumed')!r}, {str(out)!r})")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, timeout=120)
    resumed = TinyBNNet()
    create_method("taet").wrap_model(resumed)
    resumed.load_state_dict(torch.load(out))
    assert max_difference(uninterrupted, resumed) <= TOL
    assert max_difference(uninterrupted, resumed) == 0.0  # the same process of floats: bit for bit
