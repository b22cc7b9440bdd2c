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

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..scale.protocols import BaseBatchExplainer
from .config import FaithfulnessConfig, FolderConfig
from .methods import method_name
from .report import FAITHFULNESS, MS_PER_EXPLANATION, Score

if TYPE_CHECKING:  # pragma: no cover
    from ..scale.job import JobSpec

#: Images per shard of the folder protocol.
SHARD_SIZE = 64
#: The curves stored per (image, method), by their names in the Parquet rows.
CURVES = ("deletion", "insertion", "deletion_accuracy", "insertion_accuracy")


class FaithfulnessExplainer(BaseBatchExplainer):
    """A batch explainer for the engine: for ``pixels (N, 3, H, W)`` and the prompts, one row per
    (image, method) with the top-1 prompt, its score, the explanation time, the four curves
    ``(S,)`` and their AUCs.

    Args:
        sim: ``pixels -> (N, T)`` over the prompts. methods: name -> ``(pixels, targets) -> maps``.
        faithfulness: the step and replacement of :func:`~captum_gradeclip.metrics.deletion`.
    """

    #: the prompts of an image go together (the target is their argmax): a failing image is an error row
    splits_texts = False

    def __init__(self, sim: Any, methods: Dict[str, Any], faithfulness: FaithfulnessConfig) -> None:
        self.sim, self.methods, self.faithfulness = sim, methods, faithfulness

    def config(self) -> Dict[str, Any]:
        return {"protocol": "folder", "methods": list(self.methods), "step": self.faithfulness.step,
                "replacement": self.faithfulness.replacement}

    def __call__(self, pixels: torch.Tensor, texts: Sequence[Sequence[str]]) -> List[List[Dict[str, Any]]]:
        from ..metrics import deletion, insertion

        with torch.no_grad():
            scores = self.sim(pixels)
        t = scores.argmax(1)
        rows: List[List[Dict[str, Any]]] = [[] for _ in range(len(pixels))]
        kw = dict(step=self.faithfulness.step, replacement=self.faithfulness.replacement, accuracy=True)
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


def aggregate(out: Path) -> List[Score]:
    """Each method's mean of each AUC over the images (in the work list's order) and its mean
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
    metrics = FAITHFULNESS + (MS_PER_EXPLANATION,)
    return [Score(method_name(name), m, sum(per[m.key]) / len(per[m.key])) for name, per in sums.items() for m in metrics]


def folder_inputs(cfg: FolderConfig) -> Tuple[List[str], List[Path]]:
    """``(prompts, image files)`` of ``--prompts`` and ``--images`` (the first ``--n`` files).

    Raises:
        InputError: no such folder or prompt file, or no images in the folder.
    """
    from ..errors import InputError
    from ..scale.data import IMAGE_SUFFIXES

    folder = Path(cfg.images)
    if not folder.is_dir():
        raise InputError(f"--images must be a folder of images, got {cfg.images}")
    if not cfg.prompts or not Path(cfg.prompts).is_file():
        raise InputError("--prompts must be a text file with one prompt per line")
    try:
        prompts = [ln.strip() for ln in Path(cfg.prompts).read_text().splitlines() if ln.strip()]
    except (UnicodeDecodeError, OSError) as e:
        raise InputError(f"cannot read --prompts {cfg.prompts} as text ({e.__class__.__name__})") from None
    if not prompts:
        raise InputError(f"--prompts {cfg.prompts} holds no prompt: give one prompt per line")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if cfg.n:
        files = files[: cfg.n]
    if not files:
        raise InputError(f"no images (.png, .jpg, ...) in {folder}")
    return prompts, files


def _config(cfg: FolderConfig, prompts: List[str], files: List[Path]) -> Dict[str, Any]:
    return {"model": {"hf": cfg.model, "open_clip": cfg.open_clip},
            "methods": None if cfg.methods is None else list(cfg.methods),
            "step": cfg.faithfulness.step, "replacement": cfg.faithfulness.replacement, "prompts": prompts,
            "images": [f.name for f in files]}


def run_folder(cfg: FolderConfig) -> Optional[dict]:
    """The folder protocol on this rank's shards; rank 0 returns the results (other ranks
    ``None``): ``cfg.model`` / ``cfg.open_clip`` on ``cfg.images`` and ``cfg.prompts``,
    ``cfg.batch`` images per batch, curves under ``cfg.out_dir/curves``.

    Raises:
        InputError: bad inputs (see :func:`folder_inputs`), none of the images readable,
            or another job's curves in ``cfg.out_dir``.
    """
    from ..errors import InputError
    from ..scale.engine import run_job
    from ..scale.store import require_pyarrow

    require_pyarrow("the folder benchmark")
    prompts, files = folder_inputs(cfg)
    out = Path(cfg.out_dir) / "curves"
    summary = run_job(folder_job(cfg, prompts, files, out))
    if not summary.is_main:
        return None
    skipped = sorted({e["image"] for e in _errors(out)})
    if summary.pairs == 0:
        raise InputError(f"none of the {len(files)} images in {cfg.images} could be read or explained")
    return dict(protocol="folder", images=len(files) - len(skipped), skipped=skipped, prompts=len(prompts),
                step=cfg.faithfulness.step, replacement=cfg.faithfulness.replacement, image=aggregate(out), text=[],
                world_size=summary.world_size, curves=str(out))


def folder_job(cfg: FolderConfig, prompts: List[str], files: List[Path], out: Path) -> "JobSpec":
    """The folder protocol as a dataset job: ``files`` against ``prompts`` into ``out``, the
    model loaded (after the folder is prepared) with :class:`FaithfulnessExplainer` over the
    selected methods."""
    from ..scale.data import ImageFolderDataset, WorkItem
    from ..scale.job import JobSpec

    items = [WorkItem(f.name, tuple(prompts)) for f in files]

    def load(device: Any) -> Tuple[Any, FaithfulnessExplainer]:
        from ..models import load as load_model
        from .methods import image_methods, select

        clip = load_model(cfg.model, cfg.open_clip)  # a failure here leaves no state in --out-dir
        sim = clip.image_similarity(*clip.tokens(prompts))
        explainer = FaithfulnessExplainer(sim, select(image_methods(clip, sim), cfg.methods), cfg.faithfulness)
        return ImageFolderDataset(Path(cfg.images), items, clip.pixels), explainer

    return JobSpec(out, _config(cfg, prompts, files), len(files), load, batch_size=cfg.batch, shard_size=SHARD_SIZE,
                   num_workers=1, device="cpu")


def _errors(out: Path) -> List[Dict[str, Any]]:
    import json

    return [json.loads(ln) for ln in (out / "errors.jsonl").read_text().splitlines()]
