"""RISE (Petsiuk et al., 2018): a perturbation baseline on Captum's ``PerturbationAttribution``."""

from __future__ import annotations

import math
from typing import Any, List, Union

import torch
import torch.nn.functional as F
from captum._utils.common import _format_additional_forward_args
from captum.attr import PerturbationAttribution
from captum.log import log_usage
from torch import Tensor

from .._core.base import check_target


class RISE(PerturbationAttribution):
    """RISE (Petsiuk et al., 2018): the score-weighted average of random smooth binary masks.

    Args:
        forward_func: ``(N, C, H, W) -> (N, T)`` scores.
        n_masks: how many masks. grid: the masks' coarse grid side. p: keep probability.
        batch_size: masked images per forward. seed: the masks' random seed.

    Raises:
        ValueError: ``n_masks``, ``grid`` or ``batch_size`` below 1, or ``p`` outside ``(0, 1]``.
    """

    def __init__(self, forward_func, n_masks: int = 500, grid: int = 8, p: float = 0.5,
                 batch_size: int = 100, seed: int = 0) -> None:
        for name, v in (("n_masks", n_masks), ("grid", grid), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"RISE: {name} must be an int >= 1, got {v!r}")
        if not 0 < p <= 1:
            raise ValueError(f"RISE: p (the keep probability) must be in (0, 1], got {p!r}")
        super().__init__(forward_func)
        self.n_masks, self.grid, self.p, self.batch_size, self.seed = n_masks, grid, p, batch_size, seed

    def _masks(self, h: int, w: int, device) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        cell_h, cell_w = math.ceil(h / self.grid), math.ceil(w / self.grid)
        coarse = (torch.rand(self.n_masks, 1, self.grid, self.grid, generator=g) < self.p).float()
        up = F.interpolate(coarse, size=((self.grid + 1) * cell_h, (self.grid + 1) * cell_w), mode="bilinear",
                           align_corners=False)
        dx = torch.randint(0, cell_w, (self.n_masks,), generator=g)
        dy = torch.randint(0, cell_h, (self.n_masks,), generator=g)
        out = torch.stack([up[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(self.n_masks)])
        return out.to(device)

    @log_usage()
    def attribute(self, inputs: Tensor, target: Union[int, List[int], Tensor, None] = None,
                  additional_forward_args: Any = None) -> Tensor:
        """``inputs (N, C, H, W)`` -> ``(N, 1, H, W)`` saliency of ``target``.

        Raises:
            ValueError: not finite ``(N, C, H, W)`` images; targets as the Grad-ECLIP classes
                (``IndexError`` / ``TypeError`` / ``ValueError``, checked on the first forward).
        """
        if inputs.dim() != 4:
            raise ValueError(f"RISE expects images (N, C, H, W), got shape {tuple(inputs.shape)}")
        if not torch.isfinite(inputs).all():
            raise ValueError("RISE: inputs hold NaN or Inf values; the map of such an input means nothing")
        extra = _format_additional_forward_args(additional_forward_args) or ()
        n, _, h, w = inputs.shape
        masks = self._masks(h, w, inputs.device)
        tgt = None
        out = torch.zeros(n, 1, h, w, device=inputs.device)
        with torch.no_grad():
            for i in range(n):
                for s in range(0, self.n_masks, self.batch_size):
                    m = masks[s:s + self.batch_size]
                    scores = self.forward_func(inputs[i:i + 1] * m, *extra)
                    scores = scores if scores.dim() == 2 else scores[:, None]
                    if tgt is None:
                        t = check_target(target, n, scores.shape[1])
                        tgt = torch.as_tensor(0 if t is None else t, device=inputs.device).reshape(-1).expand(n)
                    out[i] += torch.einsum("m,mchw->chw", scores[:, tgt[i]].float(), m)
        return out / (self.n_masks * self.p)
