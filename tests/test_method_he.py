"""HE (PGD-AT + hypersphere embedding): the head by hand, the margin loss against hand values, the
s-scaled training attack, scale-1 inference, a short training run, and the registry/preset."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attacks import AttackSpec, pgd
from benchmark.config import expand_grid
from benchmark.data import to_float
from benchmark.errors import UsageError
from benchmark.models import InputNormalize, create_model
from benchmark.models.base import Classifier
from methods import TrainContext, create_method, describe_methods, get_method_class, list_methods
from methods.he import HypersphereClassifier
from toys import fixed_batch_losses, mnist_batch

W = [[3.0, 4.0], [0.0, 2.0], [-1.0, 0.0]]  # row norms 5, 2, 1
MODES = ("project", "explicit")


pytestmark = pytest.mark.usefixtures("one_thread")


def _ctx(attack=None, num_classes=3):
    return TrainContext(epoch=0, epochs=1, step=0, num_classes=num_classes, class_counts=torch.ones(num_classes),
                        attack=attack or AttackSpec("pgd", 0.1, 0, 0.0, "none"))


def _hand_cos(h, rows=W):
    """cos_j = h·w_j / (‖h‖ ‖w_j‖), written out."""
    hn = math.hypot(*h)
    return [sum(a * b for a, b in zip(h, w)) / (hn * math.hypot(*w)) for w in rows]


def _flat(rows):
    return [v for row in rows for v in row]


def _head(mode, weight=W):
    head = HypersphereClassifier(2, 3, weight_norm=mode)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(weight))
    return head


class FeatureModel(Classifier):
    """Features = the input itself, so a test fixes h directly; the classifier is the method's head."""

    def __init__(self, dim=2, num_classes=3):
        super().__init__(num_classes=num_classes, feature_dim=dim)
        self.classifier = nn.Linear(dim, num_classes)

    def _forward_backbone(self, x):
        return x.flatten(1)


# --- the head ---------------------------------------------------------------------------------------------

H = [[6.0, 8.0], [0.0, -0.5], [1.0, 1.0], [-2.0, 0.5]]


@pytest.mark.parametrize("mode", MODES)
def test_head_computes_normalized_feature_dot_normalized_weight_by_hand(mode):
    head = _head(mode)
    with torch.no_grad():
        out = head(torch.tensor(H))
    assert _flat(out.tolist()) == pytest.approx(_flat(_hand_cos(h) for h in H), abs=1e-6)
    assert head.bias is None


@pytest.mark.parametrize("mode", MODES)
def test_head_is_invariant_to_feature_scale_and_to_weight_row_scale(mode):
    torch.manual_seed(0)
    h = torch.randn(6, 5)
    head = HypersphereClassifier(5, 4, weight_norm=mode)
    with torch.no_grad():
        reference = head(h).clone()
        for c in (1e-3, 0.5, 7.0, 1e4):
            assert torch.allclose(head(c * h), reference, atol=1e-6)
        head.weight.mul_(torch.tensor([[0.01], [3.0], [100.0], [0.5]]))  # each row by its own factor
        assert torch.allclose(head(h), reference, atol=1e-6)
        assert head(h).abs().max().item() <= 1.0 + 1e-6


def test_project_mode_overwrites_the_weight_with_unit_rows_and_gets_the_plain_linear_gradient():
    """The authors' weight.data = normalize(weight) before the product: the gradient is R^T·ĥ at unit rows."""
    head = _head("project")
    h = torch.tensor(H)
    r = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.0, -1.0], [2.0, 1.0, 1.0], [-0.5, 0.5, 0.0]])
    (head(h) * r).sum().backward()
    unit = [[v / math.hypot(*w) for v in w] for w in W]
    assert _flat(head.weight.detach().tolist()) == pytest.approx(_flat(unit), abs=1e-7)
    h_unit = [[v / math.hypot(*row) for v in row] for row in H]
    expected = [[sum(r[i][j].item() * h_unit[i][k] for i in range(4)) for k in range(2)] for j in range(3)]
    assert _flat(head.weight.grad.tolist()) == pytest.approx(_flat(expected), abs=1e-6)


def test_project_mode_reprojects_once_after_each_weight_change_so_repeated_forwards_agree_bitwise():
    torch.manual_seed(0)
    head = HypersphereClassifier(5, 4, weight_norm="project")
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    h = torch.randn(6, 5)
    first, second = head(h), head(h)  # two graphs before one backward: the second forward leaves W alone
    assert torch.equal(first, second)
    (first[:, 0].sum() - second[:, 1].sum()).backward()
    optimizer.step()
    assert not torch.allclose(head.weight.norm(dim=1), torch.ones(4), atol=1e-3)  # the SGD step left the sphere
    with torch.no_grad():
        after = head(h)
        assert torch.allclose(head.weight.norm(dim=1), torch.ones(4), atol=1e-6)  # projected back
        assert torch.equal(head(h), after)
        assert not torch.allclose(after, first.detach(), atol=1e-4)


def test_explicit_mode_keeps_the_weight_and_gets_the_tangential_gradient_over_the_row_norm():
    head = _head("explicit")
    h = torch.tensor(H)
    r = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.0, -1.0], [2.0, 1.0, 1.0], [-0.5, 0.5, 0.0]])
    (head(h) * r).sum().backward()
    assert head.weight.detach().tolist() == W
    h_unit = [[v / math.hypot(*row) for v in row] for row in H]
    for j, w in enumerate(W):
        norm = math.hypot(*w)
        w_hat = [v / norm for v in w]
        g = [sum(r[i][j].item() * h_unit[i][k] for i in range(4)) for k in range(2)]  # d/dŵ_j
        radial = sum(a * b for a, b in zip(g, w_hat))
        expected = [(g[k] - radial * w_hat[k]) / norm for k in range(2)]  # (I − ŵŵᵀ) g / ‖w‖
        assert head.weight.grad[j].tolist() == pytest.approx(expected, abs=1e-6)


def test_wrap_model_puts_a_bias_free_hypersphere_head_named_classifier():
    torch.manual_seed(0)
    model = create_method("he").wrap_model(create_model("small_cnn", 10, 1, width=0.5, drop_rate=0.0))
    head = model.classifier
    assert isinstance(head, HypersphereClassifier) and head.weight_norm == "project" and head.bias is None
    assert head.weight.shape == (10, model.feature_dim)
    assert head.weight.abs().max().item() <= 1 / math.sqrt(model.feature_dim)  # nn.Linear's default init
    assert {k for k in model.state_dict() if k.startswith("classifier")} == {"classifier.weight"}
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), head(model.forward_features(x)))
        assert model(x).abs().max().item() <= 1.0 + 1e-6
    assert create_method("he", weight_norm="explicit").wrap_model(
        create_model("small_cnn", 10, 1, width=0.5)).classifier.weight_norm == "explicit"


# --- the training loss ------------------------------------------------------------------------------------

X_ADV = [[1.0, 2.0], [-3.0, 1.0], [0.5, -0.5]]  # the adversarial features h (FeatureModel: h = x)
Y = [0, 1, 2]


def _hand_he_loss(s, m):
    losses = []
    for h, y in zip(X_ADV, Y):
        cos = _hand_cos(h)
        numerator = s * (cos[y] - m)
        denominator = math.exp(numerator) + sum(math.exp(s * c) for j, c in enumerate(cos) if j != y)
        losses.append(-math.log(math.exp(numerator) / denominator))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hparams, s, m", [({}, 10.0, 0.2), ({"scale": 15.0, "margin": 0.3}, 15.0, 0.3)])
def test_loss_equals_cosface_margin_ce_on_the_adversarial_features_by_hand(hparams, s, m, mode):
    method = create_method("he", weight_norm=mode, **hparams)
    model = method.wrap_model(FeatureModel()).train()
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor(W))
    seen = []
    method.adversarial = lambda model, x, y, ctx: seen.append(x) or torch.tensor(X_ADV)
    x = torch.zeros(3, 2)
    out = method.loss(model, x, torch.tensor(Y), _ctx())
    assert len(seen) == 1 and seen[0] is x
    assert out.loss.item() == pytest.approx(_hand_he_loss(s, m), rel=1e-5)
    assert _flat(out.logits.tolist()) == pytest.approx(_flat(_hand_cos(h) for h in X_ADV), abs=1e-6)  # scale 1
    out.loss.backward()
    assert model.classifier.weight.grad is not None and torch.isfinite(model.classifier.weight.grad).all()


def test_the_margin_raises_the_loss_and_margin_zero_is_plain_ce_of_s_cos():
    cos = torch.tensor([_hand_cos(h) for h in X_ADV])
    assert _hand_he_loss(10.0, 0.2) > _hand_he_loss(10.0, 0.0)
    method = create_method("he", margin=0.0)
    model = method.wrap_model(FeatureModel())
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor(W))
    method.adversarial = lambda model, x, y, ctx: torch.tensor(X_ADV)
    out = method.loss(model, torch.zeros(3, 2), torch.tensor(Y), _ctx())
    assert out.loss.item() == pytest.approx(F.cross_entropy(10 * cos, torch.tensor(Y)).item(), rel=1e-5)


# --- the training attack and inference ----------------------------------------------------------------------

def _wrapped_small_cnn(method):
    torch.manual_seed(0)
    return method.wrap_model(create_model("small_cnn", 10, 1, width=0.5, drop_rate=0.0))


def test_training_attack_is_pgd_on_ce_of_s_scaled_cosines_inside_the_ball(mnist5k):
    method = create_method("he")
    model = _wrapped_small_cnn(method).train()
    x, y = to_float(mnist5k.x_test[::50][:16]), mnist5k.y_test[::50][:16]
    eps, steps, step = 0.1, 5, 0.025
    ctx = _ctx(AttackSpec("pgd", eps, steps, step, "normal"), num_classes=10)
    torch.manual_seed(3)
    ours = method.adversarial(model, x, y, ctx)
    assert model.training  # eval mode inside, train mode given back
    assert (ours - x).abs().max().item() <= eps + 1e-6 and ours.min().item() >= 0 and ours.max().item() <= 1
    model.eval()
    torch.manual_seed(3)
    x_adv = (x + 0.001 * torch.randn(x.shape)).clamp(0, 1)
    for _ in range(steps):  # the authors' pgd_loss loop: HELoss(s=10) with margin 0 (a batch mean)
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(10.0 * model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step * grad.sign(), x - eps), x + eps).clamp(0, 1)
    # bit for bit on any IEEE machine: with 16 examples the authors' batch mean is our sum × 2^-4, and
    # scaling by a power of two commutes with every rounding of the backward pass, so no sign can differ
    assert len(x) == 16 and torch.equal(ours, x_adv)
    torch.manual_seed(3)
    scale_one = pgd(model, x, y, eps, steps, step, start="normal")  # CE on the raw cosines
    assert (ours != scale_one).float().mean().item() > 0.01  # the scale changes the attack (measured 0.58)


def test_fgsm_training_attack_is_one_signed_step_of_eps_and_torchattacks_is_refused(mnist5k):
    method = create_method("he")
    model = _wrapped_small_cnn(method).eval()
    x, y = to_float(mnist5k.x_test[:8]), mnist5k.y_test[:8]
    ours = method.adversarial(model, x, y, _ctx(AttackSpec("fgsm", 0.1), num_classes=10))
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(10.0 * model(xr), y, reduction="sum"), xr)
    assert torch.equal(ours, (x + 0.1 * grad.sign()).clamp(0, 1))
    with pytest.raises(UsageError, match="s·cos"):
        method.adversarial(model, x, y, _ctx(AttackSpec("torchattacks_pgd", 0.1, 2, 0.05), num_classes=10))


def test_inference_logits_are_the_scale_one_cosines_and_eval_scale_changes_only_their_scale():
    x = torch.tensor(H)
    for mode in MODES:
        method = create_method("he", weight_norm=mode)
        model = method.wrap_model(FeatureModel()).eval()
        with torch.no_grad():
            model.classifier.weight.copy_(torch.tensor(W))
            assert _flat(method.logits(model, x).tolist()) == pytest.approx(_flat(_hand_cos(h) for h in H), abs=1e-6)
    scaled = create_method("he", eval_scale=10.0)
    with torch.no_grad():
        assert torch.allclose(scaled.logits(model, x), 10 * method.logits(model, x), atol=1e-6)


# --- a short training run ---------------------------------------------------------------------------------

def test_twelve_sgd_steps_on_one_fixed_batch_lower_the_he_loss_clearly(clean_mnist_model, mnist5k):
    x, y = mnist_batch(mnist5k, 64)  # all ten classes (the split is class-sorted)
    method = create_method("he")
    torch.manual_seed(0)
    model = method.wrap_model(copy.deepcopy(clean_mnist_model)).train()  # clean backbone, fresh HE head
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx = _ctx(AttackSpec("pgd", 0.1, 3, 0.025, "normal"), num_classes=10)
    losses = fixed_batch_losses(method, model, x, y, ctx, optimizer, evaluations=13)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.65 * losses[0], losses  # measured: 4.93 -> 2.46 (ratio 0.50)


# --- registry and preset ----------------------------------------------------------------------------------

def test_registry_lists_he_with_summary_paper_code_defaults_and_presets():
    assert "he" in list_methods()
    cls = get_method_class("he")
    line = next(line for line in describe_methods() if line.startswith("he "))
    assert cls.summary in line and cls.paper in line and "2002.08619" in cls.paper
    assert cls.code == "ShawnXYang/AT_HE" and set(cls.presets) == {"common", "paper"}
    assert cls.defaults == {"scale": 10.0, "margin": 0.2, "eval_scale": 1.0, "weight_norm": "project"}
    with pytest.raises(UsageError, match="scale"):
        create_method("he", s=10)
    with pytest.raises(UsageError, match="weight_norm"):
        create_method("he", weight_norm="reparam")


def test_paper_preset_resolves_the_authors_pgd_at_he_protocol():
    (cfg,) = expand_grid({"methods": ["he.paper"]})
    assert (cfg.method_name, cfg.method_preset) == ("he", "paper")
    assert cfg.model == "wrn34_10" and cfg.epochs == 77 and cfg.batch_size == 128
    assert (cfg.lr, cfg.momentum, cfg.weight_decay) == (0.1, 0.9, 5e-4)
    assert cfg.augment == "crop_flip" and cfg.method_args == {"scale": 10.0, "margin": 0.2}
    train = cfg.train_attack_spec()
    assert (train.kind, train.steps, train.start) == ("pgd", 10, "normal")
    assert train.step_size == pytest.approx(0.007) and train.eps == pytest.approx(8 / 255)
    assert cfg.milestone_epochs() == [74, 89, 99]  # the authors' 1-based epochs 75, 90, 100
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestone_epochs(), cfg.lr_gamma)
    for epoch in range(cfg.epochs):  # 0-based; the authors' adjust_learning_rate(epoch + 1)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * (0.1 if epoch + 1 >= 75 else 1.0)), epoch
        optimizer.step()
        scheduler.step()
    # the authors' in-model CIFAR-10 standardization, through create_model's mean/std (a small model here)
    model = create_model("small_cnn", 10, 3, **cfg.model_args)
    assert isinstance(model.input_normalize, InputNormalize)
    assert model.input_normalize.mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])
    assert model.input_normalize.std.flatten().tolist() == pytest.approx([0.2471, 0.2435, 0.2616])
