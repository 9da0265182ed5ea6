"""Batched crop/flip against a slice-by-slice reference, and in-memory batching."""
import pytest
import torch
import torch.nn.functional as F

from benchmark.data import AUGMENTATIONS, augment, iterate_batches
from benchmark.errors import UsageError

PAD = 4


def distinct_images(batch: int, channels: int = 3, size: int = 8) -> torch.Tensor:
    """Every pixel of every example different and non-zero, so a crop/flip can be recognised uniquely."""
    count = batch * channels * size * size
    return (torch.arange(count, dtype=torch.float32) + 1).div(count).reshape(batch, channels, size, size)


def reference_crop_flip(image: torch.Tensor, row: int, col: int, flip: bool) -> torch.Tensor:
    """One example, the way torchvision's RandomCrop(padding=4) then horizontal flip would produce it."""
    height, width = image.shape[-2:]
    crop = F.pad(image, (PAD, PAD, PAD, PAD))[:, row : row + height, col : col + width]
    return crop.flip(-1) if flip else crop


def recover_draws(inputs: torch.Tensor, outputs: torch.Tensor) -> list[tuple[int, int, bool]]:
    """For each example, the one (row offset, column offset, flip) whose reference equals the output."""
    draws = []
    for image, output in zip(inputs, outputs):
        matches = [
            (row, col, flip)
            for row in range(2 * PAD + 1)
            for col in range(2 * PAD + 1)
            for flip in (False, True)
            if torch.equal(reference_crop_flip(image, row, col, flip), output)
        ]
        assert len(matches) == 1, f"output matches {len(matches)} crops"
        draws.append(matches[0])
    return draws


def test_known_augmentations():
    assert AUGMENTATIONS == ("none", "crop_flip", "randaugment_crop_flip", "autoaugment_crop_flip")


def test_none_returns_the_batch_itself():
    x = distinct_images(2)
    assert augment(x, "none") is x


def test_unknown_kind_is_a_usage_error():
    with pytest.raises(UsageError, match="crop_flip"):
        augment(distinct_images(2), "mixup")


def test_reference_offset_four_without_flip_is_the_original():
    image = distinct_images(1)[0]
    assert torch.equal(reference_crop_flip(image, PAD, PAD, False), image)
    assert torch.equal(reference_crop_flip(image, PAD, PAD, True), image.flip(-1))


def test_crop_flip_keeps_shape_dtype_and_device():
    x = distinct_images(5, channels=1, size=28)
    out = augment(x, "crop_flip", torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device


def test_crop_flip_is_deterministic_for_a_generator_seed():
    x = distinct_images(16)
    first = augment(x, "crop_flip", torch.Generator().manual_seed(5))
    again = augment(x, "crop_flip", torch.Generator().manual_seed(5))
    other = augment(x, "crop_flip", torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_every_example_is_a_padded_crop_optionally_flipped():
    x = distinct_images(64)
    draws = recover_draws(x, augment(x, "crop_flip", torch.Generator().manual_seed(0)))
    rows, cols, flips = zip(*draws)
    assert {0, 2 * PAD} <= set(rows) and {0, 2 * PAD} <= set(cols)  # the full 0..8 offset range is reachable
    assert 16 < sum(flips) < 48  # flips with p = 0.5, per example


def test_single_pixel_moves_against_the_offset_and_mirrors_with_the_flip():
    """Draws do not depend on content, so the same seed applies the recovered draws to a one-pixel image."""
    probe = distinct_images(64, channels=1)
    draws = recover_draws(probe, augment(probe, "crop_flip", torch.Generator().manual_seed(7)))
    marker = torch.zeros(64, 1, 8, 8)
    marker[:, :, 2, 5] = 1.0
    out = augment(marker, "crop_flip", torch.Generator().manual_seed(7))
    for (row, col, flip), output in zip(draws, out):
        expected = torch.zeros(8, 8)
        moved_row, moved_col = 2 + PAD - row, 5 + PAD - col
        if 0 <= moved_row < 8 and 0 <= moved_col < 8:  # else the crop cut the pixel away
            expected[moved_row, 7 - moved_col if flip else moved_col] = 1.0
        assert torch.equal(output[0], expected)


def test_zero_padding_only_flips():
    x = distinct_images(32)
    out = augment(x, "crop_flip", torch.Generator().manual_seed(2), padding=0)
    flipped = [torch.equal(o, i.flip(-1)) for i, o in zip(x, out)]
    assert all(torch.equal(o, i) or f for i, o, f in zip(x, out, flipped))
    assert any(flipped) and not all(flipped)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_crop_flip_on_cuda_matches_cpu_for_a_cpu_generator():
    x = distinct_images(16)
    on_cpu = augment(x, "crop_flip", torch.Generator().manual_seed(3))
    on_gpu = augment(x.cuda(), "crop_flip", torch.Generator().manual_seed(3))
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), on_cpu)


def paired(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs that carry their own label, so pairing can be checked after shuffling."""
    y = torch.arange(n)
    return y.float()[:, None, None, None].expand(n, 1, 2, 2).clone(), y


@pytest.mark.parametrize("drop_last, sizes", [(True, [4, 4]), (False, [4, 4, 2])])
def test_batches_respect_drop_last(drop_last, sizes):
    x, y = paired(10)
    batches = list(iterate_batches(x, y, 4, shuffle=False, drop_last=drop_last))
    assert [len(yb) for _, yb in batches] == sizes
    assert torch.equal(torch.cat([yb for _, yb in batches]), torch.arange(sum(sizes)))


def test_shuffled_batches_cover_every_example_once_and_stay_paired():
    x, y = paired(10)
    batches = list(iterate_batches(x, y, 3, shuffle=True, drop_last=False, generator=torch.Generator().manual_seed(0)))
    seen = torch.cat([yb for _, yb in batches])
    assert sorted(seen.tolist()) == list(range(10))
    assert not torch.equal(seen, torch.arange(10))
    assert all(torch.equal(xb[:, 0, 0, 0].long(), yb) for xb, yb in batches)


def test_shuffle_order_comes_from_the_generator():
    x, y = paired(20)

    def order(seed):
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([yb for _, yb in iterate_batches(x, y, 8, True, True, generator)])

    assert torch.equal(order(4), order(4))
    assert not torch.equal(order(4), order(5))
    assert len(order(4)) == 16


def test_batch_size_below_one_is_a_usage_error():
    x, y = paired(4)
    with pytest.raises(UsageError, match="batch size"):
        list(iterate_batches(x, y, 0, shuffle=False, drop_last=False))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_shuffled_batches_on_cuda_follow_a_cpu_generator():
    x, y = paired(20)
    on_cpu = [yb for _, yb in iterate_batches(x, y, 8, True, False, torch.Generator().manual_seed(1))]
    on_gpu = list(iterate_batches(x.cuda(), y.cuda(), 8, True, False, torch.Generator().manual_seed(1)))
    assert all(xb.is_cuda and yb.is_cuda for xb, yb in on_gpu)
    assert torch.equal(torch.cat([yb for _, yb in on_gpu]).cpu(), torch.cat(on_cpu))
