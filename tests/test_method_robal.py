"""RoBal (robal_n, robal_r): the cosine head, the training loss against hand values, inference logits,
method state, the inner attack, a short training run, and the registry/presets."""
from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from attacks import AttackSpec, pgd
from benchmark.config import expand_grid
from benchmark.data import to_float
from benchmark.errors import UsageError
from benchmark.models import create_model
from benchmark.models.base import Classifier
from methods import TrainContext, create_method, describe_methods, get_method_class, list_methods
from methods.robal import CosineClassifier
from toys import fixed_batch_losses, mnist_batch

GAMMA = 1 / 32
COUNTS = [100, 10, 1]  # log(n_c / n_min) = log 100, log 10, 0 and log π all non-zero


def _ctx(attack=None, counts=COUNTS, num_classes=3):
    return TrainContext(epoch=0, epochs=1, step=0, num_classes=num_classes, class_counts=torch.tensor(counts),
                        attack=attack or AttackSpec("pgd", 0.1, 0, 0.0, "none"))


class FeatureModel(Classifier):
    """Features = the input itself, so a test fixes h directly; the classifier is what the method puts there."""

    def __init__(self, dim=2, num_classes=3):
        super().__init__(num_classes=num_classes, feature_dim=dim)
        self.classifier = nn.Linear(dim, num_classes)

    def _forward_backbone(self, x):
        return x.flatten(1)


def _flat(rows):
    return [v for row in rows for v in row]


W = torch.tensor([[3.0, 4.0], [0.0, 2.0], [-1.0, 0.0]])  # row norms 5, 2, 1


def _fixed_model(method):
    model = method.wrap_model(FeatureModel())
    with torch.no_grad():
        model.classifier.weight.copy_(W)
    return model.eval()


# --- the cosine head ------------------------------------------------------------------------------------

def test_cosine_head_computes_normalized_feature_dot_weight_over_norm_plus_gamma_by_hand():
    head = CosineClassifier(2, 3, gamma=GAMMA)
    with torch.no_grad():
        head.weight.copy_(W)
    h = torch.tensor([[6.0, 8.0], [0.0, -0.5]])  # unit vectors (0.6, 0.8) and (0, -1)
    expected = [[(0.6 * 3 + 0.8 * 4) / (5 + GAMMA), (0.8 * 2) / (2 + GAMMA), (-0.6) / (1 + GAMMA)],
                [(-4) / (5 + GAMMA), (-2) / (2 + GAMMA), 0.0]]
    assert _flat(head(h).tolist()) == pytest.approx(_flat(expected), abs=1e-6)
    assert head.bias is None


def test_cosine_head_is_invariant_to_the_scale_of_the_features():
    torch.manual_seed(0)
    head = CosineClassifier(5, 4)
    h = torch.randn(6, 5)
    for c in (1e-3, 0.5, 7.0, 1e4):
        assert torch.allclose(head(c * h), head(h), atol=1e-6)


def test_wrap_model_puts_a_scale_one_cosine_head_named_classifier_with_the_authors_init():
    torch.manual_seed(0)
    model = create_method("robal_r").wrap_model(create_model("small_cnn", 10, 1, width=0.5, drop_rate=0.0))
    head = model.classifier
    assert isinstance(head, CosineClassifier) and head.scale == 1.0 and head.gamma == GAMMA
    assert head.weight.shape == (10, model.feature_dim)
    assert head.weight.abs().max().item() <= 1 / math.sqrt(model.feature_dim)
    assert set(k for k in model.state_dict() if k.startswith("classifier")) == {"classifier.weight"}
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), head(model.forward_features(x)))
        assert model(x).abs().max().item() <= 1.0


# --- the training loss against hand values --------------------------------------------------------------

Z_NAT = [[0.5, -0.2, 0.1], [0.0, 0.3, -0.4], [0.2, 0.2, 0.6]]
Z_ADV = [[0.1, 0.3, -0.2], [0.4, -0.1, 0.0], [0.5, -0.3, 0.2]]
Y = [0, 1, 2]


class LogitsAreInputs(nn.Module):
    """model(x) = x · a (a = 1, a parameter so the loss has gradients); records every output."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.ones(()))
        self.outputs = []

    def forward(self, x):
        out = x * self.a
        self.outputs.append(out)
        return out


def _hand_loss(tau_b, tau_m, s=10.0, m=0.1, beta=6.0):
    n_min, total = min(COUNTS), sum(COUNTS)
    margins = [m + tau_m * math.log(n / n_min) / s for n in COUNTS]
    bias = [tau_b * math.log(n / total) for n in COUNTS]
    ce, kl = [], []
    for z, z_nat, y in zip(Z_ADV, Z_NAT, Y):
        u = [s * (z[c] - (margins[y] if c == y else 0.0)) + bias[c] for c in range(3)]
        ce.append(-u[y] + math.log(sum(math.exp(v) for v in u)))
        p = [math.exp(v) / sum(math.exp(w) for w in z_nat) for v in z_nat]
        q = [math.exp(v) / sum(math.exp(w) for w in z) for v in z]
        kl.append(sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q)))
    return sum(ce) / 3 + beta * sum(kl) / 3, sum(ce) / 3, sum(kl) / 3


@pytest.mark.parametrize("name, tau_b, tau_m", [("robal_n", 1.2, 0.0), ("robal_r", 1.5, 0.3)])
def test_training_loss_equals_margin_bias_ce_on_adversarial_plus_six_kl_computed_by_hand(name, tau_b, tau_m):
    expected, expected_ce, expected_kl = _hand_loss(tau_b, tau_m)
    method = create_method(name)
    x_nat, x_adv = torch.tensor(Z_NAT), torch.tensor(Z_ADV)
    seen = []
    method.adversarial = lambda model, x, y, ctx: seen.append(x) or x_adv.clone()
    model = LogitsAreInputs()
    out = method.loss(model, x_nat, torch.tensor(Y), _ctx())
    assert len(seen) == 1 and torch.equal(seen[0], x_nat)  # one attack, from the clean batch
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.stats["adv_ce"].item() == pytest.approx(expected_ce, rel=1e-5)
    assert out.stats["kl"].item() == pytest.approx(expected_kl, rel=1e-4)
    # the model's logits were not modified in place by the margin / scale / bias
    assert len(model.outputs) == 2
    assert _flat(model.outputs[0].tolist()) == pytest.approx(_flat(Z_ADV), abs=1e-7)
    assert _flat(model.outputs[1].tolist()) == pytest.approx(_flat(Z_NAT), abs=1e-7)
    assert _flat(out.logits.tolist()) == pytest.approx(_flat(Z_ADV), abs=1e-7)
    out.loss.backward()
    assert model.a.grad is not None and torch.isfinite(model.a.grad)
    assert method.class_counts == COUNTS  # taken from the context on the first loss call


def test_robal_r_margin_grows_with_class_frequency_and_robal_n_margin_is_uniform():
    z = torch.zeros(3, 3)
    y = torch.tensor([0, 1, 2])
    for name, margins in (("robal_n", [0.1, 0.1, 0.1]),
                          ("robal_r", [0.1 + 0.03 * math.log(100), 0.1 + 0.03 * math.log(10), 0.1])):
        method = create_method(name)
        method.set_class_counts(COUNTS)
        u = method.margin_bias_logits(z, y)
        tau_b = method.hparams["tau_b"]
        for i in range(3):
            assert u[i, i].item() == pytest.approx(-10 * margins[i] + tau_b * math.log(COUNTS[i] / 111), rel=1e-5)
        assert torch.equal(z, torch.zeros(3, 3))


# --- inference logits and method state ----------------------------------------------------------------

H = torch.tensor([[6.0, 8.0], [1.0, -1.0], [-2.0, 0.5]])


def _hand_cos(h):
    norm = math.hypot(*h)
    return [(h[0] * w[0] + h[1] * w[1]) / norm / (math.hypot(*w) + GAMMA) for w in W.tolist()]


def test_inference_logits_are_ten_cos_minus_tenth_log_prior_for_n_and_plain_cos_for_r():
    cos = [_hand_cos(h) for h in H.tolist()]
    log_prior = [math.log(n / 111) for n in COUNTS]
    method_n, method_r = create_method("robal_n"), create_method("robal_r")
    method_n.on_epoch_start(_ctx())
    method_r.on_epoch_start(_ctx())
    with torch.no_grad():
        n_logits = method_n.logits(_fixed_model(method_n), H)
        r_logits = method_r.logits(_fixed_model(method_r), H)
    expected_n = [10 * c - 0.1 * b for row in cos for c, b in zip(row, log_prior)]
    assert _flat(n_logits.tolist()) == pytest.approx(expected_n, abs=1e-5)
    assert _flat(r_logits.tolist()) == pytest.approx(_flat(cos), abs=1e-6)


def test_state_dict_round_trip_reproduces_inference_logits_in_a_fresh_method_and_model():
    for name in ("robal_n", "robal_r"):
        method = create_method(name)
        method.on_epoch_start(_ctx())
        model = _fixed_model(method)
        buffer = io.BytesIO()
        torch.save({"method": method.state_dict(), "model": model.state_dict()}, buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
        fresh = create_method(name)
        fresh.load_state_dict(saved["method"])
        torch.manual_seed(123)  # a different head init, overwritten by the checkpoint
        fresh_model = fresh.wrap_model(FeatureModel())
        fresh_model.load_state_dict(saved["model"])
        with torch.no_grad():
            assert torch.equal(fresh.logits(fresh_model.eval(), H), method.logits(model, H))
        assert fresh.class_counts == COUNTS


def test_post_hoc_logits_before_class_counts_are_known_raise_a_clear_error():
    method = create_method("robal_n")
    model = _fixed_model(method)
    with pytest.raises(RuntimeError, match="class counts are unknown"):
        method.logits(model, H)
    create_method("robal_r").logits(model, H)  # RoBal-R's inference does not need the counts


def test_a_class_without_training_examples_is_a_usage_error():
    with pytest.raises(UsageError, match="at least one training example"):
        create_method("robal_r").on_epoch_start(_ctx(counts=[5, 0, 1]))


# --- the inner attack ---------------------------------------------------------------------------------

def test_inner_attack_stays_in_the_eps_ball_and_image_box_and_attacks_the_scale_one_cosine_logits(mnist5k):
    torch.manual_seed(0)
    method = create_method("robal_n")
    model = method.wrap_model(create_model("small_cnn", 10, 1, width=0.5, drop_rate=0.0)).train()
    x, y = to_float(mnist5k.x_test[::50][:16]), mnist5k.y_test[::50][:16]
    for spec in (AttackSpec("pgd", 0.1, 10, 0.025, "normal"),  # the common protocol
                 AttackSpec("pgd", 0.1, 5, 0.025, "uniform_one_sided"),  # the authors' attack (paper preset)
                 AttackSpec("pgd", 0.1, 4, 0.05, "none")):
        x_adv = method.adversarial(model, x, y, _ctx(spec, counts=[40] * 10, num_classes=10))
        assert (x_adv - x).abs().max().item() <= spec.eps + 1e-6
        assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
        assert model.training  # eval mode inside, train mode given back
    # plain CE on model(x), the scale-1 cosine logits (no margin, bias or post-hoc term)
    assert torch.equal(x_adv, pgd(model, x, y, 0.1, 4, 0.05, start="none"))


# --- a short training run -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["robal_n", "robal_r"])
def test_twenty_sgd_steps_on_one_fixed_batch_lower_the_loss_clearly(name, mnist5k):
    x, y = mnist_batch(mnist5k, 64)  # all ten classes (the split is class-sorted)
    torch.manual_seed(0)
    method = create_method(name)
    model = method.wrap_model(create_model("small_cnn", 10, 1, width=0.5, drop_rate=0.0)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx = _ctx(AttackSpec("pgd", 0.1, 3, 0.025, "normal"), counts=[400, 310, 240, 185, 145, 110, 85, 65, 50, 40],
               num_classes=10)
    losses = fixed_batch_losses(method, model, x, y, ctx, optimizer, evaluations=21)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.75 * losses[0], losses  # measured: about 0.62 (N) and 0.65 (R) of the start


# --- registry and presets -----------------------------------------------------------------------------

def test_registry_lists_both_variants_with_summary_paper_code_and_presets():
    assert {"robal_n", "robal_r"} <= set(list_methods())
    for name in ("robal_n", "robal_r"):
        cls = get_method_class(name)
        assert cls.summary and "2104.02703" in cls.paper and cls.code == "wutong16/Adversarial_Long-Tail"
        assert set(cls.presets) == {"common", "paper"}
        assert {"scale", "margin", "tau_b", "tau_m", "tau_post", "kl_beta", "gamma"} <= set(cls.defaults)
        assert any(line.startswith(name) for line in describe_methods())
    n, r = get_method_class("robal_n").defaults, get_method_class("robal_r").defaults
    assert (n["tau_b"], n["tau_m"], n["tau_post"]) == (1.2, 0.0, 0.1)
    assert (r["tau_b"], r["tau_m"], r["tau_post"]) == (1.5, 0.3, 0.0)
    assert n["scale"] == r["scale"] == 10 and n["kl_beta"] == 6 and n["gamma"] == GAMMA and n["margin"] == 0.1
    with pytest.raises(UsageError, match="tau_b"):
        create_method("robal_n", taub=1.0)


def test_paper_preset_resolves_the_authors_cifar10_lt_config():
    (cfg,) = expand_grid({"methods": ["robal_n.paper"]})
    assert cfg.batch_size == 64 and cfg.weight_decay == 2e-4 and cfg.epochs == 80 and cfg.lr == 0.1
    assert cfg.model == "wrn34_10" and cfg.augment == "crop_flip"
    assert cfg.milestone_epochs() == [59, 74]  # the authors' 1-based epochs 60 and 75
    spec = cfg.train_attack_spec()
    assert (spec.steps, spec.start) == (5, "uniform_one_sided")
    assert spec.eps == pytest.approx(8 / 255) and spec.step_size == pytest.approx(2 / 255)
    assert cfg.method_name == "robal_n" and cfg.method_args == {}
