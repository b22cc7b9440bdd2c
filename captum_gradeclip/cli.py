"""``captum-gradeclip``: the demo, explaining any image, and the quality benchmark.

    captum-gradeclip demo [--out demo.png]
    captum-gradeclip explain IMAGE --text "a dog" --text "a car" [--model NAME_OR_PATH] [--out fig.png]
    captum-gradeclip explain IMAGE --text "a dog" --open-clip ViT-B-32:openai
    captum-gradeclip benchmark --quick
    captum-gradeclip finetune --out DIR [--ablations]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence

from ._io import CLIError, check_output_file, open_image

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from .models import LoadedCLIP

__all__ = ["CLIError", "explain", "main", "open_image"]


def explain(clip: "LoadedCLIP", image: "Image.Image", texts: Sequence[str], caption: Optional[str] = None) -> dict:
    """Grad-ECLIP image maps for each text, and word importances for each text (and ``caption``):
    the image at its tower's last attention layer (a ViT's last block, a ResNet's attention
    pool), the texts at their tower's last 8 blocks.

    Returns:
        dict with ``maps`` ``(T, h, w)`` (the patch grid, or the attention pool's grid),
        ``scores`` ``(T,)`` and ``text_rows`` ``[(title, words, attributions (L_t,))]``, one row
        per text and one for ``caption``.

    Raises:
        ModelError: a text tower this command does not know (open_clip with a Hugging Face text tower).
    """
    import torch

    from . import ImageGradECLIP, TextGradECLIP

    all_texts = list(texts) + ([caption] if caption else [])
    text_layers = clip.text_layers[-8:]
    pixels = clip.pixels([image])
    ids, mask = clip.tokens(all_texts)
    n = len(texts)
    sim = clip.image_similarity(ids[:n], None if mask is None else mask[:n])
    maps = ImageGradECLIP(sim, clip.image_layers[-1]).attribute_all(pixels)[0]
    with torch.no_grad():
        scores = sim(pixels)[0]
    tsim = clip.text_similarity(pixels)
    mask_args = None if mask is None else (mask,)
    words = TextGradECLIP(tsim, text_layers).attribute(ids, target=0, additional_forward_args=mask_args)
    eos = tsim.eos_positions(ids)
    with torch.no_grad():
        tscores = (tsim(ids) if mask is None else tsim(ids, mask))[:, 0]
    rows = []
    for i, text in enumerate(all_texts):
        e = int(eos[i])
        rows.append((f"word importance: \"{text}\" (cos = {float(tscores[i]):.3f})",
                     clip.decode(ids[i, 1:e]), words[i, 1:e]))
    return dict(maps=maps, scores=scores, text_rows=rows)


def check_texts(texts: Sequence[str]) -> None:
    """Raises :class:`CLIError` for no ``--text``, or an empty or blank one."""
    if not texts:
        raise CLIError("give at least one --text")
    blank = [i + 1 for i, t in enumerate(texts) if not t.strip()]
    if blank:
        raise CLIError(f"--text number {blank[0]} is empty: give the words to match, e.g. --text \"a dog\"")


def _save(fig, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .models import load_shapes
    from .shapes import render_scene
    from .visualization import explanation_figure

    check_output_file(args.out)
    t0 = time.time()
    clip = load_shapes()
    scene = render_scene(seed=args.seed, n_objects=3)
    caption = scene.caption()
    res = explain(clip, scene.image, scene.prompts, caption=caption)
    big = scene.image.resize((256, 256), 0)  # nearest: show the 64 px scene as the model sees it
    rows = res["text_rows"][-1:] + res["text_rows"][:-1]
    fig = explanation_figure(big, scene.prompts, res["maps"], res["scores"], rows[:1])
    _save(fig, args.out)
    print(f"scene: {caption}; explained {len(scene.prompts)} prompts and the caption in {time.time() - t0:.1f} s")


def cmd_explain(args: argparse.Namespace) -> None:
    from .models import check_choice, load
    from .visualization import explanation_figure

    check_texts(args.text)
    check_output_file(args.out)
    check_choice(args.model, args.open_clip)
    image = open_image(args.image)
    res = explain(load(args.model, args.open_clip), image, args.text)
    fig = explanation_figure(image, args.text, res["maps"], res["scores"], res["text_rows"])
    _save(fig, args.out)


def _parser() -> argparse.ArgumentParser:
    from .benchmark import add_parser as add_benchmark
    from .finetune.cli import add_parser as add_finetune
    from .scale.cli import add_parser as add_explain_dataset
    from .segment.cli import add_parser as add_segment

    ap = argparse.ArgumentParser(prog="captum-gradeclip", description="Grad-ECLIP explanations of CLIP.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="explain a synthetic scene with the shipped ShapesCLIP (offline)")
    d.add_argument("--out", default="demo.png")
    d.add_argument("--seed", type=int, default=7)
    d.set_defaults(func=cmd_demo)
    e = sub.add_parser("explain", help="explain an image against texts with any Hugging Face or open_clip CLIP")
    e.add_argument("image")
    e.add_argument("--text", action="append", default=[], help="a text to match (repeat)")
    e.add_argument("--model", default=None, help="hub name or save_pretrained folder (default: ShapesCLIP)")
    e.add_argument("--open-clip", default=None, metavar="ARCH[:PRETRAINED]",
                   help="an open_clip model instead, e.g. ViT-B-32:openai or RN50:openai (needs the open_clip extra)")
    e.add_argument("--out", default="explanation.png")
    e.set_defaults(func=cmd_explain)
    add_benchmark(sub)
    add_finetune(sub)
    add_explain_dataset(sub)
    add_segment(sub)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status (2 for a user error, printed as one line)."""
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except CLIError as err:
        print(f"captum-gradeclip: error: {' '.join(str(err).split())}", file=sys.stderr)  # one line
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
