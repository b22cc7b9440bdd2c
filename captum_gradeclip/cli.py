"""``captum-gradeclip``: the demo, explaining any image, and the quality benchmark.

    captum-gradeclip demo [--out demo.png]
    captum-gradeclip explain IMAGE --text "a dog" --text "a car" [--model NAME_OR_PATH] [--out fig.png]
    captum-gradeclip explain IMAGE --text "a dog" --open-clip ViT-B-32:openai
    captum-gradeclip explain IMAGE --text "a dog" --method game --save-maps maps.npz
    captum-gradeclip explain IMAGE --text "a dog" --last 3 --spatial cosine_per_head
    captum-gradeclip benchmark --quick
    captum-gradeclip finetune --out DIR [--ablations]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence

from ._io import check_output_file, open_image
from .errors import CLIError, GradECLIPError
from .methods import GradECLIPOptions, build

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image
    from torch import Tensor

    from .models import LoadedCLIP

__all__ = ["CLIError", "DEMO_ROWS", "explain", "image_maps", "main", "save_maps"]


#: the demo's two rows: the published default and the configuration study's choice for
#: ShapesCLIP, each with its pointing game (15 px at 224 px) on the benchmark's 246 objects, as
#: the configuration study reports them (`python benchmarks/study.py --out study.json`;
#: tests/test_readme.py checks that they match the table)
DEMO_ROWS = (
    ("published default:\nlast layer, spatial=cosine", GradECLIPOptions((-1,), "cosine"), 0.801),
    ("configuration study's choice:\nlast 3 layers, spatial=cosine_per_head",
     GradECLIPOptions((-3, -2, -1), "cosine_per_head"), 0.935),
)


def image_maps(clip: "LoadedCLIP", pixels: "Tensor", input_ids: "Tensor", attention_mask: Optional["Tensor"],
               options: GradECLIPOptions = GradECLIPOptions(), method: str = "grad-eclip") -> "Tensor":
    """Maps of ``pixels (N, 3, H, W)`` for ``T`` texts (``input_ids (T, L)``, ``attention_mask
    (T, L)`` or ``None``) by the registered image ``method`` with Grad-ECLIP's ``options``:
    ``(N, T, h, w)`` (pixel-space methods: ``(N, T, H, W)``)."""
    sim = clip.image_similarity(input_ids, attention_mask)
    return build(method, clip, sim, options).attribute_all(pixels)


def explain(clip: "LoadedCLIP", image: "Image.Image", texts: Sequence[str], caption: Optional[str] = None,
            options: GradECLIPOptions = GradECLIPOptions(), method: str = "grad-eclip") -> dict:
    """Image maps for each text (the registered image ``method``, default Grad-ECLIP with
    ``options``: its tower's last attention layer, a ViT's last block or a ResNet's attention pool,
    with the cosine spatial weights), and Grad-ECLIP word importances for each text (and
    ``caption``) at the text tower's last ``options.text_layers`` blocks.

    Returns:
        dict with ``maps`` ``(T, h, w)`` (the patch grid, or the attention pool's grid; pixel-space
        methods ``(T, H, W)``), ``scores`` ``(T,)`` and ``text_rows``
        ``[(title, words, attributions (L_t,))]``, one row per text and one for ``caption``.

    Raises:
        InputError: a layer outside the tower, a method this model cannot run.
        ModelError: a text tower this command does not know (open_clip with a Hugging Face text tower).
    """
    import torch

    all_texts = list(texts) + ([caption] if caption else [])
    pixels = clip.pixels([image])
    ids, mask = clip.tokens(all_texts)
    n = len(texts)
    sim = clip.image_similarity(ids[:n], None if mask is None else mask[:n])
    maps = build(method, clip, sim, options).attribute_all(pixels)[0]
    with torch.no_grad():
        scores = sim(pixels)[0]
    tsim = clip.text_similarity(pixels)
    mask_args = None if mask is None else (mask,)
    words = build("grad-eclip", clip, tsim, options, kind="text").attribute(ids, 0, mask_args)
    eos = tsim.eos_positions(ids)
    with torch.no_grad():
        tscores = (tsim(ids) if mask is None else tsim(ids, mask))[:, 0]
    rows = []
    for i, text in enumerate(all_texts):
        e = int(eos[i])
        rows.append((f"word importance: \"{text}\" (cos = {float(tscores[i]):.3f})",
                     clip.decode(ids[i, 1:e]), words[i, 1:e]))
    return dict(maps=maps, scores=scores, text_rows=rows)


def save_maps(path: str, texts: Sequence[str], maps: "Tensor", scores: "Tensor", method: str) -> None:
    """``explain --save-maps``: one float32 array per text (``(h, w)``, keyed by the text), the
    scores ``(T,)`` under ``"__scores__"`` and the texts in order under ``"__texts__"``."""
    import numpy as np

    arrays = {t: maps[i].detach().float().cpu().numpy() for i, t in enumerate(texts)}
    arrays["__scores__"] = scores.detach().float().cpu().numpy()
    arrays["__texts__"] = np.array(list(texts))
    arrays["__method__"] = np.array(method)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    print(f"wrote {path}")


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
    from .metrics import pointing_game
    from .models import load_shapes
    from .shapes import render_scene
    from .visualization import comparison_figure

    check_output_file(args.out)
    t0 = time.time()
    clip = load_shapes()
    scene = render_scene(seed=args.seed, n_objects=3)
    caption = scene.caption()
    res = explain(clip, scene.image, scene.prompts, caption=caption)
    pixels = clip.pixels([scene.image])
    ids, mask = clip.tokens(scene.prompts)
    rows = []
    for label, options, pointing in DEMO_ROWS:
        maps = image_maps(clip, pixels, ids, mask, options)[0]  # (T, h, w)
        hits = pointing_game(maps[:, None], scene.masks)
        rows.append((f"{label}\npointing game {pointing:.2f} (benchmark's\n246 objects); this scene: {int(hits.sum())} "
                     f"of {len(hits)}", maps, hits))
    big = scene.image.resize((256, 256), 0)  # nearest: show the 64 px scene as the model sees it
    fig = comparison_figure(big, scene.prompts, rows, res["scores"], res["text_rows"][-1:])
    _save(fig, args.out)
    on_target = ", ".join(f"{int(hits.sum())}/{len(hits)}" for _, _, hits in rows)
    print(f"scene: {caption}; maps on target (default, study's choice): {on_target}; {time.time() - t0:.1f} s")


def cmd_explain(args: argparse.Namespace) -> None:
    from .options_cli import method_and_options
    from .methods import resolve_layers
    from .models import check_choice, load
    from .text_checks import check_texts as check_model_texts
    from .visualization import explanation_figure

    check_texts(args.text)
    check_output_file(args.out)
    if args.save_maps and not args.save_maps.endswith(".npz"):
        raise CLIError(f"--save-maps {args.save_maps}: give a .npz file name (numpy's archive of the maps)")
    check_choice(args.model, args.open_clip)
    method, options = method_and_options(args)
    image = open_image(args.image)
    clip = load(args.model, args.open_clip)
    check_model_texts(clip, args.text, allow_unknown_words=args.allow_unknown_words)
    resolve_layers(options.layers, clip.image_layers)
    res = explain(clip, image, args.text, options=options, method=method)
    fig = explanation_figure(image, args.text, res["maps"], res["scores"], res["text_rows"])
    _save(fig, args.out)
    if args.save_maps:
        save_maps(args.save_maps, args.text, res["maps"], res["scores"], method)


def _parser() -> argparse.ArgumentParser:
    from .analysis.cli import add_parser as add_analyze
    from .app.cli import add_parser as add_app
    from .app.cli import add_report_parser as add_report
    from .benchmark import add_parser as add_benchmark
    from .finetune.cli import add_parser as add_finetune
    from .options_cli import add_method_args, add_model_args
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
    add_model_args(e, unknown_words=True)
    add_method_args(e)
    e.add_argument("--out", default="explanation.png")
    e.add_argument("--save-maps", default=None, metavar="PATH.npz",
                   help="also write the raw maps: one array per text (keyed by the text) and the scores")
    e.set_defaults(func=cmd_explain)
    add_benchmark(sub)
    add_finetune(sub)
    add_explain_dataset(sub)
    add_analyze(sub)
    add_app(sub)
    add_report(sub)
    add_segment(sub)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status (2 for a user error, printed as one line)."""
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except GradECLIPError as err:  # CLIError from the flags, InputError & co. from the library
        print(f"captum-gradeclip: error: {' '.join(str(err).split())}", file=sys.stderr)  # one line
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
