"""The fine-tuning objective: a region–phrase loss plus CLIP's image–caption loss.

Variants (measured by ``benchmarks/finetune_ablation.py``):

- ``region_weights``: each region–phrase term weighted by the confidence of its map (SFF-CLIP's
  ``w = max`` of the map): a weighted mean, ``sum_r w_r l_r / sum_r w_r``;
- ``focal_gamma``: the focal form ``(1 - p)^gamma * CE`` of the region term (``0``: cross-entropy);
- ``region_form="sigmoid"``: ShapesCLIP's own sigmoid loss as the region term, each region against
  every distinct phrase of the batch (its own positive, the others negative; ShapesCLIP's scale 10
  and bias -5);
- ``distill`` with ``anchor_image_embeds`` / ``anchor_caption_embeds``: the image–caption targets
  mixed with a momentum copy's softmax (ALBEF-style momentum distillation), a self-distillation
  term that anchors the global embedding.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Region-term forms: cross-entropy over the batch's phrases, or ShapesCLIP's sigmoid loss.
REGION_FORMS = ("softmax", "sigmoid")
#: ShapesCLIP's sigmoid loss: ``sigmoid(SIGMOID_SCALE * cos + SIGMOID_BIAS)`` (its initial values).
SIGMOID_SCALE, SIGMOID_BIAS = 10.0, -5.0


class RegionPhraseLossOutput(NamedTuple):
    """``loss = region_weight * region + global_weight * global_`` (scalars)."""

    loss: Tensor
    region: Tensor
    global_: Tensor


def _first_of_each(ids: Tensor) -> tuple:
    """``ids (R,)`` -> ``(first (Q,), target (R,))``: the first position of each distinct id, and
    each position's index among the distinct ids."""
    uniq, target = torch.unique(ids, return_inverse=True)
    pos = torch.arange(len(ids), device=ids.device)
    first = torch.full((len(uniq),), len(ids), device=ids.device, dtype=torch.long)
    first = first.scatter_reduce(0, target, pos, reduce="amin")
    return first, target


def focal_cross_entropy(logits: Tensor, target: Tensor, gamma: float = 0.0) -> Tensor:
    """``logits (R, Q)``, ``target (R,)`` -> ``(R,)`` per-row ``(1 - p_t)^gamma * (-log p_t)``
    (``gamma = 0``: cross-entropy)."""
    logp = F.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0]
    if gamma == 0:
        return -logp
    return -((1 - logp.exp()).clamp_min(0) ** gamma) * logp


def _weighted_mean(per_row: Tensor, weights: Optional[Tensor]) -> Tensor:
    if weights is None:
        return per_row.mean()
    weights = weights.to(per_row.dtype)
    return (weights * per_row).sum() / weights.sum().clamp_min(1e-12)


def _soft_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of ``logits (N, M)`` against probability rows ``targets (N, M)``."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()


class RegionPhraseLoss(nn.Module):
    r"""Region–phrase loss plus the CLIP image–caption loss, for fine-grained fine-tuning
    (Grad-ECLIP's application).

    Region term: each region embedding is classified among the batch's distinct phrases
    (cross-entropy of ``scale * cos(region, phrase)``; regions named by the same phrase share
    their target), optionally focal, confidence-weighted, or ShapesCLIP's sigmoid loss (see the
    module docstring). Global term: CLIP's symmetric InfoNCE of images against their captions,
    with identical captions of other images masked out of the negatives; with ``distill > 0`` and
    anchor embeddings, its one-hot targets become ``(1 - distill) * onehot + distill * softmax``
    of the anchor's (the momentum copy's) similarities.

    Args:
        region_weight: weight of the region term. Default: ``1.0``.
        global_weight: weight of the image–caption term. Default: ``1.0``.
        focal_gamma: focusing exponent of the region term (softmax form). Default: ``0.0``.
        region_form: ``"softmax"`` or ``"sigmoid"`` (:data:`REGION_FORMS`). Default: ``"softmax"``.
        distill: share of the anchor's soft targets in the global term. Default: ``0.0``.

    Shapes (``forward``, keyword-only): ``region_embeds (R, E)``, ``phrase_embeds (R, E)`` (the
    phrase of each region; only the first of equal ``phrase_ids`` is used), ``phrase_ids (R,)``
    long, ``image_embeds (N, E)``, ``caption_embeds (N, E)``, ``caption_ids (N,)`` long (equal ids:
    equal captions), ``logit_scale`` a scalar (the multiplier, i.e. ``model.logit_scale.exp()``);
    optional ``region_weights (R,)`` non-negative, ``anchor_image_embeds (N, E)`` and
    ``anchor_caption_embeds (N, E)`` (no gradient flows into them). Embeddings need not be
    normalised. ``R = 0`` (no phrase in the batch) gives a zero region term.

    Raises:
        ValueError: bad settings; (forward) shapes that disagree, no images, negative weights, or
            ``distill > 0`` without anchor embeddings.
    """

    def __init__(self, region_weight: float = 1.0, global_weight: float = 1.0, *, focal_gamma: float = 0.0,
                 region_form: str = "softmax", distill: float = 0.0) -> None:
        super().__init__()
        if region_form not in REGION_FORMS:
            raise ValueError(f"region_form must be one of {REGION_FORMS}, got {region_form!r}")
        if focal_gamma < 0 or not 0 <= distill <= 1:
            raise ValueError(f"need focal_gamma >= 0 and 0 <= distill <= 1, got {focal_gamma}, {distill}")
        self.region_weight = float(region_weight)
        self.global_weight = float(global_weight)
        self.focal_gamma = float(focal_gamma)
        self.region_form = region_form
        self.distill = float(distill)

    @staticmethod
    def _check(region_embeds: Tensor, phrase_embeds: Tensor, phrase_ids: Tensor,
               image_embeds: Tensor, caption_embeds: Tensor, caption_ids: Tensor) -> None:
        if region_embeds.dim() != 2 or phrase_embeds.shape != region_embeds.shape:
            raise ValueError(f"region_embeds and phrase_embeds must both be (R, E), got "
                             f"{tuple(region_embeds.shape)} and {tuple(phrase_embeds.shape)}")
        if phrase_ids.shape != region_embeds.shape[:1]:
            raise ValueError(f"phrase_ids must be (R,) = ({region_embeds.shape[0]},), got {tuple(phrase_ids.shape)}")
        if image_embeds.dim() != 2 or image_embeds.shape[0] == 0 or caption_embeds.shape != image_embeds.shape:
            raise ValueError(f"image_embeds and caption_embeds must both be (N, E) with N >= 1, got "
                             f"{tuple(image_embeds.shape)} and {tuple(caption_embeds.shape)}")
        if caption_ids.shape != image_embeds.shape[:1]:
            raise ValueError(f"caption_ids must be (N,) = ({image_embeds.shape[0]},), got {tuple(caption_ids.shape)}")

    def region_loss(self, region_embeds: Tensor, phrase_embeds: Tensor, phrase_ids: Tensor,
                    logit_scale: Tensor, region_weights: Optional[Tensor] = None) -> Tensor:
        """The region term of ``(R, E)`` regions over the batch's distinct phrases (a weighted
        mean over regions with ``region_weights (R,)``)."""
        if len(region_embeds) == 0:
            return region_embeds.sum() * 0
        if region_weights is not None and (region_weights.shape != phrase_ids.shape or bool((region_weights < 0).any())):
            raise ValueError(f"region_weights must be (R,) = ({len(phrase_ids)},) and non-negative, "
                             f"got shape {tuple(region_weights.shape)}")
        first, target = _first_of_each(phrase_ids)
        cos = F.normalize(region_embeds, dim=-1) @ F.normalize(phrase_embeds[first], dim=-1).t()  # (R, Q)
        if self.region_form == "sigmoid":
            labels = F.one_hot(target, cos.shape[1]).to(cos.dtype)
            per_row = F.binary_cross_entropy_with_logits(SIGMOID_SCALE * cos + SIGMOID_BIAS, labels,
                                                         reduction="none").sum(-1)
        else:
            per_row = focal_cross_entropy(logit_scale * cos, target, self.focal_gamma)
        return _weighted_mean(per_row, region_weights)

    def global_loss(self, image_embeds: Tensor, caption_embeds: Tensor, caption_ids: Tensor,
                    logit_scale: Tensor, anchor_image_embeds: Optional[Tensor] = None,
                    anchor_caption_embeds: Optional[Tensor] = None) -> Tensor:
        """CLIP's symmetric InfoNCE of ``(N, E)`` images against their ``(N, E)`` captions; with
        ``distill > 0``, against targets mixed with the anchors' ``(N, E)`` softmax."""
        n = len(image_embeds)
        eye = torch.eye(n, dtype=torch.bool, device=image_embeds.device)
        masked = (caption_ids[:, None] == caption_ids[None]) & ~eye

        def logits_of(img: Tensor, cap: Tensor) -> Tensor:
            logits = logit_scale * F.normalize(img, dim=-1) @ F.normalize(cap, dim=-1).t()
            return logits.masked_fill(masked, -1e4)

        logits = logits_of(image_embeds, caption_embeds)
        if self.distill == 0:
            target = torch.arange(n, device=logits.device)
            return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        if anchor_image_embeds is None or anchor_caption_embeds is None:
            raise ValueError("distill > 0 needs anchor_image_embeds and anchor_caption_embeds (N, E)")
        if anchor_image_embeds.shape != image_embeds.shape or anchor_caption_embeds.shape != image_embeds.shape:
            raise ValueError(f"anchor embeddings must be (N, E) = {tuple(image_embeds.shape)}, got "
                             f"{tuple(anchor_image_embeds.shape)} and {tuple(anchor_caption_embeds.shape)}")
        with torch.no_grad():
            anchor = logits_of(anchor_image_embeds.detach(), anchor_caption_embeds.detach())
            onehot = eye.to(logits.dtype)
            t_i2c = (1 - self.distill) * onehot + self.distill * anchor.softmax(-1)
            t_c2i = (1 - self.distill) * onehot + self.distill * anchor.t().softmax(-1)
        return 0.5 * (_soft_ce(logits, t_i2c) + _soft_ce(logits.t(), t_c2i))

    def forward(self, *, region_embeds: Tensor, phrase_embeds: Tensor, phrase_ids: Tensor,
                image_embeds: Tensor, caption_embeds: Tensor, caption_ids: Tensor,
                logit_scale: Tensor, region_weights: Optional[Tensor] = None,
                anchor_image_embeds: Optional[Tensor] = None,
                anchor_caption_embeds: Optional[Tensor] = None) -> RegionPhraseLossOutput:
        """The loss and its two terms; see the class docstring for the shapes."""
        self._check(region_embeds, phrase_embeds, phrase_ids, image_embeds, caption_embeds, caption_ids)
        region = self.region_loss(region_embeds, phrase_embeds, phrase_ids, logit_scale, region_weights)
        glob = self.global_loss(image_embeds, caption_embeds, caption_ids, logit_scale,
                                anchor_image_embeds, anchor_caption_embeds)
        return RegionPhraseLossOutput(self.region_weight * region + self.global_weight * glob, region, glob)
