"""What a report shows of a job folder: its configuration, totals, errors, per-text statistics and
a capped selection of its rows (read with pyarrow, maps only for the rows kept).

Two kinds of folder: an ``explain-dataset`` output (``shard-*.parquet`` with maps, see
:mod:`captum_gradeclip.scale.table`) and a folder benchmark's ``OUT_DIR`` (``benchmark.json`` and
``curves/shard-*.parquet``: one row per (image, method) with its AUCs, no maps).

The caps (:class:`ReportCaps`): for each of the ``texts`` most frequent texts, its ``best``
highest- and ``best`` lowest-scoring rows, plus ``sample`` rows drawn at random (``seed``) from
the whole job. So the report's size depends on the caps, not on the job's size. A benchmark's
rows are grouped by method instead of text and ranked by their insertion AUC instead of the score.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..errors import InputError

#: Columns every report reads; the other scalar columns are shown as they are.
CORE = ("image", "text", "score")
_HIDDEN = {"map", "map_h", "map_w", "words", "word_map", "text_index", "target",
           "deletion", "insertion", "deletion_accuracy", "insertion_accuracy"}


@dataclass(frozen=True)
class ReportCaps:
    """How much of a job a report keeps (see the module docstring)."""

    best: int = 8
    sample: int = 200
    texts: int = 20
    seed: int = 0


@dataclass
class Row:
    """A kept row: where it is (``shard``, ``index``), its values, why it was kept
    (``"best"``, ``"worst"``, ``"sample"``), and its map ``(h, w)`` (``None`` for a benchmark row)."""

    shard: int
    index: int
    values: Dict[str, Any]
    why: List[str] = field(default_factory=list)
    map: Any = None


@dataclass
class Job:
    """A job folder as the report shows it.

    Attributes:
        kind: ``"explain-dataset"`` or ``"benchmark"``. folder: the folder. config: its configuration
        (``manifest.json`` or ``config.json``; for a benchmark also ``benchmark.json``).
        totals: rows, images, texts, errors, shards. errors: the error records. per_text: text ->
        (rows, mean, min, max score). rows: the kept rows. best, worst: text -> its kept rows,
        best first / worst first. columns: the extra scalar columns (e.g. method, AUCs).
        group, rank: the column rows are grouped by (``text``; a benchmark's ``method``) and ranked by
        (``score``; a benchmark's ``insertion_auc``). status: what the page must say before anything
        else (an incomplete or running job, a shard refused), empty for a finished, intact job.
        checked: how the shards' bytes were checked (sha256 against the manifest, or not at all).
    """

    kind: str
    folder: Path
    config: Dict[str, Any]
    totals: Dict[str, int]
    errors: List[Dict[str, Any]]
    per_text: Dict[str, Tuple[int, float, float, float]]
    rows: List[Row]
    best: Dict[str, List[Row]]
    worst: Dict[str, List[Row]]
    columns: List[str]
    caps: ReportCaps
    group: str = "text"
    rank: str = "score"
    status: List[str] = field(default_factory=list)
    checked: str = ""


def _shard_folder(out: Path) -> Tuple[str, Path]:
    if (out / "benchmark.json").is_file() and (out / "curves").is_dir():
        return "benchmark", out / "curves"
    if list(out.glob("shard-*.parquet")):
        return "explain-dataset", out
    raise InputError(f"{out} is neither an explain-dataset output (shard-*.parquet) nor a folder benchmark's "
                   "--out-dir (benchmark.json and curves/): give one of those folders")


def _verified(shards: Path, files: List[Path], manifest: Dict[str, Any]) -> Tuple[List[Path], List[str], str]:
    """The shards whose sha256 is the one recorded (as :func:`~captum_gradeclip.scale.read_maps`
    checks them: the manifest's, else the sums file written with each shard), the warnings about
    the others (left out of the report), and a sentence saying how they were checked."""
    from ..scale import store

    recorded = {s.get("file"): s.get("sha256") for s in manifest.get("shards", []) if isinstance(s, dict)}
    good, warnings, unchecked = [], [], []
    for f in files:
        try:
            i = int(f.stem.split("-")[1])
        except (IndexError, ValueError):
            warnings.append(f"{f.name}: not a shard name the engine writes; left out")
            continue
        want = recorded.get(f.name) or (store.recorded_sum(shards, i) or {}).get("sha256")
        try:
            store.verify(shards, i, want)
        except store.DamagedShard as e:
            warnings.append(f"{f.name} left out: {e}")
            continue
        good.append(f)
        if want is None:
            unchecked.append(f.name)
    source = "the manifest" if recorded else "the sums written with each shard"
    checked = (f"sha256 of all {len(good)} shard(s) shown checked against {source}" if not unchecked else
               f"{len(unchecked)} shard(s) have no recorded sha256 (e.g. {unchecked[0]}): read as Parquet, not checked")
    return good, warnings, checked


def _completeness(shards: Path, manifest: Dict[str, Any], found: int, rows: int) -> List[str]:
    """What the page must say about a job that is not finished, or whose shards went missing."""
    totals = manifest.get("totals") if isinstance(manifest.get("totals"), dict) else None
    if totals is not None:
        want_shards, want_rows = totals.get("shards"), totals.get("rows")
        if found != want_shards or rows != want_rows:
            return [f"incomplete: {found} of {want_shards} shards, {rows} of {want_rows} rows (the manifest lists "
                    "more: shards deleted or damaged)"]
        return []
    cfg = _read_json(shards / "config.json").get("config", {})
    items, size = cfg.get("items"), cfg.get("shard_size")
    planned = f" {found} of {-(-items // size)} shards written," if isinstance(items, int) and isinstance(size, int) \
        and size > 0 else ""
    return [f"no manifest: interrupted or running;{planned} {rows} rows so far (rerun the job's command to finish "
            "it, then the report again)"]


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {"unreadable": str(path)}


def _errors(shards: Path) -> List[Dict[str, Any]]:
    files = [shards / "errors.jsonl"] if (shards / "errors.jsonl").is_file() else \
        sorted((shards / "errors").glob("shard-*.jsonl"))
    out = []
    for f in files:
        for line in f.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"error": line})
    return out


def _scan(files: List[Path]) -> Tuple[List[Tuple[int, int]], Dict[str, List[Any]], List[str]]:
    """Every row's (shard, index) and its scalar columns, without the maps."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    where: List[Tuple[int, int]] = []
    cols: Dict[str, List[Any]] = defaultdict(list)
    schema = pq.read_schema(files[0])
    extra = [f.name for f in schema if f.name not in CORE and f.name not in _HIDDEN
             and not pa.types.is_list(f.type)]
    for s, f in enumerate(files):
        t = pq.read_table(f, columns=list(CORE) + extra).to_pydict()
        where += [(s, i) for i in range(len(t["image"]))]
        for c, v in t.items():
            cols[c] += v
    return where, cols, extra


def _select(cols: Dict[str, List[Any]], caps: ReportCaps, group: str,
            rank: str) -> Tuple[Dict[str, List[int]], Dict[str, List[int]], List[int]]:
    """Row numbers: each frequent group's best and worst (by ``rank``), and the random sample."""
    by_text: Dict[str, List[int]] = defaultdict(list)
    for i, t in enumerate(cols[group]):
        by_text[t].append(i)
    frequent = [t for t, _ in Counter(cols[group]).most_common(caps.texts)]
    best, worst = {}, {}
    for t in frequent:
        order = sorted(by_text[t], key=lambda i: (-cols[rank][i], i))
        best[t], worst[t] = order[:caps.best], order[::-1][:caps.best]
    n = len(cols["text"])
    sample = sorted(random.Random(caps.seed).sample(range(n), min(caps.sample, n)))
    return best, worst, sample


def _maps(files: List[Path], rows: List[Row]) -> None:
    """Fill in the kept rows' maps ``(h, w)``, reading each shard's ``map`` column once."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    by_shard: Dict[int, List[Row]] = defaultdict(list)
    for r in rows:
        by_shard[r.shard].append(r)
    for s, kept in by_shard.items():
        t = pq.read_table(files[s], columns=["map", "map_h", "map_w"]).take([r.index for r in kept]).to_pydict()
        for j, r in enumerate(kept):
            a = np.asarray(t["map"][j], dtype=np.float32).reshape(t["map_h"][j], t["map_w"][j])
            r.map = torch.from_numpy(a)


def _per_text(cols: Dict[str, List[Any]], group: str, rank: str) -> Dict[str, Tuple[int, float, float, float]]:
    acc: Dict[str, List[float]] = defaultdict(list)
    for t, s in zip(cols[group], cols[rank]):
        acc[t].append(s)
    return {t: (len(v), sum(v) / len(v), min(v), max(v)) for t, v in
            sorted(acc.items(), key=lambda kv: -len(kv[1]))}


def read_job(out: "str | Path", caps: ReportCaps = ReportCaps()) -> Job:
    """The job folder ``out`` with its rows selected by ``caps``.

    Raises:
        InputError: not a job folder, a folder whose shards pyarrow cannot read, or no pyarrow.
    """
    from ..scale.store import require_pyarrow

    require_pyarrow("report")
    out = Path(out)
    if out.is_file():
        raise InputError(f"{out} is a file: give the job's folder (its --out / --out-dir), e.g. {out.parent}")
    if not out.is_dir():
        raise InputError(f"no such folder: {out}")
    kind, shards = _shard_folder(out)
    manifest = _read_json(shards / "manifest.json")
    files, status, checked = _verified(shards, sorted(shards.glob("shard-*.parquet")), manifest)
    if not files:
        raise InputError(f"{shards} holds no intact shard-*.parquet: " + ("; ".join(status) or "run the job first"))
    try:
        where, cols, extra = _scan(files)
    except Exception as e:  # pyarrow's errors for a damaged file
        raise InputError(f"cannot read the shards in {shards} ({e.__class__.__name__}: {str(e)[:120]})") from None
    group, rank = ("method", "insertion_auc") if kind == "benchmark" else ("text", "score")
    best_i, worst_i, sample = _select(cols, caps, group, rank)
    rows: Dict[int, Row] = {}

    def keep(i: int, why: str) -> Row:
        r = rows.setdefault(i, Row(*where[i], {c: cols[c][i] for c in list(CORE) + extra}))
        if why not in r.why:
            r.why.append(why)
        return r

    best = {t: [keep(i, "best") for i in ix] for t, ix in best_i.items()}
    worst = {t: [keep(i, "worst") for i in ix] for t, ix in worst_i.items()}
    for i in sample:
        keep(i, "sample")
    kept = [rows[i] for i in sorted(rows)]
    if kind == "explain-dataset":
        _maps(files, kept)
    config = manifest or _read_json(shards / "config.json")
    if kind == "benchmark":
        config = {"benchmark": _read_json(out / "benchmark.json"), "job": config}
    errors = _errors(shards)
    totals = {"rows": len(where), "images": len(set(cols["image"])), "texts": len(set(cols["text"])),
              "errors": len(errors), "shards": len(files), "rows shown": len(kept)}
    status += _completeness(shards, manifest, len(files), len(where))
    return Job(kind, out, config, totals, errors, _per_text(cols, group, rank), kept, best, worst, extra, caps,
               group, rank, status, checked)
