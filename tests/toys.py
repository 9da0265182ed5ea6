"""Small fixed inputs shared by several test modules (tests/ is on sys.path under pytest)."""
from __future__ import annotations

import math

import torch

# A 3-class linear model on 2x2 one-channel inputs: logits = W·vec(x) + b.
W = [[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, -1.0, 2.0], [-1.0, 0.5, 1.5, -0.5]]
B = [0.1, -0.2, 0.3]


class ToyLinear(torch.nn.Module):
    """logits = vec(x)·Wᵀ + b with W, B above, as trainable parameters."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(W))
        self.bias = torch.nn.Parameter(torch.tensor(B))

    def forward(self, x):
        return x.flatten(1) @ self.weight.t() + self.bias


def images(rows):
    """Rows of 4 pixels as a batch of 1×2×2 images."""
    return torch.tensor(rows).reshape(len(rows), 1, 2, 2)


def hand_logits(x):
    """ToyLinear's logits for one row of 4 pixels, in plain Python."""
    return [sum(w * v for w, v in zip(row, x)) + b for row, b in zip(W, B)]


def hand_softmax(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


# A grid profile small enough for CLI and runner tests: 2 epochs of a narrow CNN, 3-step attacks.
TINY_PROFILE = """\
description: tiny CPU profile for tests
dataset: mnist5k
methods: [at]
imbalance_ratios: [10]
seeds: [0]
model: small_cnn
model_args: {width: 0.25}
epochs: 2
batch_size: 64
eps: 0.1
train_attack: {kind: pgd, steps: 2, step_size: eps/4, start: normal}
monitor_attack: {kind: pgd, steps: 2, step_size: eps/4, start: uniform}
monitor_per_class: 5
eval_attacks:
  - {kind: pgd, steps: 3, step_size: eps/4, start: uniform}
eval_per_class: 20
checkpoint_every_s: 0  # a checkpoint every epoch and evaluation progress after every batch: the resume tests
progress_every_s: 0    # stop the run between epochs and batches (the defaults, 60 s and 5 s, would skip them)
"""


def mnist_batch(mnist5k, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` embedded training digits drawn with a seeded permutation (all ten classes for size ≥ 64)."""
    idx = torch.randperm(len(mnist5k.y_train), generator=torch.Generator().manual_seed(seed))[:size]
    from benchmark.data import to_float

    return to_float(mnist5k.x_train[idx]), mnist5k.y_train[idx]


def fixed_batch_losses(method, model, x, y, ctx, optimizer, evaluations: int, clip: float | None = None) -> list[float]:
    """The method's loss on one fixed batch, ``evaluations`` times with an optimizer step between consecutive
    ones (gradient norm clipped to ``clip`` if given). The attack's random start is reseeded before every loss,
    so the loss can only fall because the model learns."""
    losses = []
    for step in range(evaluations):
        torch.manual_seed(1)  # the same attack start every step
        out = method.loss(model.train(), x, y, ctx)
        losses.append(out.loss.item())
        if step == evaluations - 1:
            break
        optimizer.zero_grad()
        out.loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    return losses


def tiny_cell(n_train: int = 128):
    """A CellData of ``n_train`` embedded digits (a fixed random subset) and the full digit test split."""
    from benchmark.data import load_dataset
    from benchmark.data.prepare import CellData

    data = load_dataset("mnist5k")
    idx = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(0))[:n_train]
    counts = torch.bincount(data.y_train[idx], minlength=10).tolist()
    return CellData(name="mnist5k", classes=list(data.classes), x_train=data.x_train[idx], y_train=data.y_train[idx],
                    x_test=data.x_test, y_test=data.y_test, train_counts=counts, train_indices=idx.numpy(),
                    test_indices=None)


def state_tensors(model, optimizer, method) -> dict:
    """{path name: tensor} of what lives across training steps: weights, buffers, optimizer state and every tensor
    reachable from the method (attributes, dicts, lists, tuples)."""
    found = {f"model.{n}": t for n, t in [*model.named_parameters(), *model.named_buffers()]}
    for index, state in enumerate(optimizer.state.values()):
        _tensors_in(state, f"optimizer.state[{index}]", found)
    _tensors_in(method, "method", found)
    return found


def _tensors_in(value, name: str, found: dict) -> dict:
    if isinstance(value, torch.Tensor):
        found.setdefault(name, value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _tensors_in(item, f"{name}[{key!r}]", found)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _tensors_in(item, f"{name}[{index}]", found)
    elif hasattr(value, "__dict__") and not isinstance(value, (torch.nn.Module, type)):
        for key, item in vars(value).items():
            _tensors_in(item, f"{name}.{key}", found)
    return found
