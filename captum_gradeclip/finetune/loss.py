"""The fine-tuning objective: a region–phrase contrastive loss plus CLIP's image–caption loss."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


class RegionPhraseLoss(nn.Module):
    r"""Contrastive region–phrase loss plus the CLIP image–caption loss, for fine-grained
    fine-tuning (Grad-ECLIP's application).

    Region term: each region embedding is classified among the batch's distinct phrases
    (cross-entropy of ``scale * cos(region, phrase)``; regions named by the same phrase share
    their target). Global term: CLIP's symmetric InfoNCE of images against their captions, with
    identical captions of other images masked out of the negatives.

    Args:
        region_weight: weight of the region term. Default: ``1.0``.
        global_weight: weight of the image–caption term. Default: ``1.0``.

    Shapes (``forward``, keyword-only): ``region_embeds (R, E)``, ``phrase_embeds (R, E)`` (the
    phrase of each region; only the first of equal ``phrase_ids`` is used), ``phrase_ids (R,)``
    long, ``image_embeds (N, E)``, ``caption_embeds (N, E)``, ``caption_ids (N,)`` long (equal ids:
    equal captions), ``logit_scale`` a scalar (the multiplier, i.e. ``model.logit_scale.exp()``).
    Embeddings need not be normalised.

    Raises:
        ValueError: (forward) shapes that disagree, or no regions / no images.
    """

    def __init__(self, region_weight: float = 1.0, global_weight: float = 1.0) -> None:
        super().__init__()
        self.region_weight = float(region_weight)
        self.global_weight = float(global_weight)

    @staticmethod
    def _check(region_embeds: Tensor, phrase_embeds: Tensor, phrase_ids: Tensor,
               image_embeds: Tensor, caption_embeds: Tensor, caption_ids: Tensor) -> None:
        if region_embeds.dim() != 2 or region_embeds.shape[0] == 0 or phrase_embeds.shape != region_embeds.shape:
            raise ValueError(f"region_embeds and phrase_embeds must both be (R, E) with R >= 1, got "
                             f"{tuple(region_embeds.shape)} and {tuple(phrase_embeds.shape)}")
        if phrase_ids.shape != region_embeds.shape[:1]:
            raise ValueError(f"phrase_ids must be (R,) = ({region_embeds.shape[0]},), got {tuple(phrase_ids.shape)}")
        if image_embeds.dim() != 2 or image_embeds.shape[0] == 0 or caption_embeds.shape != image_embeds.shape:
            raise ValueError(f"image_embeds and caption_embeds must both be (N, E) with N >= 1, got "
                             f"{tuple(image_embeds.shape)} and {tuple(caption_embeds.shape)}")
        if caption_ids.shape != image_embeds.shape[:1]:
            raise ValueError(f"caption_ids must be (N,) = ({image_embeds.shape[0]},), got {tuple(caption_ids.shape)}")

    def region_loss(self, region_embeds: Tensor, phrase_embeds: Tensor, phrase_ids: Tensor,
                    logit_scale: Tensor) -> Tensor:
        """Cross-entropy of each region ``(R, E)`` over the distinct phrases of the batch."""
        first, target = _first_of_each(phrase_ids)
        logits = logit_scale * F.normalize(region_embeds, dim=-1) @ F.normalize(phrase_embeds[first], dim=-1).t()
        return F.cross_entropy(logits, target)

    def global_loss(self, image_embeds: Tensor, caption_embeds: Tensor, caption_ids: Tensor,
                    logit_scale: Tensor) -> Tensor:
        """CLIP's symmetric InfoNCE of ``(N, E)`` images against their ``(N, E)`` captions."""
        n = len(image_embeds)
        logits = logit_scale * F.normalize(image_embeds, dim=-1) @ F.normalize(caption_embeds, dim=-1).t()
        eye = torch.eye(n, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill((caption_ids[:, None] == caption_ids[None]) & ~eye, -1e4)
        target = torch.arange(n, device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))

    def forward(self, *, region_embeds: Tensor, phrase_embeds: Tensor, phrase_ids: Tensor,
                image_embeds: Tensor, caption_embeds: Tensor, caption_ids: Tensor,
                logit_scale: Tensor) -> RegionPhraseLossOutput:
        """The loss and its two terms; see the class docstring for the shapes."""
        self._check(region_embeds, phrase_embeds, phrase_ids, image_embeds, caption_embeds, caption_ids)
        region = self.region_loss(region_embeds, phrase_embeds, phrase_ids, logit_scale)
        glob = self.global_loss(image_embeds, caption_embeds, caption_ids, logit_scale)
        return RegionPhraseLossOutput(self.region_weight * region + self.global_weight * glob, region, glob)
