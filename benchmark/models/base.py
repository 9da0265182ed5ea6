"""What every benchmark model shares, so methods and attacks can treat all families alike."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class InputNormalize(nn.Module):
    """Per-channel (x - mean) / std as the model's first layer.

    It lives inside the model so that data loaders and attacks work in [0, 1] pixel
    space and an epsilon ball means the same thing for every model. The buffers are
    not persistent: state dicts stay interchangeable between normalized and plain
    models (and with reference checkpoints); the statistics come from the config
    that built the model.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_tensor = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_tensor = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.register_buffer("mean", mean_tensor, persistent=False)
        self.register_buffer("std", std_tensor, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean = [round(v, 6) for v in self.mean.flatten().tolist()]
        std = [round(v, 6) for v in self.std.flatten().tolist()]
        return f"mean={mean}, std={std}"


class Classifier(nn.Module):
    """A feature extractor followed by one linear layer, `classifier`.

    `forward` is always `classifier(forward_features(x))`, so a method may replace or
    wrap `classifier` (cosine / hypersphere heads, re-balanced logits) and read the
    penultimate features without knowing the family. Subclasses implement
    `_forward_backbone` (input already normalized) and set `self.classifier` to an
    `nn.Linear(feature_dim, num_classes)`, created last as in the reference code.
    `input_normalize` is an identity unless `create_model` got mean/std.
    """

    classifier: nn.Module

    def __init__(self, num_classes: int, feature_dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.input_normalize: nn.Module = nn.Identity()

    def _forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, feature_dim] of [0, 1] inputs (normalization included)."""
        return self._forward_backbone(self.input_normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))
