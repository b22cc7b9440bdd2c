"""``captum-gradeclip``: the demo, explaining any image, and the quality benchmark.

    captum-gradeclip demo [--out demo.png]
    captum-gradeclip explain IMAGE --text "a dog" --text "a car" [--model NAME_OR_PATH] [--out fig.png]
    captum-gradeclip explain IMAGE --text "a dog" --open-clip ViT-B-32:openai
    captum-gradeclip benchmark --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def load_model(name: Optional[str]) -> Tuple[Any, Any]:
    """``(model, processor)``: the shipped ShapesCLIP for ``None``, else ``from_pretrained(name)``."""
    from .shapes import load_shapes_clip

    if name is None:
        return load_shapes_clip()
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(name)
        processor = CLIPProcessor.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise CLIError(
            f"could not load CLIP model {name!r}: {str(e).splitlines()[0]}\n"
            "Give a local save_pretrained folder or a hub name (a hub name needs network access)."
        ) from None
    return model.eval(), processor


def load_open_clip(spec: str) -> Tuple[Any, Callable[..., Any], Callable[..., Any]]:
    """``"ARCH"`` or ``"ARCH:PRETRAINED"`` -> ``(model, preprocess, tokenizer)`` from open_clip
    (no pretrained tag: random weights, for trying things offline)."""
    try:
        import open_clip
    except ImportError:
        raise CLIError("--open-clip needs open_clip: pip install 'captum-gradeclip[open_clip]'") from None
    arch, _, pretrained = spec.partition(":")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained or None)
        tokenizer = open_clip.get_tokenizer(arch)
    except (RuntimeError, ValueError, OSError) as e:
        raise CLIError(
            f"could not load open_clip model {spec!r}: {str(e).splitlines()[0]}\n"
            "Give ARCH:PRETRAINED as open_clip.list_pretrained() lists them (downloads need network)."
        ) from None
    if not pretrained:
        print(f"note: no pretrained tag in {spec!r}: {arch} has random weights", file=sys.stderr)
    return model.eval(), preprocess, tokenizer


def open_image(path: str) -> "Image.Image":
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"image file not found: {path}")
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise CLIError(f"cannot read {path} as an image ({e.__class__.__name__}); give a PNG, JPEG, ...") from None


def explain(model: Any, processor: Any, image: "Image.Image", texts: Sequence[str],
            caption: Optional[str] = None) -> dict:
    """Grad-ECLIP image maps for each text and word importances for each text (and ``caption``).

    Returns:
        dict with ``maps`` ``(T, h, w)``, ``scores`` ``(T,)`` and ``text_rows``
        ``[(title, words, attributions (L,))]``.
    """
    import torch

    from . import ImageGradECLIP, ImageTextSimilarity, TextGradECLIP, TextImageSimilarity
    from .visualization import words_of

    all_texts = list(texts) + ([caption] if caption else [])
    inputs = processor(text=all_texts, images=[image], return_tensors="pt", padding=True, truncation=True)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    n = len(texts)
    sim = ImageTextSimilarity(model, input_ids=ids[:n], attention_mask=mask[:n])
    image_layer = model.vision_model.encoder.layers[-1]
    maps = ImageGradECLIP(sim, image_layer).attribute_all(inputs["pixel_values"])[0]
    with torch.no_grad():
        scores = sim(inputs["pixel_values"])[0]
    tsim = TextImageSimilarity(model, pixel_values=inputs["pixel_values"])
    words = TextGradECLIP(tsim, list(model.text_model.encoder.layers[-8:])).attribute(
        ids, target=0, additional_forward_args=(mask,))
    eos = tsim.eos_positions(ids)
    rows = []
    with torch.no_grad():
        tscores = tsim(ids, mask)[:, 0]
    for i, text in enumerate(all_texts):
        e = int(eos[i])
        rows.append((f"word importance: \"{text}\" (cos = {float(tscores[i]):.3f})",
                     words_of(processor.tokenizer, ids[i, 1:e]), words[i, 1:e]))
    return dict(maps=maps, scores=scores, text_rows=rows)


def explain_open_clip(model: Any, preprocess: Callable[..., Any], tokenizer: Callable[..., Any],
                      image: "Image.Image", texts: Sequence[str]) -> dict:
    """:func:`explain` for an open_clip (or OpenAI ``clip``) model: ViT towers at their last
    block, ResNet towers at their attention pool; text at the last 8 blocks.

    Returns:
        dict with ``maps`` ``(T, h, w)`` (the patch grid, or the attention pool's grid),
        ``scores`` ``(T,)`` and ``text_rows`` ``[(title, words, attributions (L_t,))]``.

    Raises:
        CLIError: a tower this command does not know (timm or Hugging Face towers in open_clip).
    """
    import torch

    from . import ImageGradECLIP, TextGradECLIP
    from .openai import EncoderImageTextSimilarity, EncoderTextImageSimilarity, image_attention_layers

    try:
        image_layer = image_attention_layers(model)[-1]
    except ValueError as e:
        raise CLIError(str(e)) from None
    text_blocks = getattr(model, "transformer", None) or getattr(getattr(model, "text", None), "transformer", None)
    if not hasattr(text_blocks, "resblocks"):
        raise CLIError("the text tower is not an open_clip transformer (Hugging Face text towers are not supported)")
    ids = tokenizer(list(texts))
    pixels = preprocess(image).unsqueeze(0)
    sim = EncoderImageTextSimilarity(model, ids)
    maps = ImageGradECLIP(sim, image_layer).attribute_all(pixels)[0]
    with torch.no_grad():
        scores = sim(pixels)[0]
    tsim = EncoderTextImageSimilarity(model, pixels)
    words = TextGradECLIP(tsim, list(text_blocks.resblocks[-8:])).attribute(ids, target=0)
    eos = tsim.eos_positions(ids)
    decode = tokenizer.decode if hasattr(tokenizer, "decode") else tokenizer.tokenizer.decode
    rows = []
    for i, text in enumerate(texts):
        e = int(eos[i])
        toks = [decode([int(j)]).strip() for j in ids[i, 1:e]]
        rows.append((f"word importance: \"{text}\" (cos = {float(scores[i]):.3f})", toks, words[i, 1:e]))
    return dict(maps=maps, scores=scores, text_rows=rows)


def _save(fig, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def cmd_demo(args) -> None:
    from .shapes import load_shapes_clip, render_scene
    from .visualization import explanation_figure

    t0 = time.time()
    model, processor = load_shapes_clip()
    scene = render_scene(seed=args.seed, n_objects=3)
    caption = scene.caption()
    res = explain(model, processor, scene.image, scene.prompts, caption=caption)
    big = scene.image.resize((256, 256), 0)  # nearest: show the 64 px scene as the model sees it
    rows = res["text_rows"][-1:] + res["text_rows"][:-1]
    fig = explanation_figure(big, scene.prompts, res["maps"], res["scores"], rows[:1])
    _save(fig, args.out)
    print(f"scene: {caption}; explained {len(scene.prompts)} prompts and the caption in {time.time() - t0:.1f} s")


def cmd_explain(args) -> None:
    from .visualization import explanation_figure

    if not args.text:
        raise CLIError("give at least one --text")
    image = open_image(args.image)
    if args.open_clip and args.model:
        raise CLIError("give --model (Hugging Face) or --open-clip, not both")
    if args.open_clip:
        res = explain_open_clip(*load_open_clip(args.open_clip), image, args.text)
    else:
        model, processor = load_model(args.model)
        res = explain(model, processor, image, args.text)
    fig = explanation_figure(image, args.text, res["maps"], res["scores"], res["text_rows"])
    _save(fig, args.out)


def main(argv: Optional[List[str]] = None) -> int:
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
    try:
        from .benchmark import add_parser as add_benchmark
    except ImportError:  # pragma: no cover
        add_benchmark = None
    if add_benchmark is not None:
        add_benchmark(sub)
    args = ap.parse_args(argv)
    try:
        args.func(args)
    except CLIError as err:
        print(f"captum-gradeclip: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
