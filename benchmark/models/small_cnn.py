"""TRADES's SmallCNN, the standard MNIST adversarial-training model, with adjustable width.

conv(in->c1,3) ReLU conv(c1->c1,3) ReLU maxpool2 conv(c1->c2,3) ReLU conv(c2->c2,3) ReLU
maxpool2, flatten, fc(->h) ReLU dropout fc(h->h) ReLU, classifier(h->C). Defaults are
TRADES's (c1=32, c2=64, h=200, dropout 0.5); `width` scales all three so the CPU quick
profile can use a narrow copy.

Input size: fc1's input size is computed from `input_size` (no adaptive pooling, so the
28x28 model is exactly TRADES's and nothing lacks a deterministic CUDA backward). It
defaults to 28 for 1-channel inputs (MNIST: 64*4*4 features) and 32 otherwise
(CIFAR: 64*5*5); other sizes must be passed explicitly.

Initialization as in TRADES for the convs (kaiming normal, fan_in, zero bias); linear
layers keep PyTorch defaults. TRADES zero-initializes the last layer; we do not, because
cosine / hypersphere heads normalize the classifier's weight rows and would divide by 0.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.errors import UsageError
from benchmark.models.base import Classifier
from benchmark.models.registry import register_model

_MIN_INPUT_SIZE = 16  # smallest side that leaves at least 1x1 after the conv/pool stack


def _conv_stack_output_size(input_size: int) -> int:
    """Spatial side after two (3x3 valid conv, 3x3 valid conv, 2x2 max-pool) stages."""
    size = input_size
    for _ in range(2):
        size = (size - 4) // 2
    return size


def _scaled(base: int, width: float) -> int:
    return max(1, round(base * width))


def _check_positive_int(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"small_cnn {what} must be a positive integer, got {value!r}")


class SmallCNN(Classifier):
    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        input_size: int,
        stage1_channels: int,
        stage2_channels: int,
        hidden_dim: int,
        drop_rate: float,
    ):
        super().__init__(num_classes=num_classes, feature_dim=hidden_dim)
        self.input_size = input_size
        pooled_size = _conv_stack_output_size(input_size)
        self.conv_layers = nn.Sequential(
            nn.Conv2d(in_channels, stage1_channels, 3),
            nn.ReLU(),
            nn.Conv2d(stage1_channels, stage1_channels, 3),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(stage1_channels, stage2_channels, 3),
            nn.ReLU(),
            nn.Conv2d(stage2_channels, stage2_channels, 3),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        self.fc1 = nn.Linear(stage2_channels * pooled_size * pooled_size, hidden_dim)
        self.dropout = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.classifier = nn.Linear(hidden_dim, num_classes)
        for module in self.conv_layers:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def _forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"small_cnn was built for {self.input_size}x{self.input_size} inputs, got "
                f"{x.shape[-2]}x{x.shape[-1]}; pass input_size to create_model"
            )
        out = torch.flatten(self.conv_layers(x), 1)
        out = self.dropout(F.relu(self.fc1(out)))
        return F.relu(self.fc2(out))


@register_model("small_cnn")
def small_cnn(
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    stage1_channels: int | None = None,
    stage2_channels: int | None = None,
    hidden_dim: int | None = None,
    drop_rate: float = 0.5,
    input_size: int | None = None,
) -> SmallCNN:
    """Explicit channel counts override the `width`-scaled defaults (32, 64, 200)."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise UsageError(f"small_cnn width must be a positive number, got {width!r}")
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0 <= drop_rate < 1:
        raise UsageError(f"small_cnn drop_rate must be in [0, 1), got {drop_rate!r}")
    if input_size is None:
        input_size = 28 if in_channels == 1 else 32
    _check_positive_int(input_size, "input_size")
    if input_size < _MIN_INPUT_SIZE:
        raise UsageError(f"small_cnn input_size must be at least {_MIN_INPUT_SIZE}, got {input_size}")
    stage1_channels = _scaled(32, width) if stage1_channels is None else stage1_channels
    stage2_channels = _scaled(64, width) if stage2_channels is None else stage2_channels
    hidden_dim = _scaled(200, width) if hidden_dim is None else hidden_dim
    _check_positive_int(stage1_channels, "stage1_channels")
    _check_positive_int(stage2_channels, "stage2_channels")
    _check_positive_int(hidden_dim, "hidden_dim")
    return SmallCNN(
        num_classes,
        in_channels,
        input_size=input_size,
        stage1_channels=stage1_channels,
        stage2_channels=stage2_channels,
        hidden_dim=hidden_dim,
        drop_rate=float(drop_rate),
    )
