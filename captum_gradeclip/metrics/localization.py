"""Localisation against ground-truth masks."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._maps import check_masks, to_image_map


def pointing_game(attributions: Tensor, masks: Tensor, *, tolerance: int = 0) -> Tensor:
    """Does the map's maximum fall inside the object mask (or within ``tolerance`` pixels of it)?

    Args:
        attributions: ``(N, 1, h, w)`` (or see :mod:`captum_gradeclip.metrics`).
        masks: ``(N, H, W)`` bool.
        tolerance: pixels; the mask is dilated by a ``(2 t + 1)`` square.

    Returns:
        ``(N,)`` bool. Ties for the maximum: a hit only if every tied pixel is inside (so a
        constant map hits only a mask that covers the whole image).
    """
    n = attributions.shape[0]
    masks = check_masks(masks, n)
    a = to_image_map(attributions, masks.shape[-2:])
    if tolerance > 0:
        k = 2 * tolerance + 1
        masks = F.max_pool2d(masks[:, None].float(), k, stride=1, padding=tolerance)[:, 0] > 0
    top = a == a.flatten(1).amax(1)[:, None, None]
    return (top & ~masks).flatten(1).any(1).logical_not() & top.flatten(1).any(1)


def energy_pointing_game(attributions: Tensor, masks: Tensor) -> Tensor:
    """Share of the map's positive mass inside the mask (Wang et al., Score-CAM).

    Returns:
        ``(N,)`` float in ``[0, 1]`` (0 for an all-non-positive map).
    """
    n = attributions.shape[0]
    masks = check_masks(masks, n)
    a = to_image_map(attributions, masks.shape[-2:]).clamp_min(0)
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
    """
    n = attributions.shape[0]
    masks = check_masks(masks, n)
    a = to_image_map(attributions, masks.shape[-2:])
    lo, hi = a.flatten(1).amin(1)[:, None, None], a.flatten(1).amax(1)[:, None, None]
    a = (a - lo) / (hi - lo).clamp_min(1e-12)
    ts = [threshold] if threshold is not None else torch.linspace(0, 1, thresholds + 2)[1:-1].tolist()
    best = torch.zeros(n)
    for t in ts:
        pred = a >= t
        inter = (pred & masks).flatten(1).sum(1).float()
        union = (pred | masks).flatten(1).sum(1).float()
        best = torch.maximum(best, inter / union.clamp_min(1))
    return best
