"""Test-time views of §4.2.3 / Figure 4: 1 crop, 10 crops, and GoogLeNet's 144 crops.

Input is a batch (N, C, H, W) at its stored resolution; output is (N, V, C, crop, crop), the views
one network sees for each image. `crop` is the network's input size; by default the stored images'
shorter side, which is what the training runner feeds (Figure 4's "resolution 224").

* 1 view: the center `crop` square of the stored image, what the runner evaluates during training
  (for MNIST / Fashion-MNIST at crop 28, the whole image as it is).
* 10 views (AlexNet-style): shorter side resized to crop*256/224, the 4 corners and the center of
  size `crop`, and the mirror of each.
* 144 views (GoogLeNet, Szegedy et al. 2014; §4.2.3 says only "similar to" GoogLeNet, so that
  BN-Inception used exactly this is our assumption): the shorter side resized to 4 scales, crop*(256, 288, 320, 352)/224; at each,
  the left, center and right squares (top/center/bottom for portrait images); in each square the
  4 corners and the center of size `crop` plus the whole square resized to `crop`; each mirrored.
  4 x 3 x 6 x 2 = 144, ordered scale, square, mirror, crop.

Small images. The scales are ratios to the crop, so ImageNet stored at 256 with crop 224 gets the
paper's 256..352, and 28 px digits with crop 28 get 32, 36, 40, 44: the stored image plays the 224
crop the network was trained on and the other views are upsampled from it (bilinear, antialiased)
rather than cut smaller than the network's input (the MLP of Figure 1 takes exactly 28x28).
Resampling makes binarized MNIST grey at the edges. On square images the three squares coincide, so
the 144 views are 48 distinct ones, each three times; the average over them is the same.
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as F

VIEWS = (1, 10, 144)
GOOGLENET_CROP = 224
GOOGLENET_SCALES = (256, 288, 320, 352)  # shorter side at crop 224 (GoogLeNet §7)


def scales(crop: int) -> list[int]:
    """GoogLeNet's four shorter-side sizes for a network input of `crop` pixels."""
    return [round(crop * s / GOOGLENET_CROP) for s in GOOGLENET_SCALES]


def _resize_shorter(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.resize(x, [size], antialias=True)  # a one-element size matches the shorter side


def center_view(x: torch.Tensor, crop: int) -> torch.Tensor:
    """(N, 1, C, crop, crop): the single center crop, at the stored scale."""
    return F.center_crop(x, [crop, crop]).unsqueeze(1)


def ten_views(x: torch.Tensor, crop: int) -> torch.Tensor:
    """(N, 10, C, crop, crop): 4 corners + center at scale crop*256/224, then their mirrors."""
    five = F.five_crop(_resize_shorter(x, scales(crop)[0]), [crop, crop])
    return torch.stack([*five, *(F.horizontal_flip(v) for v in five)], dim=1)


def _squares(x: torch.Tensor) -> list[torch.Tensor]:
    """Left, center and right squares (top, center, bottom for portrait) of side min(H, W)."""
    h, w = x.shape[-2:]
    s = min(h, w)
    offsets = [0, round((max(h, w) - s) / 2), max(h, w) - s]
    if w >= h:
        return [F.crop(x, 0, o, s, s) for o in offsets]
    return [F.crop(x, o, 0, s, s) for o in offsets]


def googlenet_views(x: torch.Tensor, crop: int, unique: bool = False) -> torch.Tensor:
    """(N, 144, C, crop, crop): 4 scales x 3 squares x 2 mirrors x (4 corners, center, whole square).

    unique=True skips the two repeats of the one square of a square image (48 views whose average
    equals the 144's), a third of the work."""
    views = []
    for size in scales(crop):
        squares = _squares(_resize_shorter(x, size))
        for square in squares[1:2] if unique and x.shape[-1] == x.shape[-2] else squares:
            six = [*F.five_crop(square, [crop, crop]), F.resize(square, [crop, crop], antialias=True)]
            views += six + [F.horizontal_flip(v) for v in six]
    return torch.stack(views, dim=1)


def multi_crop(x: torch.Tensor, views: int, crop: int | None = None, unique: bool = False) -> torch.Tensor:
    """(N, V, C, crop, crop) views of images (N, C, H, W); V is 1, 10 or 144 (48 for square
    images with unique=True, same average)."""
    if x.dim() != 4:
        raise ValueError(f"multi_crop wants images (N, C, H, W), got shape {tuple(x.shape)}")
    crop = crop or min(x.shape[-2:])
    if views == 1:
        return center_view(x, crop)
    if views == 10:
        return ten_views(x, crop)
    if views == 144:
        return googlenet_views(x, crop, unique)
    raise ValueError(f"crops must be one of {VIEWS}, got {views}")
