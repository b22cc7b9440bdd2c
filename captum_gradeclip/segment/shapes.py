"""Open-vocabulary segmentation on ShapesCLIP: every scene segmented over all 48 single-object
prompts by each method's maps, scored against the scenes' true masks; the threshold (and so the
background) chosen on held-out validation scenes, never on the scored ones."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from ..metrics.segmentation import confusion_matrix, segmentation_scores
from ..shapes.seeds import SEEDS
from .functional import segment

#: The thresholds tried on the validation scenes.
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
#: Validation scenes start here: the range ``segment-validation`` of
#: :mod:`captum_gradeclip.shapes.seeds` (scored scenes are the benchmark's seeds 0 .. n - 1).
VALIDATION_SEED = SEEDS["segment-validation"].start


def scene_labels(scene: Any, prompts: Sequence[str]) -> Tensor:
    """``(H, W)`` int64: ``0`` background, ``prompts.index(object's prompt) + 1`` on each object's
    visible mask."""
    labels = torch.zeros(scene.masks.shape[-2:], dtype=torch.long)
    for obj, m in zip(scene.objects, scene.masks):
        labels[m] = prompts.index(obj.prompt) + 1
    return labels


def prompt_maps(method: Callable[[Tensor, Tensor], Tensor], pixels: Tensor, k: int) -> Tensor:
    """``pixels (1, 3, H, W)`` -> ``(1, K, h, w)``: the method's map for each of the ``K`` prompts
    (one call with the image repeated ``K`` times)."""
    maps = method(pixels.expand(k, -1, -1, -1), torch.arange(k)).detach().float()
    return maps.sum(1)[None]


def _miou(maps: List[Tensor], labels: List[Tensor], threshold: float, normalise: str) -> Tuple[float, Any]:
    k = maps[0].shape[1]
    conf = sum(confusion_matrix(segment(m, lab.shape, threshold=threshold, normalise=normalise)[0], lab, k + 1)
               for m, lab in zip(maps, labels))
    scores = segmentation_scores(conf)
    return scores.miou, scores


def choose_threshold(maps: List[Tensor], labels: List[Tensor], normalise: str = "joint",
                     thresholds: Sequence[float] = THRESHOLDS) -> Tuple[float, float]:
    """The threshold of ``thresholds`` with the best mIoU on ``maps`` (``(1, K, h, w)`` each) against
    ``labels`` (``(H, W)`` each), and that mIoU (ties: the lower threshold)."""
    best = max(((_miou(maps, labels, t, normalise)[0], -t) for t in thresholds))
    return -best[1], best[0]


@dataclass(frozen=True)
class ShapesSegmentation:
    """One method's segmentation on ShapesCLIP: the threshold chosen on the validation scenes
    (and the mIoU there), then on the scored scenes the mIoU over the 49 labels (background and
    48 prompts; labels neither true nor predicted left out), pixel accuracy, background IoU, and
    the time to make one scene's 48 maps."""

    method: str
    normalise: str
    threshold: float
    validation_miou: float
    miou: float
    pixel_accuracy: float
    background_iou: float
    ms_per_scene: float


def _maps_of(method: Callable, clip: Any, seeds: Sequence[int], k: int) -> Tuple[List[Tensor], List[Tensor], float]:
    from ..shapes import all_prompts, render_scene

    maps, labels, t = [], [], 0.0
    for s in seeds:
        scene = render_scene(seed=s)
        pixels = clip.pixels([scene.image])
        t0 = time.perf_counter()
        maps.append(prompt_maps(method, pixels, k))
        t += time.perf_counter() - t0
        labels.append(scene_labels(scene, all_prompts()))
    return maps, labels, 1000 * t / len(seeds)


def shapes_segmentation(clip: Any, methods: Dict[str, Callable], *, n: int = 50, n_val: int = 20,
                        normalisations: Sequence[str] = ("joint", "per_prompt")) -> List[ShapesSegmentation]:
    """Each method (``(pixels (K, 3, H, W), targets (K,)) -> (K, 1, h, w)`` over the 48 prompts'
    forward function) on scenes ``0 .. n - 1``, its threshold chosen on ``n_val`` scenes from
    :data:`VALIDATION_SEED`, for each normalisation."""
    from ..shapes import all_prompts

    k = len(all_prompts())
    out = []
    for name, method in methods.items():
        val_maps, val_labels, _ = _maps_of(method, clip, range(VALIDATION_SEED, VALIDATION_SEED + n_val), k)
        maps, labels, ms = _maps_of(method, clip, range(n), k)
        for norm in normalisations:
            t, val = choose_threshold(val_maps, val_labels, norm)
            miou, s = _miou(maps, labels, t, norm)
            out.append(ShapesSegmentation(name, norm, t, val, miou, s.pixel_accuracy, float(s.iou[0]), ms))
    return out
