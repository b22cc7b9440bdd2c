"""Speed and memory of Grad-ECLIP against a plain forward, LayerGradCam and IG.

    python benchmarks/speed.py                 # ViT-B/16-sized CLIP, random weights, 224 & 448 px
    python benchmarks/speed.py --quick         # a tiny CLIP, seconds (what CI runs)
    python benchmarks/speed.py --backend open_clip --sizes 224   # open_clip ViT-B-16, random weights

Every cell runs in its own subprocess (a fresh allocator). Reported: median wall time over the
repeats (the first call, a warm-up, not counted when repeats > 1), the process' peak resident
memory while the method ran (sampled every millisecond), and that peak above the resident memory
after the model was built (the memory the method itself needs). Image batch N = 1; T texts.
``attribute_all_single_head`` is ``attribute_all`` in the authors' reproduction mode
(``single_head=True``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

METHODS = ("forward", "attribute_loop", "attribute_all", "attribute_all_single_head", "gradcam_loop", "ig50")


def build(quick: bool, size: int, texts: int):
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    if quick:
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      image_size=size, patch_size=16)
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
        proj = 16
    else:  # ViT-B/16 (openai/clip-vit-base-patch16) sizes
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      image_size=224, patch_size=16)
        text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
        proj = 512
    text.update(vocab_size=49408, max_position_embeddings=77, eos_token_id=49407, bos_token_id=49406,
                pad_token_id=49407)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=proj)
    model = CLIPModel(cfg).eval()
    ids = torch.randint(0, 49000, (texts, 16))
    ids[:, 0], ids[:, -1] = 49406, 49407
    pixels = torch.randn(1, 3, size, size)
    return model, ids, pixels


def build_open_clip(quick: bool, size: int, texts: int):
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16" if not quick else "ViT-B-32", pretrained=None).eval()
    if size != model.visual.image_size[0]:
        raise SystemExit(f"the open_clip backend runs at the model's own size ({model.visual.image_size[0]} px)")
    ids = torch.zeros(texts, 77, dtype=torch.long)
    ids[:, :16] = torch.randint(1, 49000, (texts, 16))
    ids[:, 0], ids[:, 15] = 49406, 49407
    return model, ids, torch.randn(1, 3, size, size)


def run_cell(quick: bool, method: str, size: int, texts: int, repeats: int, backend: str = "hf") -> dict:
    import torch
    from captum.attr import IntegratedGradients, LayerGradCam

    from captum_gradeclip import ImageGradECLIP, ImageTextSimilarity
    from captum_gradeclip._memory import PeakRSS

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if backend == "open_clip":
        from captum_gradeclip.openai import EncoderImageTextSimilarity

        model, ids, pixels = build_open_clip(quick, size, texts)
        sim = EncoderImageTextSimilarity(model, ids)
        layers = model.visual.transformer.resblocks
    else:
        model, ids, pixels = build(quick, size, texts)
        sim = ImageTextSimilarity(model, input_ids=ids,
                                  interpolate_pos_encoding=size != model.config.vision_config.image_size)
        layers = model.vision_model.encoder.layers
    ge = ImageGradECLIP(sim, layers[-1])
    ge1 = ImageGradECLIP(sim, layers[-1], single_head=True)  # the authors' reproduction mode
    gc = LayerGradCam(sim, layers[-1])
    ig = IntegratedGradients(sim)

    def op():
        if method == "forward":
            with torch.no_grad():
                return sim(pixels)
        if method == "attribute_loop":
            return [ge.attribute(pixels, target=t) for t in range(texts)]
        if method == "attribute_all":
            return ge.attribute_all(pixels)
        if method == "attribute_all_single_head":
            return ge1.attribute_all(pixels)
        if method == "gradcam_loop":
            return [gc.attribute(pixels, target=t) for t in range(texts)]
        if method == "ig50":
            return [ig.attribute(pixels, target=t, n_steps=50, internal_batch_size=10) for t in range(texts)]
        raise ValueError(method)

    times = []
    with PeakRSS() as mem:
        for _ in range(max(1, repeats) + (1 if repeats > 1 else 0)):
            t0 = time.perf_counter()
            op()
            times.append(time.perf_counter() - t0)
    if repeats > 1:
        times = times[1:]
    return dict(method=method, size=size, texts=texts, seconds=statistics.median(times),
                peak_mb=mem.peak_mb, extra_mb=mem.extra_mb, repeats=len(times))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model (smoke test)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    ap.add_argument("--texts", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ig-texts", type=int, nargs="+", default=[1], help="T values IG runs for (slow)")
    ap.add_argument("--json", default=None, help="write the cells here")
    ap.add_argument("--backend", choices=("hf", "open_clip"), default="hf",
                    help="hf: a Hugging Face CLIPModel; open_clip: open_clip's ViT-B-16 (needs the extra)")
    ap.add_argument("--cell", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cell:
        method, size, texts, repeats = args.cell.split(",")
        print(json.dumps(run_cell(args.quick, method, int(size), int(texts), int(repeats), args.backend)))
        return
    if args.quick:
        args.sizes, args.texts, args.repeats = [32, 64] if args.backend == "hf" else [224], [1, 4], 1
    cells = []
    for size in args.sizes:
        for texts in args.texts:
            for method in METHODS:
                if method == "ig50" and texts not in args.ig_texts:
                    continue
                if method == "forward" and texts != args.texts[0]:
                    continue  # the image forward does not depend on T (text embeddings are cached)
                reps = args.repeats if method.startswith(("forward", "attribute_all")) else 1
                cmd = [sys.executable, __file__, "--cell", f"{method},{size},{texts},{reps}"]
                cmd += (["--quick"] if args.quick else []) + ["--backend", args.backend]
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode != 0:  # e.g. killed by the kernel for memory: record it, go on
                    why = (f"killed by signal {-run.returncode} (out of memory?)" if run.returncode < 0
                           else (run.stderr.strip().splitlines() or ["failed"])[-1])
                    cells.append(dict(method=method, size=size, texts=texts, seconds=None, peak_mb=None,
                                      extra_mb=None, repeats=0, failed=why))
                    print(f"{method:15s} {size:4d}px T={texts:3d}  {why}", flush=True)
                    continue
                cell = json.loads(run.stdout.strip().splitlines()[-1])
                cells.append(cell)
                print(f"{method:15s} {size:4d}px T={texts:3d}  {cell['seconds']:8.3f} s  "
                      f"peak {cell['peak_mb']:7.0f} MB  (+{cell['extra_mb']:.0f} MB)", flush=True)
    print()
    print(table(cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(cells, f, indent=1)


def table(cells: list) -> str:
    rows = ["| px | T | method | time (s) | x forward | peak RSS (MB) | x forward | above model (MB) | x forward |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    fwd = {c["size"]: c for c in cells if c["method"] == "forward"}
    for c in cells:
        f = fwd[c["size"]]
        if c.get("failed"):
            rows.append(f"| {c['size']} | {c['texts']} | {c['method']} | {c['failed']} | | | | | |")
            continue
        rows.append(f"| {c['size']} | {c['texts'] if c['method'] != 'forward' else '-'} | {c['method']} | "
                    f"{c['seconds']:.3f} | {c['seconds'] / f['seconds']:.2f} | {c['peak_mb']:.0f} | "
                    f"{c['peak_mb'] / f['peak_mb']:.2f} | {c['extra_mb']:.0f} | "
                    f"{c['extra_mb'] / max(f['extra_mb'], 1e-9):.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
