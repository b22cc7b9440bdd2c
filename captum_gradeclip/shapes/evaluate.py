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
from typing import Optional

import torch

from .scenes import COLOUR_NAMES, SHAPES, all_prompts, article, render_scene


def _phrase(c: str, s: str) -> str:
    return f"{article(c)} {c} {s}"


@torch.no_grad()
def evaluate(model, processor, n: int = 500, seed_start: int = 0, batch: int = 100) -> dict:
    """Quality numbers of a CLIP on ``n`` held-out scenes (seeds ``seed_start`` ...).

    Returns:
        a dict of the accuracies described in the module docstring, and the counts.
    """
    from ..forward import _features, _normalize

    prompts = all_prompts()
    tok = processor.tokenizer(prompts, padding=True, return_tensors="pt")
    pe = _normalize(_features(model.get_text_features(**tok)))
    index = {(c, s): i for i, (c, s) in enumerate((c, s) for c in COLOUR_NAMES for s in SHAPES)}
    rng = random.Random(1234)
    obj_ok = obj_n = scene_ok = 0
    col_ok = col_n = shp_ok = shp_n = 0
    bind_ok = bind_n = one_ok = one_n = 0
    for start in range(seed_start, seed_start + n, batch):
        scenes = [render_scene(seed=s) for s in range(start, min(start + batch, seed_start + n))]
        px = processor(images=[s.image for s in scenes], return_tensors="pt").pixel_values
        ie = _normalize(_features(model.get_image_features(pixel_values=px)))
        sims = ie @ pe.t()
        caps, groups = [], []
        for i, sc in enumerate(scenes):
            present = {(o.colour, o.shape) for o in sc.objects}
            pres_idx = [index[p] for p in present]
            absent_mask = torch.ones(len(prompts), dtype=torch.bool)
            absent_mask[pres_idx] = False
            best_absent = sims[i][absent_mask].max()
            oks = [bool(sims[i, j] > best_absent) for j in pres_idx]
            obj_ok += sum(oks)
            obj_n += len(oks)
            scene_ok += all(oks)
            for (c, s) in present:
                for s2 in SHAPES:
                    if (c, s2) not in present:
                        col_ok += bool(sims[i, index[(c, s)]] > sims[i, index[(c, s2)]])
                        col_n += 1
                for c2 in COLOUR_NAMES:
                    if (c2, s) not in present:
                        shp_ok += bool(sims[i, index[(c, s)]] > sims[i, index[(c2, s)]])
                        shp_n += 1
            if len(sc.objects) >= 2:
                a, b = rng.sample(sc.objects, 2)
                true = f"{a.prompt} and {b.prompt}"
                bind = None
                if a.colour != b.colour and a.shape != b.shape and (a.colour, b.shape) not in present \
                        and (b.colour, a.shape) not in present:
                    bind = f"{_phrase(a.colour, b.shape)} and {_phrase(b.colour, a.shape)}"
                absent = [p for p in index if p not in present]
                repl = rng.sample(absent, 4)
                ones = [f"{_phrase(*repl[0])} and {b.prompt}", f"{_phrase(*repl[1])} and {b.prompt}",
                        f"{a.prompt} and {_phrase(*repl[2])}", f"{a.prompt} and {_phrase(*repl[3])}"]
                groups.append((i, len(caps), bind is not None))
                caps += [true] + ([bind] if bind else []) + ones
        if caps:
            ct = processor.tokenizer(caps, padding=True, return_tensors="pt")
            ce = _normalize(_features(model.get_text_features(**ct)))
            for i, at, has_bind in groups:
                s = (ce[at:at + 6] @ ie[i])
                k = 1
                if has_bind:
                    bind_ok += bool(s[0] > s[1])
                    bind_n += 1
                    k = 2
                one_ok += bool(s[0] > s[k:k + 4].max())
                one_n += 1
    return {
        "scenes": n,
        "present_above_absent": obj_ok / obj_n,
        "present_objects": obj_n,
        "scene_all_correct": scene_ok / n,
        "same_colour_distractor": col_ok / col_n,
        "same_shape_distractor": shp_ok / shp_n,
        "caption_vs_swapped_binding": bind_ok / max(1, bind_n),
        "binding_cases": bind_n,
        "caption_vs_one_absent": one_ok / max(1, one_n),
        "caption_cases": one_n,
    }


def main(argv: Optional[list] = None) -> None:
    from .model import load_shapes_clip

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the shipped one)")
    args = ap.parse_args(argv)
    model, processor = load_shapes_clip(args.model)
    print(json.dumps(evaluate(model, processor, n=args.n), indent=2))


if __name__ == "__main__":
    main()
