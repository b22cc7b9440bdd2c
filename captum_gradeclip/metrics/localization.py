"""Localisation against ground-truth masks."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._maps import check_masks, to_image_map


def _prepare(attributions: Tensor, masks: Tensor) -> Tuple[Tensor, Tensor]:
    """``(maps (N, H, W) float, masks (N, H, W) bool)``, checked (see :func:`._maps.check_masks`)."""
    if not torch.is_tensor(attributions):
        raise TypeError(f"attributions must be a (N, 1, h, w) tensor, got {type(attributions).__name__}")
    if attributions.dim() not in (3, 4):
        raise ValueError(f"attributions must be (N, 1, h, w), (N, h, w) or (N, C, H, W), got {tuple(attributions.shape)}")
    masks = check_masks(masks, attributions.shape[0])
    return to_image_map(attributions, masks.shape[-2:]), masks


#: The published pointing game's tolerance: 15 pixels at 224 px (Zhang et al.).
STANDARD_TOLERANCE_AT_224 = 15


def standard_tolerance(height: int, width: int) -> int:
    """The standard pointing-game tolerance for an ``height x width`` image: 15 pixels at 224 px,
    scaled to the image's shorter side, ``round(15 * min(height, width) / 224)`` (the side CLIP's
    preprocessing resizes to 224; e.g. 4 px at 64 px, 15 at 224, 0 below 8 px)."""
    return round(STANDARD_TOLERANCE_AT_224 * min(height, width) / 224)


def _dilate(masks: Tensor, tolerance: int) -> Tensor:
    """``(N, H, W)`` bool masks grown by every pixel within Euclidean distance ``tolerance`` (a disc)."""
    r = torch.arange(-tolerance, tolerance + 1, dtype=torch.float32)
    disc = ((r[:, None] ** 2 + r[None] ** 2) <= tolerance ** 2).float()[None, None]
    return F.conv2d(masks[:, None].float(), disc.to(masks.device), padding=tolerance)[:, 0] > 0


def pointing_game(attributions: Tensor, masks: Tensor, *, tolerance: Optional[int] = None) -> Tensor:
    """The pointing game (Zhang et al., "Top-down neural attention by excitation backprop",
    ECCV 2016 / IJCV 2018): is the map's maximum on the object, within ``tolerance`` pixels?

    The map is upsampled (bilinear) to the mask's ``H x W``; a hit is a maximum at Euclidean
    distance at most ``tolerance`` pixels from a mask pixel (the mask dilated by a disc, as
    TorchRay's reference implementation, which takes the distance strictly below).

    Args:
        attributions: ``(N, 1, h, w)`` (or see :mod:`captum_gradeclip.metrics`), finite.
        masks: ``(N, H, W)`` bool (or 0/1 values), none empty.
        tolerance: pixels. Default ``None``: the standard 15 px at 224 px scaled to the image,
            :func:`standard_tolerance` (``round(15 * min(H, W) / 224)``: 4 px on 64 px images);
            ``0``: the strict variant (the maximum must be on a mask pixel).

    Returns:
        ``(N,)`` bool. Ties for the maximum: a hit only if every tied pixel is a hit (so a
        constant map hits only a mask that covers the whole image, dilated).

    Raises:
        ValueError: NaN / Inf in the map, empty or non-0/1 masks, a negative tolerance, or
            shapes that do not match.
        TypeError: a tolerance that is not an int.
    """
    a, masks = _prepare(attributions, masks)
    if tolerance is None:
        tolerance = standard_tolerance(*masks.shape[-2:])
    if isinstance(tolerance, bool) or not isinstance(tolerance, int):
        raise TypeError(f"tolerance must be an int (pixels) or None (the standard), got {tolerance!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    if tolerance > 0:
        masks = _dilate(masks, tolerance)
    top = a == a.flatten(1).amax(1)[:, None, None]
    return (top & ~masks).flatten(1).any(1).logical_not() & top.flatten(1).any(1)


def energy_pointing_game(attributions: Tensor, masks: Tensor) -> Tensor:
    """Share of the map's positive mass inside the mask (Wang et al., Score-CAM).

    Args:
        attributions: ``(N, 1, h, w)``, finite. masks: ``(N, H, W)`` bool (or 0/1), none empty.

    Returns:
        ``(N,)`` float in ``[0, 1]`` (0 for an all-non-positive map).

    Raises:
        ValueError: as :func:`pointing_game`.
    """
    a, masks = _prepare(attributions, masks)
    a = a.clamp_min(0)
    total = a.flatten(1).sum(1)
    inside = (a * masks).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total))


def mask_iou(attributions: Tensor, masks: Tensor, *, threshold: Optional[float] = None,
             thresholds: int = 19) -> Tensor:
    """IoU of the thresholded map (min-max normalised to ``[0, 1]``) with the mask.

    Args:
        threshold: a fixed threshold in ``[0, 1]``; ``None`` = the best of ``thresholds`` evenly
            spaced ones in ``(0, 1)``, per example.

    Returns:
        ``(N,)`` float.

    Raises:
        ValueError: as :func:`pointing_game`, or a threshold outside ``[0, 1]``.
    """
    if threshold is not None and not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1] (the map is min-max normalised), got {threshold}")
    if threshold is None and thresholds < 1:
        raise ValueError(f"thresholds must be >= 1, got {thresholds}")
    a, masks = _prepare(attributions, masks)
    lo, hi = a.flatten(1).amin(1)[:, None, None], a.flatten(1).amax(1)[:, None, None]
    a = (a - lo) / (hi - lo).clamp_min(1e-12)
    ts = [threshold] if threshold is not None else torch.linspace(0, 1, thresholds + 2)[1:-1].tolist()
    best = torch.zeros(a.shape[0], device=a.device)
    for t in ts:
        pred = a >= t
        inter = (pred & masks).flatten(1).sum(1).float()
        union = (pred | masks).flatten(1).sum(1).float()
        best = torch.maximum(best, inter / union.clamp_min(1))
    return best
