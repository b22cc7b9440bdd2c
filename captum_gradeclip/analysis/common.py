"""What the three ``analyze`` commands share: the model flags, the pairs file, and writing a
study's rows (``rows.parquet``, or ``rows.csv`` without pyarrow) and ``summary.json``."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from .._io import read_utf8
from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedCLIP

__all__ = ["AnalysisError", "PairLine", "SceneDataset", "is_main_process", "job_errors", "run_maps_job", "add_model_args", "load_clip", "read_pairs", "write_rows", "write_summary"]


class AnalysisError(InputError):
    """Input an analysis cannot use (a bad pairs line, a phrase not in its caption, no rated word
    at all, a ``--maps`` job without the rows the study needs): one line on the command line."""


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The flags every study takes: ``--model`` / ``--open-clip`` (as ``explain``), ``--out DIR``
    (required), ``--pairs FILE.jsonl`` and ``--images DIR`` (the folder the pairs' image paths
    are relative to; default: the pairs file's folder), ``--maps DIR`` (a finished
    ``explain-dataset`` job to read maps from instead of computing them), ``--batch-size``."""
    from ..options_cli import add_model_args as add_shared_model_args

    add_shared_model_args(parser, unknown_words=True)
    parser.add_argument("--out", required=True, metavar="DIR", help="where rows, summary.json and the figure go")
    parser.add_argument("--pairs", default=None, metavar="FILE.jsonl",
                        help='{"image": "rel/path.png", "texts": [...], ...} per line (default: ShapesCLIP scenes)')
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="the folder the pairs' image paths are relative to (default: the pairs file's folder)")
    parser.add_argument("--maps", default=None, metavar="DIR",
                        help="a finished explain-dataset job (its Parquet shards) to read instead of recomputing")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (default %(default)s)")


def add_maps_job_args(parser: argparse.ArgumentParser, *, scenes: int) -> None:
    """The flags of a study whose maps are an ``explain-dataset`` job (decomposition, concreteness):
    ``--scenes`` (ShapesCLIP scenes without ``--pairs``, default ``scenes``), ``--shard-size``,
    ``--n-boot``; and ``--batch-size`` defaults to 1 there: a pair's texts are the columns of one
    ``attribute_all`` (with more pairs per batch the columns are the union of the batch's texts,
    and every image pays for all of them: ``benchmarks/analysis_cost.py``)."""
    parser.set_defaults(batch_size=1)
    parser.add_argument("--scenes", type=int, default=scenes, help=f"ShapesCLIP scenes without --pairs (default {scenes})")
    parser.add_argument("--shard-size", type=int, default=64, help="images per shard of the maps job (default 64)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the intervals (default 1000)")


def load_clip(args: argparse.Namespace) -> "LoadedCLIP":
    """The CLIP the flags name (ShapesCLIP by default), via :func:`captum_gradeclip.models.load`.

    Raises:
        ModelError: both flags given, or a model that cannot be loaded.
    """
    from ..models import load

    return load(getattr(args, "model", None), getattr(args, "open_clip", None))


@dataclass(frozen=True)
class PairLine:
    """One line of a pairs file.

    Attributes:
        image: the image path as written in the file (the row key).
        path: where the image is (``root / image``).
        texts: the ``"texts"`` list.
        fields: every other key of the line (what a study needs beyond texts, e.g. ``phrases``).
        line: the line number (from 1), for error messages.
        source: the pairs file.
    """

    image: str
    path: Path
    texts: Tuple[str, ...]
    fields: Dict[str, Any] = field(default_factory=dict)
    line: int = 0
    source: str = ""

    def where(self) -> str:
        """``FILE:LINE``, the prefix of an error about this line."""
        return f"{self.source}:{self.line}"


def read_pairs(path: Union[str, Path], root: Optional[Union[str, Path]] = None) -> List[PairLine]:
    """The lines of a pairs file (``explain-dataset --pairs`` format: ``{"image": "rel/path.png",
    "texts": [...]}`` plus any further fields; a line with ``"caption": "..."`` and no ``"texts"``
    reads as ``"texts": [caption]``, the caption also kept in ``fields``), in file order; image
    paths are relative to ``root`` (default: the file's folder). Blank lines are skipped.

    Raises:
        InputError: no such file, a line that is not such an object (one line naming file and line
            number), or no pairs at all.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--pairs must be a JSON-lines file, got {path}")
    base = Path(root) if root is not None else p.parent
    text = read_utf8(p, "--pairs")
    out: List[PairLine] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            image = rec.pop("image")
            texts = rec.pop("texts") if "texts" in rec else [rec["caption"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InputError(f"{path}:{n}: expected {{\"image\": \"rel/path.png\", \"texts\": [...]}} (or "
                             f"\"caption\": \"...\" for \"texts\"), got {line[:80]!r}") from None
        if not isinstance(image, str) or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise InputError(f"{path}:{n}: \"image\" must be a string and \"texts\" a list of strings "
                             "(\"caption\": a string)")
        if not texts or not all(t.strip() for t in texts):
            raise InputError(f"{path}:{n}: \"texts\" must hold at least one non-empty text")
        out.append(PairLine(Path(image).as_posix(), base / image, tuple(texts), rec, n, str(path)))
    if not out:
        raise InputError(f"no pairs in {path}")
    return out


def _plain(value: Any) -> Any:
    """A row value as Arrow / CSV can hold it: tensors and tuples as lists, NaN kept."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _dicts(rows: Sequence[Any]) -> List[Dict[str, Any]]:
    return [{k: _plain(v) for k, v in (dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r)).items()}
            for r in rows]


def write_rows(rows: Sequence[Any], out_dir: Union[str, Path]) -> Path:
    """Write a study's rows (dataclass instances, or dicts) as ``out_dir/rows.parquet`` (with
    pyarrow) or ``out_dir/rows.csv`` (without: list values as JSON). Returns the file written.

    Raises:
        InputError: ``out_dir`` cannot be written.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot write --out {out_dir}: {e.strerror or e}") from None
    dicts = _dicts(rows)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path = out / "rows.csv"
        names = list(dicts[0]) if dicts else []
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=names)
            w.writeheader()
            for d in dicts:
                w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in d.items()})
        return path
    path = out / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(dicts), path)
    return path


def _json_safe(value: Any) -> Any:
    """NaN and infinities as ``null`` (strict JSON), dataclasses as dicts, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_safe(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_summary(summary: Dict[str, Any], out_dir: Union[str, Path]) -> Path:
    """Write ``summary`` as ``out_dir/summary.json`` (NaN as ``null``; dataclasses such as
    :class:`~.stats.Interval` as objects). Returns the file written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    path.write_text(json.dumps(_json_safe(summary), indent=2) + "\n", encoding="utf-8")
    return path


class SceneDataset:
    """ShapesCLIP scenes as a dataset for the engine: ``[i] -> (key "scene-SEED", pixels (3, H, W),
    texts)``, rendered on the fly (no files) from ``seeds[i]`` with ``texts_of(scene)``."""

    def __init__(self, clip: "LoadedCLIP", seeds: Sequence[int], texts_of: Any, n_objects: Any = None) -> None:
        self.clip, self.seeds, self.texts_of, self.n_objects = clip, list(seeds), texts_of, n_objects

    def __len__(self) -> int:
        return len(self.seeds)

    def scene(self, i: int) -> Any:
        """The :class:`~captum_gradeclip.shapes.Scene` of item ``i``."""
        from ..shapes import render_scene

        seed = self.seeds[i]
        n = None if self.n_objects is None else self.n_objects(seed)
        return render_scene(seed=seed) if n is None else render_scene(seed=seed, n_objects=n)

    def __getitem__(self, i: int) -> Tuple[str, Any, List[str]]:
        sc = self.scene(i)
        return f"scene-{self.seeds[i]}", self.clip.pixels([sc.image])[0], list(self.texts_of(sc))


def is_main_process() -> bool:
    """Whether this is rank 0 of a torchrun job (or the only process)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def run_maps_job(dataset: Any, clip: "LoadedCLIP", out: Union[str, Path], *, batch_size: int,
                 config: Dict[str, Any], shard_size: int = 64, progress: bool = False,
                 options: Any = None) -> Path:
    """Explain ``dataset`` (``[i] -> (key, pixels (3, H, W), texts)``) with the dataset engine into
    ``out`` (an ``explain-dataset --text-maps`` job: image maps, scores and word maps of every
    (image, text), one ``attribute_all`` and one text backward per batch; sharded over torchrun's
    ranks, ``shard_size`` images per shard, resumed when run again). ``options``: the image
    method and Grad-ECLIP's settings (:class:`~captum_gradeclip.scale.explain.ExplainerOptions`;
    default Grad-ECLIP's published one); word maps are always on. Returns ``out``.

    Raises:
        ScaleError: ``out`` holds another job, or cannot be written.
    """
    from ..scale import CLIPExplainer, explain_dataset

    import dataclasses

    from ..scale.explain import ExplainerOptions

    options = dataclasses.replace(options or ExplainerOptions(), text_maps=True)
    explain_dataset(dataset, CLIPExplainer(clip, options=options), out, config=config, batch_size=batch_size,
                    shard_size=shard_size, num_workers=0, progress=progress)
    return Path(out)


def job_errors(maps_dir: Union[str, Path]) -> List[Dict[str, Any]]:
    """The error rows of an engine job (``errors/*.jsonl``): ``{"image", "error"[, "text"]}``."""
    out: List[Dict[str, Any]] = []
    for f in sorted(Path(maps_dir).glob("errors/*.jsonl")):
        out += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return out
