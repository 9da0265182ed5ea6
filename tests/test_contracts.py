"""Contract tests over every registry, as timm tests every model it lists: the cases are read from
``list_methods()``, ``list_attacks()``, ``list_models()`` and ``list_datasets()`` when the tests are collected, so a
newly registered entry is tested with no edit here.

- a method runs steps on a toy batch with a finite loss and a gradient, and its ``state_dict`` round-trips:
  a fresh instance loaded from it reports the same state and gives the same next loss;
- an attack stays in the ε-ball and in [0, 1], leaves the model's mode as it was, and never raises robust
  accuracy above clean accuracy (at the cheapest honest setting its registry metadata allow);
- a model maps [0, 1] inputs to logits of the right shape, and normalization lives inside it (the model sees
  [0, 1]: a model built with mean/std equals the plain one fed normalized inputs);
- a dataset loads from files written in its real on-disk format (writers: tests/dataset_files.py) with the
  shapes and classes its registry metadata promise; an embedded one needs no files.
"""
from __future__ import annotations

import io
import math

import pytest
import torch

from attacks import AttackSpec, attack_metadata, list_attacks, run_attack
from benchmark.data import ImageDataset, load_dataset, stratified_subset, to_float
from benchmark.data.datasets import dataset_metadata, list_datasets
from benchmark.models import create_model, list_models
from methods import LossOut, Method, TrainContext, create_method, list_methods, register_method
from methods.base import _METHODS

from dataset_files import WRITERS
from toys import mnist_batch

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 0.1  # MNIST-scale budget: strong enough that the attacks break the clean model


# ----------------------------------------------------------------------------------------------------- methods
def _train_context(epoch: int, step: int, epochs: int = 4) -> TrainContext:
    counts = torch.tensor([int(40 * 10 ** (-c / 9)) for c in range(10)])  # IR 10, exponential profile
    attack = AttackSpec(kind="pgd", eps=EPS, steps=2, step_size=EPS / 4, start="normal", name="train")
    return TrainContext(epoch=epoch, epochs=epochs, step=step, num_classes=10, class_counts=counts, attack=attack,
                        lr=0.05)


def _same(a, b) -> bool:
    """Deep equality of states: mappings, sequences, tensors (exact), numbers."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(
            a.cpu(), b.cpu())
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _step(method: Method, model, x, y, ctx, optimizer) -> LossOut:
    out = method.loss(model.train(), x, y, ctx)
    assert isinstance(out, LossOut), f"{method.name}: loss() must return a LossOut"
    assert out.loss.dim() == 0 and torch.isfinite(out.loss), f"{method.name}: loss {out.loss} is not a finite scalar"
    optimizer.zero_grad()
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads), f"{method.name}: no finite gradient reaches the model"
    optimizer.step()
    return out


def check_method_contract(name: str, mnist5k) -> None:
    """Two epochs of one step each, then a checkpoint round trip: state and next loss must match."""
    x, y = mnist_batch(mnist5k, 32)
    torch.manual_seed(0)
    method = create_method(name)
    model = method.wrap_model(create_model("small_cnn", 10, 1, width=0.25, drop_rate=0.0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(2):
        ctx = _train_context(epoch, epoch)
        method.on_epoch_start(ctx)
        _step(method, model, x, y, ctx, optimizer)
        method.on_epoch_end(ctx)
    state = method.state_dict()
    assert isinstance(state, dict), f"{name}: state_dict() must return a dict"
    # it goes into every checkpoint, which is loaded with weights_only=True: plain tensors and builtins only
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    fresh = create_method(name)
    fresh_model = fresh.wrap_model(create_model("small_cnn", 10, 1, width=0.25, drop_rate=0.0))
    fresh_model.load_state_dict(model.state_dict())
    fresh.load_state_dict(loaded)
    assert _same(fresh.state_dict(), state), f"{name}: load_state_dict(state_dict()) does not restore the state"

    ctx = _train_context(2, 2)
    losses = []
    for m, net in ((method, model), (fresh, fresh_model)):
        m.on_epoch_start(ctx)
        torch.manual_seed(3)  # the same attack start for both
        losses.append(m.loss(net.train(), x, y, ctx).loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6), (
        f"{name}: a method restored from its state_dict gives loss {losses[1]}, the original {losses[0]}")


@pytest.mark.parametrize("name", list_methods())
def test_method_contract(name, mnist5k):
    check_method_contract(name, mnist5k)


class _Forgetful(Method):
    """A method whose loss depends on a count it keeps, and whose load_state_dict forgets it."""

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.seen = 0

    def loss(self, model, x, y, ctx):
        self.seen += 1
        logits = model(x)
        return LossOut(torch.nn.functional.cross_entropy(logits, y) * self.seen, logits)

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        pass  # the bug: the count is not restored


def test_the_method_contract_catches_a_state_that_does_not_round_trip(mnist5k):
    register_method("_contract_forgetful")(_Forgetful)
    try:
        with pytest.raises(AssertionError, match="does not restore the state"):
            check_method_contract("_contract_forgetful", mnist5k)
    finally:
        _METHODS.unregister("_contract_forgetful")


# ----------------------------------------------------------------------------------------------------- attacks
def cheapest_profile(kind: str) -> dict:
    """The cheapest honest setting of ``kind``, read from what its registry entry says it takes: an ensemble
    (AutoAttack) runs its APGD-CE stage only, an iterative attack 5 steps; nothing is chosen by kind name."""
    meta = attack_metadata(kind)
    profile = {"kind": kind}
    if "version" in meta["takes"] and meta["family"] == "ensemble":
        profile["version"] = "apgd-ce"
    if "steps" in meta["takes"]:
        profile["steps"] = 5
    if not meta["parameter_free"]:
        profile.update(step_size="eps/4", start="uniform")
    return profile


@pytest.fixture(scope="module")
def attack_batch(mnist5k):
    """5 test digits per class (50), in [0, 1]."""
    idx = torch.as_tensor(stratified_subset(mnist5k.y_test, 5, 0))
    return to_float(mnist5k.x_test[idx]), mnist5k.y_test[idx]


@pytest.mark.parametrize("kind", list_attacks())
def test_attack_contract(kind, clean_mnist_model, attack_batch):
    x, y = attack_batch
    model = clean_mnist_model.eval()
    spec = AttackSpec.from_profile(cheapest_profile(kind), EPS)
    x_adv = run_attack(spec, model, x, y, torch.Generator().manual_seed(0), num_classes=10, seed=0)
    assert not model.training, f"{kind}: the attack left the model in training mode"
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1, f"{kind}: adversarial inputs leave [0, 1]"
    assert (x_adv - x).abs().max() <= EPS + 1e-6, f"{kind}: adversarial inputs leave the ε-ball ({spec.description})"
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
        robust = (model(x_adv).argmax(1) == y).float().mean().item()
    assert robust <= clean, f"{kind}: robust accuracy {robust} above clean {clean} ({spec.description})"
    assert clean > 0.5, "the clean model should be accurate enough for the check to mean something"


# ------------------------------------------------------------------------------------------------------ models
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.mark.parametrize("name", list_models())
def test_model_contract(name):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)  # [0, 1] pixels, CIFAR-sized
    plain = create_model(name, 5, 3).eval()
    with torch.no_grad():
        logits = plain(x)
        features = plain.forward_features(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all(), f"{name}: logits of shape {tuple(logits.shape)}"
    assert features.shape == (2, plain.feature_dim), f"{name}: features of shape {tuple(features.shape)}"
    assert torch.allclose(plain.classifier(features), logits, atol=1e-5), f"{name}: forward is not classifier(features)"

    # the model sees [0, 1]: normalization is its own first layer, so attacks work in pixel space
    normalized = create_model(name, 5, 3, mean=MEAN, std=STD).eval()
    normalized.load_state_dict(plain.state_dict())
    seen = []
    normalized.input_normalize.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(normalized(x), plain((x - mean) / std), atol=1e-4), (
            f"{name}: a model built with mean/std is not the plain model on normalized inputs")
    assert len(seen) == 1 and torch.equal(seen[0], x), f"{name}: input_normalize does not receive the [0, 1] input"


# ---------------------------------------------------------------------------------------------------- datasets
@pytest.mark.parametrize("name", list_datasets())
def test_dataset_contract(name, tmp_path):
    meta = dataset_metadata(name)
    if meta["embedded"]:
        data, classes = load_dataset(name), meta["classes"]
    else:
        if name not in WRITERS:
            pytest.fail(f"dataset {name!r} is read from disk but tests/dataset_files.py has no writer for it: add "
                        f"WRITERS[{name!r}] = writer(root) -> classes written, writing {meta['layout'] or 'its files'} "
                        f"in the real on-disk format under root")
        classes = WRITERS[name](tmp_path)
        data = load_dataset(name, tmp_path)
    assert isinstance(data, ImageDataset) and data.name == name
    # classes / image_shape None: whatever the files hold (imagefolder)
    assert meta["image_shape"] in (None, data.image_shape), f"{name}: images {data.image_shape}, registered {meta['image_shape']}"
    assert data.num_classes == classes <= (meta["classes"] or classes) and all(isinstance(c, str) and c for c in data.classes)
    for images, labels in ((data.x_train, data.y_train), (data.x_test, data.y_test), (data.x_val, data.y_val)):
        if images is None:
            continue
        assert images.dtype == torch.uint8 and tuple(images.shape[1:]) == data.image_shape
        assert labels.dtype == torch.int64 and labels.shape == (len(images),) and len(images) > 0
        assert 0 <= labels.min() and labels.max() < data.num_classes
    pixels = to_float(data.x_test[:4])
    assert pixels.min() >= 0 and pixels.max() <= 1


def test_a_disk_dataset_without_a_writer_fails_the_contract_saying_what_to_add(monkeypatch, tmp_path):
    disk = next(n for n in list_datasets() if not dataset_metadata(n)["embedded"])
    monkeypatch.delitem(WRITERS, disk)
    with pytest.raises(pytest.fail.Exception, match=rf"no writer for it: add WRITERS\['{disk}'\]"):
        test_dataset_contract(disk, tmp_path)
