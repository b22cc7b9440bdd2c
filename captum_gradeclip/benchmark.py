"""``captum-gradeclip benchmark``: Grad-ECLIP against the CLIP explanation baselines.

On ShapesCLIP (default): held-out scenes with known object masks; every object of every scene is
explained for its prompt among all 48 single-object prompts (so zero-shot accuracy over that
prompt set is tracked too). Localisation (pointing game, energy pointing game), faithfulness
(deletion / insertion AUC), text-side word deletion on compositional captions, time per
explanation and peak memory.

On any CLIP and a folder of images (``--model``, ``--images``, ``--prompts``): faithfulness
only; each image is explained for the prompt the model ranks first (as in the Grad-ECLIP
paper's ImageNet protocol).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

# ---- the methods ---------------------------------------------------------------------------


def image_methods(clip, sim) -> Dict[str, Callable]:
    """name -> ``explain(pixels (N, 3, H, W), target (N,)) -> (N, 1, h, w)``-like maps."""
    from captum.attr import IntegratedGradients, LayerGradCam, Occlusion

    from . import ImageGradECLIP
    from .baselines import GAME, RISE, AttentionRollout, CLSAttention, MaskCLIP, TokenGradCAM

    layers, gradcam_layer, gradcam_name, p = clip.image_layers, clip.gradcam_layer, clip.gradcam_name, clip.patch_size
    last = layers[-1]
    resnet = hasattr(last, "c_proj") and not hasattr(last, "out_proj")

    def ge(**kw):
        g = ImageGradECLIP(sim, last, **kw)
        return lambda x, t: g.attribute(x, target=t)

    def cls(c, lay):
        g = c(sim, lay)
        return lambda x, t: g.attribute(x, target=t)

    ig = IntegratedGradients(sim)
    occ = Occlusion(sim)
    lgc = LayerGradCam(sim, gradcam_layer)
    rise = RISE(sim, n_masks=500, grid=8, batch_size=250)
    methods = {
        "Grad-ECLIP (cosine, default)": ge(),
        "Grad-ECLIP (cosine_per_head)": ge(spatial="cosine_per_head"),
        "Grad-ECLIP (attention)": ge(spatial="attention"),
        "Grad-ECLIP (uniform)": ge(spatial="uniform"),
        "Grad-ECLIP (single_head, authors')": ge(single_head=True),
        "CLS attention": cls(CLSAttention, last),
        "Attention rollout": cls(AttentionRollout, layers),
        "Token Grad-CAM": cls(TokenGradCAM, last),
        "GAME (Chefer et al.)": cls(GAME, layers),
        "MaskCLIP": cls(MaskCLIP, last),
        "RISE (500 masks)": lambda x, t: rise.attribute(x, target=t),
        f"Captum LayerGradCam ({gradcam_name})": lambda x, t: lgc.attribute(x, target=t, relu_attributions=True),
        "Captum IntegratedGradients (50 steps, |.| summed)": lambda x, t: ig.attribute(
            x, target=t, n_steps=50, internal_batch_size=50).abs().sum(1, keepdim=True),
        "Captum Occlusion (patch windows)": lambda x, t: occ.attribute(
            x, target=t, sliding_window_shapes=(3, p, p), strides=(3, p // 2, p // 2)).sum(1, keepdim=True),
    }
    if resnet:  # token Grad-CAM needs token inputs; LayerGradCam on layer4 is the Grad-CAM there
        del methods["Token Grad-CAM"]
    return methods


def text_methods(clip, tsim) -> Dict[str, Callable]:
    """name -> ``explain(input_ids (T, L), target, mask) -> (T, L)``."""
    from captum.attr import LayerIntegratedGradients

    from . import TextGradECLIP
    from .baselines import TextAttention, TextGAME, TextRollout

    layers = clip.text_layers
    lig = LayerIntegratedGradients(tsim, clip.token_embedding)

    def cls(c, lay):
        g = c(tsim, lay)
        return lambda ids, t, m: g.attribute(ids, target=t, additional_forward_args=(m,))

    return {
        "Grad-ECLIP (cosine, default)": cls(TextGradECLIP, layers[-8:]),
        "Text attention (EOS row)": cls(TextAttention, layers[-1]),
        "Text rollout": cls(TextRollout, layers),
        "Text GAME": cls(TextGAME, layers),
        "Captum LayerIntegratedGradients (token embeddings)": lambda ids, t, m: lig.attribute(
            ids, target=t, additional_forward_args=(m,), n_steps=50).sum(-1),
    }


# ---- ShapesCLIP protocol -------------------------------------------------------------------


def shapes_items(n_scenes: int, seed_start: int = 0):
    from .shapes import all_prompts, render_scene

    index = {p: i for i, p in enumerate(all_prompts())}
    items = []
    for s in range(seed_start, seed_start + n_scenes):
        sc = render_scene(seed=s)
        for k, obj in enumerate(sc.objects):
            items.append(dict(scene=s, image=sc.image, target=index[obj.prompt], mask=sc.masks[k], prompt=obj.prompt))
    return items


def memory_cell(method: str, side: str, model_path: Optional[str] = None) -> dict:
    """Peak memory of one explanation by ``method``, measured in this (fresh) process."""
    from ._memory import PeakRSS
    from .models import load_shapes
    from .shapes import all_prompts

    torch.set_num_threads(1)
    clip = load_shapes(model_path)
    items = shapes_items(2)
    px = clip.pixels([items[0]["image"]])
    if side == "image":
        sim = clip.image_similarity(*clip.tokens(all_prompts()))
        fn = image_methods(clip, sim)[method]
        with PeakRSS() as mem:
            fn(px, torch.tensor([items[0]["target"]]))
    else:
        tsim = clip.text_similarity(px)
        ids, mask = clip.tokens(["a red circle and a blue square"])
        fn = text_methods(clip, tsim)[method]
        with PeakRSS() as mem:
            fn(ids, 0, mask)
    return dict(extra_mb=mem.extra_mb)


def run_shapes(args) -> dict:
    from .metrics import deletion, energy_pointing_game, insertion, pointing_game, word_deletion
    from .models import load_shapes
    from .shapes import all_prompts

    torch.manual_seed(0)
    clip = load_shapes(args.model)
    items = shapes_items(args.n)
    pixels = clip.pixels([it["image"] for it in items])
    targets = torch.tensor([it["target"] for it in items])
    masks = torch.stack([it["mask"] for it in items])
    sim = clip.image_similarity(*clip.tokens(all_prompts()))
    methods = image_methods(clip, sim)
    if args.methods:
        methods = {k: v for k, v in methods.items() if any(m.lower() in k.lower() for m in args.methods)}
    results, examples = {}, {}
    bs = args.batch
    for name, fn in methods.items():
        maps, t0 = [], time.perf_counter()
        for s in range(0, len(items), bs):
            maps.append(fn(pixels[s:s + bs], targets[s:s + bs]).detach().float())
        elapsed = time.perf_counter() - t0
        maps = torch.cat(maps)
        dele = deletion(sim, pixels, maps, targets, step=args.step, replacement=args.replacement, accuracy=True)
        ins = insertion(sim, pixels, maps, targets, step=args.step, replacement=args.replacement, accuracy=True)
        results[name] = {
            "pointing_game": pointing_game(maps, masks).float().mean().item(),
            "energy_pointing_game": energy_pointing_game(maps, masks).mean().item(),
            "deletion_auc": dele.auc.mean().item(),
            "insertion_auc": ins.auc.mean().item(),
            "deletion_acc_auc": dele.accuracy_auc.mean().item(),
            "insertion_acc_auc": ins.accuracy_auc.mean().item(),
            "ms_per_explanation": 1000 * elapsed / len(items),
        }
        examples[name] = maps[: args.examples]
        print(f"  {name:52s} {elapsed:6.1f}s  pointing {results[name]['pointing_game']:.3f}  "
              f"deletion {results[name]['deletion_auc']:.4f}  insertion {results[name]['insertion_auc']:.4f}",
              flush=True)
    # text side: compositional captions of two objects, explained against their own image
    caps, imgs = [], []
    for s in sorted({it["scene"] for it in items}):
        objs = [it for it in items if it["scene"] == s]
        if len(objs) >= 2:
            caps.append(f"{objs[0]['prompt']} and {objs[1]['prompt']}")
            imgs.append(pixels[items.index(objs[0])])
    text_results = {}
    if caps:
        img = torch.stack(imgs)
        tsim = clip.text_similarity(img)
        ids, am = clip.tokens(caps)
        eos = tsim.eos_positions(ids)
        pos = torch.arange(ids.shape[1])[None]
        words = (pos > 0) & (pos < eos[:, None])
        repl = clip.tokenizer.convert_tokens_to_ids(args.word_replacement)
        tgt = torch.arange(len(caps))
        for name, fn in text_methods(clip, tsim).items():
            t0 = time.perf_counter()
            attr = torch.cat([fn(ids[i:i + 1], int(tgt[i]), am[i:i + 1]).detach().float() for i in range(len(caps))])
            elapsed = time.perf_counter() - t0
            wd = word_deletion(tsim, ids, attr, tgt, replacement_id=repl, words=words, additional_forward_args=(am,))
            text_results[name] = {"word_deletion_auc": wd.auc.mean().item(),
                                  "word_deletion_nauc": wd.normalized_auc.mean().item(),
                                  "ms_per_explanation": 1000 * elapsed / len(caps)}
    if not args.no_memory:
        for side, res in (("image", results), ("text", text_results)):
            for name in res:
                cmd = [sys.executable, "-m", "captum_gradeclip.benchmark", "--memory-cell", side, name]
                out = subprocess.run(cmd + ([args.model] if args.model else []),
                                     capture_output=True, text=True, check=True).stdout
                res[name]["peak_extra_mb"] = json.loads(out.strip().splitlines()[-1])["extra_mb"]
    return dict(protocol="shapes", scenes=args.n, items=len(items), captions=len(caps), step=args.step,
                replacement=args.replacement, image=results, text=text_results,
                _examples=dict(maps=examples, image=items[0]["image"], prompt=items[0]["prompt"],
                               mask=items[0]["mask"]))


# ---- any CLIP, any images ------------------------------------------------------------------


def run_folder(args) -> dict:
    from tqdm.auto import tqdm

    from ._io import CLIError, open_image
    from .metrics import deletion, insertion
    from .models import load

    folder = Path(args.images)
    if not folder.is_dir():
        raise CLIError(f"--images must be a folder of images, got {args.images}")
    if not args.prompts or not Path(args.prompts).is_file():
        raise CLIError("--prompts must be a text file with one prompt per line")
    prompts = [ln.strip() for ln in Path(args.prompts).read_text().splitlines() if ln.strip()]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".webp"})
    if args.n:
        files = files[: args.n]
    if not files:
        raise CLIError(f"no images (.png, .jpg, ...) in {folder}")
    clip = load(args.model, args.open_clip)
    sim = clip.image_similarity(*clip.tokens(prompts))
    methods = image_methods(clip, sim)
    if args.methods:
        methods = {k: v for k, v in methods.items() if any(m.lower() in k.lower() for m in args.methods)}
    acc = {name: {"deletion_auc": [], "insertion_auc": [], "deletion_acc_auc": [], "insertion_acc_auc": [],
                  "seconds": 0.0} for name in methods}
    for f in tqdm(files, desc="images"):
        px = clip.pixels([open_image(str(f))])
        with torch.no_grad():
            t = sim(px).argmax(1)
        for name, fn in methods.items():
            t0 = time.perf_counter()
            m = fn(px, t).detach().float()
            acc[name]["seconds"] += time.perf_counter() - t0
            d = deletion(sim, px, m, t, step=args.step, replacement=args.replacement, accuracy=True)
            i = insertion(sim, px, m, t, step=args.step, replacement=args.replacement, accuracy=True)
            acc[name]["deletion_auc"].append(d.auc.item())
            acc[name]["insertion_auc"].append(i.auc.item())
            acc[name]["deletion_acc_auc"].append(d.accuracy_auc.item())
            acc[name]["insertion_acc_auc"].append(i.accuracy_auc.item())
    res = {name: {k: (sum(v) / len(v) if isinstance(v, list) else 1000 * v / len(files)) for k, v in r.items()}
           for name, r in acc.items()}
    for r in res.values():
        r["ms_per_explanation"] = r.pop("seconds")
    return dict(protocol="folder", images=len(files), prompts=len(prompts), step=args.step,
                replacement=args.replacement, image=res, text={})


# ---- report --------------------------------------------------------------------------------


def table(res: dict) -> str:
    cols = [("pointing_game", "pointing ↑"), ("energy_pointing_game", "energy PG ↑"),
            ("deletion_auc", "deletion AUC ↓"), ("insertion_auc", "insertion AUC ↑"),
            ("deletion_acc_auc", "deletion acc. AUC ↓"), ("insertion_acc_auc", "insertion acc. AUC ↑"),
            ("ms_per_explanation", "ms / expl."), ("peak_extra_mb", "peak MB above model")]
    image = res["image"]
    cols = [c for c in cols if any(c[0] in r for r in image.values())]
    lines = ["| image method | " + " | ".join(h for _, h in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in image.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r.get(k)) for k, _ in cols) + " |")
    if res.get("text"):
        tcols = [("word_deletion_auc", "word deletion AUC ↓"), ("word_deletion_nauc", "normalised ↓"),
                 ("ms_per_explanation", "ms / expl."), ("peak_extra_mb", "peak MB above model")]
        tcols = [c for c in tcols if any(c[0] in r for r in res["text"].values())]
        lines += ["", "| text method | " + " | ".join(h for _, h in tcols) + " |", "|---" * (len(tcols) + 1) + "|"]
        for name, r in res["text"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt(r.get(k)) for k, _ in tcols) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"


def plot(res: dict, out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .visualization import visualize_image_attr

    image = res["image"]
    names = list(image)
    metrics = [m for m in ("pointing_game", "energy_pointing_game", "deletion_auc", "insertion_auc") if
               m in next(iter(image.values()))]
    ex = res.get("_examples")
    n_ex = len(names) if ex else 0
    fig = Figure(figsize=(max(14, 1.6 * n_ex), 4.6 + (2.4 if ex else 0)))
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2 if ex else 1, max(len(metrics), 1) if not ex else n_ex,
                          height_ratios=[1.6, 1] if ex else [1])
    per = max(1, (n_ex or len(metrics)) // len(metrics))
    short = [n.replace("Captum ", "").split(" (")[0] + (" (" + n.split(" (")[1].split(",")[0].rstrip(")") + ")"
                                                       if "Grad-ECLIP (" in n else "") for n in names]
    for j, m in enumerate(metrics):
        ax = fig.add_subplot(gs[0, j * per:(j + 1) * per])
        vals = [image[n][m] for n in names]
        colors = ["tab:red" if n.startswith("Grad-ECLIP") else "tab:gray" for n in names]
        ax.barh(range(len(names)), vals, color=colors)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(short if j == 0 else [""] * len(names), fontsize=7)
        ax.invert_yaxis()
        ax.set_title(m.replace("_", " ") + (" ↓" if m.startswith("deletion") else " ↑"), fontsize=9)
        ax.tick_params(labelsize=7)
    if ex:
        for j, n in enumerate(names):
            ax = fig.add_subplot(gs[1, j])
            visualize_image_attr(ex["maps"][n][0], ex["image"].resize((128, 128), 0), ax=ax)
            ax.set_title(short[j], fontsize=6)
        fig.suptitle(f"example: \"{ex['prompt']}\"", fontsize=9, y=0.38)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def cmd_benchmark(args) -> None:
    from ._io import CLIError
    from .models import check_choice

    if args.quick:
        args.n = args.n or 12
    args.n = args.n or 100
    check_choice(args.model, args.open_clip)
    if args.open_clip and not args.images:
        raise CLIError("--open-clip runs the folder benchmark: give --images and --prompts too")
    if args.images or args.prompts:
        if not (args.images and args.prompts):
            raise CLIError("--images and --prompts go together")
        res = run_folder(args)
    else:
        res = run_shapes(args)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}, indent=2))
    md = table(res)
    (out / "benchmark.md").write_text(md + "\n")
    plot(res, out / "benchmark.png")
    print()
    print(md)
    print(f"\nwrote {out / 'benchmark.json'}, {out / 'benchmark.md'}, {out / 'benchmark.png'}")


def add_parser(sub) -> None:
    b = sub.add_parser("benchmark", help="compare Grad-ECLIP with baselines (ShapesCLIP, or any CLIP on images)")
    b.add_argument("--quick", action="store_true", help="12 scenes: a few minutes on 2 CPU cores")
    b.add_argument("--n", type=int, default=None, help="scenes (ShapesCLIP) or images (folder); default 100")
    b.add_argument("--step", type=float, default=0.005, help="share of pixels per deletion/insertion step")
    b.add_argument("--replacement", default="noise", choices=["noise", "black", "blur", "mean"])
    b.add_argument("--word-replacement", default=".", help="token replacing deleted words")
    b.add_argument("--methods", nargs="*", default=None, help="only methods whose name contains one of these")
    b.add_argument("--batch", type=int, default=16, help="examples explained per call")
    b.add_argument("--examples", type=int, default=1)
    b.add_argument("--model", default=None, help="hub name or folder (default: ShapesCLIP)")
    b.add_argument("--open-clip", default=None, metavar="ARCH[:PRETRAINED]",
                   help="an open_clip model for the folder benchmark (needs the open_clip extra)")
    b.add_argument("--images", default=None, help="folder of images (faithfulness only)")
    b.add_argument("--prompts", default=None, help="text file, one prompt per line")
    b.add_argument("--out-dir", default="benchmark_out")
    b.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses")
    b.set_defaults(func=cmd_benchmark)


if __name__ == "__main__":
    if len(sys.argv) in (4, 5) and sys.argv[1] == "--memory-cell":
        print(json.dumps(memory_cell(sys.argv[3], sys.argv[2], *sys.argv[4:])))
