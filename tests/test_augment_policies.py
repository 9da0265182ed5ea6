"""RandAugment / AutoAugment before crop + flip (AT-BSL-RA / -AuA): per image, seeded, RNG-neutral."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from benchmark.data import AUGMENTATIONS, augment
from benchmark.data.transforms import policy_per_image
from benchmark.errors import UsageError

KINDS = ("randaugment_crop_flip", "autoaugment_crop_flip")


def scenes(batch: int, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random pictures (coarse colour blobs upsampled), exact multiples of 1/255 like decoded data."""
    coarse = torch.rand(batch, channels, 4, 4, generator=torch.Generator().manual_seed(seed))
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (smooth * 255).round() / 255


def distinct_up_to_flip(images: torch.Tensor) -> int:
    """How many different images a batch holds, an image and its mirror counting as one."""
    kept: list[torch.Tensor] = []
    for image in images:
        if not any(torch.equal(image, k) or torch.equal(image.flip(-1), k) for k in kept):
            kept.append(image)
    return len(kept)


def test_policy_kinds_are_known_augmentations():
    assert set(KINDS) <= set(AUGMENTATIONS)


@pytest.mark.parametrize("kind", KINDS)
def test_policy_augmentation_is_deterministic_for_a_generator_seed(kind):
    x = scenes(16)
    first = augment(x, kind, torch.Generator().manual_seed(5))
    again = augment(x, kind, torch.Generator().manual_seed(5))
    other = augment(x, kind, torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("kind", KINDS)
def test_policy_augmentation_ignores_and_keeps_the_global_rng(kind):
    x = scenes(8)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = augment(x, kind, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)  # the training loop's global RNG is untouched
    torch.manual_seed(456)
    assert torch.equal(augment(x, kind, torch.Generator().manual_seed(1)), first)  # nor does it steer the result


@pytest.mark.parametrize("kind, policy", [("randaugment_crop_flip", v2.RandAugment(2, 8)),
                                          ("autoaugment_crop_flip", v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))])
def test_each_image_draws_its_own_ops_unlike_one_call_on_the_batch(kind, policy):
    copies = scenes(1).expand(32, -1, -1, -1).contiguous()
    out = augment(copies, kind, torch.Generator().manual_seed(0), padding=0)  # no crop: only the policy and a flip
    assert distinct_up_to_flip(out) > 8
    # What the per-image loop avoids: one call on the whole batch gives every image the same ops.
    torch.manual_seed(0)
    whole = policy((copies * 255).round().to(torch.uint8))
    assert distinct_up_to_flip(whole) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_policy_changes_most_images_before_the_crop(kind):
    x = scenes(32)
    policy = kind.split("_")[0]
    out = policy_per_image(x, policy, torch.Generator().manual_seed(0))
    changed = sum(not torch.equal(a, b) for a, b in zip(out, x))
    assert changed > 16


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels, size", [(3, 32), (1, 28)])
def test_policy_augmentation_keeps_shape_dtype_and_the_pixel_grid(kind, channels, size):
    x = scenes(8, channels, size)
    out = augment(x, kind, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min().item() >= 0.0 and out.max().item() <= 1.0
    assert torch.equal((out * 255).round() / 255, out)  # still 8-bit values: quantised once, exactly
    assert augment(x.double(), kind, torch.Generator().manual_seed(0)).dtype == torch.float64


@pytest.mark.parametrize("kind", KINDS)
def test_policy_augmentation_rejects_channel_counts_torchvision_cannot_colour(kind):
    with pytest.raises(UsageError, match="1 or 3 channels"):
        augment(torch.rand(2, 2, 8, 8), kind, torch.Generator().manual_seed(0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_policy_augmentation_on_cuda_matches_cpu_for_a_cpu_generator(kind):
    x = scenes(16)
    on_cpu = augment(x, kind, torch.Generator().manual_seed(3))
    on_gpu = augment(x.cuda(), kind, torch.Generator().manual_seed(3))
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), on_cpu)
