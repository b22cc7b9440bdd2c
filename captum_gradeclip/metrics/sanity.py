"""Sanity checks for saliency maps (Adebayo et al., "Sanity checks for saliency maps", NeurIPS
2018): cascading model-parameter randomisation, and the similarity of the original and the
randomised maps (Spearman rank correlation, SSIM).

A map that stays the same when the weights it explains are replaced by random ones explains the
image (edges, colours), not the model: it fails. The weights are randomised in place for the
call only and restored afterwards (also on error): the user's model is never left modified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._maps import to_image_map

#: The mean Spearman correlation (all layers randomised) below which a method passes.
PASS_BELOW = 0.5


def _ranks(x: Tensor) -> Tensor:
    """``(P,)`` -> average ranks ``(P,)`` (ties share the mean of their ranks)."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    return ((ends - (counts.double() - 1) / 2))[inverse]


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """``a, b (N, ...)`` -> ``(N,)`` float64 Spearman rank correlation per example (average ranks for
    ties, as ``scipy.stats.spearmanr``). A constant map has no ranks: two equal maps count as 1,
    a constant against a different map as 0 (NaN in scipy)."""
    out = []
    for x, y in zip(a.flatten(1).double(), b.flatten(1).double()):
        rx, ry = _ranks(x), _ranks(y)
        rx, ry = rx - rx.mean(), ry - ry.mean()
        den = (rx.norm() * ry.norm()).item()
        out.append(float((rx @ ry) / den) if den > 0 else float(torch.equal(x, y)))
    return torch.tensor(out, dtype=torch.float64)


def ssim(a: Tensor, b: Tensor, *, window: int = 11, sigma: float = 1.5) -> Tensor:
    """``a, b (N, H, W)`` -> ``(N,)`` mean SSIM (Wang et al. 2004; Gaussian window, ``C1 = 0.01^2``,
    ``C2 = 0.03^2``) of the maps min-max normalised to ``[0, 1]``."""

    def norm(x: Tensor) -> Tensor:
        x = x.flatten(1).double()
        lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
        return ((x - lo) / (hi - lo).clamp_min(1e-12)).reshape(len(x), 1, *a.shape[1:])

    x, y = norm(a), norm(b)
    r = torch.arange(window, dtype=torch.float64) - window // 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    k = (g[:, None] * g[None]) / g.sum() ** 2
    k = k[None, None]

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, k, padding=window // 2)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).float()


@dataclass(frozen=True)
class RandomizationResult:
    """Attributes:
        stages: ``S`` names: ``"top 1"`` (the last layer randomised), ``"top 2"``, ... ``"all S"``.
        spearman, ssim: ``(S, N)`` similarity of each image's randomised map to its original one.
    """

    stages: List[str]
    spearman: Tensor
    ssim: Tensor

    @property
    def passed(self) -> bool:
        """Whether the maps changed: mean Spearman with every layer randomised below
        :data:`PASS_BELOW`."""
        return bool(self.spearman[-1].mean() < PASS_BELOW)


def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Every parameter of ``module`` redrawn from a normal with the parameter's own mean and
    standard deviation (its scale kept, its learned structure gone)."""
    with torch.no_grad():
        for p in module.parameters():
            std = p.std() if p.numel() > 1 else p.abs()
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device, p.dtype)
            p.copy_(p.mean() + noise * std)


def cascading_randomization(explain: Callable[[Tensor, Tensor], Tensor], layers: Sequence[nn.Module],
                            inputs: Tensor, target: Tensor, *, seed: int = 0) -> RandomizationResult:
    """Adebayo et al.'s cascading model-parameter randomisation: the layers randomised from the
    top down, one more at each stage, the maps recomputed and compared with the originals.

    Args:
        explain: ``(inputs (N, 3, H, W), target (N,)) -> (N, 1, h, w)`` maps of the model that
            ``layers`` belong to (any method; maps upsampled to ``H x W`` before comparing).
        layers: the model's blocks, bottom to top (e.g. ``LoadedCLIP.image_layers``).
        inputs, target: the images and the explained outputs.
        seed: of the random weights.

    Returns:
        :class:`RandomizationResult` with ``S = len(layers)`` stages.

    Raises:
        ValueError: no layers.
    """
    if not layers:
        raise ValueError("give the model's layers (bottom to top) to randomise")
    size = tuple(inputs.shape[-2:])
    original = to_image_map(explain(inputs, target).detach(), size)
    params = [p for layer in layers for p in layer.parameters()]
    saved = [p.detach().clone() for p in params]
    g = torch.Generator().manual_seed(seed)
    rho, sim, stages = [], [], []
    try:
        for j, layer in enumerate(reversed(layers), 1):
            _randomise(layer, g)
            maps = to_image_map(explain(inputs, target).detach(), size)
            rho.append(spearman(original, maps))
            sim.append(ssim(original, maps))
            stages.append(f"top {j}" if j < len(layers) else f"all {j}")
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    return RandomizationResult(stages, torch.stack(rho), torch.stack(sim))
