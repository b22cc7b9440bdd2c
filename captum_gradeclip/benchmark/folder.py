"""The folder protocol on the dataset engine (:mod:`captum_gradeclip.scale`): any CLIP, a folder
of images and a prompt file; each image explained by every method for the prompt the model ranks
first, and scored by deletion and insertion of the cosine and of zero-shot accuracy (the
Grad-ECLIP paper's ImageNet protocol).

Sharded over torchrun's ranks and resumable like ``explain-dataset``: one Parquet row per
(image, method) under ``OUT_DIR/curves/`` with the four curves and their AUCs. Rank 0 then
averages the per-image AUCs in the work list's order, so the numbers are the same on any number
of processes and after any number of restarts (only the timings differ).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .report import FAITHFULNESS, MS_PER_EXPLANATION

#: Images per shard of the folder protocol.
SHARD_SIZE = 64
#: The curves stored per (image, method), by their names in the Parquet rows.
CURVES = ("deletion", "insertion", "deletion_accuracy", "insertion_accuracy")


class FaithfulnessExplainer:
    """A batch explainer for the engine: for ``pixels (N, 3, H, W)`` and the prompts, one row per
    (image, method) with the top-1 prompt, its score, the explanation time, the four curves
    ``(S,)`` and their AUCs.

    Args:
        sim: ``pixels -> (N, T)`` over the prompts. methods: name -> ``(pixels, targets) -> maps``.
        step, replacement: of :func:`~captum_gradeclip.metrics.deletion`.
    """

    #: the prompts of an image go together (the target is their argmax): a failing image is an error row
    splits_texts = False

    def __init__(self, sim: Any, methods: Dict[str, Any], step: float, replacement: str) -> None:
        self.sim, self.methods, self.step, self.replacement = sim, methods, step, replacement

    def config(self) -> Dict[str, Any]:
        return {"protocol": "folder", "methods": list(self.methods), "step": self.step,
                "replacement": self.replacement}

    def __call__(self, pixels: torch.Tensor, texts: Sequence[Sequence[str]]) -> List[List[Dict[str, Any]]]:
        from ..metrics import deletion, insertion

        with torch.no_grad():
            scores = self.sim(pixels)
        t = scores.argmax(1)
        rows: List[List[Dict[str, Any]]] = [[] for _ in range(len(pixels))]
        kw = dict(step=self.step, replacement=self.replacement, accuracy=True)
        for name, fn in self.methods.items():
            t0 = time.perf_counter()
            maps = fn(pixels, t).detach().float()
            seconds = (time.perf_counter() - t0) / len(pixels)
            d, i = deletion(self.sim, pixels, maps, t, **kw), insertion(self.sim, pixels, maps, t, **kw)
            curves = dict(zip(CURVES, (d.scores, i.scores, d.accuracy.float(), i.accuracy.float())))
            aucs = dict(zip([m.key for m in FAITHFULNESS], (d.auc, i.auc, d.accuracy_auc, i.accuracy_auc)))
            for n, k in enumerate(t.tolist()):
                rows[n].append({"method": name, "text": texts[n][k], "target": k, "score": float(scores[n, k]),
                                "seconds": seconds, **{c: v[n] for c, v in curves.items()},
                                **{key: float(v[n]) for key, v in aucs.items()}})
        return rows

    @staticmethod
    def to_table(rows: Sequence[Dict[str, Any]]) -> Any:
        """The rows as Arrow: image, method, text, target, score, seconds, the AUCs (float32) and
        the curves (list<float32>)."""
        import pyarrow as pa

        floats = ["score", "seconds"] + [m.key for m in FAITHFULNESS]
        fields = [("image", pa.string()), ("method", pa.string()), ("text", pa.string()), ("target", pa.int32())]
        fields += [(c, pa.float32()) for c in floats] + [(c, pa.list_(pa.float32())) for c in CURVES]
        cols = {c: [r[c] for r in rows] for c, _ in fields if c not in CURVES}
        cols.update({c: [r[c].tolist() for r in rows] for c in CURVES})
        return pa.Table.from_pydict(cols, schema=pa.schema(fields))


def aggregate(out: Path) -> Dict[str, Dict[str, float]]:
    """method -> the mean of each AUC over the images (in the work list's order) and the mean
    explanation time in ms: what one process computing every image would report."""
    import pyarrow.parquet as pq

    sums: Dict[str, Dict[str, List[float]]] = {}
    for f in sorted(out.glob("shard-*.parquet")):
        t = pq.read_table(f).to_pydict()
        for j, name in enumerate(t["method"]):
            per = sums.setdefault(name, {m.key: [] for m in FAITHFULNESS + (MS_PER_EXPLANATION,)})
            for m in FAITHFULNESS:
                per[m.key].append(t[m.key][j])
            per[MS_PER_EXPLANATION.key].append(1000 * t["seconds"][j])
    return {name: {k: sum(v) / len(v) for k, v in per.items()} for name, per in sums.items()}


def folder_inputs(args: argparse.Namespace) -> Tuple[List[str], List[Path]]:
    """``(prompts, image files)`` of ``--prompts`` and ``--images`` (the first ``--n`` files).

    Raises:
        CLIError: no such folder or prompt file, or no images in the folder.
    """
    from .._io import CLIError
    from ..scale.data import IMAGE_SUFFIXES

    folder = Path(args.images)
    if not folder.is_dir():
        raise CLIError(f"--images must be a folder of images, got {args.images}")
    if not args.prompts or not Path(args.prompts).is_file():
        raise CLIError("--prompts must be a text file with one prompt per line")
    try:
        prompts = [ln.strip() for ln in Path(args.prompts).read_text().splitlines() if ln.strip()]
    except (UnicodeDecodeError, OSError) as e:
        raise CLIError(f"cannot read --prompts {args.prompts} as text ({e.__class__.__name__})") from None
    if not prompts:
        raise CLIError(f"--prompts {args.prompts} holds no prompt: give one prompt per line")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if args.n:
        files = files[: args.n]
    if not files:
        raise CLIError(f"no images (.png, .jpg, ...) in {folder}")
    return prompts, files


def _config(args: argparse.Namespace, prompts: List[str], files: List[Path]) -> Dict[str, Any]:
    return {"model": {"hf": args.model, "open_clip": args.open_clip}, "methods": args.methods,
            "step": args.step, "replacement": args.replacement, "prompts": prompts,
            "images": [f.name for f in files]}


def run_folder(args: argparse.Namespace) -> Optional[dict]:
    """The folder protocol on this rank's shards; rank 0 returns the results (other ranks
    ``None``): ``args.model`` / ``args.open_clip`` on ``args.images`` and ``args.prompts``,
    ``args.batch`` images per batch, curves under ``args.out_dir/curves``.

    Raises:
        CLIError: bad inputs (see :func:`folder_inputs`), none of the images readable,
            or another job's curves in ``args.out_dir``.
    """
    from .. import distributed as dist
    from .._io import CLIError
    from ..models import load
    from ..scale.data import ImageFolderDataset, WorkItem
    from ..scale.engine import job_config, prepared, run
    from ..scale.store import require_pyarrow
    from .methods import image_methods, select

    require_pyarrow("the folder benchmark")
    prompts, files = folder_inputs(args)
    out = Path(args.out_dir) / "curves"
    with dist.session("cpu") as ranks:
        with prepared(out, job_config(_config(args, prompts, files), len(files), SHARD_SIZE, args.batch), ranks):
            clip = load(args.model, args.open_clip)  # a failure here leaves no state in --out-dir
            sim = clip.image_similarity(*clip.tokens(prompts))
            explainer = FaithfulnessExplainer(sim, select(image_methods(clip, sim), args.methods), args.step,
                                              args.replacement)
        items = [WorkItem(f.name, tuple(prompts)) for f in files]
        summary = run(ImageFolderDataset(Path(args.images), items, clip.pixels), explainer, out, ranks,
                      batch_size=args.batch, shard_size=SHARD_SIZE, num_workers=1)
    if ranks.rank != 0:
        return None
    skipped = sorted({e["image"] for e in _errors(out)})
    if summary["pairs"] == 0:
        raise CLIError(f"none of the {len(files)} images in {args.images} could be read or explained")
    return dict(protocol="folder", images=len(files) - len(skipped), skipped=skipped, prompts=len(prompts),
                step=args.step, replacement=args.replacement, image=aggregate(out), text={},
                world_size=ranks.world, curves=str(out))


def _errors(out: Path) -> List[Dict[str, Any]]:
    import json

    return [json.loads(ln) for ln in (out / "errors.jsonl").read_text().splitlines()]
