"""Cost of ``analyze attributes`` per probe image, against explaining the same texts as an
``explain-dataset`` job does.

    python benchmarks/analysis_attributes.py [--scenes 50] [--threads 1]

On the generated ShapesCLIP suite (its first ``--scenes`` three-object scenes: 5 probes, 9
distinct texts each), per scene, the median over scenes of the seconds of:
- ``explain-dataset row set``: the engine's batch explainer (``CLIPExplainer``: Grad-ECLIP, one
  ``attribute_all`` over the image's texts) on that one image, i.e. what a job spends on the
  image's rows, Parquet writing not counted;
- ``study maps``: :func:`captum_gradeclip.analysis.attributes.explain_scene`: Grad-ECLIP and
  GAME over the same texts, one ``attribute_all`` each (scores from Grad-ECLIP's forward);
- ``study total``: those plus scoring every probe (pointing games, energy shares).
Prints the seconds and the ratios to the explain-dataset cost, per scene and per text.
"""

from __future__ import annotations

import argparse
import statistics
import time


def _timed(fn, *args, repeat: int = 3) -> float:
    """The best of ``repeat`` runs of ``fn(*args)``, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def _study_total(clip, scene) -> None:
    from captum_gradeclip.analysis import attributes as A

    index, scores, maps = A.explain_scene(clip, scene)
    for p in scene.probes:
        A.score_probe(p, scores, maps, index)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    from captum_gradeclip.analysis import attributes as A
    from captum_gradeclip.models import load_shapes
    from captum_gradeclip.scale import CLIPExplainer

    torch.set_num_threads(args.threads)
    clip = load_shapes()
    scenes = [s for s in A.shapes_suite(clip, args.scenes) if len(s.probes) > 1]
    engine = CLIPExplainer(clip)
    cost = {"explain-dataset row set": [], "study maps (Grad-ECLIP + GAME)": [], "study total (maps + scoring)": []}
    n_texts = []
    for sc in scenes:
        texts = list(dict.fromkeys(t for p in sc.probes for t in p.texts()))
        n_texts.append(len(texts))
        x = sc.pixels[None]
        cost["explain-dataset row set"].append(_timed(engine, x, [texts]))
        cost["study maps (Grad-ECLIP + GAME)"].append(_timed(A.explain_scene, clip, sc))
        cost["study total (maps + scoring)"].append(_timed(_study_total, clip, sc))
    base = statistics.median(cost["explain-dataset row set"])
    t = statistics.median(n_texts)
    print(f"ShapesCLIP, {len(scenes)} scenes, median {t:.0f} texts per scene, {args.threads} thread(s)")
    print("| per scene | seconds (median) | per text | x explain-dataset |")
    print("|---|---|---|---|")
    for k, v in cost.items():
        m = statistics.median(v)
        print(f"| {k} | {m:.4f} | {m / t:.4f} | {m / base:.2f} |")


if __name__ == "__main__":
    main()
