"""Fine-grained quality of a ShapesCLIP on held-out scenes: region classification, dense zero-shot
segmentation, global recognition and Grad-ECLIP's pointing game.

Held-out scenes are seeds :data:`EVAL_SEED_START` ... (never used by ShapesCLIP's training, which
starts at 1,000,000, by the benchmark, seeds 0-99, by ``shapes.evaluate``, 0-499, or by the
fine-tuning, :data:`~captum_gradeclip.finetune.data.FINETUNE_SEED_OFFSET` ...). The segmentation's
background level is chosen per model on separate calibration scenes (:data:`CALIB_SEED_START` ...),
never on the evaluation scenes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..shapes.scenes import Scene, all_prompts, render_scene
from .dense import dense_features, pool_regions
from .masks import grid_masks

EVAL_SEED_START = 500_000
CALIB_SEED_START = 600_000


def _pixels(scenes: Sequence[Scene]) -> Tensor:
    from ..shapes.train import scenes_to_pixels

    return scenes_to_pixels([s.image for s in scenes])


def _prompt_embeds(model: Any, tokenizer: Any) -> Tensor:
    """``(P, E)`` normalised embeddings of the 48 single-object prompts."""
    from ..forward import features

    tok = tokenizer(all_prompts(), padding=True, return_tensors="pt")
    return F.normalize(features(model.get_text_features(**tok)), dim=-1)


def _dense(model: Any, scenes: Sequence[Scene], batch: int = 100) -> Tensor:
    """``(N, h, w, E)`` normalised dense features of the scenes."""
    out = [dense_features(model, _pixels(scenes[s:s + batch]))[0] for s in range(0, len(scenes), batch)]
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def region_accuracy(model: Any, tokenizer: Any, scenes: Sequence[Scene]) -> float:
    """Top-1 accuracy of classifying each visible object's region (its ground-truth mask pooled over
    the dense features) among the 48 object prompts."""
    dense, prompts = _dense(model, scenes), _prompt_embeds(model, tokenizer)
    index = {p: i for i, p in enumerate(all_prompts())}
    masks = [grid_masks(s.masks, dense.shape[1:3]) for s in scenes]
    image_index = torch.tensor([i for i, m in enumerate(masks) for _ in m])
    labels = torch.tensor([index[p] for s in scenes for p in s.prompts])
    masks = torch.cat(masks)
    keep = masks.flatten(1).sum(-1) > 0  # fully occluded objects have no region
    regions = pool_regions(dense, masks[keep], image_index[keep])
    pred = (F.normalize(regions, dim=-1) @ prompts.t()).argmax(-1)
    return (pred == labels[keep]).float().mean().item()


def _scene_scores(dense: Tensor, prompts: Tensor, scene: Scene, i: int, size: int) -> Tensor:
    """``(K, H, W)`` cosine of each pixel's (bilinearly upsampled) patch scores with the scene's prompts."""
    index = {p: j for j, p in enumerate(all_prompts())}
    rows = prompts[[index[p] for p in scene.prompts]]  # (K, E)
    s = torch.einsum("hwe,ke->khw", dense[i], rows)
    return F.interpolate(s[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def _miou(dense: Tensor, prompts: Tensor, scenes: Sequence[Scene], levels: Tensor) -> Tensor:
    """``(V,)`` mIoU at each background level ``levels (V,)``: classes are the 48 prompts and background."""
    index = {p: j for j, p in enumerate(all_prompts())}
    n_cls = len(index) + 1
    inter = torch.zeros(len(levels), n_cls)
    union = torch.zeros(len(levels), n_cls)
    for i, sc in enumerate(scenes):
        size = sc.masks.shape[-1]
        scores = _scene_scores(dense, prompts, sc, i, size)  # (K, H, W)
        cls = torch.tensor([index[p] for p in sc.prompts] + [n_cls - 1])
        truth = torch.full((size, size), n_cls - 1, dtype=torch.long)
        for k, m in enumerate(sc.masks):
            truth[m] = cls[k]
        for v, level in enumerate(levels):
            pred = cls[torch.cat([scores, torch.full((1, size, size), float(level))]).argmax(0)]
            for c in cls.tolist():
                p, t = pred == c, truth == c
                inter[v, c] += (p & t).sum()
                union[v, c] += (p | t).sum()
    seen = union > 0
    return torch.where(seen, inter / union.clamp_min(1), torch.zeros_like(union)).sum(-1) / seen.sum(-1)


@torch.no_grad()
def calibrate_background(model: Any, tokenizer: Any, scenes: Sequence[Scene], steps: int = 21) -> float:
    """The background level (a cosine) that maximises :func:`segmentation_miou` on ``scenes``
    (calibration scenes, not the evaluation's): searched over quantiles of the patch scores."""
    dense, prompts = _dense(model, scenes), _prompt_embeds(model, tokenizer)
    all_scores = torch.einsum("nhwe,pe->nhwp", dense, prompts).flatten()
    levels = torch.quantile(all_scores[:: max(1, all_scores.numel() // 100_000)], torch.linspace(0, 1, steps))
    return float(levels[_miou(dense, prompts, scenes, levels).argmax()])


@torch.no_grad()
def segmentation_miou(model: Any, tokenizer: Any, scenes: Sequence[Scene], background: float) -> float:
    """Dense zero-shot segmentation: each pixel takes the best of the scene's object prompts (patch
    scores upsampled bilinearly) or background when none exceeds ``background``; the mean IoU over
    the classes (48 prompts and background) that occur, accumulated over the scenes."""
    dense, prompts = _dense(model, scenes), _prompt_embeds(model, tokenizer)
    return float(_miou(dense, prompts, scenes, torch.tensor([background]))[0])


def pointing_game(model: Any, tokenizer: Any, scenes: Sequence[Scene], *, tolerance: Optional[int] = None,
                  batch: int = 100) -> float:
    """Grad-ECLIP's pointing game on ``model``: the share of (scene, object prompt) maps (last image
    block) whose maximum lies within ``tolerance`` pixels of the object's visible mask (default:
    :func:`captum_gradeclip.metrics.pointing_game`'s standard tolerance, 4 px at 64 px)."""
    from ..metrics import pointing_game as hits
    from .teacher import phrase_maps

    out: List[Tensor] = []
    for s in range(0, len(scenes), batch):
        part = scenes[s:s + batch]
        maps = phrase_maps(model, tokenizer, _pixels(part), [sc.prompts for sc in part])
        masks = torch.cat([sc.masks for sc in part])
        keep = masks.flatten(1).any(-1)
        out.append(hits(maps[keep][:, None], masks[keep], tolerance=tolerance))
    return torch.cat(out).float().mean().item()


def recognition(model: Any, processor: Any, n: int, seed_start: int = EVAL_SEED_START) -> float:
    """Global recognition as :func:`captum_gradeclip.shapes.evaluate.evaluate` measures it: the share
    of present objects scored above every absent one of the 48 prompts."""
    from ..shapes.evaluate import evaluate

    return float(evaluate(model, processor, n=n, seed_start=seed_start)["present_above_absent"])


def evaluate_finetuning(model: Any, processor: Any, *, n: int = 500, n_calibration: int = 200,
                        seed_start: int = EVAL_SEED_START, calibration_start: int = CALIB_SEED_START) -> Dict[str, float]:
    """All four measures on ``n`` held-out scenes (seeds ``seed_start`` ..., default
    :data:`EVAL_SEED_START`), the background level calibrated on ``n_calibration`` others (seeds
    ``calibration_start`` ...). The model is used as it is (call ``eval()`` first)."""
    tok = processor.tokenizer
    scenes = [render_scene(seed=seed_start + i) for i in range(n)]
    calib = [render_scene(seed=calibration_start + i) for i in range(n_calibration)]
    background = calibrate_background(model, tok, calib)
    return {
        "region_accuracy": region_accuracy(model, tok, scenes),
        "segmentation_miou": segmentation_miou(model, tok, scenes, background),
        "recognition": recognition(model, processor, n, seed_start),
        "pointing_game": pointing_game(model, tok, scenes),
        "background_level": background,
        "scenes": n,
    }


@dataclass(frozen=True)
class SceneCounts:
    """Per-scene counts of the two measures of the trade-off curve (``benchmarks/finetune_ablation.py``),
    so that accuracies, their differences between two models and standard errors come from one record.

    Attributes:
        region_ok, region_n: ``(N,)`` visible objects whose region is classified right, and visible
            objects (:func:`region_accuracy` is ``region_ok.sum() / region_n.sum()``).
        recog_ok, recog_n: ``(N,)`` present objects scored above every absent prompt, and present
            distinct objects (:func:`recognition` is ``recog_ok.sum() / recog_n.sum()``).
    """

    region_ok: Tensor
    region_n: Tensor
    recog_ok: Tensor
    recog_n: Tensor


@dataclass(frozen=True)
class SceneBatch:
    """Scenes rendered once for many models: ``pixels (N, 3, H, W)``, each scene's ``masks (K_i, H, W)``,
    ``labels`` (each object's prompt index, ``(K_i,)``) and ``present`` (its distinct objects' indices)."""

    pixels: Tensor
    masks: List[Tensor]
    labels: List[Tensor]
    present: List[Tensor]

    @staticmethod
    def render(seeds: Sequence[int]) -> "SceneBatch":
        """The scenes of ``seeds``."""
        scenes = [render_scene(seed=s) for s in seeds]
        index = {p: i for i, p in enumerate(all_prompts())}
        labels = [torch.tensor([index[p] for p in s.prompts], dtype=torch.long) for s in scenes]
        return SceneBatch(_pixels(scenes), [s.masks for s in scenes], labels,
                          [torch.tensor(sorted(set(x.tolist())), dtype=torch.long) for x in labels])


@torch.no_grad()
def scene_counts(model: Any, tokenizer: Any, scenes: SceneBatch, batch: int = 100) -> SceneCounts:
    """:class:`SceneCounts` of ``model`` on ``scenes``: region top-1 among the 48 prompts (true masks
    pooling the dense features, as :func:`region_accuracy`) and recognition (each present object's
    prompt above every absent one, as :func:`recognition`)."""
    from ..forward import normalize

    prompts = _prompt_embeds(model, tokenizer)
    r_ok, r_n, g_ok, g_n = [], [], [], []
    for s in range(0, len(scenes.pixels), batch):
        px = scenes.pixels[s:s + batch]
        dense, image = dense_features(model, px)  # one forward: the dense features and the pooled embedding
        dense = F.normalize(dense, dim=-1)
        sims = normalize(image) @ prompts.t()  # (n, P)
        masks = [grid_masks(m, dense.shape[1:3]) for m in scenes.masks[s:s + batch]]
        owner = torch.tensor([i for i, m in enumerate(masks) for _ in m], dtype=torch.long)
        flat = torch.cat(masks)
        keep = flat.flatten(1).sum(-1) > 0  # fully occluded objects have no region
        pooled = pool_regions(dense, flat[keep], owner[keep])
        right = (F.normalize(pooled, dim=-1) @ prompts.t()).argmax(-1) == torch.cat(scenes.labels[s:s + batch])[keep]
        r_ok += torch.zeros(len(px)).index_add_(0, owner[keep], right.float()).tolist()
        r_n += torch.zeros(len(px)).index_add_(0, owner[keep], torch.ones(len(pooled))).tolist()
        for i in range(len(px)):
            present = scenes.present[s + i]
            absent = torch.ones(sims.shape[1], dtype=torch.bool)
            absent[present] = False
            g_ok.append(int((sims[i, present] > sims[i, absent].max()).sum()))
            g_n.append(len(present))
    return SceneCounts(*(torch.tensor(x, dtype=torch.float64) for x in (r_ok, r_n, g_ok, g_n)))


def ratio_and_se(ok: Tensor, n: Tensor, base_ok: Optional[Tensor] = None) -> "tuple[float, float]":
    """``(value, standard error)`` of ``sum(ok) / sum(n)`` over scenes ``(N,)``, or with ``base_ok``
    of the paired difference ``(sum(ok) - sum(base_ok)) / sum(n)`` (two models on the same scenes).
    The error treats scenes as the independent units (objects of one scene are not): the ratio
    estimator's ``sqrt(N / (N - 1) * sum((d_i - value * n_i)^2)) / sum(n)``.

    Raises:
        ValueError: fewer than two scenes or no object.
    """
    d = ok if base_ok is None else ok - base_ok
    if len(n) < 2 or float(n.sum()) == 0:
        raise ValueError(f"need at least two scenes with objects, got {len(n)} scenes")
    value = float(d.sum() / n.sum())
    centred = d - value * n
    se = float((len(n) / (len(n) - 1) * (centred ** 2).sum()).sqrt() / n.sum())
    return value, se
