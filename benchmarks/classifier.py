"""Grad-ECLIP on an image classifier, against Captum's LayerGradCam, IntegratedGradients and
Occlusion: the shipped ShapesViT (``captum_gradeclip.shapes.classifier``) on held-out ShapesCLIP
scenes with exact object masks.

Each scene holds ``--objects`` objects; each object's class logit is explained (so with two
objects the other one is a distractor). Metrics: the pointing game (the standard 15 px at 224 px,
scaled: 4 px on 64 px images), and deletion / insertion of the explained class's softmax
probability (noise replacement, ``--step`` of the pixels per step; deletion: lower is better,
insertion: higher is better)::

    python benchmarks/classifier.py --n 100 --objects 2
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable, Dict

import torch
from captum.attr import IntegratedGradients, LayerGradCam, Occlusion

from captum_gradeclip import ImageGradECLIP
from captum_gradeclip.families import ImageClassifierLogits
from captum_gradeclip.metrics import deletion, insertion, pointing_game
from captum_gradeclip.metrics.localization import standard_tolerance
from captum_gradeclip.shapes.classifier import accuracy, class_of, load_shapes_classifier, scenes


def methods(model) -> Dict[str, Callable]:
    """``name -> explain(pixels (N, 3, H, W), target (N,)) -> (N, 1, h, w)``."""
    fn = ImageClassifierLogits(model)
    ge = ImageGradECLIP(fn, model.vit.layers[-1])
    lgc = LayerGradCam(fn, model.vit.embeddings.patch_embeddings.projection)
    ig, occ = IntegratedGradients(fn), Occlusion(fn)
    p = fn.patch_size
    gen = torch.Generator().manual_seed(0)
    return {
        "Grad-ECLIP (last block)": lambda x, t: ge.attribute(x, target=t),
        "Captum LayerGradCam (patch embedding)": lambda x, t: lgc.attribute(x, target=t, relu_attributions=True),
        "Captum IntegratedGradients (32 steps, |.| summed)": lambda x, t: ig.attribute(
            x, target=t, n_steps=32, internal_batch_size=64).abs().sum(1, keepdim=True),
        "Captum Occlusion (patch windows)": lambda x, t: occ.attribute(
            x, target=t, sliding_window_shapes=(3, p, p), strides=(3, p // 2, p // 2),
            perturbations_per_eval=32).sum(1, keepdim=True),
        "random": lambda x, t: torch.rand(x.shape[0], 1, 8, 8, generator=gen),
    }


def run(n: int, objects: int, step: float, batch: int, path=None) -> dict:
    model = load_shapes_classifier(path)
    px, sc = scenes(n, seed0=0, n_objects=objects)
    x = px.repeat_interleave(objects, 0)
    target = torch.tensor([class_of(s, i) for s in sc for i in range(objects)])
    masks = torch.stack([s.masks[i] for s in sc for i in range(objects)])
    probs = torch.nn.Sequential(ImageClassifierLogits(model), torch.nn.Softmax(-1))
    tol = standard_tolerance(*masks.shape[-2:])
    with torch.no_grad():
        top = model(pixel_values=x).logits.topk(objects, -1).indices
    rows = {"explanations": len(target), "tolerance_px": tol, "accuracy_1_object": accuracy(model),
            f"targets_in_top{objects}": float((top == target[:, None]).any(-1).float().mean()), "methods": {}}
    for name, explain in methods(model).items():
        t0 = time.time()
        maps = torch.cat([explain(x[i:i + batch], target[i:i + batch]) for i in range(0, len(x), batch)])
        secs = time.time() - t0
        d = deletion(probs, x, maps, target, step=step)
        ins = insertion(probs, x, maps, target, step=step)
        rows["methods"][name] = {
            "pointing_game": float(pointing_game(maps, masks, tolerance=tol).float().mean()),
            "deletion_auc": float(d.auc.mean()), "insertion_auc": float(ins.auc.mean()),
            "seconds_per_image": secs / len(x)}
        print(name, rows["methods"][name], flush=True)
    return rows


def table(rows: dict) -> str:
    out = ["| method | pointing game | deletion AUC (lower better) | insertion AUC (higher better) | ms / image |",
           "|---|---|---|---|---|"]
    for name, r in rows["methods"].items():
        out.append(f"| {name} | {r['pointing_game']:.3f} | {r['deletion_auc']:.3f} | {r['insertion_auc']:.3f} "
                   f"| {1000 * r['seconds_per_image']:.1f} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100, help="scenes")
    p.add_argument("--objects", type=int, default=2, help="objects per scene (each one's class is explained)")
    p.add_argument("--step", type=float, default=0.02, help="share of pixels per deletion/insertion step")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--json", default=None, help="write the numbers here")
    p.add_argument("--model", default=None, help="a ShapesViT folder (default: the shipped one)")
    args = p.parse_args()
    torch.manual_seed(0)
    rows = run(args.n, args.objects, args.step, args.batch, args.model)
    print(f"\n{rows['explanations']} explanations, tolerance {rows['tolerance_px']} px, "
          f"1-object accuracy {rows['accuracy_1_object']:.3f}, "
          f"targets in top-{args.objects}: {rows[f'targets_in_top{args.objects}']:.3f}\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
