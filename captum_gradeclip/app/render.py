"""Maps drawn for a web page: an overlay of a map on its image, a data URI, a word map, a grid figure.

Pillow and matplotlib's colour maps only (no pyplot), so drawing a dozen tiles costs milliseconds.
Shared by the explorer (:mod:`.ui`) and the dataset report (:mod:`.report`).
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, List, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


def fit(image: "Image.Image", side: int) -> "Image.Image":
    """``image`` (RGB) scaled so its longer side is ``side`` px (nearest for small images, so a
    64 px scene keeps its pixels; bilinear otherwise)."""
    w, h = image.size
    s = side / max(w, h)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return image.convert("RGB").resize(size, 0 if s >= 2 else 2)


def overlay(image: "Image.Image", attr: Tensor, side: int = 160, alpha: float = 0.55,
            signed: bool = False) -> "Image.Image":
    """The map ``attr (h, w)`` upsampled (bilinear) onto ``image`` scaled to ``side`` px, in
    matplotlib's ``jet`` (``signed``: ``bwr`` around 0, scaled by the largest magnitude)."""
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    base = fit(image, side)
    a = torch.nn.functional.interpolate(attr.detach().float()[None, None], size=base.size[::-1],
                                        mode="bilinear", align_corners=False)[0, 0]
    if signed:
        a = 0.5 + 0.5 * a / a.abs().max().clamp_min(1e-12)
    else:
        a = (a - a.min()) / (a.max() - a.min()).clamp_min(1e-12)
    rgb = colormaps["bwr" if signed else "jet"](a.numpy())[..., :3]
    mixed = (1 - alpha) * np.asarray(base, dtype=np.float32) / 255 + alpha * rgb
    return Image.fromarray((mixed * 255).round().clip(0, 255).astype(np.uint8))


def data_uri(image: "Image.Image", fmt: str = "PNG", quality: int = 80) -> str:
    """``image`` as a ``data:`` URI (PNG, or JPEG at ``quality``), for a self-contained page."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def word_map_html(title: str, words: Sequence[str], importances: Tensor) -> str:
    """The words coloured by ``importances (W,)`` (scaled by the largest magnitude) as Captum draws
    text attributions (``captum.attr.visualization.format_word_importances``), in a table row."""
    from captum.attr import visualization as viz

    imp = importances.detach().float()
    imp = imp / imp.abs().max().clamp_min(1e-12)
    cells = viz.format_word_importances([html.escape(w) for w in words], imp)
    return (f'<table class="gce-words"><tr><th style="text-align:left;padding-right:1em">'
            f"{html.escape(title)}</th>{cells}</tr></table>")


def grid_figure(tiles: List[List["Image.Image"]], rows: Sequence[str], cols: Sequence[str]) -> "Image.Image":
    """One PNG-ready figure: ``tiles[i][j]`` (all the same size) under column titles ``cols`` with
    row titles ``rows`` on the left."""
    from PIL import Image, ImageDraw, ImageFont

    tw, th = tiles[0][0].size
    font = ImageFont.load_default(size=13)
    left, top, pad = 190, 40, 6
    fig = Image.new("RGB", (left + len(cols) * (tw + pad), top + len(rows) * (th + pad)), "white")
    draw = ImageDraw.Draw(fig)
    for j, c in enumerate(cols):
        draw.multiline_text((left + j * (tw + pad), 4), _wrap(c, tw // 7), fill="black", font=font)
    for i, r in enumerate(rows):
        y = top + i * (th + pad)
        draw.multiline_text((4, y + th // 3), _wrap(r, 26), fill="black", font=font)
        for j, tile in enumerate(tiles[i]):
            fig.paste(tile, (left + j * (tw + pad), y))
    return fig


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, max(8, width))[:2])
