from __future__ import annotations

from typing import Tuple

import torch.nn.functional as F
from torch import Tensor


def to_image_map(attributions: Tensor, size: Tuple[int, int]) -> Tensor:
    """``(N, 1, h, w)``, ``(N, h, w)`` or ``(N, C, H, W)`` -> ``(N, H, W)`` float32 (channels summed,
    bilinear upsampling).

    Raises:
        ValueError: for another rank.
    """
    a = attributions.detach().float()
    if a.dim() == 3:
        a = a[:, None]
    if a.dim() != 4:
        raise ValueError(f"attributions must be (N, 1, h, w), (N, h, w) or (N, C, H, W), got {tuple(a.shape)}")
    a = a.sum(1, keepdim=True)
    if tuple(a.shape[-2:]) != tuple(size):
        a = F.interpolate(a, size=tuple(size), mode="bilinear", align_corners=False)
    return a[:, 0]


def check_masks(masks: Tensor, n: int) -> Tensor:
    if masks.dim() == 2:
        masks = masks[None]
    if masks.dim() != 3 or masks.shape[0] != n:
        raise ValueError(f"masks must be (N, H, W) bool with N = {n}, got {tuple(masks.shape)}")
    return masks.bool()
