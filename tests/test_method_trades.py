"""TRADES: the loss against hand-computed values, its label-free KL attack, and its registry entry."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import methods.trades  # noqa: F401  (registers "trades"; ``import methods`` does too)
from attacks import AttackSpec, random_start
from benchmark.config import expand_grid
from benchmark.data import to_float
from benchmark.errors import UsageError
from benchmark.models import create_model
from methods import TrainContext, create_method, describe_methods, get_method_class
from toys import B, W, ToyLinear as Linear, fixed_batch_losses, mnist_batch
from toys import hand_logits as _hand_logits, hand_softmax as _hand_softmax, images as _images

# The 3-class linear toy (W, B) of tests/toys.py: logits = W·vec(x) + b.
X = [[0.2, 0.4, 0.6, 0.8], [0.9, 0.1, 0.5, 0.3]]
X_ADV = [[0.3, 0.3, 0.7, 0.7], [0.8, 0.2, 0.4, 0.4]]  # within 0.1 of X
Y = [1, 0]


pytestmark = pytest.mark.usefixtures("one_thread")


def _ctx(attack=None):
    return TrainContext(epoch=0, epochs=1, step=0, num_classes=3, class_counts=torch.ones(3),
                        attack=attack or AttackSpec("pgd", 0.1, 2, 0.025, "normal"))


class ModeRecorder(Linear):
    """The linear model, noting the mode of every forward pass."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return super().forward(x)


def test_trades_attacks_in_eval_mode_and_computes_the_loss_in_train_mode():
    model = ModeRecorder().train()
    create_method("trades").loss(model, _images(X), torch.tensor(Y), _ctx(AttackSpec("pgd", 0.1, 2, 0.025, "normal")))
    # eval: the clean target, then 2 attack steps; train: the clean and the adversarial outer passes
    assert model.modes == [False, False, False, True, True]
    assert model.training


def _hand_trades(x_rows, x_adv_rows, ys, beta):
    ce, kl = [], []
    for x, x_adv, y in zip(x_rows, x_adv_rows, ys):
        p, q = _hand_softmax(_hand_logits(x)), _hand_softmax(_hand_logits(x_adv))
        ce.append(-math.log(p[y]))
        kl.append(sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q)))
    natural, robust = sum(ce) / len(ce), sum(kl) / len(kl)  # KL: Σ over classes, mean over the batch
    return natural, robust, natural + beta * robust


def test_trades_loss_is_clean_ce_plus_six_times_batchmean_kl_to_the_adversarial_prediction(monkeypatch):
    method = create_method("trades")
    assert method.hparams == {"beta": 6.0}
    monkeypatch.setattr(method, "adversarial", lambda model, x, y, ctx: _images(X_ADV))
    out = method.loss(Linear(), _images(X), torch.tensor(Y), _ctx())
    natural, robust, total = _hand_trades(X, X_ADV, Y, beta=6.0)
    assert robust > 0.01  # the clean and adversarial predictions really differ
    assert out.loss.item() == pytest.approx(total, rel=1e-5)
    assert out.stats["natural"].item() == pytest.approx(natural, rel=1e-5)
    assert out.stats["robust"].item() == pytest.approx(robust, rel=1e-5)
    assert not out.stats["natural"].requires_grad and not out.stats["robust"].requires_grad
    expected_adv_logits = [_hand_logits(row) for row in X_ADV]  # LossOut.logits are the adversarial ones
    assert torch.allclose(out.logits, torch.tensor(expected_adv_logits), atol=1e-5)


def test_trades_beta_scales_only_the_kl_term(monkeypatch):
    method = create_method("trades", beta=2.5)
    monkeypatch.setattr(method, "adversarial", lambda model, x, y, ctx: _images(X_ADV))
    out = method.loss(Linear(), _images(X), torch.tensor(Y), _ctx())
    assert out.loss.item() == pytest.approx(_hand_trades(X, X_ADV, Y, beta=2.5)[2], rel=1e-5)


def test_trades_regularizer_vanishes_when_the_adversarial_input_is_the_clean_one(monkeypatch):
    method = create_method("trades")
    monkeypatch.setattr(method, "adversarial", lambda model, x, y, ctx: x.clone())
    out = method.loss(Linear(), _images(X), torch.tensor(Y), _ctx())
    natural, _, _ = _hand_trades(X, X, Y, beta=6.0)
    assert out.stats["robust"].item() == pytest.approx(0.0, abs=1e-7)
    assert out.loss.item() == pytest.approx(natural, rel=1e-5)


def test_trades_gradient_flows_through_both_the_clean_target_and_the_adversarial_branch(monkeypatch):
    method = create_method("trades")
    monkeypatch.setattr(method, "adversarial", lambda model, x, y, ctx: _images(X_ADV))
    model = Linear()
    method.loss(model, _images(X), torch.tensor(Y), _ctx()).loss.backward()

    def reference_grad(detach_target):  # the same loss written out with exp/log, differentiated by autograd
        w, b = torch.tensor(W, requires_grad=True), torch.tensor(B, requires_grad=True)
        z, z_adv = _images(X).flatten(1) @ w.t() + b, _images(X_ADV).flatten(1) @ w.t() + b
        p = torch.exp(z) / torch.exp(z).sum(1, keepdim=True)
        q = torch.exp(z_adv) / torch.exp(z_adv).sum(1, keepdim=True)
        ce = -torch.log(p[torch.arange(2), torch.tensor(Y)]).mean()
        target = p.detach() if detach_target else p
        kl = (target * (torch.log(target) - torch.log(q))).sum(1).mean()
        (ce + 6.0 * kl).backward()
        return w.grad

    assert torch.allclose(model.weight.grad, reference_grad(detach_target=False), atol=1e-5)
    assert not torch.allclose(model.weight.grad, reference_grad(detach_target=True), atol=1e-3)


def _kl_sum(model, x, x_adv):
    """Σ_i KL(p(x_i) ‖ p(x_adv_i)) in eval mode, written out with log-softmax."""
    with torch.no_grad():
        log_p, log_q = F.log_softmax(model(x), 1), F.log_softmax(model(x_adv), 1)
    return (log_p.exp() * (log_p - log_q)).sum().item()


def test_trades_attack_stays_in_the_ball_ignores_labels_and_raises_the_kl_from_its_start(clean_mnist_model, mnist5k):
    model = clean_mnist_model.train()  # the attack must switch to eval mode itself and give train mode back
    x, y = to_float(mnist5k.x_test[:64]), mnist5k.y_test[:64]
    spec = AttackSpec("pgd", 0.1, 10, 0.025, "normal")
    method = create_method("trades")
    try:
        torch.manual_seed(0)
        x_adv = method.adversarial(model, x, y, _ctx(spec))
        assert model.training
        torch.manual_seed(0)
        x_adv_other_labels = method.adversarial(model, x, (y + 3) % 10, _ctx(spec))
        torch.manual_seed(0)
        x_start = random_start(x, 0.1, "normal")  # the same 0.001·N(0, 1) draw the attack started from
        model.eval()
        kl_start, kl_adv = _kl_sum(model, x, x_start), _kl_sum(model, x, x_adv)
    finally:
        model.eval()
    assert (x_adv - x).abs().max().item() <= 0.1 + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert torch.equal(x_adv, x_adv_other_labels)  # no labels in the inner maximization
    # measured: ~1e-4 summed over the batch at the start, ~80 (1.25 per digit) at x_adv
    assert kl_adv > 1000 * kl_start and kl_adv / 64 > 0.5


class Float64(torch.nn.Module):
    """A float64 copy of a model that takes the attack's fp32 inputs: the same attack code, but with every
    logit and gradient in float64, where a gradient's sign could differ between machines only if the
    gradient were within ~1e-15 (relative) of zero."""

    def __init__(self, model):
        super().__init__()
        self.model = copy.deepcopy(model).double()

    def forward(self, x):
        return self.model(x.double())


def test_trades_attack_equals_the_authors_loop_that_recomputes_the_clean_target_every_step(clean_mnist_model, mnist5k):
    """Bit for bit, on any IEEE machine. In fp32 the first step's KL gradient (at x' ≈ x, where p ≈ q) is
    partly rounding (measured: errors up to 6% of an example's largest entry), so signs of small entries
    flip between CPUs (1.35% of the pixels on one). In float64 our KL and the authors' differ by at most
    1.3e-12 of an example's largest entry (measured, first step), so a sign can differ only for an entry
    that small; the authors' loop records the smallest non-zero entry ratio and the test asserts ≥ 1e-9."""
    model = Float64(clean_mnist_model.eval())
    x = to_float(mnist5k.x_test[100:132])
    eps, steps, step = 0.1, 5, 0.025
    torch.manual_seed(1)
    ours = create_method("trades").adversarial(model, x, None, _ctx(AttackSpec("pgd", eps, steps, step, "normal")))
    torch.manual_seed(1)
    x_adv = (x + 0.001 * torch.randn(x.shape)).clamp(0, 1)  # fp32 iterates, as the authors' (and ours)
    smallest = 1.0
    for _ in range(steps):  # trades.py's loop, model in eval mode, f(x) recomputed inside every step
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1), reduction="sum")
        (grad,) = torch.autograd.grad(kl, x_adv)
        ratio = grad.abs().flatten(1) / grad.abs().flatten(1).amax(1, keepdim=True)
        smallest = min(smallest, ratio[ratio > 0].min().item())
        x_adv = torch.min(torch.max(x_adv.detach() + step * grad.sign(), x - eps), x + eps).clamp(0, 1)
    assert smallest >= 1e-9  # measured: 8.3e-8; exact zeros (no path to the pixel) are zero everywhere
    assert ours.dtype == torch.float32 and torch.equal(ours, x_adv)
    torch.manual_seed(1)  # the comparison can fail: a step of 0.02 instead of 0.025 lands elsewhere
    assert not torch.equal(create_method("trades").adversarial(model, x, None,
                                                               _ctx(AttackSpec("pgd", eps, steps, 0.02, "normal"))), x_adv)


def test_trades_refuses_an_attack_without_a_random_start():
    method = create_method("trades")
    x = torch.rand(2, 1, 2, 2)
    with pytest.raises(UsageError, match="random start"):
        method.adversarial(Linear(), x, torch.tensor(Y), _ctx(AttackSpec("pgd", 0.1, 2, 0.025, "none")))
    with pytest.raises(UsageError, match="random start"):
        method.adversarial(Linear(), x, torch.tensor(Y), _ctx(AttackSpec("fgsm", 0.1)))


def test_twenty_trades_steps_on_one_batch_lower_its_loss(clean_mnist_model, mnist5k):
    # A clean-trained (not robust) copy: its KL term is large, so the loss has room to fall. Plain SGD:
    # with momentum 0.9 an adversarial loss on one fixed batch overshoots within 20 steps.
    x, y = mnist_batch(mnist5k, 64)
    model = copy.deepcopy(clean_mnist_model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    method, ctx = create_method("trades"), _ctx(AttackSpec("pgd", 0.1, 5, 0.025, "normal"))
    losses = fixed_batch_losses(method, model, x, y, ctx, optimizer, evaluations=21)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses  # measured: 3.98 -> 0.75 (ratio 0.19)


def test_trades_is_registered_with_summary_paper_and_presets():
    cls = get_method_class("trades")
    line = next(line for line in describe_methods() if line.startswith("trades "))
    assert cls.summary in line and cls.paper in line and "1901.08573" in cls.paper
    assert cls.code == "yaodongyu/TRADES"
    assert {"common", "paper"} <= set(cls.presets)


def test_trades_paper_preset_resolves_to_the_authors_cifar10_protocol():
    (cfg,) = expand_grid({"methods": ["trades.paper"]})
    assert (cfg.method_name, cfg.method_preset) == ("trades", "paper")
    assert cfg.model == "wrn34_10" and cfg.epochs == 76 and cfg.batch_size == 128
    assert (cfg.lr, cfg.momentum, cfg.weight_decay) == (0.1, 0.9, 2e-4)
    assert cfg.augment == "crop_flip" and cfg.method_args == {"beta": 6.0}
    train = cfg.train_attack_spec()
    assert (train.kind, train.steps, train.start) == ("pgd", 10, "normal")
    assert train.step_size == pytest.approx(0.007) and train.eps == pytest.approx(8 / 255)
    # The authors set lr = 0.1, ×0.1 from their 1-based epoch 75 (×0.01 from 90, ×0.001 from 100):
    assert cfg.milestone_epochs() == [74, 89, 99]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestone_epochs(), cfg.lr_gamma)
    for epoch in range(cfg.epochs):  # 0-based, stepped at epoch end as benchmark.train does
        authors = 0.1 * (0.1 if epoch + 1 >= 75 else 1.0)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(authors), epoch
        optimizer.step()
        scheduler.step()
