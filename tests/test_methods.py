"""The method registry and PGD-AT's loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attacks import AttackSpec, pgd
from benchmark.data import to_float
from benchmark.errors import UsageError
from methods import Method, TrainContext, create_method, get_method_class, list_methods, register_method


def test_registry_lists_foundation_methods_and_rejects_unknown_names():
    assert {"at", "taet"} <= set(list_methods())
    with pytest.raises(UsageError, match="known methods: .*at.*taet"):
        get_method_class("nope")


def test_unknown_hyperparameter_is_a_usage_error_naming_the_known_ones():
    with pytest.raises(UsageError, match="alpha"):
        create_method("taet", alhpa=0.2)
    with pytest.raises(UsageError, match="class_mean"):
        create_method("taet", class_mean="some")


def test_registering_a_name_twice_fails():
    with pytest.raises(ValueError, match="already registered"):
        register_method("at")(type("Other", (Method,), {}))


def test_pgd_at_loss_is_cross_entropy_on_pgd_examples_with_the_training_attack(clean_mnist_model, mnist5k):
    model = clean_mnist_model.train()
    x, y = to_float(mnist5k.x_test[:32]), mnist5k.y_test[:32]
    spec = AttackSpec("pgd", 0.1, 3, 0.025, "none")
    ctx = TrainContext(epoch=0, epochs=1, step=0, num_classes=10, class_counts=torch.ones(10), attack=spec)
    out = create_method("at").loss(model, x, y, ctx)
    assert model.training  # attack ran in eval mode and gave the mode back
    x_adv = pgd(model, x, y, 0.1, 3, 0.025, start="none")
    expected = F.cross_entropy(model(x_adv), y)
    model.eval()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.loss.item() > F.cross_entropy(model(x), y).item()  # adversarial loss exceeds the clean one


def test_presets_are_named_and_unknown_presets_fail():
    assert set(get_method_class("at").presets) == {"common", "madry"}
    assert set(get_method_class("taet").presets) == {"common", "authors"}
    with pytest.raises(UsageError, match="no preset 'nope'.*authors"):
        get_method_class("taet").preset("nope")
