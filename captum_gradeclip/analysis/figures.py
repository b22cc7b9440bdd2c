"""The figures of the decomposition and concreteness studies (matplotlib, imported lazily)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Dict, Sequence

__all__ = ["concreteness_figure", "decomposition_figure"]


def _agg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, dpi: int) -> Path:
    """Save ``fig`` as a 256-colour PNG (a third of the bytes of matplotlib's RGBA, same look)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    _agg().close(fig)
    Image.open(buf).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    return Path(path)


def _ci(c: Any) -> str:
    return "n/a" if c is None else f"{c.mean:+.2f} [{c.low:+.2f}, {c.high:+.2f}]"


def concreteness_figure(summary: Dict[str, Any], path: Path, *, n_labels: int = 20) -> Path:
    """Left: each word's concreteness against its mean relative importance (point area by count;
    words below ``min_count`` hollow; the ``n_labels`` most frequent labelled; unrated words
    in a strip on the left). Right: mean relative importance by concreteness band, word and
    token level, with 95% bootstrap intervals."""
    plt = _agg()
    words = summary["words"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 2]})
    biggest = max(w.count for w in words)
    for i, w in enumerate(words):
        x = 0.6 if math.isnan(w.rating) else w.rating
        kept = w.count >= summary["min_count"] and not math.isnan(w.rating)
        ax.scatter([x], [w.mean_relative], s=20 + 600 * w.count / biggest, alpha=0.6,
                   facecolors="tab:blue" if kept else "none", edgecolors="tab:red" if math.isnan(w.rating) else "tab:blue")
        if i < n_labels:
            ax.annotate(w.word, (x, w.mean_relative), fontsize=9, xytext=(4, 4), textcoords="offset points")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axvline(0.85, color="lightgrey", lw=0.8)
    ax.set_xlim(0.4, 5.1)
    ax.set_xlabel("concreteness (Brysbaert et al. 2014; left strip: unrated)")
    ax.set_ylabel("mean relative importance (1 = caption average)")
    wl = summary["word_level"]
    ax.set_title(f"words (count >= {summary['min_count']}, n = {wl['n']}): Spearman {_ci(wl['spearman'])}", fontsize=10)
    for k, (level, off) in enumerate((("word_level", -0.2), ("token_level", 0.2))):
        bands = summary[level]["bands"]
        xs = [i + off for i in range(len(bands))]
        ys = [b["mean_relative"].mean if b["mean_relative"] else 0 for b in bands]
        err = [[y - b["mean_relative"].low if b["mean_relative"] else 0 for y, b in zip(ys, bands)],
               [b["mean_relative"].high - y if b["mean_relative"] else 0 for y, b in zip(ys, bands)]]
        bx.bar(xs, ys, width=0.4, yerr=err, capsize=3, label=level.replace("_", " "), color=f"C{k}")
        for x, b in zip(xs, bands):
            bx.text(x, 0.02, f"n={b['n']}", ha="center", fontsize=7, rotation=90, color="white")
    bx.set_xticks(range(len(summary["word_level"]["bands"])), [b["band"] for b in summary["word_level"]["bands"]])
    bx.axhline(1.0, color="grey", lw=0.8, ls="--")
    bx.set_xlabel("concreteness band")
    bx.set_ylabel("mean relative importance")
    bx.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path, 100)


def decomposition_figure(examples: Sequence[Dict[str, Any]], path: Path) -> Path:
    """One row per example: the image, the caption's map ``M``, each phrase's map ``M_p`` titled
    with its weight ``w_p``, and ``sum_p w_p M_p`` (titled with its Pearson r against ``M``).

    Args:
        examples: dicts with ``image`` (PIL), ``caption``, ``phrases``, ``M`` ``(h, w)``, ``Mp``
            ``(P, h, w)``, ``weights`` ``(P,)``, ``r`` (float).
    """
    plt = _agg()
    cols = 3 + max(len(e["phrases"]) for e in examples)
    fig, axes = plt.subplots(len(examples), cols, figsize=(2.2 * cols, 2.4 * len(examples)), squeeze=False)
    for row, e in zip(axes, examples):
        cells = [(textwrap.fill(e["caption"], 28), None), ("M (the caption)", e["M"])]
        cells += [(f"w={w:.2f}: {p}", m) for p, w, m in zip(e["phrases"], e["weights"], e["Mp"])]
        cells += [(f"sum w_p M_p (r={e['r']:.2f})", (e["weights"][:, None, None] * e["Mp"]).sum(0))]
        for ax, (title, m) in zip(row, cells):
            ax.imshow(e["image"].resize((128, 128), 0))
            if m is not None:
                ax.imshow(m.numpy(), cmap="jet", alpha=0.5, extent=(-0.5, 127.5, 127.5, -0.5), interpolation="bilinear")
            ax.set_title(title, fontsize=7)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    return _save(fig, path, 72)
