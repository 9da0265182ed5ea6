"""CIFAR ResNet (post-activation), the backbone of the long-tailed AT papers (AT-BSL, REAT, ...).

It follows the widely used kuangliu/pytorch-cifar layout: a 3x3 stride-1 stem without
max-pool (32x32 inputs are too small to downsample early), BasicBlock stages of widths
64/128/256/512, 1x1 conv + BN projection shortcuts, and global average pooling, which
also makes it run on 64x64 Tiny-ImageNet inputs. PyTorch default initialization, as
in that code.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.models.base import Classifier
from benchmark.models.registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(Classifier):
    STAGE_WIDTHS = (64, 128, 256, 512)
    STAGE_STRIDES = (1, 2, 2, 2)

    def __init__(self, blocks_per_stage: tuple[int, ...], num_classes: int, in_channels: int = 3):
        super().__init__(num_classes=num_classes, feature_dim=self.STAGE_WIDTHS[-1])
        self.conv1 = nn.Conv2d(in_channels, self.STAGE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.STAGE_WIDTHS[0])
        stages = []
        channels = self.STAGE_WIDTHS[0]
        for num_blocks, width, stride in zip(blocks_per_stage, self.STAGE_WIDTHS, self.STAGE_STRIDES):
            blocks = []
            for block_index in range(num_blocks):
                blocks.append(BasicBlock(channels, width, stride if block_index == 0 else 1))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def _forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # Global mean == kuangliu's avg_pool2d(out, 4) at 32x32, and any size otherwise.
        return out.mean(dim=(2, 3))


@register_model("resnet18")
def resnet18(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)


@register_model("resnet34")
def resnet34(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet((3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)
