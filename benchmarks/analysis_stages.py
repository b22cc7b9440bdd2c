"""What each stage of the three ``analyze`` studies costs on ShapesCLIP, per image, on one core: the
numbers to extrapolate a COCO run from.

    python benchmarks/analysis_stages.py                 # 40 scenes per study
    python benchmarks/analysis_stages.py --scenes 20     # quicker

Each study's own functions run in this process with ``torch.set_num_threads(1)``; every stage is
timed in CPU seconds of the process (``time.process_time``: other jobs on a shared machine do not
count) and divided by the number of images:

- decomposition / concreteness: ``maps`` (the engine job: image maps, scores and word maps of each
  image's texts), ``rows`` (tokens merged into words, phrase weights, the per-pair numbers),
  ``statistics`` (``summarize``: bootstrap intervals, 1000 resamples), ``figure``;
- attributes: ``suite`` (generating the probes), ``maps + scoring`` (Grad-ECLIP and GAME maps of
  every prompt and distractor, and the measures), ``statistics``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict


def _clock() -> Callable[[str], None]:
    last = [time.process_time()]
    stages: Dict[str, float] = {}

    def lap(name: str) -> None:
        now = time.process_time()
        stages[name] = now - last[0]
        last[0] = now

    lap.stages = stages  # type: ignore[attr-defined]
    return lap


def decomposition(clip, n: int, tmp: Path) -> Dict[str, float]:
    from captum_gradeclip.analysis.common import run_maps_job
    from captum_gradeclip.analysis.decomposition import from_maps, summarize
    from captum_gradeclip.analysis.decomposition_cli import _scene_inputs
    from captum_gradeclip.analysis.figures import decomposition_figure
    from captum_gradeclip.analysis.words import bpe_tokens, word_scheme
    from captum_gradeclip.scale import read_maps

    data, specs, image_of, _ = _scene_inputs(SimpleNamespace(scenes=n), clip)
    lap = _clock()
    maps = run_maps_job(data, clip, tmp / "dec", batch_size=1, config={"bench": "decomposition"})
    lap("maps")
    job = read_maps(maps, columns=["image", "text", "score", "map", "word_map"])
    rows, _, ex = from_maps(specs, job, lambda t: bpe_tokens(clip, t)[0], keep=4, scheme=word_scheme(clip.tokenizer))
    lap("rows")
    summarize(rows)
    lap("statistics")
    for e in ex:
        e["image"] = image_of(e["image_key"])
    decomposition_figure(ex, tmp / "dec.png")
    lap("figure")
    return lap.stages


def concreteness(clip, n: int, tmp: Path) -> Dict[str, float]:
    from captum_gradeclip.analysis.common import SceneDataset, run_maps_job
    from captum_gradeclip.analysis.concreteness import CONCRETENESS_SEED_START, from_maps, load_ratings, summarize
    from captum_gradeclip.analysis.figures import concreteness_figure
    from captum_gradeclip.analysis.words import bpe_tokens, word_scheme
    from captum_gradeclip.scale import read_maps

    ratings = load_ratings()
    data = SceneDataset(clip, range(CONCRETENESS_SEED_START, CONCRETENESS_SEED_START + n), lambda sc: [sc.caption()])
    lap = _clock()
    maps = run_maps_job(data, clip, tmp / "conc", batch_size=1, config={"bench": "concreteness"})
    lap("maps")
    job = read_maps(maps, columns=["image", "text", "words", "word_map"])
    rows, errors = from_maps(job, lambda t: bpe_tokens(clip, t)[0], ratings, scheme=word_scheme(clip.tokenizer))
    lap("rows")
    s = summarize(rows, errors, min_count=1)
    lap("statistics")
    concreteness_figure(s, tmp / "conc.png")
    lap("figure")
    return lap.stages


def attributes(clip, n: int, tmp: Path) -> Dict[str, float]:
    import torch

    from captum_gradeclip.analysis import attributes as A

    lap = _clock()
    scenes = A.shapes_suite(clip, n)
    lap("suite")
    with torch.enable_grad():
        rows, _ = A.measure(clip, scenes)
    lap("maps + scoring")
    A.summarize(rows)
    lap("statistics")
    return lap.stages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=40)
    args = ap.parse_args()
    import torch

    from captum_gradeclip.models import load

    torch.set_num_threads(1)
    clip = load(None, None)
    images = {"decomposition": args.scenes, "concreteness": args.scenes, "attributes": 2 * args.scenes}
    with tempfile.TemporaryDirectory() as d:
        for name, fn in (("decomposition", decomposition), ("concreteness", concreteness), ("attributes", attributes)):
            stages = fn(clip, args.scenes, Path(d))
            cells = ", ".join(f"{k} {1000 * v / images[name]:.1f}" for k, v in stages.items())
            print(f"{name} ({images[name]} images): CPU ms per image: {cells}; total {sum(stages.values()):.1f} s")


if __name__ == "__main__":
    main()
