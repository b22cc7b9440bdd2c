"""ShapesCLIP quality on held-out scenes (seeds below the training offset, never trained on).

    python -m captum_gradeclip.shapes.evaluate --n 500

Reports, over scenes with 1 to 4 objects:
- ``present_above_absent``: share of present objects scored above EVERY absent one of the 48
  single-object prompts; ``scene_all_correct``: share of scenes where all present objects are.
- ``same_colour_distractor`` / ``same_shape_distractor``: share of (present, absent distractor)
  pairs ordered correctly, where the distractor shares the colour (other shape) or the shape
  (other colour).
- ``caption_vs_swapped_binding``: for two present objects ``c1 s1`` and ``c2 s2`` (with
  ``c1 s2``, ``c2 s1`` absent), the caption "c1 s1 and c2 s2" beats "c1 s2 and c2 s1";
  ``caption_vs_one_absent``: it beats every caption with one object replaced by an absent one.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Set, Tuple

import torch
from torch import Tensor

from .scenes import COLOUR_NAMES, SHAPES, all_prompts, article, render_scene

if TYPE_CHECKING:  # pragma: no cover
    from transformers import CLIPModel, CLIPProcessor


def _phrase(c: str, s: str) -> str:
    return f"{article(c)} {c} {s}"


@dataclass
class _Tally:
    """Counts of correct orderings (``*_ok``) out of ``*_n`` cases, one pair per reported share."""

    obj_ok: int = 0
    obj_n: int = 0
    scene_ok: int = 0
    col_ok: int = 0
    col_n: int = 0
    shp_ok: int = 0
    shp_n: int = 0
    bind_ok: int = 0
    bind_n: int = 0
    one_ok: int = 0
    one_n: int = 0


def _score_prompts(t: _Tally, sims: Tensor, present: Set[Tuple[str, str]], index: Dict[Tuple[str, str], int]) -> None:
    """Count one scene's single-object orderings: ``sims (P,)`` its similarity to each prompt."""
    pres_idx = [index[p] for p in present]
    absent_mask = torch.ones(len(sims), dtype=torch.bool)
    absent_mask[pres_idx] = False
    best_absent = sims[absent_mask].max()
    oks = [bool(sims[j] > best_absent) for j in pres_idx]
    t.obj_ok += sum(oks)
    t.obj_n += len(oks)
    t.scene_ok += all(oks)
    for (c, s) in present:
        for s2 in SHAPES:
            if (c, s2) not in present:
                t.col_ok += bool(sims[index[(c, s)]] > sims[index[(c, s2)]])
                t.col_n += 1
        for c2 in COLOUR_NAMES:
            if (c2, s) not in present:
                t.shp_ok += bool(sims[index[(c, s)]] > sims[index[(c2, s)]])
                t.shp_n += 1


def _caption_set(objects: list, present: Set[Tuple[str, str]], index: Dict[Tuple[str, str], int],
                 rng: random.Random) -> Tuple[List[str], bool]:
    """``(captions, has_bind)``: the true caption of two random ``objects``, then (``has_bind``:
    where it exists) the caption with their attributes swapped, then four captions with one object
    replaced by an absent one."""
    a, b = rng.sample(objects, 2)
    bind = None
    if a.colour != b.colour and a.shape != b.shape and (a.colour, b.shape) not in present \
            and (b.colour, a.shape) not in present:
        bind = f"{_phrase(a.colour, b.shape)} and {_phrase(b.colour, a.shape)}"
    absent = [p for p in index if p not in present]
    repl = rng.sample(absent, 4)
    ones = [f"{_phrase(*repl[0])} and {b.prompt}", f"{_phrase(*repl[1])} and {b.prompt}",
            f"{a.prompt} and {_phrase(*repl[2])}", f"{a.prompt} and {_phrase(*repl[3])}"]
    return [f"{a.prompt} and {b.prompt}"] + ([bind] if bind else []) + ones, bind is not None


def _score_captions(t: _Tally, s: Tensor, has_bind: bool) -> None:
    """Count one scene's caption orderings: ``s`` the similarities of its :func:`_caption_set`."""
    k = 1
    if has_bind:
        t.bind_ok += bool(s[0] > s[1])
        t.bind_n += 1
        k = 2
    t.one_ok += bool(s[0] > s[k:k + 4].max())
    t.one_n += 1


def _evaluate_batch(t: _Tally, model, processor, scenes: list, pe: Tensor, index: Dict[Tuple[str, str], int],
                    rng: random.Random) -> None:
    """Count the orderings of a batch of scenes; ``pe (P, E)`` the normalised prompt embeddings."""
    from ..forward import features, normalize

    px = processor(images=[s.image for s in scenes], return_tensors="pt").pixel_values
    ie = normalize(features(model.get_image_features(pixel_values=px)))
    sims = ie @ pe.t()
    caps, groups = [], []
    for i, sc in enumerate(scenes):
        present = {(o.colour, o.shape) for o in sc.objects}
        _score_prompts(t, sims[i], present, index)
        if len(sc.objects) >= 2:
            cset, has_bind = _caption_set(sc.objects, present, index, rng)
            groups.append((i, len(caps), has_bind))
            caps += cset
    if caps:
        ct = processor.tokenizer(caps, padding=True, return_tensors="pt")
        ce = normalize(features(model.get_text_features(**ct)))
        for i, at, has_bind in groups:
            _score_captions(t, ce[at:at + 6] @ ie[i], has_bind)


@torch.no_grad()
def evaluate(model: "CLIPModel", processor: "CLIPProcessor", n: int = 500, seed_start: int = 0,
             batch: int = 100) -> dict:
    """Quality numbers of a CLIP on ``n`` held-out scenes (seeds ``seed_start`` ...), ``batch``
    scenes per forward.

    Returns:
        a dict of the accuracies described in the module docstring, and the counts.
    """
    from ..forward import features, normalize

    tok = processor.tokenizer(all_prompts(), padding=True, return_tensors="pt")
    pe = normalize(features(model.get_text_features(**tok)))
    index = {(c, s): i for i, (c, s) in enumerate((c, s) for c in COLOUR_NAMES for s in SHAPES)}
    rng = random.Random(1234)
    t = _Tally()
    for start in range(seed_start, seed_start + n, batch):
        scenes = [render_scene(seed=s) for s in range(start, min(start + batch, seed_start + n))]
        _evaluate_batch(t, model, processor, scenes, pe, index, rng)
    return {
        "scenes": n,
        "present_above_absent": t.obj_ok / t.obj_n,
        "present_objects": t.obj_n,
        "scene_all_correct": t.scene_ok / n,
        "same_colour_distractor": t.col_ok / t.col_n,
        "same_shape_distractor": t.shp_ok / t.shp_n,
        "caption_vs_swapped_binding": t.bind_ok / max(1, t.bind_n),
        "binding_cases": t.bind_n,
        "caption_vs_one_absent": t.one_ok / max(1, t.one_n),
        "caption_cases": t.one_n,
    }


def main(argv: Optional[List[str]] = None) -> None:
    """Print the quality numbers of the shipped (or a given) ShapesCLIP as JSON."""
    from .model import load_shapes_clip

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the shipped one)")
    args = ap.parse_args(argv)
    model, processor = load_shapes_clip(args.model)
    print(json.dumps(evaluate(model, processor, n=args.n), indent=2))


if __name__ == "__main__":
    main()
