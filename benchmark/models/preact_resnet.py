"""Pre-activation CIFAR ResNet (He et al. 2016, "Identity Mappings"), common in AT baselines.

BN-ReLU comes before each conv so the identity path stays clean; the projection shortcut
(1x1 conv, no BN) takes the pre-activated input. As in the adversarial-training variants
(Rice et al. 2020, Wong et al. 2020) a final BN-ReLU precedes global average pooling,
since the last block's output is otherwise never normalized. Same CIFAR stem as
`resnet.py` (3x3 stride 1, no max-pool). PyTorch default initialization.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.models.base import Classifier
from benchmark.models.registry import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut; no activation after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(Classifier):
    STAGE_WIDTHS = (64, 128, 256, 512)
    STAGE_STRIDES = (1, 2, 2, 2)

    def __init__(self, blocks_per_stage: tuple[int, ...], num_classes: int, in_channels: int = 3):
        super().__init__(num_classes=num_classes, feature_dim=self.STAGE_WIDTHS[-1])
        self.conv1 = nn.Conv2d(in_channels, self.STAGE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        stages = []
        channels = self.STAGE_WIDTHS[0]
        for num_blocks, width, stride in zip(blocks_per_stage, self.STAGE_WIDTHS, self.STAGE_STRIDES):
            blocks = []
            for block_index in range(num_blocks):
                blocks.append(PreActBlock(channels, width, stride if block_index == 0 else 1))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(channels)
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def _forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        return out.mean(dim=(2, 3))


@register_model("preact_resnet18")
def preact_resnet18(num_classes: int, in_channels: int = 3) -> PreActResNet:
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)


@register_model("preact_resnet34")
def preact_resnet34(num_classes: int, in_channels: int = 3) -> PreActResNet:
    return PreActResNet((3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)
