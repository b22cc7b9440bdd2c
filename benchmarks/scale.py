"""Throughput of explain-dataset against a plain batched forward and the naive loop.

    python benchmarks/scale.py                 # ShapesCLIP and a ViT-B/16-sized CLIP (random weights)
    python benchmarks/scale.py --quick         # ShapesCLIP on a few images (seconds)

For each model, images/s of:
- ``forward``: the plain batched no-grad forward (image tower + cosine with the T prompts) on
  already decoded pixels, ``--batch-size`` at a time: the ceiling;
- ``explain 1 proc``: ``captum-gradeclip explain-dataset`` in one process (shards of one batch),
  decoding PNGs with one DataLoader worker and writing Parquet, as its summary line reports it (the loop
  over the shards: model loading and process start-up not counted);
- ``explain 2 procs``: the same under ``torchrun --standalone --nproc-per-node 2``, images of
  both ranks over the slower rank's loop time;
- ``naive loop``: one image and one text at a time (``ImageGradECLIP.attribute``, one forward
  and one backward per pair), on fewer images.
Every process runs ``--threads`` torch threads (default 1, torchrun's own default for several
processes per node: on a machine shared with other jobs, 2 OpenMP threads per process were
several times slower than 1 here). Each cell runs in fresh processes; "peak MB" is the largest resident memory of any process of
the cell (ru_maxrss of its process tree: ranks and DataLoader workers included).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def vitb16_folder(path: Path) -> str:
    """A ViT-B/16-sized CLIP (openai/clip-vit-base-patch16 sizes, random weights) saved with
    ShapesCLIP's tokenizer and a 224 px image processor, so ``--model path`` loads it offline."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from captum_gradeclip.models import load_shapes

    tok = load_shapes().tokenizer
    torch.manual_seed(0)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=16)
    text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                vocab_size=49408, max_position_embeddings=77, eos_token_id=tok.eos_token_id,
                bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)).eval().save_pretrained(path)
    images = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(path)
    return str(path)


def make_images(folder: Path, n: int) -> None:
    from captum_gradeclip.shapes import render_scene

    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n):
        render_scene(seed=s).image.save(folder / f"scene{s:05d}.png")


def measured(cmd: list, env: dict) -> dict:
    """Run ``cmd`` in a fresh wrapper process; its stdout/stderr and the peak RSS of its tree."""
    wrapper = ("import json, resource, subprocess, sys\n"
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "print(json.dumps({'rc': r.returncode, 'out': r.stdout, 'err': r.stderr[-5000:],"
               " 'peak_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    r = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=env)
    res = json.loads(r.stdout)
    if res["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res['err']}")
    return res


def cell(kind: str, model: str, images: str, prompts: str, batch: int, n_naive: int) -> None:
    """In-process cells (``forward``, ``naive``): print ``{"images_per_s": ...}``."""
    import torch
    from PIL import Image

    from captum_gradeclip import ImageGradECLIP
    from captum_gradeclip.models import load

    clip = load(None if model == "shapes" else model)
    texts = Path(prompts).read_text().split("\n")[:-1]
    files = sorted(Path(images).glob("*.png"))[: n_naive if kind == "naive" else None]
    pixels = clip.pixels([Image.open(f).convert("RGB") for f in files])
    sim = clip.image_similarity(*clip.tokens(texts))
    expl = ImageGradECLIP(sim, clip.image_layers[-1])
    t0 = time.perf_counter()
    for s in range(0, len(pixels), batch if kind == "forward" else 1):
        if kind == "forward":
            with torch.no_grad():
                sim(pixels[s:s + batch])
        else:
            for k in range(len(texts)):
                expl.attribute(pixels[s:s + 1], target=k)
    print(json.dumps({"images_per_s": len(pixels) / (time.perf_counter() - t0)}))


def run_model(name: str, model: str, n: int, n_naive: int, batch: int, threads: int, tmp: Path) -> dict:
    images, prompts = tmp / f"{name}-images", tmp / "prompts.txt"
    make_images(images, n)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    me = [sys.executable, str(Path(__file__).resolve()), "--cell"]
    common = ["--model", model, "--images", str(images), "--prompts", str(prompts), "--batch-size", str(batch)]
    res = {}
    for kind, nn in (("forward", n), ("naive loop", n_naive)):
        r = measured(me + [kind.split()[0], *common, "--naive-images", str(n_naive)], env)
        res[kind] = {"images": nn, "images_per_s": json.loads(r["out"])["images_per_s"], "peak_mb": r["peak_mb"]}
    job = ["explain-dataset", "--images", str(images), "--prompts", str(prompts), "--batch-size", str(batch),
           "--shard-size", str(batch), "--workers", "1", "--no-progress"]
    if model != "shapes":
        job += ["--model", model]
    launchers = {"explain 1 proc": [sys.executable, "-m", "captum_gradeclip"],
                 "explain 2 procs": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                     "--nproc-per-node", "2", "-m", "captum_gradeclip"]}
    for kind, launch in launchers.items():
        out = tmp / f"{name}-{kind.replace(' ', '-')}"
        r = measured(launch + job + ["--out", str(out)], env)
        ips = float(re.search(r"\(([\d.]+) images/s", r["err"]).group(1))
        res[kind] = {"images": n, "images_per_s": ips, "peak_mb": r["peak_mb"]}
    return res


def table(results: dict) -> str:
    lines = ["| model | run | images | images/s | x forward | peak MB |", "|---|---|---:|---:|---:|---:|"]
    for name, res in results.items():
        fwd = res["forward"]["images_per_s"]
        for kind, r in res.items():
            lines.append(f"| {name} | {kind} | {r['images']} | {r['images_per_s']:.2f} | "
                         f"{r['images_per_s'] / fwd:.2f} | {r['peak_mb']:.0f} |")
        two, one = res["explain 2 procs"]["images_per_s"], res["explain 1 proc"]["images_per_s"]
        lines.append(f"| {name} | 2 procs / 1 proc | | {two / one:.2f}x | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ShapesCLIP only, 32 images")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--texts", type=int, default=8, help="prompts per image (T)")
    ap.add_argument("--models", nargs="+", default=["shapes", "vitb16"], choices=["shapes", "vitb16"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (OMP_NUM_THREADS)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    ap.add_argument("--cell", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--images", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--prompts", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--naive-images", type=int, default=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        return cell(args.cell, args.model, args.images, args.prompts, args.batch_size, args.naive_images)
    from captum_gradeclip.shapes import all_prompts

    results = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "prompts.txt").write_text("".join(p + "\n" for p in all_prompts()[: args.texts]))
        plans = [("ShapesCLIP 64 px", "shapes", 32 if args.quick else 512, 8 if args.quick else 32)]
        if not args.quick and "vitb16" in args.models:
            plans.append(("ViT-B/16 224 px", vitb16_folder(tmp / "vitb16"), 64, 4))
        plans = [p for p in plans if p[1] != "shapes" or "shapes" in args.models]
        for name, model, n, n_naive in plans:
            results[name] = run_model(name, model, n, n_naive, args.batch_size, args.threads, tmp)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    load = os.getloadavg()
    print(f"\nT = {args.texts} prompts, batch {args.batch_size}, {args.threads} thread(s) per process; "
          f"{os.cpu_count()} CPUs, load average "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) at the end\n")
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
