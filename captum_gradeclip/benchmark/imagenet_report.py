"""The authors' protocol's results from its shards: each method's mean curves, AUCs, accuracy and
times (in the work list's order: the same numbers on any number of ranks), as a markdown table
and a figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch

from .imagenet_explainer import CURVES


def aggregate(curves: Path, keys: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """method -> mean curves (the work list's order: the same numbers on any number of ranks),
    mean AUCs, the clean top-1 accuracy, the images, and the mean times in ms per image."""
    import pyarrow.parquet as pq

    order = {k: i for i, k in enumerate(keys)}
    per: Dict[str, List[Tuple[int, Dict[str, Any]]]] = {}
    for f in sorted(curves.glob("shard-*.parquet")):
        for r in pq.read_table(f).to_pylist():
            per.setdefault(r["method"], []).append((order[r["image"]], r))
    out = {}
    for name, rows in per.items():
        rs = [r for _, r in sorted(rows, key=lambda x: x[0])]
        res: Dict[str, Any] = {"images": len(rs), "accuracy_top1": sum(r["label"] == r["pred"] for r in rs) / len(rs),
                               "ms_explain": 1000 * sum(r["seconds"] for r in rs) / len(rs),
                               "ms_protocol": 1000 * sum(r["protocol_seconds"] for r in rs) / len(rs)}
        for c in CURVES:
            res[f"{c}_auc"] = sum(r[f"{c}_auc"] for r in rs) / len(rs)
            res[c] = torch.tensor([r[c] for r in rs]).mean(0).tolist()
        out[name] = res
    return out


def table(res: Dict[str, Any]) -> str:
    """The method x {deletion, insertion} x {top-1, top-5, top-10} AUC table, in markdown."""
    head = ["method", "acc. top-1"] + [f"{k[:3]}. top-{n} AUC {'↓' if k == 'deletion' else '↑'}"
                                        for k in ("deletion", "insertion") for n in (1, 5, 10)]
    lines = ["| " + " | ".join(head) + " | ms explain / img | ms protocol / img |",
             "|---" + "|---:" * (len(head) + 1) + "|"]
    for name, r in res["image"].items():
        vals = [f"{r['accuracy_top1']:.3f}"] + [f"{r[c + '_auc']:.3f}" for c in CURVES]
        lines.append(f"| {name} | " + " | ".join(vals) + f" | {r['ms_explain']:.1f} | {r['ms_protocol']:.1f} |")
    return "\n".join(lines)


def figure(res: Dict[str, Any], path: Path) -> None:
    """Top-1 accuracy against the share of pixels deleted / inserted, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), sharey=True)
    x_del = [0.05 * i for i in range(11)]
    x_ins = [0.05 * i for i in range(1, 11)] + [1.0]
    colours = plt.get_cmap("tab20").colors
    for j, (name, r) in enumerate(res["image"].items()):
        style = dict(marker=".", color=colours[j % 20], label=name, lw=2.2 if "Grad-ECLIP" in name else 1.2,
                     ls="-" if "Grad-ECLIP" in name else "--")
        axes[0].plot(x_del, r["deletion_top1"], **style)
        axes[1].plot(x_ins, r["insertion_top1"], **style)
    for ax, t in zip(axes, ("deletion (random RGB): lower is better", "insertion (black canvas): higher is better")):
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("share of the pixels deleted / inserted")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle(f"the Grad-ECLIP authors' protocol: {res['images']} images, target {res['target']}")
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
