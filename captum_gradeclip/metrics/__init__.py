"""Faithfulness and localisation metrics for any attribution map (functional, tensors in/out).

- :func:`deletion` / :func:`insertion`: remove (insert) pixels in the map's order, track the
  explained score (and optionally zero-shot accuracy), return curves and AUCs.
- :func:`pointing_game` (the standard one: 15 px at 224 px, scaled; ``tolerance=0`` for the strict
  variant), :func:`energy_pointing_game`, :func:`mask_iou`: against object masks.
- :func:`word_deletion` / :func:`word_insertion`: the text-side curves.

Maps of any resolution ``(N, 1, h, w)``, ``(N, h, w)`` or ``(N, C, H, W)`` (summed over channels)
are upsampled (bilinear) to the image.

Every metric rejects what would make its number meaningless, before computing anything: maps
with NaN or Inf (``ValueError``), empty masks and masks that are neither bool nor exactly 0/1
(``ValueError``), targets outside the forward function's outputs (``IndexError``) and float or
bool targets (``TypeError``).
"""

from .localization import energy_pointing_game, mask_iou, pointing_game, standard_tolerance
from .perturbation import CurveResult, deletion, insertion, word_deletion, word_insertion

__all__ = ["CurveResult", "deletion", "energy_pointing_game", "insertion", "mask_iou", "pointing_game",
           "standard_tolerance", "word_deletion", "word_insertion"]
