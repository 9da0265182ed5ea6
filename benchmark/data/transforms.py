"""Batched training augmentation on resident tensors, reproducible from an explicit generator.

The data stay on the training device, so augmentation works on the whole batch there instead of
per image in DataLoader workers; only the random draws happen on the generator's device.
The policy kinds (RandAugment, AutoAugment before crop + flip) are the exception: torchvision's
policies run per image on the CPU (see ``policy_per_image`` for why and what it costs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark.errors import UsageError
from .loader import host_to_device

AUGMENTATIONS = ("none", "crop_flip", "randaugment_crop_flip", "autoaugment_crop_flip")
# Kinds that run a torchvision policy on each image before RandomCrop + flip (AT-BSL-RA / AT-BSL-AuA).
POLICY_KINDS = {"randaugment_crop_flip": "randaugment", "autoaugment_crop_flip": "autoaugment"}


def augment(
    x: torch.Tensor, kind: str, generator: torch.Generator | None = None, padding: int = 4
) -> torch.Tensor:
    """Apply augmentation `kind` to a float batch [B, C, H, W]; "none" returns `x` itself."""
    if kind == "none":
        return x
    if kind == "crop_flip":
        return random_crop_flip(x, generator, padding)
    if kind in POLICY_KINDS:
        return random_crop_flip(policy_per_image(x, POLICY_KINDS[kind], generator), generator, padding)
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
    row_offsets, col_offsets, flips = (host_to_device(t, x.device) for t in (row_offsets, col_offsets, flips))

    rows = row_offsets[:, None] + torch.arange(height, device=x.device)  # [B, H]
    cols = torch.arange(width, device=x.device).expand(batch, width)
    cols = col_offsets[:, None] + torch.where(flips[:, None], width - 1 - cols, cols)  # [B, W]
    padded = F.pad(x, (padding, padding, padding, padding))
    examples = torch.arange(batch, device=x.device)[:, None, None]
    # Advanced indices around the channel slice put the indexed dims first: [B, H, W, C].
    return padded[examples, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def _policy(name: str):
    """A fresh torchvision v2 policy: RandAugment(num_ops=2, magnitude=8) or AutoAugment's CIFAR-10 policy,
    both with torchvision's defaults otherwise (nearest interpolation, fill 0), as the AT-BSL scripts build them."""
    from torchvision.transforms import v2  # imported here: only these kinds need torchvision

    if name == "randaugment":
        return v2.RandAugment(num_ops=2, magnitude=8)
    if name == "autoaugment":
        return v2.AutoAugment(policy=v2.AutoAugmentPolicy.CIFAR10)
    raise ValueError(f"unknown policy {name!r}")


def policy_per_image(x: torch.Tensor, name: str, generator: torch.Generator | None) -> torch.Tensor:
    """Apply policy ``name`` ("randaugment" or "autoaugment") to every image of a float batch in [0, 1].

    * Pixels: the batch is quantised to uint8 (round(x·255)), the 8-bit images the policies were designed
      for and the AT-BSL scripts feed them; batches that came from uint8 data round-trip exactly. The
      result goes back to x's dtype in [0, 1]. The ops run on uint8 tensors, not PIL images as in the
      authors' loader, so interpolated ops (rotate, shear, translate) may differ from PIL by rounding.
    * Per image: a v2 transform draws ONE set of random parameters per call (which ops, their signs, and
      for AutoAugment the sub-policy and its probabilities) and applies it to everything it is given, so
      calling it on the whole [B, C, H, W] batch would give every image the same ops. We call it once per
      image, as a DataLoader does.
    * Randomness: torchvision draws from torch's global CPU generator. One seed is drawn from ``generator``
      (from the global generator if ``generator`` is None, like ``random_crop_flip``), and the per-image
      calls run inside ``torch.random.fork_rng(devices=[])`` on the global CPU generator seeded with it,
      so the result is pinned by ``generator`` and the global RNG state of the caller is left as it was.
      (Only the CPU generator is reseeded, never a CUDA one, so forking CPU alone is enough.)
    * Device: the policy runs on CPU; a CUDA batch is copied to the host and back. The copy is small
      (B·C·H·W bytes, 393 KB for 128×3×32×32) but synchronises the device once per batch, and the
      per-image Python loop dominates. Measured for 128×3×32×32 on a shared 2-core CPU box: RandAugment
      28-35 ms, AutoAugment 18-25 ms per batch (0.15-0.3 ms per image) with one torch thread; 70-85 ms
      when the process runs two threads on a loaded machine. The following crop + flip adds ~2 ms.
      On an H200 host a CUDA batch took 27 ms (RandAugment) / 21 ms (AutoAugment) against 0.2 ms for
      crop + flip alone, while one AT-BSL step (PGD-10 + update, ResNet-18, batch 128) took 51 ms: the
      policy adds about half again to a GPU step unless it is moved into loader workers. Running on
      CPU also keeps results identical on CPU and CUDA (checked on an H200).
    * Shape: images must have 1 or 3 channels (what torchvision's colour ops accept); 1-channel images
      (e.g. 28×28 digits) work, the colour op being the identity on grayscale; the MNIST profiles use
      "none" anyway. Any other channel count is a UsageError.
    """
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise UsageError(f"{name} augmentation needs a batch [B, C, H, W] with 1 or 3 channels; "
                         f"got shape {tuple(x.shape)}")
    policy = _policy(name)
    draw_device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=draw_device))
    images = (x.detach().float() * 255).round().clamp(0, 255).to(device="cpu", dtype=torch.uint8)
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        # One intra-op thread: ops on a single 32×32 image gain nothing from threads, and on a busy
        # 2-core machine their thread hand-offs made a batch 3-30× slower (measured).
        torch.set_num_threads(1)
        try:
            out = torch.stack([policy(image) for image in images])
        finally:
            torch.set_num_threads(threads)
    # Back to [0, 1] on the CPU: CUDA divides by a scalar as a multiply by its reciprocal, which can
    # differ in the last bit, and the batch should not depend on the device it trains on.
    return (out.to(torch.float32) / 255.0).to(device=x.device, dtype=x.dtype)
