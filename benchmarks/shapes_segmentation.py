"""Open-vocabulary segmentation on ShapesCLIP, per method: every scene segmented over all 48
single-object prompts, scored against the true masks; each method's threshold chosen on held-out
validation scenes (seeds from 500,000), never on the scored ones (seeds 0 .. n - 1).

    OMP_NUM_THREADS=1 python benchmarks/shapes_segmentation.py --n 50 --n-val 20 --out seg_out

Writes seg_out/segmentation.md, .json and, with --figure PATH, an example figure.
RISE, IntegratedGradients and Occlusion are left out: 48 maps per scene cost them minutes.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from captum_gradeclip.benchmark.methods import image_methods
from captum_gradeclip.models import load_shapes
from captum_gradeclip.segment import shapes_segmentation
from captum_gradeclip.shapes import all_prompts

SLOW = ("RISE", "IntegratedGradients", "Occlusion")


def methods(clip, sim):
    return {k: v for k, v in image_methods(clip, sim).items() if not any(s in k for s in SLOW)}


def table(results) -> str:
    lines = ["| method | normalisation | threshold (val.) | val. mIoU | mIoU ↑ | pixel acc. ↑ | background IoU | ms / scene |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.method} | {r.normalise} | {r.threshold:.2f} | {r.validation_miou:.3f} | {r.miou:.3f} | "
                     f"{r.pixel_accuracy:.3f} | {r.background_iou:.3f} | {r.ms_per_scene:.0f} |")
    return "\n".join(lines)


def figure(clip, sim, results, path: Path, seeds=(1, 4, 7)) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from captum_gradeclip.segment import scene_labels, segment
    from captum_gradeclip.segment.shapes import prompt_maps
    from captum_gradeclip.shapes import render_scene

    ms = methods(clip, sim)
    names = ["Grad-ECLIP (cosine, default)", "GAME (Chefer et al.)", "MaskCLIP"]
    best = {r.method: r for r in results if r.normalise == "joint"}
    chosen = [best[n] for n in names if n in best]
    k = len(all_prompts())
    from matplotlib.colors import ListedColormap

    tab = plt.get_cmap("tab20").colors
    cmap = ListedColormap([(1, 1, 1)] + [tab[j % 20] for j in range(k)])  # background white
    fig, axes = plt.subplots(len(seeds), 2 + len(chosen), figsize=(2.2 * (2 + len(chosen)), 2.3 * len(seeds)))
    for row, s in zip(axes, seeds):
        scene = render_scene(seed=s)
        truth = scene_labels(scene, all_prompts())
        row[0].imshow(scene.image)
        row[0].set_title(", ".join(scene.prompts)[:40], fontsize=6)
        row[1].imshow(truth, cmap=cmap, vmin=0, vmax=k, interpolation="nearest")
        row[1].set_title("truth", fontsize=8)
        for ax, r in zip(row[2:], chosen):
            lab = segment(prompt_maps(ms[r.method], clip.pixels([scene.image]), k), truth.shape,
                          threshold=r.threshold)[0]
            ax.imshow(lab, cmap=cmap, vmin=0, vmax=k, interpolation="nearest")
            ax.set_title(f"{r.method.split(' (')[0]} (t={r.threshold:.2f})", fontsize=7)
        for ax in row:
            ax.axis("off")
    fig.suptitle("open-vocabulary segmentation over the 48 prompts (colour = predicted prompt)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--n-val", type=int, default=20)
    ap.add_argument("--out", default="seg_out")
    ap.add_argument("--figure", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    clip = load_shapes()
    sim = clip.image_similarity(*clip.tokens(all_prompts()))
    results = shapes_segmentation(clip, methods(clip, sim), n=a.n, n_val=a.n_val)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    md = table(results)
    (out / "segmentation.md").write_text(md + "\n")
    (out / "segmentation.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    print(md)
    if a.figure:
        figure(clip, sim, results, Path(a.figure))


if __name__ == "__main__":
    main()
