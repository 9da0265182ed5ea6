"""MART: the loss against hand-computed values (the authors' stability constants included), its
cross-entropy attack, and its registry entry."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import methods.mart  # noqa: F401  (registers "mart"; ``import methods`` does too)
from attacks import AttackSpec, pgd, random_start
from benchmark.config import expand_grid
from benchmark.data import to_float
from methods import TrainContext, create_method, describe_methods, get_method_class
from toys import B, W, ToyLinear as Linear, fixed_batch_losses, mnist_batch
from toys import hand_logits as _hand_logits, hand_softmax as _hand_softmax, images as _images

# The 3-class linear toy (W, B) of tests/toys.py: logits = W·vec(x) + b.
X = [[0.2, 0.4, 0.6, 0.8], [0.9, 0.1, 0.5, 0.3], [0.1, 0.9, 0.2, 0.7]]
X_ADV = [[0.3, 0.3, 0.7, 0.7], [0.8, 0.2, 0.4, 0.4], [0.2, 0.8, 0.3, 0.6]]  # within 0.1 of X
# Example 1: y is the arg-max of q, so y' is q's second class. Examples 0, 2: y' is q's arg-max
# (example 0 is classified correctly on x and wrongly on x_adv).
Y = [1, 0, 0]


pytestmark = pytest.mark.usefixtures("one_thread")


class Lookup(torch.nn.Module):
    """Returns set logits: the clean ones for the all-zero batch, the adversarial ones for any other."""

    def __init__(self, clean, adv):
        super().__init__()
        self.clean, self.adv = clean, adv

    def forward(self, x):
        return self.adv if x.abs().sum() > 0 else self.clean


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


def test_mart_attacks_in_eval_mode_and_computes_the_loss_in_train_mode():
    model = ModeRecorder().train()
    create_method("mart").loss(model, _images(X), torch.tensor(Y), _ctx(AttackSpec("pgd", 0.1, 2, 0.025, "normal")))
    # eval: 2 attack steps; train: the clean and the adversarial outer passes
    assert model.modes == [False, False, True, True]
    assert model.training


def _hand_mart(logit_rows, adv_logit_rows, ys, beta):
    """MART as the authors' mart.py computes it, in plain floats."""
    ce, boost, weighted_kl = [], [], []
    for z, z_adv, y in zip(logit_rows, adv_logit_rows, ys):
        p, q = _hand_softmax(z), _hand_softmax(z_adv)
        wrong = max((k for k in range(len(q)) if k != y), key=lambda k: q[k])  # y'
        ce.append(-math.log(q[y]))
        boost.append(-math.log(1.0001 - q[wrong] + 1e-12))
        kl = sum(pk * (math.log(pk) - math.log(qk + 1e-12)) for pk, qk in zip(p, q))
        weighted_kl.append(kl * (1.0000001 - p[y]))
    n = len(ys)
    bce, kl = (sum(ce) + sum(boost)) / n, sum(weighted_kl) / n
    return bce, kl, bce + beta * kl


def test_mart_loss_is_boosted_ce_plus_six_times_the_misclassification_weighted_kl(monkeypatch):
    method = create_method("mart")
    assert method.hparams == {"beta": 6.0}
    monkeypatch.setattr(method, "adversarial", lambda model, x, y, ctx: _images(X_ADV))
    out = method.loss(Linear(), _images(X), torch.tensor(Y), _ctx())
    logits, adv_logits = [_hand_logits(r) for r in X], [_hand_logits(r) for r in X_ADV]
    adv_top = [max(range(3), key=lambda k: q[k]) for q in map(_hand_softmax, adv_logits)]
    assert adv_top[1] == Y[1] and adv_top[0] != Y[0]  # both ways of picking y' are exercised
    bce, kl, total = _hand_mart(logits, adv_logits, Y, beta=6.0)
    assert out.loss.item() == pytest.approx(total, rel=1e-5)
    assert out.stats["bce"].item() == pytest.approx(bce, rel=1e-5)
    assert out.stats["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert not out.stats["bce"].requires_grad and not out.stats["kl"].requires_grad
    assert torch.allclose(out.logits, torch.tensor(adv_logits), atol=1e-5)  # LossOut.logits: adversarial


def test_mart_beta_scales_only_the_weighted_kl(monkeypatch):
    method = create_method("mart", beta=5.0)
    monkeypatch.setattr(method, "adversarial", lambda model, x, y, ctx: _images(X_ADV))
    out = method.loss(Linear(), _images(X), torch.tensor(Y), _ctx())
    expected = _hand_mart([_hand_logits(r) for r in X], [_hand_logits(r) for r in X_ADV], Y, beta=5.0)[2]
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_mart_stays_finite_when_predictions_are_certain(monkeypatch):
    # Adversarial logits put all mass on a wrong class (q_y' = 1, the other q underflow to 0 in fp32): the
    # authors' 1.0001 and 1e-12 keep every log finite. The second clean row is certain too (p underflows
    # to 0 off its class): log_softmax keeps the gradient finite where log(softmax) would give NaN.
    clean = torch.tensor([[3.0, 0.0, -1.0], [0.5, 120.0, 0.0]], requires_grad=True)
    adv = torch.tensor([[-60.0, 60.0, -60.0], [60.0, -60.0, -60.0]], requires_grad=True)
    y = torch.tensor([0, 1])
    method = create_method("mart")
    monkeypatch.setattr(method, "adversarial", lambda model, x, y, ctx: torch.ones_like(x))
    out = method.loss(Lookup(clean, adv), torch.zeros(2, 1, 2, 2), y, _ctx())
    out.loss.backward()
    assert math.isfinite(out.loss.item())
    assert torch.isfinite(clean.grad).all() and torch.isfinite(adv.grad).all()
    # BCE: CE = 120 + log(1 + 2e^-120) per row; boost −log(1.0001 − 1 + 1e-12) ≈ −log(1e-4) ≈ 9.21 per row
    ce = 120.0 + math.log(1 + 2 * math.exp(-120.0))
    assert out.stats["bce"].item() == pytest.approx(ce - math.log(1e-4 + 1e-12), rel=1e-4)
    # KL with log(q + 1e-12): log(1e-12) where q underflowed, ~0 where q = 1
    p = [_hand_softmax([3.0, 0.0, -1.0]), _hand_softmax([0.5, 120.0, 0.0])]
    qs = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    kl = [sum(pk * (math.log(pk) - math.log(qk + 1e-12)) for pk, qk in zip(pi, qi)) for pi, qi in zip(p, qs)]
    expected_kl = (kl[0] * (1.0000001 - p[0][0]) + kl[1] * (1.0000001 - p[1][1])) / 2
    assert out.stats["kl"].item() == pytest.approx(expected_kl, rel=1e-4)


def test_mart_gradient_flows_through_the_clean_distribution_and_its_weight(monkeypatch):
    method = create_method("mart")
    monkeypatch.setattr(method, "adversarial", lambda model, x, y, ctx: _images(X_ADV))
    model = Linear()
    method.loss(model, _images(X), torch.tensor(Y), _ctx()).loss.backward()

    def reference_grad(detach_weight):  # the authors' loss written out with exp/log, differentiated by autograd
        w, b = torch.tensor(W, requires_grad=True), torch.tensor(B, requires_grad=True)
        z, z_adv = _images(X).flatten(1) @ w.t() + b, _images(X_ADV).flatten(1) @ w.t() + b
        p = torch.exp(z) / torch.exp(z).sum(1, keepdim=True)
        q = torch.exp(z_adv) / torch.exp(z_adv).sum(1, keepdim=True)
        rows, y = torch.arange(3), torch.tensor(Y)
        masked = q.clone().detach()
        masked[rows, y] = -1.0
        wrong = masked.argmax(1)
        bce = (-torch.log(q[rows, y]) - torch.log(1.0001 - q[rows, wrong] + 1e-12)).mean()
        p_true = p[rows, y].detach() if detach_weight else p[rows, y]
        kl = (p * (torch.log(p) - torch.log(q + 1e-12))).sum(1)
        (bce + 6.0 * (kl * (1.0000001 - p_true)).mean()).backward()
        return w.grad

    assert torch.allclose(model.weight.grad, reference_grad(detach_weight=False), atol=1e-5)
    assert not torch.allclose(model.weight.grad, reference_grad(detach_weight=True), atol=1e-3)


def test_mart_attack_is_the_training_attack_on_cross_entropy_inside_the_ball(clean_mnist_model, mnist5k):
    model = clean_mnist_model.train()  # the attack must switch to eval mode itself and give train mode back
    x, y = to_float(mnist5k.x_test[:64]), mnist5k.y_test[:64]
    spec = AttackSpec("pgd", 0.1, 10, 0.025, "normal")
    try:
        torch.manual_seed(0)
        x_adv = create_method("mart").adversarial(model, x, y, _ctx(spec))
        assert model.training
        torch.manual_seed(0)
        reference = pgd(model, x, y, 0.1, 10, 0.025, start="normal")  # the common protocol's PGD on CE
        torch.manual_seed(0)
        x_start = random_start(x, 0.1, "normal")
        model.eval()
        with torch.no_grad():
            ce_start, ce_adv = F.cross_entropy(model(x_start), y).item(), F.cross_entropy(model(x_adv), y).item()
    finally:
        model.eval()
    assert torch.equal(x_adv, reference)
    assert (x_adv - x).abs().max().item() <= 0.1 + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert ce_adv > 2.5 * ce_start  # measured: 0.63 -> 2.44


def test_twenty_mart_steps_on_one_batch_lower_its_loss(clean_mnist_model, mnist5k):
    # A clean-trained (not robust) copy, plain SGD: with momentum 0.9 an adversarial loss on one fixed
    # batch overshoots within 20 steps.
    x, y = mnist_batch(mnist5k, 64)
    model = copy.deepcopy(clean_mnist_model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    method, ctx = create_method("mart"), _ctx(AttackSpec("pgd", 0.1, 5, 0.025, "normal"))
    losses = fixed_batch_losses(method, model, x, y, ctx, optimizer, evaluations=21)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.6 * losses[0], losses  # measured: 3.60 -> 1.11 (ratio 0.31)


def test_mart_is_registered_with_summary_paper_and_presets():
    cls = get_method_class("mart")
    line = next(line for line in describe_methods() if line.startswith("mart "))
    assert cls.summary in line and cls.paper in line and "ICLR 2020" in cls.paper
    assert cls.code == "YisenWang/MART"
    assert {"common", "paper", "paper_resnet18"} <= set(cls.presets)


def _authors_lr(base_lr, epoch_1based):
    """train_wideresnet.py / train_resnet.py adjust_learning_rate."""
    if epoch_1based >= 100:
        return base_lr * 0.001
    if epoch_1based >= 90:
        return base_lr * 0.01
    if epoch_1based >= 75:
        return base_lr * 0.1
    return base_lr


@pytest.mark.parametrize("preset, model, epochs, lr, weight_decay, beta", [
    ("paper", "wrn34_10", 90, 0.1, 7e-4, 6.0),
    ("paper_resnet18", "resnet18", 120, 0.01, 3.5e-3, 5.0),
])
def test_mart_presets_resolve_to_the_authors_scripts(preset, model, epochs, lr, weight_decay, beta):
    (cfg,) = expand_grid({"methods": [f"mart.{preset}"]})
    assert (cfg.method_name, cfg.method_preset) == ("mart", preset)
    assert (cfg.model, cfg.epochs, cfg.batch_size) == (model, epochs, 128)
    assert (cfg.lr, cfg.momentum, cfg.weight_decay) == (lr, 0.9, weight_decay)
    assert cfg.augment == "crop_flip" and cfg.method_args == {"beta": beta}
    train = cfg.train_attack_spec()
    assert (train.kind, train.steps, train.start) == ("pgd", 10, "normal")
    assert train.step_size == pytest.approx(0.007) and train.eps == pytest.approx(8 / 255)
    assert cfg.milestone_epochs() == [74, 89, 99]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestone_epochs(), cfg.lr_gamma)
    for epoch in range(cfg.epochs):  # 0-based, stepped at epoch end as benchmark.train does
        assert optimizer.param_groups[0]["lr"] == pytest.approx(_authors_lr(lr, epoch + 1)), epoch
        optimizer.step()
        scheduler.step()
