"""Write an ImageNet-style tree of rendered ShapesCLIP scenes, one folder per class prompt, for the
authors' protocol (``benchmark --protocol grad-eclip``), which needs labelled images.

    python benchmarks/shapes_imagefolder.py OUT_DIR --per-class 4

Each image holds one object of its class (random place and size, seeded) on a random background:
``OUT_DIR/a_red_circle/0003.png`` ... The folder names, ``_`` read as spaces, are the 48 prompts
ShapesCLIP was trained on, so the class names come from the folders and the template is ``"{}"``
(ShapesCLIP's own phrasing: no ImageNet templates). ``OUT_DIR/classes.txt`` lists them.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from captum_gradeclip.shapes.scenes import COLOUR_NAMES, SHAPES, ShapeSpec, render_scene


def write(out: Path, per_class: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    names = []
    for c in COLOUR_NAMES:
        for s in SHAPES:
            spec = ShapeSpec(c, s)
            folder = out / spec.prompt.replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            names.append(spec.prompt)
            for k in range(per_class):
                size = rng.uniform(0.3, 0.6)
                centre = (rng.uniform(size / 2, 1 - size / 2), rng.uniform(size / 2, 1 - size / 2))
                scene = render_scene([ShapeSpec(c, s, centre, size)], seed=rng.randrange(10**6))
                scene.image.save(folder / f"{k:04d}.png")
    (out / "classes.txt").write_text("\n".join(sorted(names, key=lambda p: p.replace(" ", "_"))) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    write(Path(a.out), a.per_class, a.seed)
