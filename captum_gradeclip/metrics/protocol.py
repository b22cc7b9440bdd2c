"""The Grad-ECLIP authors' ImageNet deletion / insertion protocol, as a function of one image.

What ``imagenet_eval_deletion.py`` / ``imagenet_eval_insertion.py`` (github Cyang-Zhao/Grad-Eclip)
do, written down from reading them (no code copied):

- the map is min-max normalised and upsampled (bilinear) to the image (``H x W``, the image the
  user gave, after shrinking a shorter side above 640 px to 640: the caller's job);
- pixels are visited in decreasing order of the map; each step changes ``int(H * W * 0.5 / 100)``
  of them (0.5 % of the image; at least 1), for 100 steps (up to 50 % of the pixels);
- **deletion**: the visited pixels of the image get uniform random RGB values (``rand * 255``,
  truncated to ``uint8``, drawn per step as ``(n, 3)``), in pixel space, before the model's
  preprocessing; **insertion**: they are copied onto a black (zero) image;
- every 10 steps the perturbed ``uint8`` image goes through the classifier (which does the
  model's own preprocessing); top-1, top-5 and top-10 hits of the target are recorded. The
  unperturbed image is the first point of the deletion curve and the last point of the
  insertion curve, so both have 11 points (deletion: 0 %, 5 %, ..., 50 % deleted; insertion:
  5 %, ..., 50 % inserted, then the whole image).

The authors print the curves and define no AUC in their scripts; :func:`protocol_auc` is the
trapezoid of a curve over its points equally spaced on ``[0, 1]`` (the curve as they print it).
Ties in the map: the authors' ``numpy.argsort`` (quicksort) leaves their order unspecified; here
they are visited in raster order (a stable sort).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._maps import check_finite

#: The ranks whose hits are recorded.
TOPK = (1, 5, 10)

#: ``(S, 3, H, W) uint8`` images in pixel space -> ``(S, C)`` class scores (the classifier does the
#: model's own preprocessing).
PixelClassifier = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ProtocolCurves:
    """One image's curves for one map.

    Attributes:
        fractions: ``(P,)`` share of the pixels deleted / inserted at each point (1.0: the
            whole image).
        hits: ``(P, 3)`` float 0/1: the target among the top-1, top-5, top-10 classes.
        auc: ``(3,)``: :func:`protocol_auc` of each column of ``hits``.
    """

    fractions: Tensor
    hits: Tensor
    auc: Tensor


def authors_saliency(attribution: Tensor, size: Sequence[int]) -> Tensor:
    """``attribution (h, w)`` -> ``(H, W)``: min-max normalised, then bilinear upsampling to
    ``size = (H, W)`` (a constant map becomes zeros, where the authors' division gives NaN).

    Raises:
        ValueError: not a 2-D map, or NaN / Inf in it.
    """
    if attribution.dim() != 2:
        raise ValueError(f"attribution must be one (h, w) map, got shape {tuple(attribution.shape)}")
    check_finite(attribution, "attribution")
    a = attribution.detach().float()
    a = a - a.min()
    a = a / a.max() if a.max() > 0 else a
    if tuple(a.shape) == tuple(size):
        return a
    return F.interpolate(a[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]


def pixel_order(saliency: Tensor) -> Tensor:
    """``(H, W)`` -> ``(H * W,)`` flat pixel indices, most salient first (ties in raster order)."""
    return torch.argsort(saliency.flatten(), descending=True, stable=True)


def protocol_images(image: Tensor, saliency: Tensor, *, insert: bool, steps: int = 100, every: int = 10,
                    share: float = 0.5, generator: Optional[torch.Generator] = None) -> Tensor:
    """The perturbed images the protocol evaluates: ``image (3, H, W) uint8``, ``saliency (H, W)``
    -> ``(steps // every, 3, H, W) uint8`` after ``every``, ``2 * every``, ... steps.

    Args:
        insert: copy pixels onto a black image (insertion) instead of replacing them by uniform
            random RGB (deletion; drawn from ``generator``, one ``(n, 3)`` draw per step).
        steps, every, share: ``steps`` steps of ``int(H * W * share / steps)`` pixels (at least 1).

    Raises:
        ValueError: not a ``(3, H, W)`` uint8 image, a saliency of another size, or bad counts.
    """
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W) uint8 pixels, got {tuple(image.shape)} {image.dtype}")
    if tuple(saliency.shape) != tuple(image.shape[1:]):
        raise ValueError(f"saliency must be {tuple(image.shape[1:])} (the image), got {tuple(saliency.shape)}")
    if steps < 1 or every < 1 or not 0 < share <= 1:
        raise ValueError(f"need steps >= 1, every >= 1, share in (0, 1], got {steps}, {every}, {share}")
    h, w = saliency.shape
    area = h * w
    per = max(1, int(area * share / steps))
    order = pixel_order(saliency)
    src = image.reshape(3, area)
    cur = src.clone() if not insert else torch.zeros_like(src)
    out = []
    for step in range(1, steps + 1):
        idx = order[(step - 1) * per: step * per]
        if insert:
            cur[:, idx] = src[:, idx]
        else:
            cur[:, idx] = (torch.rand(len(idx), 3, generator=generator) * 255.0).to(torch.uint8).t()
        if step % every == 0:
            out.append(cur.reshape(3, h, w).clone())
    return torch.stack(out)


def topk_hits(scores: Tensor, target: int, ks: Sequence[int] = TOPK) -> Tensor:
    """``scores (S, C)`` -> ``(S, len(ks))`` float 0/1: is ``target`` among the top ``k`` classes
    (``k`` above ``C`` counts as ``C``: always a hit)."""
    order = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    return torch.stack([(order[:, :k] == target).any(1) for k in ks], 1).float()


def protocol_auc(values: Tensor) -> Tensor:
    """``(P, ...)`` -> ``(...)``: the trapezoid of a curve over ``P >= 2`` points equally spaced
    on ``[0, 1]``."""
    return torch.trapezoid(values.float(), dx=1.0 / (values.shape[0] - 1), dim=0)


def _protocol(image: Tensor, attribution: Tensor, classifier: PixelClassifier, target: int, *, insert: bool,
              steps: int, every: int, share: float, generator: Optional[torch.Generator]) -> ProtocolCurves:
    if not isinstance(target, int) or isinstance(target, bool):
        raise TypeError(f"target must be a class index (int), got {target!r}")
    sal = authors_saliency(attribution, image.shape[1:])
    perturbed = protocol_images(image, sal, insert=insert, steps=steps, every=every, share=share,
                                generator=generator)
    batch = torch.cat([perturbed, image[None]]) if insert else torch.cat([image[None], perturbed])
    with torch.no_grad():
        scores = classifier(batch)
    if scores.dim() != 2 or not 0 <= target < scores.shape[1]:
        raise IndexError(f"target {target} is not a class of the classifier's {tuple(scores.shape)} scores")
    points = torch.arange(1, len(perturbed) + 1, dtype=torch.float32) * every * share / steps
    fractions = torch.cat([points, torch.ones(1)]) if insert else torch.cat([torch.zeros(1), points])
    hits = topk_hits(scores, target)
    return ProtocolCurves(fractions=fractions, hits=hits, auc=protocol_auc(hits))


def deletion_protocol(image: Tensor, attribution: Tensor, classifier: PixelClassifier, target: int, *,
                      steps: int = 100, every: int = 10, share: float = 0.5,
                      generator: Optional[torch.Generator] = None) -> ProtocolCurves:
    """The authors' deletion: most relevant pixels first replaced by uniform random RGB.

    Args:
        image: ``(3, H, W)`` uint8 pixels (the image as the user has it, before preprocessing).
        attribution: ``(h, w)`` map of any resolution (normalised and upsampled here).
        classifier: ``(S, 3, H, W) uint8 -> (S, C)`` scores, e.g. a zero-shot CLIP classifier.
        target: the class whose top-1/5/10 hits are counted (the ground truth or the prediction).
        steps, every, share: 100 steps, evaluated every 10, up to 50 % of the pixels.
        generator: for the random RGB values (seed it to repeat a run).

    Returns:
        :class:`ProtocolCurves` with ``P = steps // every + 1`` points (the first: the image).

    Raises:
        ValueError: see :func:`protocol_images` and :func:`authors_saliency`.
        TypeError, IndexError: a target that is not an int or not a class of the classifier.
    """
    return _protocol(image, attribution, classifier, target, insert=False, steps=steps, every=every,
                     share=share, generator=generator)


def insertion_protocol(image: Tensor, attribution: Tensor, classifier: PixelClassifier, target: int, *,
                       steps: int = 100, every: int = 10, share: float = 0.5) -> ProtocolCurves:
    """The authors' insertion: most relevant pixels first copied onto a black image; the last of
    the ``P = steps // every + 1`` points is the whole image. Arguments as
    :func:`deletion_protocol` (no random numbers)."""
    return _protocol(image, attribution, classifier, target, insert=True, steps=steps, every=every,
                     share=share, generator=None)
