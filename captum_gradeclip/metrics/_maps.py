"""What every metric checks and does first: maps to image resolution, masks to bool, targets to
indices."""

from __future__ import annotations

from typing import Any, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def check_finite(attributions: Tensor, what: str = "attributions") -> None:
    """Raises ValueError naming the examples (first dimension) whose ``attributions`` hold NaN or Inf."""
    a = attributions.detach()
    bad = ~torch.isfinite(a.reshape(a.shape[0] if a.dim() else 1, -1)).all(1)
    if bad.any():
        idx = bad.nonzero().flatten().tolist()
        raise ValueError(f"{what} hold NaN or Inf in example(s) {idx[:10]}{' ...' if len(idx) > 10 else ''}: "
                         "a metric of such a map means nothing; fix the map (or its input) first")


def to_image_map(attributions: Tensor, size: Tuple[int, int]) -> Tensor:
    """``(N, 1, h, w)``, ``(N, h, w)`` or ``(N, C, H, W)`` -> ``(N, H, W)`` float32 (channels summed,
    bilinear upsampling).

    Raises:
        ValueError: for another rank, or NaN / Inf values.
    """
    check_finite(attributions)
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
    """``(N, H, W)`` (or ``(H, W)`` for ``N = 1``) object masks -> bool ``(N, H, W)``.

    Bool masks as they are; float or integer masks only when every value is exactly 0 or 1 (a
    soft mask such as 0.05 is not silently read as "object here").

    Raises:
        TypeError: not a tensor.
        ValueError: another shape or count, values other than 0/1, or an empty mask (no object
            pixel: nothing to point at).
    """
    if not torch.is_tensor(masks):
        raise TypeError(f"masks must be a (N, H, W) bool tensor, got {type(masks).__name__}")
    if masks.dim() == 2:
        masks = masks[None]
    if masks.dim() != 3 or masks.shape[0] != n:
        raise ValueError(f"masks must be (N, H, W) bool with N = {n}, got {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        if not ((masks == 0) | (masks == 1)).all():
            raise ValueError(f"masks must be bool, or {masks.dtype} holding only 0 and 1; got other values "
                             "(threshold a soft mask yourself, e.g. masks > 0.5)")
        masks = masks == 1
    empty = ~masks.flatten(1).any(1)
    if empty.any():
        raise ValueError(f"mask(s) {empty.nonzero().flatten().tolist()[:10]} are empty (no object pixel): "
                         "leave those examples out")
    return masks


def check_targets(target: Any, n: int, width: int) -> Tensor:
    """``target`` (int, or ``n`` ints as a list or tensor) -> ``(n,)`` long indices into the
    forward function's ``width`` outputs; negative values count from the end.

    Raises:
        TypeError: float or bool targets.
        ValueError: neither one target nor ``n``.
        IndexError: a target outside ``[-width, width)``.
    """
    t = torch.as_tensor(target)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"target must be an int or ints (an output column), got {t.dtype} values")
    t = t.reshape(-1).long().cpu()
    if t.numel() not in (1, n):
        raise ValueError(f"target must be one int or {n} (one per example), got {t.numel()}")
    bad = (t < -width) | (t >= width)
    if bad.any():
        raise IndexError(f"target {t[bad].tolist()[:10]} out of range for a forward function with {width} "
                         f"output column(s); give indices in [0, {width}) (negative ones count from the end)")
    return (t % width).expand(n).clone()
