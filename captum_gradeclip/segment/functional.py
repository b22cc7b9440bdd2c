"""Maps to label maps: upsample, normalise, argmax over the prompts, background."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: How the ``K`` maps of an image are made comparable: ``"joint"`` divides them by the image's
#: largest value over all prompts (a weak map stays weak), ``"per_prompt"`` min-max normalises each.
NORMALISATIONS = ("joint", "per_prompt")


def normalise_maps(maps: Tensor, size: Sequence[int], normalise: str = "joint") -> Tensor:
    """``maps (N, K, h, w)`` -> ``(N, K, H, W)`` in ``[0, 1]``: negative values clamped to 0,
    bilinear upsampling to ``size = (H, W)``, then :data:`NORMALISATIONS`.

    Raises:
        ValueError: not 4-D, NaN / Inf, or an unknown normalisation.
    """
    if maps.dim() != 4:
        raise ValueError(f"maps must be (N, K, h, w), got {tuple(maps.shape)}")
    if not torch.isfinite(maps).all():
        raise ValueError("maps hold NaN or Inf: fix the maps first")
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
    a = F.interpolate(maps.detach().float().clamp_min(0), size=tuple(size), mode="bilinear", align_corners=False)
    if normalise == "joint":
        return a / a.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]
    lo, hi = a.flatten(2).amin(2)[..., None, None], a.flatten(2).amax(2)[..., None, None]
    return (a - lo) / (hi - lo).clamp_min(1e-12)


def segment(maps: Tensor, size: Sequence[int], *, threshold: Optional[float] = 0.5,
            background: Optional[Tensor] = None, normalise: str = "joint") -> Tensor:
    """Label maps from the maps of ``K`` prompts.

    Args:
        maps: ``(N, K, h, w)`` one map per image and prompt (any resolution).
        size: ``(H, W)`` of the label maps (the images').
        threshold: pixels whose best normalised map is below it are background; ``None``: none
            by threshold (every pixel gets a prompt, unless a background prompt wins).
        background: ``(N, B, h, w)`` maps of background prompts ("sky", "wall", ...), normalised
            with the others; a pixel they win is background.
        normalise: ``"joint"`` or ``"per_prompt"`` (:func:`normalise_maps`).

    Returns:
        ``(N, H, W)`` int64: ``0`` background, ``k + 1`` for prompt ``k``.

    Raises:
        ValueError: see :func:`normalise_maps`; background maps for other images.
    """
    k = maps.shape[1] if maps.dim() == 4 else 0
    if background is not None:
        if background.dim() != 4 or background.shape[0] != maps.shape[0]:
            raise ValueError(f"background must be (N, B, h, w) with N = {maps.shape[0]}, got {tuple(background.shape)}")
        background = F.interpolate(background.float(), size=maps.shape[-2:], mode="bilinear", align_corners=False)
        maps = torch.cat([maps.float(), background], 1)
    a = normalise_maps(maps, size, normalise)
    best, arg = a.max(1)
    labels = arg + 1
    labels[arg >= k] = 0  # a background prompt wins
    if threshold is not None:
        labels[best < threshold] = 0
    return labels
