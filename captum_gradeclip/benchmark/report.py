"""What the benchmark reports: its metrics (each named and headed once), the markdown table, the
plot, and the three output files.

A result is ``{"image": [Score, ...], "text": [Score, ...], ...}``: typed records (method,
metric, value), the method a :class:`~.methods.MethodName` (its label and colour come with it,
never parsed back out of the name). ``benchmark.json`` holds them as ``{method: {metric key:
value}}`` (:func:`as_json`); keys starting with ``_`` (the example maps) are left out of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from .methods import MethodName


@dataclass(frozen=True)
class Metric:
    """A reported number: ``key`` in ``benchmark.json``, ``label`` in the table, and whether lower
    is better (``None``: neither, no arrow)."""

    key: str
    label: str
    lower_is_better: Optional[bool] = None

    @property
    def arrow(self) -> str:
        return "" if self.lower_is_better is None else " ↓" if self.lower_is_better else " ↑"

    @property
    def heading(self) -> str:
        """The table's column heading."""
        return self.label + self.arrow

    @property
    def title(self) -> str:
        """The plot's panel title."""
        return self.key.replace("_", " ") + self.arrow


#: The standard pointing game: a hit within 15 px at 224 px, scaled to the image (4 px at 64 px).
POINTING = Metric("pointing_game", "pointing (15 px @ 224)", False)
#: The strict variant: the map's maximum on an object pixel (tolerance 0).
POINTING_STRICT = Metric("pointing_game_strict", "pointing, strict", False)
ENERGY_POINTING = Metric("energy_pointing_game", "energy PG", False)
DELETION = Metric("deletion_auc", "deletion AUC", True)
INSERTION = Metric("insertion_auc", "insertion AUC", False)
DELETION_ACC = Metric("deletion_acc_auc", "deletion acc. AUC", True)
INSERTION_ACC = Metric("insertion_acc_auc", "insertion acc. AUC", False)
MS_PER_EXPLANATION = Metric("ms_per_explanation", "ms / expl.")
PEAK_MB = Metric("peak_extra_mb", "peak MB above model")
WORD_DELETION = Metric("word_deletion_auc", "word deletion AUC", True)
WORD_DELETION_NORMALISED = Metric("word_deletion_nauc", "normalised", True)

#: The deletion / insertion curves' areas, as :func:`~.protocols.faithfulness` scores them.
FAITHFULNESS = (DELETION, INSERTION, DELETION_ACC, INSERTION_ACC)
IMAGE_COLUMNS = (POINTING, POINTING_STRICT, ENERGY_POINTING) + FAITHFULNESS + (MS_PER_EXPLANATION, PEAK_MB)
TEXT_COLUMNS = (WORD_DELETION, WORD_DELETION_NORMALISED, MS_PER_EXPLANATION, PEAK_MB)
PLOTTED = (POINTING, ENERGY_POINTING, DELETION, INSERTION)


@dataclass(frozen=True)
class Score:
    """One reported number: ``method``'s ``value`` of ``metric`` (a mean over the items)."""

    method: MethodName
    metric: Metric
    value: float


def scores(method: MethodName, values: Mapping[Metric, float]) -> List[Score]:
    """One :class:`Score` per metric of ``values``, in its order."""
    return [Score(method, m, float(v)) for m, v in values.items()]


def by_method(rows: Sequence[Score]) -> Dict[MethodName, Dict[Metric, float]]:
    """method -> metric -> value, methods and metrics in the order they first come."""
    out: Dict[MethodName, Dict[Metric, float]] = {}
    for r in rows:
        out.setdefault(r.method, {})[r.metric] = r.value
    return out


def as_json(rows: Sequence[Score]) -> Dict[str, Dict[str, float]]:
    """``{method: {metric key: value}}``, as ``benchmark.json`` holds a side's scores."""
    return {str(m): {k.key: v for k, v in per.items()} for m, per in by_method(rows).items()}


def _fmt(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"


def _section(side: str, rows: Sequence[Score], columns: Sequence[Metric]) -> List[str]:
    """A markdown table of ``rows`` (one line per method) with the columns some method has."""
    per = by_method(rows)
    cols = [c for c in columns if any(c in r for r in per.values())]
    lines = [f"| {side} method | " + " | ".join(c.heading for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for name, r in per.items()]
    return lines


def table(res: dict) -> str:
    """The markdown table(s) of a result: image methods, then text methods where there are any."""
    lines = _section("image", res["image"], IMAGE_COLUMNS)
    if res.get("text"):
        lines += [""] + _section("text", res["text"], TEXT_COLUMNS)
    return "\n".join(lines)


def _bars(fig, gs, image: Dict[MethodName, Dict[Metric, float]], metrics: Sequence[Metric], per: int) -> None:
    """One horizontal bar chart per metric in the top row, Grad-ECLIP in red."""
    names = list(image)
    for j, m in enumerate(metrics):
        ax = fig.add_subplot(gs[0, j * per:(j + 1) * per])
        ax.barh(range(len(names)), [image[n][m] for n in names],
                color=["tab:red" if n.ours else "tab:gray" for n in names])
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([n.short for n in names] if j == 0 else [""] * len(names), fontsize=7)
        ax.invert_yaxis()
        ax.set_title(m.title, fontsize=9)
        ax.tick_params(labelsize=7)


def _examples(fig, gs, ex: dict, names: Sequence[MethodName]) -> None:
    """Each method's map of the first example in the bottom row."""
    from ..visualization import visualize_image_attr

    for j, n in enumerate(names):
        ax = fig.add_subplot(gs[1, j])
        visualize_image_attr(ex["maps"][n][0], ex["image"].resize((128, 128), 0), ax=ax)
        ax.set_title(n.short, fontsize=6)
    fig.suptitle(f"example: \"{ex['prompt']}\"", fontsize=9, y=0.38)


def plot(res: dict, out: Path) -> None:
    """Bar charts of the localisation and faithfulness metrics (and, where the result has
    ``_examples``, each method's example map) saved to ``out``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = by_method(res["image"])
    metrics = [m for m in PLOTTED if m in next(iter(image.values()))]
    ex = res.get("_examples")
    n_ex = len(image) if ex else 0
    fig = Figure(figsize=(max(14, 1.6 * n_ex), 4.6 + (2.4 if ex else 0)))
    FigureCanvasAgg(fig)
    ncols = max(n_ex, len(metrics), 1)  # fewer examples than metrics: the examples fill the left
    gs = fig.add_gridspec(2 if ex else 1, ncols, height_ratios=[1.6, 1] if ex else [1])
    _bars(fig, gs, image, metrics, per=max(1, ncols // len(metrics)))
    if ex:
        _examples(fig, gs, ex, list(image))
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def save(res: dict, out: Path) -> str:
    """Write ``benchmark.json``, ``benchmark.md`` and ``benchmark.png`` to the folder ``out``;
    returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {k: as_json(v) if k in ("image", "text") else v for k, v in res.items() if not k.startswith("_")}
    (out / "benchmark.json").write_text(json.dumps(doc, indent=2))
    md = table(res)
    (out / "benchmark.md").write_text(md + "\n")
    plot(res, out / "benchmark.png")
    return md
