"""Thin wrappers over ``captum.attr.visualization`` for Grad-ECLIP maps (matplotlib, lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _image_array(image):
    """PIL image or ``(3, H, W)`` tensor in [0, 1] -> ``(H, W, 3)`` float numpy array in [0, 1]."""
    import numpy as np

    if torch.is_tensor(image):
        x = image.detach().float().cpu()
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12) if (x.min() < 0 or x.max() > 1) else x
        return x.permute(1, 2, 0).numpy()
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def upsample(attr: Tensor, size: Sequence[int]) -> Tensor:
    """``(h, w)``, ``(1, h, w)`` or ``(N, 1, h, w)`` map -> ``(N, 1, H, W)`` by bilinear interpolation
    (Captum's ``LayerAttribution.interpolate``)."""
    from captum.attr import LayerAttribution

    a = attr.detach().float()
    while a.dim() < 4:
        a = a.unsqueeze(0)
    return LayerAttribution.interpolate(a, tuple(size), interpolate_mode="bilinear")


def visualize_image_attr(
    attr: Tensor,
    image,
    *,
    title: Optional[str] = None,
    ax: "Optional[Axes]" = None,
    alpha: float = 0.55,
    cmap: str = "jet",
):
    """Overlay a map on its image with ``captum.attr.visualization.visualize_image_attr``.

    Args:
        attr: ``(h, w)``, ``(1, h, w)`` or ``(1, 1, h, w)`` map (upsampled to the image).
        image: the PIL image or a ``(3, H, W)`` tensor.
        title: axis title. ax: draw into this axis (default: a new figure).
        alpha, cmap: the heat map's opacity and colour map.

    Returns:
        ``(figure, axis)`` as Captum returns them. An all-zero map (which Captum cannot scale)
        shows the image alone, titled so.
    """
    from captum.attr import visualization as viz

    img = _image_array(image)
    heat = upsample(attr, img.shape[:2])[0].permute(1, 2, 0).numpy()
    fig_axis = (ax.figure, ax) if ax is not None else None
    if not heat.any():  # Captum cannot scale an all-zero map (e.g. a text the image does not match)
        if ax is None:
            from matplotlib.figure import Figure

            ax = Figure(figsize=(6, 6)).subplots()
        ax.imshow(img)
        ax.set_axis_off()
        ax.set_title(f"{title} (map is all zero)" if title else "map is all zero")
        return ax.figure, ax
    sign = "positive" if heat.min() >= 0 else "all"
    return viz.visualize_image_attr(heat, img, method="blended_heat_map", sign=sign, plt_fig_axis=fig_axis,
                                    use_pyplot=False, alpha_overlay=alpha, cmap=cmap, title=title)


def words_of(tokenizer, input_ids: Tensor) -> List[str]:
    """``(L,)`` ids -> readable tokens (CLIP's ``</w>`` suffix removed)."""
    return [t.replace("</w>", "") for t in tokenizer.convert_ids_to_tokens(input_ids.tolist())]


def text_record(words: Sequence[str], attributions: Tensor, *, score: float, label: str = ""):
    """A ``captum.attr.visualization.VisualizationDataRecord`` for ``visualize_text``.

    Args:
        words: the ``L`` tokens. attributions: ``(L,)`` word importances (normalised to max 1).
        score: the explained similarity. label: what the text was matched with.
    """
    from captum.attr import visualization as viz

    a = attributions.detach().float().cpu()
    a = a / a.abs().max().clamp_min(1e-12)
    return viz.VisualizationDataRecord(a, score, label, label, label, float(a.sum()), list(words), None)


def draw_text_attr(ax: "Axes", words: Sequence[str], attributions: Tensor, *, title: Optional[str] = None) -> None:
    """Words coloured by importance (white = 0, red = max), for static figures (Captum's
    ``visualize_text`` renders HTML only)."""
    from matplotlib import cm

    a = attributions.detach().float().cpu()
    a = (a / a.max().clamp_min(1e-12)).clamp(0, 1)
    ax.set_axis_off()
    x = 0.0
    fig = ax.figure
    if not hasattr(fig.canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    for w, v in zip(words, a.tolist()):
        t = ax.text(x, 0.5, w, fontsize=13, va="center", ha="left", transform=ax.transAxes,
                    bbox=dict(boxstyle="round,pad=0.25", fc=cm.Reds(0.85 * v), ec="none"))
        bb = t.get_window_extent(renderer=renderer).transformed(ax.transAxes.inverted())
        x = bb.x1 + 0.015
    if title:
        ax.set_title(title, fontsize=10, loc="left")


def explanation_figure(
    image,
    prompts: Sequence[str],
    maps: Tensor,
    scores: Tensor,
    text_rows: Sequence[tuple] = (),
) -> "Figure":
    """The demo/explain figure: the image, one overlay per prompt (with its similarity), and rows
    of coloured words.

    Args:
        image: PIL image. prompts: ``T`` texts. maps: ``(T, h, w)``. scores: ``(T,)`` similarities.
        text_rows: ``(title, words, attributions (L,))`` per text row.
    """
    from matplotlib.figure import Figure

    n = len(prompts) + 1
    rows = 1 + (1 if text_rows else 0)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(2.6 * n, 2.8 + 0.9 * len(text_rows)))
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(rows, n, height_ratios=[2.8] + ([0.9 * len(text_rows)] if text_rows else []))
    ax = fig.add_subplot(gs[0, 0])
    ax.imshow(_image_array(image))
    ax.set_title("image", fontsize=10)
    ax.set_axis_off()
    for i, (p, m, s) in enumerate(zip(prompts, maps, scores)):
        ax = fig.add_subplot(gs[0, i + 1])
        visualize_image_attr(m, image, ax=ax)
        ax.set_title(f"{p}\ncos = {float(s):.3f}", fontsize=10)
    if text_rows:
        sub = gs[1, :].subgridspec(len(text_rows), 1)
        for j, (title, words, attr) in enumerate(text_rows):
            draw_text_attr(fig.add_subplot(sub[j, 0]), words, attr, title=title)
    fig.tight_layout()
    return fig


def comparison_figure(
    image,
    prompts: Sequence[str],
    rows: Sequence[tuple],
    scores: Tensor,
    text_rows: Sequence[tuple] = (),
) -> "Figure":
    """Several explanations of the same prompts, one row each (e.g. two configurations of the
    method): the image labelled with the row's settings, then one overlay per prompt.

    Args:
        image: PIL image. prompts: ``T`` texts. scores: ``(T,)`` similarities (the model's, the
            same for every row).
        rows: ``(label, maps (T, h, w), hits)`` per row; ``hits``: ``(T,)`` bool, whether each
            map points at its object (titled "on target" / "off target"), or ``None``.
        text_rows: ``(title, words, attributions (L,))`` per row of coloured words below.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n, r = len(prompts) + 1, len(rows)
    fig = Figure(figsize=(2.6 * n, 3.4 * r + 0.9 * len(text_rows)))
    FigureCanvasAgg(fig)
    ratios = [3.4] * r + ([0.9 * len(text_rows)] if text_rows else [])
    gs = fig.add_gridspec(len(ratios), n, height_ratios=ratios)
    for k, (label, maps, hits) in enumerate(rows):
        ax = fig.add_subplot(gs[k, 0])
        ax.imshow(_image_array(image))
        ax.set_axis_off()
        ax.set_title(label, fontsize=9, loc="left")
        for i, (p, m, s) in enumerate(zip(prompts, maps, scores)):
            ax = fig.add_subplot(gs[k, i + 1])
            visualize_image_attr(m, image, ax=ax)
            where = "" if hits is None else ("\non target" if bool(hits[i]) else "\noff target")
            ax.set_title(f"{p} (cos = {float(s):.3f}){where}", fontsize=9,
                         color="black" if hits is None or bool(hits[i]) else "firebrick")
    if text_rows:
        sub = gs[r, :].subgridspec(len(text_rows), 1)
        for j, (title, words, attr) in enumerate(text_rows):
            draw_text_attr(fig.add_subplot(sub[j, 0]), words, attr, title=title)
    fig.tight_layout()
    return fig
