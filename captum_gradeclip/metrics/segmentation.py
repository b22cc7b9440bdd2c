"""Scores of segmentations: a confusion matrix accumulated over images, mIoU, per-class IoU and
pixel accuracy with an ignore label (VOC-style), and the binary foreground protocol of
ImageNet-Segmentation (pixel accuracy, mIoU and average precision of a map against a foreground
mask, as in Chefer et al.'s evaluation of transformer explanations: the map binarised at its mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor

#: The label VOC's masks use for object boundaries and "don't care" pixels.
IGNORE_INDEX = 255


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, *, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``(C, C)`` int64 counts, rows the true class, columns the predicted one.

    Args:
        pred, target: ``(H, W)`` or ``(N, H, W)`` integer labels, the same shape.
        num_classes: ``C``; labels ``0 .. C - 1``.
        ignore_index: pixels whose **target** has this label are not counted.

    Raises:
        ValueError: shapes that differ, float labels, or a label outside ``0 .. C - 1`` (other
            than a target's ``ignore_index``).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("labels must be integer tensors (class indices), got floats")
    keep = target != ignore_index
    p, t = pred[keep].long(), target[keep].long()
    for what, x in (("pred", p), ("target", t)):
        if x.numel() and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"{what} holds labels outside 0..{num_classes - 1} (got {int(x.min())}..{int(x.max())}); "
                             f"give num_classes or mark ignored pixels with {ignore_index}")
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class SegmentationScores:
    """Attributes:
        iou: ``(C,)`` per-class IoU; NaN for a class in neither the truth nor the prediction.
        miou: the mean of the defined IoUs.
        pixel_accuracy: correct pixels / counted pixels.
        mean_accuracy: the mean over the true classes of their recall.
    """

    iou: Tensor
    miou: float
    pixel_accuracy: float
    mean_accuracy: float


def segmentation_scores(confusion: Tensor) -> SegmentationScores:
    """Scores of a ``(C, C)`` confusion matrix (:func:`confusion_matrix`, summed over images:
    the dataset-level mIoU of VOC's devkit)."""
    c = confusion.double()
    tp = c.diag()
    union = c.sum(0) + c.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    truth = c.sum(1)
    recall = tp[truth > 0] / truth[truth > 0]
    return SegmentationScores(iou=iou.float(), miou=float(iou.nanmean()) if (union > 0).any() else float("nan"),
                              pixel_accuracy=float(tp.sum() / c.sum().clamp_min(1)),
                              mean_accuracy=float(recall.mean()) if len(recall) else float("nan"))


def average_precision(scores: Tensor, labels: Tensor) -> float:
    """Average precision of ``scores (P,)`` ranking the positives of ``labels (P,)`` bool: the sum
    over thresholds of precision x recall increase, tied scores taken together (as scikit-learn's
    ``average_precision_score``). NaN without positives."""
    s, y = scores.flatten().double(), labels.flatten().bool()
    if not y.any():
        return float("nan")
    order = torch.argsort(s, descending=True, stable=True)
    s, y = s[order], y[order].double()
    last = torch.cat([s[1:] != s[:-1], torch.tensor([True])])  # the last index of each run of ties
    tp = torch.cumsum(y, 0)[last]
    n = torch.arange(1, len(s) + 1, dtype=torch.float64)[last]
    precision, recall = tp / n, tp / y.sum()
    gain = torch.diff(torch.cat([torch.zeros(1, dtype=torch.float64), recall]))
    return float((gain * precision).sum())


@dataclass(frozen=True)
class ForegroundScores:
    """Per image, ``(N,)`` each: ``pixel_accuracy``, ``miou`` (mean of foreground and background
    IoU) of the binarised map, and ``ap`` (average precision of the map's values)."""

    pixel_accuracy: Tensor
    miou: Tensor
    ap: Tensor


def foreground_scores(saliency: Tensor, masks: Tensor, *, threshold: Union[str, float] = "mean") -> ForegroundScores:
    """The binary foreground protocol (ImageNet-Segmentation style).

    Args:
        saliency: ``(N, H, W)`` maps at the masks' resolution.
        masks: ``(N, H, W)`` bool foreground.
        threshold: ``"mean"`` (each map binarised at its mean, as Chefer et al.) or a value
            applied to the map min-max normalised to ``[0, 1]``.

    Raises:
        ValueError: shapes that differ or NaN / Inf in a map.
    """
    if saliency.shape != masks.shape or saliency.dim() != 3:
        raise ValueError(f"saliency and masks must both be (N, H, W), got {tuple(saliency.shape)} and {tuple(masks.shape)}")
    if not torch.isfinite(saliency).all():
        raise ValueError("saliency holds NaN or Inf: fix the map first")
    a = saliency.detach().double().flatten(1)
    m = masks.bool().flatten(1)
    if threshold == "mean":
        fg = a > a.mean(1, keepdim=True)
    else:
        lo, hi = a.amin(1, keepdim=True), a.amax(1, keepdim=True)
        fg = (a - lo) / (hi - lo).clamp_min(1e-12) >= float(threshold)
    acc = (fg == m).double().mean(1)
    ious = [((fg & m).sum(1) / (fg | m).sum(1).clamp_min(1)), ((~fg & ~m).sum(1) / (~fg | ~m).sum(1).clamp_min(1))]
    ap = torch.tensor([average_precision(a[i], m[i]) for i in range(len(a))])
    return ForegroundScores(pixel_accuracy=acc.float(), miou=(sum(ious) / 2).float(), ap=ap.float())
