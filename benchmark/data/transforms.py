"""Batched training augmentation on resident tensors, reproducible from an explicit generator.

The data stay on the training device, so augmentation works on the whole batch there instead of
per image in DataLoader workers; only the random draws happen on the generator's device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark.errors import UsageError

AUGMENTATIONS = ("none", "crop_flip")


def augment(
    x: torch.Tensor, kind: str, generator: torch.Generator | None = None, padding: int = 4
) -> torch.Tensor:
    """Apply augmentation `kind` to a float batch [B, C, H, W]; "none" returns `x` itself."""
    if kind == "none":
        return x
    if kind == "crop_flip":
        return random_crop_flip(x, generator, padding)
    raise UsageError(f"unknown augmentation {kind!r}; known: {', '.join(AUGMENTATIONS)}")


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None, padding: int) -> torch.Tensor:
    """RandomCrop(H, padding, zero fill) then RandomHorizontalFlip(0.5), each example drawn independently.

    Draw order (rows offsets, column offsets, flips) is fixed so a generator seed pins the result.
    """
    batch, _, height, width = x.shape
    draw_device = generator.device if generator is not None else torch.device("cpu")
    row_offsets = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=draw_device)
    col_offsets = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=draw_device)
    flips = torch.rand(batch, generator=generator, device=draw_device) < 0.5
    row_offsets, col_offsets, flips = (t.to(x.device) for t in (row_offsets, col_offsets, flips))

    rows = row_offsets[:, None] + torch.arange(height, device=x.device)  # [B, H]
    cols = torch.arange(width, device=x.device).expand(batch, width)
    cols = col_offsets[:, None] + torch.where(flips[:, None], width - 1 - cols, cols)  # [B, W]
    padded = F.pad(x, (padding, padding, padding, padding))
    examples = torch.arange(batch, device=x.device)[:, None, None]
    # Advanced indices around the channel slice put the indexed dims first: [B, H, W, C].
    return padded[examples, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
