"""Region masks on the patch grid: soft masks from explanation maps, and the ablations' masks.

A teacher map (Grad-ECLIP, or GAME for the ablation) says how much each patch supports a phrase,
on an arbitrary scale. :func:`soft_mask` makes it a weight in ``[0, 1]``: min-max normalise the
map over the grid, then a sigmoid around a threshold, ``sigmoid((m - threshold) / temperature)``
(defaults 0.5 and 0.1: patches above half the map's range count fully, those well below hardly;
chosen once, not tuned on the evaluation scenes). The oracle ablation uses the ground-truth
masks' area per patch (:func:`grid_masks`), the no-localisation ablation uniform weights.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

#: Default threshold and temperature of :func:`soft_mask`.
THRESHOLD = 0.5
TEMPERATURE = 0.1


def soft_mask(maps: Tensor, *, threshold: float = THRESHOLD, temperature: float = TEMPERATURE) -> Tensor:
    """``maps (R, h, w) -> (R, h, w)`` weights in ``(0, 1)``: per map, min-max normalised over the
    grid, then ``sigmoid((m - threshold) / temperature)``. A constant map gives uniform weights.

    Raises:
        ValueError: ``maps`` not ``(R, h, w)``, non-finite values, or ``temperature <= 0``.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must be (R, h, w), got shape {tuple(maps.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps hold NaN or infinite values")
    flat = maps.detach().float().flatten(1)
    lo, hi = flat.min(-1, keepdim=True).values, flat.max(-1, keepdim=True).values
    span = hi - lo
    norm = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-12), torch.ones_like(flat))
    return torch.sigmoid((norm - threshold) / temperature).view_as(maps)


def grid_masks(masks: Tensor, grid: Tuple[int, int]) -> Tensor:
    """Pixel masks ``(R, H, W)`` (bool or float) -> ``(R, h, w)``: the share of each patch covered
    (area average pooling; ``H``, ``W`` multiples of ``h``, ``w``).

    Raises:
        ValueError: ``masks`` not ``(R, H, W)`` or a size that is not a multiple of the grid.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be (R, H, W), got shape {tuple(masks.shape)}")
    h, w = grid
    if masks.shape[1] % h or masks.shape[2] % w:
        raise ValueError(f"mask size {tuple(masks.shape[1:])} is not a multiple of the grid {grid}")
    return F.adaptive_avg_pool2d(masks[:, None].float(), (h, w))[:, 0]


def uniform_masks(n: int, grid: Tuple[int, int]) -> Tensor:
    """``(n, h, w)`` ones: every region is the whole image (the no-localisation ablation)."""
    return torch.ones(n, *grid)
