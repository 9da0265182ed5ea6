"""ADT_EXP: the loss on a fixed-noise sample against hand values, the signed-Adam inner loop with the
authors' gradient accumulation, modes and input-only gradients, the ε-ball, a short training run, and
the registry/preset."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from attacks import AttackSpec
from benchmark.config import expand_grid
from benchmark.data import to_float
from benchmark.errors import UsageError
from benchmark.models import create_model
from methods import TrainContext, create_method, describe_methods, get_method_class, list_methods
from toys import B, W, fixed_batch_losses, images as _images, hand_logits as _hand_logits, mnist_batch

# The 3-class linear toy (W, B) of tests/toys.py: logits = W·vec(x) + b.
X = [[0.0, 0.05, 0.6, 1.0], [0.97, 0.1, 0.5, 0.02]]  # pixels at and near 0 and 1: the clamp is active
Y = [1, 0]
EPS = 0.1


pytestmark = pytest.mark.usefixtures("one_thread")


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(W))
        self.bias = torch.nn.Parameter(torch.tensor(B))
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return x.flatten(1) @ self.weight.t() + self.bias


def _ctx(attack=None, num_classes=3):
    return TrainContext(epoch=0, epochs=1, step=0, num_classes=num_classes, class_counts=torch.ones(num_classes),
                        attack=attack or AttackSpec("pgd", EPS, 10, EPS / 4, "normal"))


class NoiseQueue:
    """Stands in for ADT._noise: hands out pre-drawn N(0, 1) tensors in order and keeps them."""

    def __init__(self, count, shape, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.draws = [torch.randn(shape, generator=generator) for _ in range(count)]
        self.used = 0

    def __call__(self, like):
        self.used += 1
        return self.draws[self.used - 1].clone()


# --- the loss on one sample, by hand --------------------------------------------------------------------------

MU = [[-1.0, 0.5, 2.0, 0.3], [1.5, -0.2, 0.0, -3.0]]
V = [[0.0, -1.0, 0.7, 2.0], [-2.0, 0.4, 1.0, -0.5]]
N = [[0.8, -1.2, 0.1, 0.5], [0.3, 2.0, -0.7, -1.1]]


def _hand_sample(x, mu, v, n):
    sigma = [math.log1p(math.exp(b)) for b in v]
    a = [math.tanh(m + s * z) for m, s, z in zip(mu, sigma, n)]
    x_adv = [min(max(xi + EPS * ai, 0.0), 1.0) for xi, ai in zip(x, a)]
    terms = [z * z / 2 + math.log(s + 1e-8) + math.log(1 - ai * ai + 1e-8) for z, s, ai in zip(n, sigma, a)]
    return x_adv, terms


def test_loss_is_ce_of_one_clamped_tanh_gaussian_sample_from_the_learned_distribution_by_hand(monkeypatch):
    method = create_method("adt")
    monkeypatch.setattr(method, "distribution",
                        lambda model, x, y, eps: (_images(MU), _images(V), torch.zeros(())))
    monkeypatch.setattr(method, "_noise", lambda like: _images(N))
    model = Linear().train()
    out = method.loss(model, _images(X), torch.tensor(Y), _ctx())
    ce, logits = [], []
    for x, mu, v, n, y in zip(X, MU, V, N, Y):
        x_adv, _ = _hand_sample(x, mu, v, n)
        z = _hand_logits(x_adv)
        logits.append(z)
        ce.append(-z[y] + math.log(sum(math.exp(t) for t in z)))
    assert out.loss.item() == pytest.approx(sum(ce) / 2, rel=1e-6)
    assert out.logits.flatten().tolist() == pytest.approx([t for z in logits for t in z], abs=1e-6)
    assert model.modes == [True]  # the outer pass, in train mode
    sigma = sum(math.log1p(math.exp(b)) for row in V for b in row) / 8
    assert out.stats["sigma"].item() == pytest.approx(sigma, rel=1e-6)
    out.loss.backward()
    assert model.weight.grad is not None


def test_sample_and_entropy_estimate_match_the_formulas_by_hand():
    x_adv, entropy = create_method("adt").sample(_images(X), _images(MU), _images(V), EPS, _images(N))
    hand = [_hand_sample(x, mu, v, n) for x, mu, v, n in zip(X, MU, V, N)]
    assert x_adv.flatten().tolist() == pytest.approx([p for xa, _ in hand for p in xa], abs=1e-7)
    assert x_adv.min().item() == 0.0  # the clamp was active
    assert entropy.item() == pytest.approx(sum(t for _, terms in hand for t in terms) / 8, rel=1e-6)


# --- the inner loop ---------------------------------------------------------------------------------------

def _authors_loop(model, x, y, noise, steps, samples, lr, lam, zero_every_step=False, smallest=None):
    """adt_exp.py's adt_loss inner loop: Adam(betas (0, 0)) on (mean, var), loss.backward() per sample,
    optimizer_adv.zero_grad() never called (unless zero_every_step, to show that it matters). ``smallest``
    (a list) collects the smallest |accumulated gradient| before each step."""
    mean = torch.zeros_like(x, requires_grad=True)
    var = torch.zeros_like(x, requires_grad=True)
    optimizer = torch.optim.Adam([mean, var], lr=lr, betas=(0.0, 0.0))
    model.eval()
    for _ in range(steps):
        if zero_every_step:
            optimizer.zero_grad()
        for _ in range(samples):
            std = F.softplus(var)
            n = noise(x)
            adv = torch.tanh(mean + n * std)
            entropy = ((n ** 2) / 2. + (std + 1e-8).log() + (1 - adv ** 2 + 1e-8).log()).mean()
            x_adv = torch.clamp(x + EPS * adv, 0.0, 1.0)
            loss = -F.cross_entropy(model(x_adv), y) - lam * entropy
            loss.backward()
        if smallest is not None:
            smallest.append(min(mean.grad.abs().min().item(), var.grad.abs().min().item()))
        optimizer.step()
    return mean.detach(), var.detach()


def test_inner_loop_equals_the_authors_adam_loop_whose_gradients_accumulate_across_samples_and_steps():
    x, y = _images(X), torch.tensor(Y)
    steps, samples = 4, 3
    method = create_method("adt", steps=steps, samples=samples)
    method._noise = ours_noise = NoiseQueue(steps * samples, x.shape)
    mu, v, _ = method.distribution(Linear(), x, y, EPS)
    assert ours_noise.used == steps * samples
    smallest = []
    ref_mu, ref_v = _authors_loop(Linear(), x, y, NoiseQueue(steps * samples, x.shape), steps, samples, 0.3, 0.01,
                                  smallest=smallest)
    # each update is ≈ ±lr per entry: the two sides agree on any machine only because no accumulated gradient
    # is near fp32 rounding (~1e-8 here), where its sign would depend on the order of operations
    assert min(smallest) > 1e-6  # measured: 9.1e-5
    assert torch.allclose(mu, ref_mu, atol=1e-6) and torch.allclose(v, ref_v, atol=1e-6)
    fresh_mu, fresh_v = _authors_loop(Linear(), x, y, NoiseQueue(steps * samples, x.shape), steps, samples, 0.3,
                                      0.01, zero_every_step=True)
    assert not torch.allclose(v, fresh_v, atol=0.1)  # the accumulation changes the result here


def _hand_gradient(x, y, mu, v, n, lam):
    """∇_(μ, v) of J = −CE(f(x_adv), y) − λ·H for the linear model, with explicit derivatives (no autograd)."""
    w, b = torch.tensor(W), torch.tensor(B)
    count = x.numel()
    sigma = torch.log1p(torch.exp(v))
    dsigma = torch.sigmoid(v)  # softplus'
    a = torch.tanh(mu + sigma * n)
    inside = ((x + EPS * a) > 0) & ((x + EPS * a) < 1)  # clamp passes the gradient only inside (0, 1)
    x_adv = (x + EPS * a).clamp(0, 1)
    p = torch.softmax(x_adv.flatten(1) @ w.t() + b, dim=1)
    dce_dx = ((p - F.one_hot(y, 3)) @ w / len(y)).reshape(x.shape)  # ∂ mean CE / ∂x_adv
    da = 1 - a * a  # tanh'
    dce_du = dce_dx * inside * EPS * da
    dh_du = (-2 * a * da / (1 - a * a + 1e-8)) / count  # ∂H/∂u from log(1 − tanh² u + 1e-8)
    dh_dsigma_direct = 1 / (sigma + 1e-8) / count  # from log(σ + 1e-8)
    g_mu = -dce_du - lam * dh_du
    g_v = (-dce_du * n - lam * (dh_du * n + dh_dsigma_direct)) * dsigma
    return g_mu, g_v


def _assert_signed_adam_step(delta, acc, lr):
    """delta = −lr·G/(|G| + 1e-8), i.e. −lr·sign(G) up to lr·1e-8/|G| per element (plus float32 rounding)."""
    assert torch.allclose(delta, -lr * acc / (acc.abs() + 1e-8), atol=1e-6)
    assert ((delta + lr * acc.sign()).abs() <= lr * 1e-8 / acc.abs() + 1e-6).all()
    assert (acc.abs() > 1e-4).all()  # no near-zero entry whose sign would be a coin toss


def test_each_update_is_lr_times_the_sign_of_the_accumulated_gradient_within_adams_epsilon():
    x, y = _images(X), torch.tensor(Y)
    lr, lam, samples = 0.3, 0.01, 2
    queue = NoiseQueue(2 * samples, x.shape, seed=5)
    noises = [d.clone() for d in queue.draws]
    one = create_method("adt", steps=1, samples=samples)
    one._noise = NoiseQueue(samples, x.shape, seed=5)
    mu1, v1, _ = one.distribution(Linear(), x, y, EPS)
    g1 = [_hand_gradient(x, y, torch.zeros_like(x), torch.zeros_like(x), n, lam) for n in noises[:samples]]
    acc1_mu, acc1_v = sum(g[0] for g in g1), sum(g[1] for g in g1)
    for delta, acc in ((mu1, acc1_mu), (v1, acc1_v)):
        _assert_signed_adam_step(delta, acc, lr)
    two = create_method("adt", steps=2, samples=samples)
    two._noise = queue
    mu2, v2, _ = two.distribution(Linear(), x, y, EPS)
    g2 = [_hand_gradient(x, y, mu1, v1, n, lam) for n in noises[samples:]]
    new_mu, new_v = sum(g[0] for g in g2), sum(g[1] for g in g2)
    acc2_mu, acc2_v = acc1_mu + new_mu, acc1_v + new_v  # the second step sees steps 1 and 2 together
    _assert_signed_adam_step(mu2 - mu1, acc2_mu, lr)
    _assert_signed_adam_step(v2 - v1, acc2_v, lr)
    assert (acc2_v.sign() != new_v.sign()).any()  # without the accumulation this step would differ


def test_inner_loop_runs_in_eval_mode_with_input_only_gradients_and_the_outer_pass_in_train_mode():
    model = Linear().train()
    method = create_method("adt", steps=2, samples=3)
    torch.manual_seed(0)
    out = method.loss(model, _images(X), torch.tensor(Y), _ctx())
    assert model.modes == [False] * 6 + [True]
    assert model.training
    assert model.weight.grad is None and model.bias.grad is None  # no stray weight gradients from the attack
    assert model.weight.requires_grad and model.bias.requires_grad  # parameters unfrozen again
    assert torch.isfinite(out.stats["attack_ce"]) and out.stats["attack_ce"].item() > 0


def test_perturbation_stays_in_the_eps_ball_and_image_box_and_ignores_the_attack_steps(mnist5k, monkeypatch):
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1, width=0.5, drop_rate=0.0)
    x, y = to_float(mnist5k.x_test[::100][:10]), mnist5k.y_test[::100][:10]
    method = create_method("adt", steps=2, samples=2)
    seen, original = [], method.sample

    def recording_sample(*args):
        out = original(*args)
        seen.append(out[0].detach())
        return out

    monkeypatch.setattr(method, "sample", recording_sample)
    losses = []
    for spec in (AttackSpec("pgd", 0.1, 10, 0.025, "normal"), AttackSpec("pgd", 0.1, 3, 0.05, "uniform"),
                 AttackSpec("fgsm", 0.1)):
        torch.manual_seed(1)
        losses.append(method.loss(model.train(), x, y, _ctx(spec, num_classes=10)).loss.item())
    assert losses[0] == losses[1] == losses[2]  # only ctx.attack.eps is used
    assert len(seen) == 3 * (2 * 2 + 1)
    for x_adv in seen:
        assert (x_adv - x).abs().max().item() <= 0.1 + 1e-6
        assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    saturated, _ = method.sample(x, torch.full_like(x, 50.0), torch.full_like(x, 5.0), 0.1, torch.randn_like(x))
    assert (saturated - x).abs().max().item() <= 0.1 + 1e-6 and saturated.max().item() <= 1.0


# --- a short training run ---------------------------------------------------------------------------------

def test_twelve_sgd_steps_on_one_fixed_batch_lower_the_adt_loss_clearly(clean_mnist_model, mnist5k):
    # 2 inner steps x 2 samples instead of the authors' 7 x 5 (3.5 s instead of ~20 s here); plain SGD, as a
    # random-sample adversarial loss on one fixed batch overshoots with momentum 0.9.
    x, y = mnist_batch(mnist5k, 64)
    model = copy.deepcopy(clean_mnist_model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    method, ctx = create_method("adt", steps=2, samples=2), _ctx(AttackSpec("pgd", 0.1, 10, 0.025, "normal"), 10)
    losses = fixed_batch_losses(method, model, x, y, ctx, optimizer, evaluations=13)  # same noise draws each time
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses  # measured: 1.11 -> 0.50 (ratio 0.45)


# --- registry and preset ----------------------------------------------------------------------------------

def test_registry_lists_adt_with_summary_paper_code_defaults_and_presets():
    assert "adt" in list_methods()
    cls = get_method_class("adt")
    line = next(line for line in describe_methods() if line.startswith("adt "))
    assert cls.summary in line and cls.paper in line and "2002.05999" in cls.paper
    assert cls.code == "dongyp13/Adversarial-Distributional-Training" and set(cls.presets) == {"common", "paper"}
    assert cls.defaults == {"steps": 7, "samples": 5, "lr": 0.3, "lam": 0.01}
    for bad in ({"samples": 0}, {"steps": 2.5}, {"lr": 0.0}, {"lam": -1.0}, {"lbd": 0.01}):
        with pytest.raises(UsageError):
            create_method("adt", **bad)


def test_paper_preset_resolves_the_authors_adt_exp_protocol():
    (cfg,) = expand_grid({"methods": ["adt.paper"]})
    assert (cfg.method_name, cfg.method_preset) == ("adt", "paper")
    assert cfg.model == "wrn28_10" and cfg.epochs == 76 and cfg.batch_size == 64
    assert (cfg.lr, cfg.momentum, cfg.weight_decay) == (0.1, 0.9, 2e-4)
    assert cfg.augment == "crop_flip" and cfg.model_args == {}
    assert cfg.method_args == {"steps": 7, "samples": 5, "lr": 0.3, "lam": 0.01}
    assert cfg.train_attack_spec().eps == pytest.approx(8 / 255)
    assert cfg.milestone_epochs() == [74, 89, 99]  # the authors' 1-based epochs 75, 90, 100
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestone_epochs(), cfg.lr_gamma)
    for epoch in range(cfg.epochs):  # 0-based; the authors' adjust_learning_rate(epoch + 1)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * (0.1 if epoch + 1 >= 75 else 1.0)), epoch
        optimizer.step()
        scheduler.step()
