"""The figure of ``analyze attributes``: one row of examples per category (Grad-ECLIP's map on
the model input, the target outlined) beside bar charts of the per-category numbers (matplotlib,
imported lazily)."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from torch import Tensor

from .attributes import Probe, ProbeRow, SceneProbes

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["attributes_figure"]

_BARS = (("accuracy", None, "CLIP right (true > false prompt)", "#444444"),
         ("pointing", "grad_eclip", "pointing game, Grad-ECLIP", "#d95f02"),
         ("pointing", "game", "pointing game, GAME", "#fdb863"),
         ("energy", "grad_eclip", "energy in target, Grad-ECLIP", "#1b9e77"),
         ("energy", "game", "energy in target, GAME", "#a6dba0"))


def _display(image, size: Tuple[int, int]):
    """The PIL image as the model sees it: resized to cover ``size`` (H, W), centre cropped."""
    h, w = size
    if image.size == (w, h):
        return image
    s = max(h / image.size[1], w / image.size[0])
    rw, rh = max(w, round(image.size[0] * s)), max(h, round(image.size[1] * s))
    im = image.resize((rw, rh))
    left, top = (rw - w) // 2, (rh - h) // 2
    return im.crop((left, top, left + w, top + h))


def _pick(pairs: List[Tuple[Probe, ProbeRow]], k: int) -> List[Tuple[Probe, ProbeRow]]:
    """Up to ``k`` examples: failures (the model wrong, or Grad-ECLIP's maximum off target) for
    half of them when there are any, successes for the rest, in suite order."""
    def failed(r: ProbeRow) -> bool:
        return r.correct is False or r.maps.get("grad_eclip", {}).get("pointing") is False
    bad = [p for p in pairs if failed(p[1])][: k // 2]
    good = [p for p in pairs if not failed(p[1])][: k - len(bad)]
    return (bad + good + [p for p in pairs if p not in bad and p not in good])[:k]


def _outline(ax: "Axes", mask: Optional[Tensor], colour: str) -> None:
    if mask is not None and bool(mask.any()):
        ax.contour(mask.float().numpy(), levels=[0.5], colors=[colour], linewidths=1.2)


def _example(ax: "Axes", scene: SceneProbes, maps: Dict[str, object], probe: Probe, row: ProbeRow) -> None:
    """One panel: the explained prompt's Grad-ECLIP map over the image, regions outlined."""
    from ..visualization import upsample

    size = tuple(scene.pixels.shape[-2:])
    binding = probe.category == "binding" and probe.distractor is not None
    text = probe.distractor if binding else probe.prompt
    m = upsample(maps["grad_eclip"][maps["index"][text]], size)[0, 0]
    ax.imshow(_display(scene.image, size))
    m = (m.clamp_min(0) / m.max().clamp_min(1e-12)).numpy()
    ax.imshow(m, cmap="jet", alpha=0.15 + 0.6 * m, vmin=0, vmax=1)
    if binding:
        _outline(ax, probe.colour_match, "white")
        _outline(ax, probe.shape_match, "black")
        g = row.maps.get("grad_eclip", {})
        sub = "on colour obj {},\non shape obj {}".format(
            *(f"{100 * g[k]:.0f}%" if g.get(k) is not None else "–" for k in ("share_colour", "share_shape")))
    else:
        _outline(ax, probe.target, "white")
        g = row.maps.get("grad_eclip", {})
        point = {True: "max on target", False: "max off target", None: ""}[g.get("pointing")]
        conc = f"max/mean {g['concentration']:.0f}" if g.get("concentration") is not None else "zero map"
        sub = point if probe.target is not None else conc
    verdict = {True: "CLIP right", False: "CLIP WRONG", None: ""}[row.correct]
    head = ("swapped " if binding else "") + f'"{text}"'
    ax.set_title("\n".join(textwrap.wrap(head, 24) + [verdict, sub]), fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def _bars(ax: "Axes", summary: Dict[str, object]) -> None:
    """Grouped horizontal bars: per category, the model's accuracy and both methods' pointing and
    energy games, 95% intervals as error bars."""
    import numpy as np

    cats = list(summary["categories"]) + list(summary.get("not_expressible", {}))
    y = np.arange(len(cats))[::-1].astype(float)
    hgt = 0.8 / len(_BARS)
    for j, (key, method, label, colour) in enumerate(_BARS):
        vals, lo, hi = [], [], []
        for c in cats:
            e = summary["categories"].get(c, {})
            iv = e.get(key) if method is None else e.get(method, {}).get(key)
            vals.append(iv.mean if iv else np.nan)
            lo.append(iv.mean - iv.low if iv else 0)
            hi.append(iv.high - iv.mean if iv else 0)
        ax.barh(y + 0.4 - (j + 0.5) * hgt, vals, hgt, xerr=[lo, hi], color=colour, label=label,
                error_kw=dict(lw=0.7, capsize=1.5))
    for c, yy in zip(cats, y):
        if c in summary.get("not_expressible", {}):
            ax.text(0.02, yy, "n/a: not in ShapesCLIP's vocabulary", va="center", fontsize=7.5, color="#777777")
        elif c == "absent":
            ax.text(0.02, yy - 0.2, _absent_note(summary), va="center", fontsize=7.5, color="#333333")
    ax.set_yticks(y)
    ax.set_yticklabels(cats)
    ax.set_ylim(-0.75, len(cats) - 0.25)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("share of probes (energy: mean share of the map)")
    ax.legend(fontsize=7, loc="lower right", framealpha=0.9)
    ax.grid(axis="x", alpha=0.3)


def _absent_note(summary: Dict[str, object]) -> str:
    """Absent prompts' map concentration (max / mean) against present prompts', per method."""
    av = summary.get("absent_vs_present", {})
    parts = []
    for m, name in (("grad_eclip", "Grad-ECLIP"), ("game", "GAME")):
        d = av.get(m, {})
        if d.get("absent_concentration") and d.get("present_concentration"):
            parts.append(f"{name} {d['absent_concentration'].mean:.1f} vs {d['present_concentration'].mean:.1f}")
    return "no target. Map max/mean, absent vs present prompts:\n" + ("; ".join(parts) or "–")


def _side(ax: "Axes", summary: Dict[str, object]) -> None:
    """Binding's energy shares of the swapped prompt's map, and absent vs present concentration."""
    b = summary["categories"].get("binding", {})
    labels, vals = [], []
    for m, name in (("grad_eclip", "Grad-ECLIP"), ("game", "GAME")):
        sh = b.get(m, {}).get("shares_of_swapped_prompt")
        if sh and sh["colour"] is not None:
            labels.append(name)
            vals.append([sh[k].mean for k in ("colour", "shape", "elsewhere")])
    if not labels:
        ax.axis("off")
        return
    left = [0.0] * len(labels)
    for k, (part, colour) in enumerate((("on colour-matching object", "#e7298a"), ("on shape-matching object", "#7570b3"),
                                        ("elsewhere", "#cccccc"))):
        ax.barh(labels, [v[k] for v in vals], left=left, color=colour, label=part)
        left = [a + v[k] for a, v in zip(left, vals)]
    ax.set_xlim(0, 1)
    ax.set_title("binding: where the swapped prompt's map goes (mean share of energy)", fontsize=9)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.35))



def attributes_figure(kept: Dict[str, Dict[str, object]], rows: Sequence[ProbeRow],
                      summary: Dict[str, object], *, examples: int = 4) -> "Figure":
    """The study's figure. ``kept``: the scenes :func:`~.attributes.measure` kept (scene key ->
    ``scene``, ``index`` and method -> ``(T, h, w)`` maps); ``rows``: the probes' rows."""
    import matplotlib.pyplot as plt

    by_id = {r.probe_id: r for r in rows}
    per_cat: Dict[str, List[Tuple[SceneProbes, Probe, ProbeRow]]] = {}
    scenes = [k["scene"] for k in kept.values()]
    maps = kept
    for sc in scenes:
        for p in sc.probes:
            if p.probe_id in by_id and by_id[p.probe_id].error is None:
                per_cat.setdefault(p.category, []).append((sc, p, by_id[p.probe_id]))
    cats = [c for c in summary["categories"] if c in per_cat]
    n_rows, k = max(len(cats), 3), max(1, examples)
    fig = plt.figure(figsize=(1.75 * k + 7.5, 1.95 * n_rows + 0.4))
    gs = fig.add_gridspec(n_rows, k + 4, width_ratios=[1] * k + [0.55, 1.3, 1.3, 1.3], hspace=1.0, wspace=0.3)
    for i, c in enumerate(cats):
        picked = _pick([(p, r) for _, p, r in per_cat[c]], k)
        scene_of = {p.probe_id: sc for sc, p, _ in per_cat[c]}
        for j, (p, r) in enumerate(picked):
            ax = fig.add_subplot(gs[i, j])
            _example(ax, scene_of[p.probe_id], maps[scene_of[p.probe_id].key], p, r)
            if j == 0:
                ax.set_ylabel(c, fontsize=10, fontweight="bold")
    top = n_rows - 2
    _bars(fig.add_subplot(gs[:top, k + 1:]), summary)
    _side(fig.add_subplot(gs[top + 1:, k + 1:]), summary)
    fig.suptitle("What CLIP localises, by category. Left: Grad-ECLIP maps (white outline: the target; binding: the "
                 "swapped prompt's map,\nwhite = colour-matching, black = shape-matching object). Right: per-category "
                 "numbers with 95% bootstrap intervals", fontsize=10)
    return fig
