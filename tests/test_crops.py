"""Figure 4's views: 1 center crop, 10 = 5 crops + mirrors, GoogLeNet's 144 (§4.2.3)."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from repro.data.crops import multi_crop, scales


def images(n: int, h: int, w: int, c: int = 3) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(h * w))


def distinct(views: torch.Tensor) -> int:
    return len({tuple(v.flatten().tolist()) for v in views})


def test_scales_are_googlenets_at_224_and_ratios_for_small_crops():
    assert scales(224) == [256, 288, 320, 352]
    assert scales(28) == [32, 36, 40, 44]


@pytest.mark.parametrize("views", [1, 10, 144])
def test_views_have_the_right_count_and_size(views):
    out = multi_crop(images(2, 30, 40), views, crop=28)
    assert out.shape == (2, views, 3, 28, 28)
    assert multi_crop(images(2, 28, 28, c=1), views).shape == (2, views, 1, 28, 28)  # crop = stored size


@pytest.mark.parametrize("hw", [(30, 40), (40, 30)])  # landscape: left/center/right; portrait: top/...
def test_the_144_views_are_pairwise_distinct(hw):
    v = multi_crop(images(1, *hw), 144, crop=24)[0]
    assert distinct(v) == 144
    diffs = (v.flatten(1)[:, None] - v.flatten(1)[None]).abs().amax(-1)
    assert diffs[~torch.eye(144, dtype=torch.bool)].min() > 1e-3  # not merely different by rounding


def test_square_images_repeat_each_of_48_views_three_times():
    # The three squares of a square image coincide (documented in repro.data.crops); the mean is unchanged.
    v = multi_crop(images(1, 28, 28, c=1), 144)[0]
    assert distinct(v) == 48
    torch.testing.assert_close(v.view(4, 3, 12, -1)[:, 0], v.view(4, 3, 12, -1)[:, 2])


def test_ten_views_are_five_crops_and_their_mirrors():
    x = images(2, 28, 28)
    v = multi_crop(x, 10)  # crop 28 from the image resized to 32 (256/224 scale)
    big = F.resize(x, [32, 32], antialias=True)
    corners = [big[..., :28, :28], big[..., :28, 4:], big[..., 4:, :28], big[..., 4:, 4:], big[..., 2:30, 2:30]]
    for i, c in enumerate(corners):
        torch.testing.assert_close(v[:, i], c)
        torch.testing.assert_close(v[:, 5 + i], c.flip(-1))
    assert distinct(v[0]) == 10
    # the 144 views start with the same five crops at the smallest scale
    torch.testing.assert_close(multi_crop(x, 144)[:, :5], v[:, :5])


def test_one_view_is_the_center_crop_of_the_stored_image():
    x = images(2, 28, 28)
    assert torch.equal(multi_crop(x, 1)[:, 0], x)  # what the training runner evaluates
    assert torch.equal(multi_crop(x, 1, crop=24)[:, 0], x[..., 2:26, 2:26])
    assert torch.equal(multi_crop(images(1, 30, 40), 1)[:, 0], images(1, 30, 40)[..., 5:35])


def test_bad_view_counts_are_refused():
    with pytest.raises(ValueError, match="one of"):
        multi_crop(images(1, 28, 28), 12)
    with pytest.raises(ValueError, match="N, C, H, W"):
        multi_crop(torch.rand(3, 28, 28), 10)
