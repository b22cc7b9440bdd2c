"""The benchmark's two data protocols and their shared scoring.

- :func:`run_shapes`: held-out ShapesCLIP scenes with object masks: localisation, faithfulness
  and text-side word deletion.
- the folder protocol (any CLIP, a folder of images and a prompt file: faithfulness only, each
  image explained for the prompt the model ranks first) lives in :mod:`.folder`, on the dataset
  engine, with the same deletion / insertion scoring as :func:`faithfulness`, per image.

Both return ``{"protocol": ..., "image": [Score, ...], "text": [Score, ...], ...}`` with the
typed records of :mod:`.report`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Dict, List, Tuple

import torch

from .config import FaithfulnessConfig, ShapesConfig
from .methods import image_methods, select, text_methods
from .report import (
    DELETION,
    DELETION_ACC,
    ENERGY_POINTING,
    FAITHFULNESS,
    INSERTION,
    INSERTION_ACC,
    MS_PER_EXPLANATION,
    POINTING,
    POINTING_STRICT,
    WORD_DELETION,
    WORD_DELETION_NORMALISED,
    Metric,
    Score,
    scores,
)

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

    from ..models import LoadedCLIP
    from .methods import ImageMethod


def faithfulness(sim: "nn.Module", pixels: "Tensor", maps: "Tensor", targets: "Tensor",
                 cfg: FaithfulnessConfig) -> Dict[Metric, "Tensor"]:
    """Deletion and insertion AUCs (of the score and of zero-shot accuracy) of ``maps``.

    Args:
        sim: ``pixels -> (N, T)``. pixels: ``(N, 3, H, W)``. maps: ``(N, 1, h, w)``.
        targets: ``(N,)``. cfg: the step and replacement.

    Returns:
        each metric of :data:`~.report.FAITHFULNESS` -> ``(N,)``.
    """
    from ..metrics import deletion, insertion

    kw = dict(step=cfg.step, replacement=cfg.replacement, accuracy=True)
    d = deletion(sim, pixels, maps, targets, **kw)
    i = insertion(sim, pixels, maps, targets, **kw)
    return {DELETION: d.auc, INSERTION: i.auc, DELETION_ACC: d.accuracy_auc, INSERTION_ACC: i.accuracy_auc}


# ---- ShapesCLIP --------------------------------------------------------------------------------


def shapes_items(n_scenes: int, seed_start: int = 0) -> List[dict]:
    """One item per object of the scenes with seeds ``seed_start ...``: ``scene`` (its seed),
    ``image`` (PIL), ``target`` (the index of its prompt in ``all_prompts()``), ``mask``
    ``(H, W)`` bool, ``prompt``."""
    from ..shapes import all_prompts, render_scene

    index = {p: i for i, p in enumerate(all_prompts())}
    items = []
    for s in range(seed_start, seed_start + n_scenes):
        sc = render_scene(seed=s)
        for k, obj in enumerate(sc.objects):
            items.append(dict(scene=s, image=sc.image, target=index[obj.prompt], mask=sc.masks[k], prompt=obj.prompt))
    return items


def explain_in_batches(fn: "ImageMethod", pixels: "Tensor", targets: "Tensor", batch: int) -> Tuple["Tensor", float]:
    """``(maps (N, 1, h, w), seconds)`` of ``fn`` over ``pixels (N, 3, H, W)``, ``batch`` at a time."""
    maps, t0 = [], time.perf_counter()
    for s in range(0, len(pixels), batch):
        maps.append(fn(pixels[s:s + batch], targets[s:s + batch]).detach().float())
    return torch.cat(maps), time.perf_counter() - t0


def score_shapes(sim: "nn.Module", pixels: "Tensor", maps: "Tensor", targets: "Tensor", masks: "Tensor",
                 seconds: float, cfg: FaithfulnessConfig) -> Dict[Metric, float]:
    """Localisation against ``masks (N, H, W)``, faithfulness (``cfg``) and time of one method's
    ``maps (N, 1, h, w)`` of ``pixels (N, 3, H, W)`` for ``targets (N,)``."""
    from ..metrics import energy_pointing_game, pointing_game

    faith = faithfulness(sim, pixels, maps, targets, cfg)
    return {POINTING: pointing_game(maps, masks).float().mean().item(),
            POINTING_STRICT: pointing_game(maps, masks, tolerance=0).float().mean().item(),
            ENERGY_POINTING: energy_pointing_game(maps, masks).mean().item(),
            **{m: faith[m].mean().item() for m in FAITHFULNESS},
            MS_PER_EXPLANATION: 1000 * seconds / len(pixels)}


def _shapes_image_side(clip: "LoadedCLIP", items: List[dict], pixels: "Tensor", cfg: ShapesConfig) -> Tuple[List[Score], dict]:
    """``(scores, example maps)``: every image method on every item, for its own prompt among all
    single-object prompts."""
    from ..shapes import all_prompts

    targets = torch.tensor([it["target"] for it in items])
    masks = torch.stack([it["mask"] for it in items])
    sim = clip.image_similarity(*clip.tokens(all_prompts()))
    results: List[Score] = []
    examples = {}
    for name, fn in select(image_methods(clip, sim), cfg.methods).items():
        maps, seconds = explain_in_batches(fn, pixels, targets, cfg.batch)
        r = score_shapes(sim, pixels, maps, targets, masks, seconds, cfg.faithfulness)
        results += scores(name, r)
        examples[name] = maps[: cfg.examples]
        print(f"  {name:52s} {seconds:6.1f}s  pointing {r[POINTING]:.3f} (strict {r[POINTING_STRICT]:.3f})  "
              f"deletion {r[DELETION]:.4f}  insertion {r[INSERTION]:.4f}", flush=True)
    return results, examples


def _captions(items: List[dict], pixels: "Tensor") -> Tuple[List[str], List["Tensor"]]:
    """A caption of the first two objects of each scene with two or more, and its image ``(3, H, W)``."""
    caps, imgs = [], []
    for s in sorted({it["scene"] for it in items}):
        objs = [it for it in items if it["scene"] == s]
        if len(objs) >= 2:
            caps.append(f"{objs[0]['prompt']} and {objs[1]['prompt']}")
            imgs.append(pixels[items.index(objs[0])])
    return caps, imgs


def _shapes_text_side(clip: "LoadedCLIP", caps: List[str], imgs: List["Tensor"], cfg: ShapesConfig) -> List[Score]:
    """Word deletion of every text method on each caption, explained against its own image."""
    from ..metrics import word_deletion

    tsim = clip.text_similarity(torch.stack(imgs))
    ids, am = clip.tokens(caps)
    pos = torch.arange(ids.shape[1])[None]
    words = (pos > 0) & (pos < tsim.eos_positions(ids)[:, None])
    repl = clip.tokenizer.convert_tokens_to_ids(cfg.word_replacement)
    tgt = torch.arange(len(caps))
    results: List[Score] = []
    for name, fn in text_methods(clip, tsim).items():
        t0 = time.perf_counter()
        attr = torch.cat([fn(ids[i:i + 1], int(tgt[i]), am[i:i + 1]).detach().float() for i in range(len(caps))])
        elapsed = time.perf_counter() - t0
        wd = word_deletion(tsim, ids, attr, tgt, replacement_id=repl, words=words, additional_forward_args=(am,))
        results += scores(name, {WORD_DELETION: wd.auc.mean().item(),
                                 WORD_DELETION_NORMALISED: wd.normalized_auc.mean().item(),
                                 MS_PER_EXPLANATION: 1000 * elapsed / len(caps)})
    return results


def run_shapes(cfg: ShapesConfig) -> dict:
    """The ShapesCLIP protocol on ``cfg.n`` scenes (``cfg.model``: another ShapesCLIP checkpoint).

    Raises:
        InputError: ``cfg.word_replacement`` is not one token of the model's vocabulary; a
            ``cfg.methods`` pattern that matches no method.
    """
    from ..errors import InputError
    from ..models import load_shapes

    torch.manual_seed(0)
    clip = load_shapes(cfg.model)
    tok = clip.tokenizer
    if tok.convert_tokens_to_ids(cfg.word_replacement) in (None, tok.unk_token_id):
        raise InputError(f"--word-replacement {cfg.word_replacement!r} is not one token of the model's vocabulary")
    items = shapes_items(cfg.n)
    pixels = clip.pixels([it["image"] for it in items])
    results, examples = _shapes_image_side(clip, items, pixels, cfg)
    caps, imgs = _captions(items, pixels)
    text_results = _shapes_text_side(clip, caps, imgs, cfg) if caps else []
    return dict(protocol="shapes", scenes=cfg.n, items=len(items), captions=len(caps), step=cfg.faithfulness.step,
                replacement=cfg.faithfulness.replacement, image=results, text=text_results,
                _examples=dict(maps=examples, image=items[0]["image"], prompt=items[0]["prompt"],
                               mask=items[0]["mask"]))
