"""LAS-AT: the smoothed target loss against hand values, the sampled per-example attack strategy and its
attack, the REINFORCE update of the strategy network (and that it leaves the target model alone), a short
training run, resumable state, and the registry/presets."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attacks import AttackSpec
from benchmark.config import expand_grid
from benchmark.data import to_float
from benchmark.errors import UsageError
from benchmark.models import create_model
from benchmark.models.base import Classifier
from methods import TrainContext, create_method, describe_methods, get_method_class, list_methods
from methods.las_at import (HEADS, default_smoothing, early_stop_pgd_accuracy, lookahead_copy, policy_attack,
                            smoothed_cross_entropy)

EPS = 0.1  # the quick profile's ε
SMALL_POLICY = {"policy_model": "small_cnn", "policy_model_args": {"width": 0.25, "drop_rate": 0.0}}


pytestmark = pytest.mark.usefixtures("one_thread")


def _ctx(step=0, num_classes=10, lr=0.05, eps=EPS):
    ctx = TrainContext(epoch=0, epochs=1, step=step, num_classes=num_classes, class_counts=torch.ones(num_classes),
                       attack=AttackSpec("pgd", eps, 10, eps / 4, "normal"))
    if lr is not None:
        ctx.lr = lr  # benchmark/train.py sets this attribute before every step
    return ctx


def _digits(mnist5k, n, seed=0, split="train"):
    """A seeded random n of the digits (the splits are sorted by class)."""
    x_all, y_all = (mnist5k.x_train, mnist5k.y_train) if split == "train" else (mnist5k.x_test, mnist5k.y_test)
    idx = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(seed))[:n]
    return to_float(x_all[idx]), y_all[idx]


class TinyBN(Classifier):
    """A cheap target model WITH BatchNorm, for the tests that the update leaves the BN statistics alone."""

    def __init__(self, num_classes=10):
        super().__init__(num_classes=num_classes, feature_dim=6)
        self.conv = nn.Conv2d(1, 6, 5, stride=3)
        self.bn = nn.BatchNorm2d(6)
        self.classifier = nn.Linear(6, num_classes)

    def _forward_backbone(self, x):
        return F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


# --- the target loss ------------------------------------------------------------------------------------

LOGITS = [[2.0, -1.0, 0.5, 0.0], [0.3, 0.3, -2.0, 1.5], [-0.5, 1.0, 1.0, -1.0]]
LABELS = [0, 3, 2]


def _hand_smoothed_ce(logits, labels, factor):
    total = 0.0
    for z, y in zip(logits, labels):
        m = max(z)
        log_norm = m + math.log(sum(math.exp(v - m) for v in z))
        off = (1 - factor) / (len(z) - 1)
        total += -sum((factor if c == y else off) * (v - log_norm) for c, v in enumerate(z))
    return total / len(logits)


def test_smoothed_loss_equals_the_hand_computed_soft_label_cross_entropy():
    z, y = torch.tensor(LOGITS), torch.tensor(LABELS)
    for factor in (0.7, 0.6, 1.0):
        assert smoothed_cross_entropy(z, y, factor).item() == pytest.approx(_hand_smoothed_ce(LOGITS, LABELS, factor),
                                                                            rel=1e-6)
    # factor 1 is plain CE; 0.7 is not
    assert smoothed_cross_entropy(z, y, 1.0).item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-6)
    assert abs(smoothed_cross_entropy(z, y, 0.7).item() - F.cross_entropy(z, y).item()) > 0.1


def test_smoothing_factor_is_point_seven_up_to_ten_classes_point_six_above_and_overridable():
    assert default_smoothing(2) == 0.7 and default_smoothing(10) == 0.7 and default_smoothing(100) == 0.6
    assert create_method("las_at").smoothing(10) == 0.7 and create_method("las_at").smoothing(100) == 0.6
    assert create_method("las_at", label_smoothing=0.9).smoothing(100) == 0.9


class FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.z = nn.Parameter(torch.tensor(logits))

    def forward(self, x):
        return self.z


def test_method_loss_is_the_smoothed_ce_of_the_model_on_the_adversarial_batch(monkeypatch):
    method = create_method("las_at", **SMALL_POLICY)
    seen = {}

    def fake_attack(model, x, y, actions, ctx):
        seen["x"] = x
        return x + 0.01

    monkeypatch.setattr(method, "attack", fake_attack)
    model = FixedLogits(LOGITS)
    x = torch.rand(3, 1, 16, 16)
    out = method.loss(model, x, torch.tensor(LABELS), _ctx(num_classes=4))
    assert out.loss.item() == pytest.approx(_hand_smoothed_ce(LOGITS, LABELS, 0.7), rel=1e-6)
    assert torch.equal(out.logits, model.z) and out.loss.requires_grad
    assert seen["x"] is x


# --- the strategy network and its actions ---------------------------------------------------------------

def test_sampled_actions_stay_in_the_eps_scaled_action_space_and_differ_between_examples(mnist5k):
    x, _ = _digits(mnist5k, 64)
    method = create_method("las_at", **SMALL_POLICY)
    torch.manual_seed(0)
    actions = method.sample_actions(x, EPS, train=False)
    unit = EPS / 8  # 1/255 at the authors' ε = 8/255
    allowed_eps = [k * unit for k in range(3, 16)]
    allowed_alpha = [k * unit for k in range(1, 6)]
    for values, allowed in ((actions.eps, allowed_eps), (actions.step_size, allowed_alpha)):
        assert values.shape == (64,)
        assert all(min(abs(v - a) for a in allowed) < 1e-7 for v in values.tolist())
    assert actions.steps.dtype == torch.long and set(actions.steps.tolist()) <= set(range(3, 15))
    # per example, not one draw for the batch: an untrained policy is close to uniform over the choices
    assert len(set(actions.eps.tolist())) >= 6 and len(set(actions.steps.tolist())) >= 6
    assert len(set(actions.step_size.tolist())) >= 3
    assert set(actions.index) == set(HEADS) == {"epsilon", "steps", "step_size"}  # no attack-type head
    assert not actions.log_prob["epsilon"].requires_grad  # eval-mode sampling for the target's batch
    assert max(actions.eps.tolist()) > EPS  # LAS-AT trains beyond the evaluation ε, as its authors do


@pytest.mark.parametrize("shape, policy", [((1, 28, 28), "small_cnn"), ((3, 32, 32), "small_cnn"),
                                           ((3, 32, 32), "resnet18"), ((1, 28, 28), "resnet18")])
def test_strategy_network_builds_for_mnist_and_cifar_shapes_and_counts_its_parameters(shape, policy):
    method = create_method("las_at", policy_model=policy)
    assert method.extra_parameters == 0
    torch.manual_seed(0)
    actions = method.sample_actions(torch.rand(2, *shape), 8 / 255, train=False)
    assert actions.eps.shape == (2,)
    assert method.extra_parameters == sum(p.numel() for p in method.policy.parameters()) > 0
    assert [m.out_features for m in method.policy.heads.values()] == [13, 12, 5]
    assert isinstance(method.policy.backbone.classifier, nn.Identity)  # the backbone's own head is dropped
    if policy == "resnet18":
        assert method.extra_parameters > 11_000_000


# --- the training attack --------------------------------------------------------------------------------

def test_training_perturbation_stays_in_each_examples_ball_and_the_box_and_stops_after_its_steps(
        clean_mnist_model, mnist5k):
    model = clean_mnist_model.train()
    x, y = _digits(mnist5k, 26, seed=1, split="test")
    unit = EPS / 8
    eps = torch.tensor([k * unit for k in range(3, 16)] * 2)  # every ε choice twice
    alpha = torch.tensor([k * unit for k in (1, 2, 3, 4, 5)] * 5 + [2 * unit])
    steps = torch.tensor([3, 14] * 13)

    def run(k):
        torch.manual_seed(5)
        return policy_attack(model, x, y, eps, alpha, k, init_eps=EPS)

    try:
        x_adv = run(steps)
        assert model.training  # eval mode inside, mode given back
        x_short, x_long = run(torch.full_like(steps, 3)), run(torch.full_like(steps, 14))
    finally:
        model.eval()
    delta = (x_adv - x).flatten(1).abs().amax(1)
    assert (delta <= eps + 1e-6).all()
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    assert (delta[eps > EPS] > EPS + 1e-3).any()  # larger than the evaluation ε where ε_i is
    short, long_ = steps == 3, steps == 14
    # examples with K_i = 3 are where a 3-step run leaves them; those with K_i = 14 where a 14-step run does
    assert torch.equal(x_adv[short], x_short[short]) and torch.equal(x_adv[long_], x_long[long_])
    moved = (x_long[short] - x_short[short]).flatten(1).abs().amax(1)
    assert (moved > 0).sum() >= 8  # ...and really stopped early: 11 more steps would have moved them


def test_training_attack_raises_the_loss_of_the_clean_model(clean_mnist_model, mnist5k):
    model = clean_mnist_model.eval()
    x, y = _digits(mnist5k, 32, seed=2, split="test")
    n = len(y)
    torch.manual_seed(0)
    x_adv = policy_attack(model, x, y, torch.full((n,), EPS), torch.full((n,), EPS / 4), torch.full((n,), 10),
                          init_eps=EPS)
    with torch.no_grad():
        clean, adversarial = F.cross_entropy(model(x), y).item(), F.cross_entropy(model(x_adv), y).item()
    # the fixture's weights depend on the thread count (float sums), so the margin is relative (measured ≈ 2×)
    assert adversarial > 1.5 * clean and adversarial > clean + 0.5


# --- the strategy update --------------------------------------------------------------------------------

def _reference_lookahead(model, x_adv, y, factor, lr, wd):
    """θ − lr·(∇L + wd·θ), the first step of SGD with a fresh momentum buffer, computed by hand."""
    clone = copy.deepcopy(model).train()
    params = [p for p in clone.parameters()]
    logits = clone(x_adv)
    log_p = logits.log_softmax(1)
    target = torch.full_like(log_p, (1 - factor) / (log_p.shape[1] - 1))
    target[torch.arange(len(y)), y] = factor
    grads = torch.autograd.grad(-(target * log_p).sum(1).mean(), params)
    return [(p - lr * (g + wd * p)).detach() for p, g in zip(params, grads)]


def test_lookahead_copy_takes_one_sgd_step_and_leaves_the_original_model_untouched(mnist5k):
    torch.manual_seed(0)
    model = TinyBN().train()
    x, y = _digits(mnist5k, 16, seed=3)
    before = copy.deepcopy(model.state_dict())
    clone = lookahead_copy(model, x, y, factor=0.7, lr=0.05, momentum=0.9, weight_decay=5e-4)
    expected = _reference_lookahead(model, x, y, 0.7, 0.05, 5e-4)
    for p, e in zip(clone.parameters(), expected):
        assert torch.allclose(p, e, atol=1e-6)
    assert not torch.equal(clone.conv.weight, model.conv.weight)
    assert not torch.equal(clone.bn.running_mean, model.bn.running_mean)  # the copy's BN saw x_adv...
    for k, v in model.state_dict().items():  # ...the original's parameters and BN buffers did not
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters()) and model.training


def test_reward_pgd_accuracy_is_below_clean_accuracy_and_within_zero_one(clean_mnist_model, mnist5k):
    model = clean_mnist_model.eval()
    x, y = _digits(mnist5k, 64, seed=4, split="test")
    torch.manual_seed(0)
    robust = early_stop_pgd_accuracy(model, x, y, EPS, EPS / 4, 10, 2).item()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    assert 0.0 <= robust < clean - 0.2  # measured: a clean-trained net keeps well under half its accuracy


def test_strategy_update_changes_the_policy_and_leaves_target_parameters_bn_buffers_and_grads(mnist5k):
    torch.manual_seed(0)
    model = TinyBN().train()
    x, y = _digits(mnist5k, 16, seed=5)
    method = create_method("las_at", **SMALL_POLICY)
    method.build_policy([1, 28, 28])
    policy_before = copy.deepcopy(method.policy.state_dict())
    target_before = copy.deepcopy(model.state_dict())
    torch.manual_seed(1)
    terms = method.update_policy(model, x, y, _ctx(step=19))
    changed = [k for k, v in method.policy.state_dict().items() if not torch.equal(v, policy_before[k])]
    assert any(k.startswith("heads.") for k in changed) and any(k.startswith("backbone.") for k in changed)
    for k, v in model.state_dict().items():
        assert torch.equal(v, target_before[k]), k  # weights, BN running mean/var and batch counter
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert method.updates == 1
    r1, r2, r3 = terms["r1"].item(), terms["r2"].item(), terms["r3"].item()
    assert 0 <= r1 <= 10 and 0 <= r2 <= 4 and 0 <= r3 <= 2
    assert terms["reward"].item() == pytest.approx(r1 + r2 + r3, rel=1e-6)
    assert terms["lookahead_lr"].item() == pytest.approx(0.05)


def test_reinforce_loss_is_minus_sum_over_heads_of_mean_log_prob_times_the_reward(mnist5k, monkeypatch):
    x, y = _digits(mnist5k, 32, seed=6)
    # policy lr 1 (default 1e-4) so the clipped step is large enough to compare in float32
    method = create_method("las_at", policy_lr=1.0, **SMALL_POLICY)
    torch.manual_seed(0)
    method.build_policy([1, 28, 28])
    reference = copy.deepcopy(method.policy).train()
    reward = 2.5
    sampled = {}

    def fixed_reward(model, x, y, x_adv, ctx):
        t = torch.tensor
        return {"reward": t(reward), "r1": t(1.0), "r2": t(1.0), "r3": t(0.5), "lookahead_lr": t(0.05)}

    def recording_attack(model, x, y, actions, ctx):
        sampled.update({k: v.clone() for k, v in actions.index.items()})
        return x

    monkeypatch.setattr(method, "reward", fixed_reward)
    monkeypatch.setattr(method, "attack", recording_attack)
    torch.manual_seed(1)
    terms = method.update_policy(nn.Identity(), x, y, _ctx(step=19))

    logits = reference(x)
    log_pi = {h: logits[h].log_softmax(1)[torch.arange(len(y)), sampled[h]] for h in HEADS}
    expected = -sum(log_pi[h].mean() for h in HEADS) * reward
    assert terms["policy_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    # and the step: plain SGD on the gradient of that loss, clipped to global norm 1
    params = list(reference.parameters())
    grads = torch.autograd.grad(expected, params)
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads)).item()
    assert norm > 1.0  # the clip is active here (measured 2.4)
    scale = 1.0 / (norm + 1e-6)
    for p_new, p_old, g in zip(method.policy.parameters(), params, grads):
        assert torch.allclose(p_new - p_old.detach(), -1.0 * scale * g, atol=1e-6, rtol=1e-3)
    assert method.policy_optimizer.param_groups[0]["momentum"] == 0


def test_strategy_updates_happen_every_twentieth_global_step(monkeypatch):
    method = create_method("las_at", **SMALL_POLICY)
    calls = []
    monkeypatch.setattr(method, "update_policy", lambda model, x, y, ctx: calls.append(ctx.step))
    monkeypatch.setattr(method, "attack", lambda model, x, y, actions, ctx: x)
    model = FixedLogits(LOGITS[:2])
    for step in range(45):
        method.loss(model, torch.rand(2, 1, 16, 16), torch.tensor([0, 1]), _ctx(step=step, num_classes=4))
    assert calls == [19, 39]  # the authors' 1-based counter % 20 == 0


# --- training, state, registry --------------------------------------------------------------------------

def test_twenty_training_steps_on_one_batch_lower_its_loss(clean_mnist_model, mnist5k):
    # A clean-trained (not robust) copy: its adversarial loss is high, so the loss has room to fall. Plain SGD
    # at the quick profile's lr; the same attack noise and action draws every step; one strategy update (step 19).
    x, y = _digits(mnist5k, 64)
    model = copy.deepcopy(clean_mnist_model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    method = create_method("las_at", **SMALL_POLICY)
    losses = []
    for step in range(21):
        torch.manual_seed(1)
        out = method.loss(model, x, y, _ctx(step=step))
        losses.append(out.loss.item())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert method.updates == 1 and "reward" in out.stats
    assert all(math.isfinite(v) for v in losses)
    # The smoothed loss cannot fall below the entropy of its soft target (1.270 for 10 classes at 0.7), so
    # measure the excess over that floor. Measured: 2.668 -> 1.824, excess 1.398 -> 0.554 (ratio 0.40).
    floor = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3 / 9))
    assert losses[0] - losses[-1] > 0.5, losses
    assert losses[-1] - floor < 0.55 * (losses[0] - floor), losses


def test_state_dict_round_trip_restores_policy_and_optimizer_so_next_actions_and_updates_match(mnist5k):
    x, y = _digits(mnist5k, 16, seed=7)
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1, width=0.25, drop_rate=0.0)
    method = create_method("las_at", policy_interval=2, **SMALL_POLICY)
    assert method.state_dict() == {"updates": 0}
    for step in range(2):  # builds P and runs one update (step 1)
        torch.manual_seed(step)
        method.loss(model, x, y, _ctx(step=step))
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = create_method("las_at", policy_interval=2, **SMALL_POLICY)
    rng = torch.get_rng_state()
    restored.load_state_dict(torch.load(buffer, weights_only=True))  # as checkpoints load: plain tensors only
    assert torch.equal(torch.get_rng_state(), rng)  # rebuilding P does not move the run's RNG
    assert restored.updates == method.updates == 1 and restored.extra_parameters == method.extra_parameters
    assert restored.policy_optimizer.state_dict() == method.policy_optimizer.state_dict()
    for (k, a), (_, b) in zip(method.policy.state_dict().items(), restored.policy.state_dict().items()):
        assert torch.equal(a, b), k
    draws = []
    for m in (method, restored):
        torch.manual_seed(3)
        draws.append(m.sample_actions(x, EPS, train=False))
    for h in HEADS:
        assert torch.equal(draws[0].index[h], draws[1].index[h])
    after = []
    for m in (method, restored):  # the next update continues identically too
        torch.manual_seed(4)
        m.update_policy(copy.deepcopy(model), x, y, _ctx(step=3))
        after.append(m.policy.state_dict())
    for k in after[0]:
        assert torch.equal(after[0][k], after[1][k]), k
    fresh = create_method("las_at", **SMALL_POLICY)
    fresh.load_state_dict({"updates": 0})
    assert fresh.policy is None and fresh.extra_parameters == 0


def test_bad_hyperparameters_are_usage_errors():
    with pytest.raises(UsageError, match="eps_choices"):
        create_method("las_at", eps_choices=[])
    with pytest.raises(UsageError, match="steps_choices"):
        create_method("las_at", steps_choices=[2.5])
    with pytest.raises(UsageError, match="label_smoothing"):
        create_method("las_at", label_smoothing=1.5)
    with pytest.raises(UsageError, match="policy_interval"):
        create_method("las_at", policy_interval=0)
    with pytest.raises(UsageError, match="unknown"):
        create_method("las_at", model_name="x")


def test_las_at_is_registered_with_summary_paper_and_presets():
    assert "las_at" in list_methods()
    cls = get_method_class("las_at")
    line = next(line for line in describe_methods() if line.startswith("las_at "))
    assert cls.summary in line and cls.paper in line and "2203.06616" in cls.paper
    assert cls.code == "jiaxiaojunQAQ/LAS-AT"
    assert {"common", "paper"} <= set(cls.presets) and cls.presets["common"] == {}
    assert cls.defaults["policy_model"] == "resnet18" and cls.defaults["policy_interval"] == 20
    assert cls.defaults["policy_lr"] == 1e-4 and cls.defaults["policy_grad_clip"] == 1.0


def test_paper_preset_resolves_to_the_authors_cifar10_protocol_with_a_per_iteration_schedule():
    (cfg,) = expand_grid({"methods": ["las_at.paper"]})
    assert (cfg.method_name, cfg.method_preset) == ("las_at", "paper")
    assert cfg.model == "wrn34_10" and cfg.epochs == 110 and cfg.batch_size == 128 and not cfg.drop_last
    assert (cfg.lr, cfg.momentum, cfg.weight_decay) == (0.1, 0.9, 5e-4)
    assert cfg.augment == "crop_flip" and cfg.schedule_unit == "iteration"
    assert cfg.eps_value == pytest.approx(8 / 255) and cfg.method_args == {"policy_model": "resnet18"}
    assert cfg.milestone_epochs() == [99, 104]
    steps_per_epoch = 391  # CIFAR-10, batch 128, last batch kept
    total = cfg.epochs * steps_per_epoch
    # the authors: MultiStepLR(milestones=[int(total * 99/110), int(total * 104/110)]) stepped per iteration
    assert [m * steps_per_epoch for m in cfg.milestone_epochs()] == [int(total * 99 / 110), int(total * 104 / 110)]
    (quick,) = expand_grid({"methods": ["las_at"], "method_args": {"las_at": {"policy_model": "small_cnn"}}})
    assert quick.method_args == {"policy_model": "small_cnn"}
