"""Model zoo: shapes, the features/classifier contract, reference parameter counts, normalization."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from benchmark.errors import UsageError
from benchmark.models import Classifier, InputNormalize, create_model, list_models, register_model
from benchmark.models.registry import _FACTORIES

NUM_CLASSES = 10

# name -> (create_model kwargs, input shape without batch, batch size).
# The deep/wide ones are slow on CPU, so they get a batch of 1.
INTENDED_INPUTS = {
    "resnet18": ({}, (3, 32, 32), 2),
    "resnet34": ({}, (3, 32, 32), 1),
    "preact_resnet18": ({}, (3, 32, 32), 2),
    "preact_resnet34": ({}, (3, 32, 32), 1),
    "wrn34_10": ({}, (3, 32, 32), 1),
    "wrn28_10": ({}, (3, 32, 32), 1),
    "wide_resnet": ({"depth": 10, "widen_factor": 1}, (3, 32, 32), 2),
    "small_cnn": ({"in_channels": 1}, (1, 28, 28), 2),
}
EXTRA_INPUTS = [
    ("small_cnn", {"in_channels": 3}, (3, 32, 32), 2),
    ("small_cnn", {"in_channels": 3, "width": 0.25}, (3, 32, 32), 2),
    ("resnet18", {}, (3, 64, 64), 2),  # Tiny-ImageNet
]
# Cheap members of a family, for tests about the shared machinery rather than the architecture.
TINY_KWARGS = {"wide_resnet": {"depth": 10, "widen_factor": 1}}
CASES = [(name, *spec) for name, spec in INTENDED_INPUTS.items()] + EXTRA_INPUTS


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """One intra-op thread: these tiny batches gain little from two, and lose a lot when the
    machine is shared (OpenMP threads spin against other processes)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
    _reference_model.cache_clear()  # frees the ~330 MB of cached WRN weights


@functools.lru_cache(maxsize=None)
def _reference_model(name: str) -> Classifier:
    torch.manual_seed(0)
    return create_model(name, NUM_CLASSES).eval()


def _num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_built_in_model_has_a_shape_test():
    # Only the zoo's own models: other tests may register throwaway ones.
    built_in = {
        name for name, factory in _FACTORIES.items() if factory.__module__.startswith("benchmark.models.")
    }
    assert built_in == set(INTENDED_INPUTS)


@pytest.mark.parametrize(("name", "kwargs", "input_shape", "batch"), CASES)
def test_logits_features_and_classifier_contract(name, kwargs, input_shape, batch):
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, **kwargs).eval()
    x = torch.rand(batch, *input_shape)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        logits_from_features = model.classifier(features)
    assert isinstance(model, Classifier)
    assert model.num_classes == NUM_CLASSES
    assert isinstance(model.classifier, nn.Linear)
    assert (model.classifier.in_features, model.classifier.out_features) == (model.feature_dim, NUM_CLASSES)
    assert logits.shape == (batch, NUM_CLASSES)
    assert features.shape == (batch, model.feature_dim)
    assert torch.equal(logits, logits_from_features)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet18", 11_173_962),  # kuangliu/pytorch-cifar ResNet18, 10 classes
        ("resnet34", 21_282_122),
        ("preact_resnet18", 11_172_170),  # kuangliu PreActResNet18 (11,171,146) + final BN(512)
        ("wrn34_10", 46_160_474),  # TRADES WRN-34-10 without its unused sub_block1
        ("wrn28_10", 36_479_194),
    ],
)
def test_reference_parameter_counts(name, expected):
    assert _num_parameters(_reference_model(name)) == expected


def test_small_cnn_matches_trades_at_default_width():
    model = create_model("small_cnn", NUM_CLASSES, in_channels=1)
    # TRADES SmallCNN: 4 convs (32, 32, 64, 64), fc 1024->200->200->10.
    assert _num_parameters(model) == 312_202
    assert model.feature_dim == 200
    assert model.fc1.in_features == 64 * 4 * 4
    assert create_model("small_cnn", NUM_CLASSES, in_channels=3).fc1.in_features == 64 * 5 * 5


def test_small_cnn_width_and_explicit_channels():
    narrow = create_model("small_cnn", NUM_CLASSES, in_channels=1, width=0.5)
    assert narrow.feature_dim == 100
    explicit = create_model("small_cnn", NUM_CLASSES, stage1_channels=8, stage2_channels=16, hidden_dim=48)
    assert explicit.feature_dim == 48
    assert explicit(torch.rand(2, 3, 32, 32)).shape == (2, NUM_CLASSES)


def test_small_cnn_rejects_input_of_another_size():
    model = create_model("small_cnn", NUM_CLASSES, in_channels=1)
    with pytest.raises(ValueError, match="input_size"):
        model(torch.rand(1, 1, 32, 32))
    custom = create_model("small_cnn", NUM_CLASSES, in_channels=1, input_size=32).eval()
    assert custom(torch.rand(1, 1, 32, 32)).shape == (1, NUM_CLASSES)


def test_resnet18_is_the_cifar_variant():
    model = _reference_model("resnet18")
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) for m in model.modules())
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.conv1.out_channels == 64


def test_wideresnet_initialization():
    model = _reference_model("wrn34_10")
    assert torch.count_nonzero(model.classifier.bias) == 0
    batch_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(bn.weight == 1) and torch.all(bn.bias == 0) for bn in batch_norms)
    # kaiming normal, fan_out: std = sqrt(2 / (3 * 3 * 640)) for the widest convs
    widest_conv = model.block3[-1].conv2.weight
    assert widest_conv.std().item() == pytest.approx((2 / (9 * 640)) ** 0.5, rel=0.02)


def test_wide_resnet_rejects_bad_depth():
    with pytest.raises(UsageError, match="6n\\+4"):
        create_model("wide_resnet", NUM_CLASSES, depth=30)


@pytest.mark.parametrize("name", ["wide_resnet", "small_cnn"])
def test_normalization_inside_model_equals_normalizing_the_input(name):
    mean, std = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]
    torch.manual_seed(0)
    kwargs = TINY_KWARGS.get(name, {})
    plain = create_model(name, NUM_CLASSES, **kwargs).eval()
    normalized = create_model(name, NUM_CLASSES, mean=mean, std=std, **kwargs).eval()
    assert isinstance(normalized.input_normalize, InputNormalize)
    # Normalization buffers are not persistent, so the two state dicts are interchangeable.
    normalized.load_state_dict(plain.state_dict())

    x = torch.rand(2, 3, 32, 32)
    x_normalized = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(normalized(x), plain(x_normalized), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            normalized.forward_features(x), plain.forward_features(x_normalized), rtol=1e-5, atol=1e-6
        )
        assert not torch.allclose(normalized(x), plain(x))


@pytest.mark.parametrize("name", ["wide_resnet", "small_cnn"])
def test_input_gradient_flows_through_normalization_in_train_mode(name):
    """Attacks differentiate the loss w.r.t. the [0, 1] input, often with BN in train mode."""
    model = create_model(
        name, NUM_CLASSES, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], **TINY_KWARGS.get(name, {})
    ).train()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
    (input_grad,) = torch.autograd.grad(loss, x)
    assert input_grad.shape == x.shape
    assert torch.isfinite(input_grad).all() and input_grad.abs().sum() > 0


def test_normalization_arguments_are_checked():
    with pytest.raises(UsageError, match="both"):
        create_model("resnet18", NUM_CLASSES, mean=[0.5, 0.5, 0.5])
    with pytest.raises(UsageError, match="in_channels"):
        create_model("resnet18", NUM_CLASSES, mean=[0.5], std=[0.5])
    with pytest.raises(UsageError, match="positive"):
        create_model("small_cnn", NUM_CLASSES, in_channels=1, mean=[0.5], std=[0.0])


def test_unknown_model_lists_known_ones():
    with pytest.raises(UsageError) as excinfo:
        create_model("resnet1000", NUM_CLASSES)
    message = str(excinfo.value)
    assert "\n" not in message
    assert "resnet1000" in message
    for known in list_models():
        assert known in message


def test_unknown_model_option_is_a_usage_error():
    with pytest.raises(UsageError, match="drop_rate"):  # lists what wrn34_10 does accept
        create_model("wrn34_10", NUM_CLASSES, depth=28)
    with pytest.raises(UsageError, match="num_classes"):
        create_model("resnet18", 0)


def test_duplicate_registration_raises_and_keeps_the_original():
    before = list_models()
    with pytest.raises(ValueError, match="already registered"):

        @register_model("resnet18")
        def impostor(num_classes, in_channels=3):  # pragma: no cover - never called
            raise AssertionError

    assert list_models() == before
    assert create_model("resnet18", NUM_CLASSES).feature_dim == 512
