"""Faithfulness and localisation metrics for any attribution map (functional, tensors in/out).

- :func:`deletion` / :func:`insertion`: remove (insert) pixels in the map's order, track the
  explained score (and optionally zero-shot accuracy), return curves and AUCs.
- :func:`pointing_game` (the standard one: 15 px at 224 px, scaled; ``tolerance=0`` for the strict
  variant), :func:`energy_pointing_game`, :func:`mask_iou`: against object masks.
- :func:`word_deletion` / :func:`word_insertion`: the text-side curves.
- :func:`deletion_protocol` / :func:`insertion_protocol`: the Grad-ECLIP authors' ImageNet
  protocol on one image in pixel space (top-1/5/10 curves and AUCs, :mod:`.protocol`).
- :func:`confusion_matrix`, :func:`segmentation_scores` (mIoU, per-class IoU, pixel accuracy,
  ignore label), :func:`foreground_scores` (the binary foreground protocol): :mod:`.segmentation`.
- :func:`cascading_randomization` with :func:`spearman` and :func:`ssim`: Adebayo et al.'s
  model-parameter randomisation sanity check (:mod:`.sanity`).

Maps of any resolution ``(N, 1, h, w)``, ``(N, h, w)`` or ``(N, C, H, W)`` (summed over channels)
are upsampled (bilinear) to the image.

Every metric rejects what would make its number meaningless, before computing anything: maps
with NaN or Inf (``ValueError``), empty masks and masks that are neither bool nor exactly 0/1
(``ValueError``), targets outside the forward function's outputs (``IndexError``) and float or
bool targets (``TypeError``).
"""

from .localization import energy_pointing_game, mask_iou, pointing_game, standard_tolerance
from .perturbation import CurveResult, deletion, insertion, word_deletion, word_insertion
from .protocol import ProtocolCurves, authors_saliency, deletion_protocol, insertion_protocol, protocol_auc, topk_hits
from .sanity import RandomizationResult, cascading_randomization, spearman, ssim
from .segmentation import (
                           ForegroundScores,
                           SegmentationScores,
                           average_precision,
                           confusion_matrix,
                           foreground_scores,
                           segmentation_scores,
)

__all__ = ["CurveResult", "ForegroundScores", "ProtocolCurves", "RandomizationResult", "SegmentationScores",
           "cascading_randomization", "spearman", "ssim", "average_precision",
           "confusion_matrix", "foreground_scores", "segmentation_scores", "authors_saliency", "deletion", "deletion_protocol",
           "energy_pointing_game", "insertion", "insertion_protocol", "mask_iou", "pointing_game", "protocol_auc",
           "standard_tolerance", "topk_hits", "word_deletion", "word_insertion"]
