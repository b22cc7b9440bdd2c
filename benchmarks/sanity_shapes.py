"""Adebayo et al.'s cascading model-parameter randomisation on ShapesCLIP, for every image method
of the benchmark: the image tower's 4 attention layers randomised from the top down, the maps
of held-out scenes (seeds 0 .. n - 1, each explained for its first object's prompt among the 48)
compared with the originals (Spearman, SSIM). A method passes when the mean Spearman with all
layers randomised is below 0.5 (captum_gradeclip.metrics.sanity.PASS_BELOW).

    OMP_NUM_THREADS=1 python benchmarks/sanity_shapes.py --n 8 --out sanity_out
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from captum_gradeclip.benchmark.methods import image_methods
from captum_gradeclip.metrics import cascading_randomization
from captum_gradeclip.metrics.sanity import PASS_BELOW
from captum_gradeclip.models import load_shapes
from captum_gradeclip.shapes import all_prompts, render_scene


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--out", default="sanity_out")
    a = ap.parse_args()
    torch.set_num_threads(1)
    clip = load_shapes()
    prompts = all_prompts()
    sim = clip.image_similarity(*clip.tokens(prompts))
    scenes = [render_scene(seed=s) for s in range(a.n)]
    pixels = clip.pixels([s.image for s in scenes])
    target = torch.tensor([prompts.index(s.prompts[0]) for s in scenes])
    rows = []
    for name, method in image_methods(clip, sim).items():
        torch.manual_seed(0)  # RISE's masks
        r = cascading_randomization(method, clip.image_layers, pixels, target)
        rows.append({"method": name, "stages": r.stages, "spearman": r.spearman.mean(1).tolist(),
                     "ssim": r.ssim.mean(1).tolist(), "passed": r.passed})
        print(name, [round(v, 3) for v in rows[-1]["spearman"]], r.passed, flush=True)
    head = " | ".join(f"Spearman, {s}" for s in rows[0]["stages"])
    lines = [f"| method | {head} | SSIM, all | passes (Spearman < {PASS_BELOW}) |",
             "|---" + "|---:" * (len(rows[0]["stages"]) + 1) + "|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | " + " | ".join(f"{v:.3f}" for v in r["spearman"]) +
                     f" | {r['ssim'][-1]:.3f} | {'yes' if r['passed'] else '**no**'} |")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sanity.md").write_text("\n".join(lines) + "\n")
    (out / "sanity.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
