"""WideResNet (Zagoruyko & Komodakis 2016) as used by TRADES / AT-BSL for CIFAR.

Three groups of (depth - 4) / 6 pre-activation basic blocks with widths 16k/32k/64k and
strides 1/2/2 after a 3x3 stem of 16 channels, a final BN-ReLU and global average pooling.
Like the TRADES code, a block whose shape changes feeds the BN-ReLU'd input to its 1x1
projection shortcut. TRADES's unused `sub_block1` is left out: it never runs and would
only add 2.1M dead parameters (46,160,474 for WRN-34-10 is the count without it).

Initialization follows the reference: conv weights kaiming-normal (fan_out, ReLU gain,
i.e. N(0, 2 / (k*k*out_channels))), BN weight 1 / bias 0, linear bias 0 (linear weight
keeps PyTorch's default).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.errors import UsageError
from benchmark.models.base import Classifier
from benchmark.models.registry import register_model


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, drop_rate: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(Classifier):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        depth: int = 34,
        widen_factor: int = 10,
        drop_rate: float = 0.0,
    ):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise UsageError(f"WideResNet depth must be 6n+4 with n >= 1 (e.g. 28, 34), got {depth!r}")
        if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) or widen_factor < 1:
            raise UsageError(f"widen_factor must be a positive integer, got {widen_factor!r}")
        if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0 <= drop_rate < 1:
            raise UsageError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        super().__init__(num_classes=num_classes, feature_dim=widths[-1])
        blocks_per_group = (depth - 4) // 6

        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        groups = []
        channels = widths[0]
        for width, stride in zip(widths[1:], (1, 2, 2)):
            blocks = []
            for block_index in range(blocks_per_group):
                blocks.append(WideBasicBlock(channels, width, stride if block_index == 0 else 1, drop_rate))
                channels = width
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(channels)
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def _forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn(out))
        return out.mean(dim=(2, 3))


@register_model("wide_resnet")
def wide_resnet(
    num_classes: int,
    in_channels: int = 3,
    depth: int = 34,
    widen_factor: int = 10,
    drop_rate: float = 0.0,
) -> WideResNet:
    """Any WRN-depth-k; defaults are TRADES's WRN-34-10."""
    return WideResNet(num_classes, in_channels, depth=depth, widen_factor=widen_factor, drop_rate=drop_rate)


@register_model("wrn34_10")
def wrn34_10(num_classes: int, in_channels: int = 3, drop_rate: float = 0.0) -> WideResNet:
    return WideResNet(num_classes, in_channels, depth=34, widen_factor=10, drop_rate=drop_rate)


@register_model("wrn28_10")
def wrn28_10(num_classes: int, in_channels: int = 3, drop_rate: float = 0.0) -> WideResNet:
    return WideResNet(num_classes, in_channels, depth=28, widen_factor=10, drop_rate=drop_rate)
