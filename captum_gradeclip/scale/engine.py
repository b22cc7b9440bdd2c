"""The dataset engine: shards of a work list, explained batch by batch on every rank, written
atomically, resumable.

The ``n`` items of a dataset (sorted by whoever built it) are cut into fixed shards of
``shard_size``; shard ``i`` belongs to rank ``i % world`` (no padding, no duplicates, whatever
the world size). Each rank reads the images of its unfinished shards through one ``DataLoader``
(workers decode in the background), in batches that never cross a shard's end, explains each
batch with the batch explainer (:mod:`.explain`) and writes a shard when its last batch is done.
Batches are the same whatever the world size, so the maps are too, to float32 rounding (a
process's thread count changes the order of float sums, not the batches).

Faults: an input that cannot be decoded or explained is an error row, never a crash; every
input of a shard ends in its rows or its errors (checked when the shard is written, counted in
the manifest); a killed rank loses at most its unfinished shards; the same command again skips
finished shards after checking their sha256.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .. import distributed as dist
from ..errors import GradECLIPError
from . import store
from .data import key_of
from .table import to_table

#: ``(pixels (N, 3, H, W), texts: N lists) -> N lists of row dicts``. Optional attributes the
#: engine reads: ``config()`` (recorded in the job's configuration), ``to_table(rows)`` (an Arrow
#: table of a shard's rows; default :func:`.table.to_table`), ``text_maps`` (default schema with
#: word maps), ``splits_texts`` (``False``: a failing image is not retried text by text),
#: ``refused_texts(texts) -> {text: reason}`` (texts it must not explain, e.g. longer than the
#: model's context: error rows with ``"code": "text_too_long"``).
BatchExplainer = Callable[[torch.Tensor, Sequence[Sequence[str]]], List[List[Dict[str, Any]]]]
Rows = List[Dict[str, Any]]


def _no_fault(rank: int, written: int) -> None:
    """The production :data:`after_shard`: nothing."""


#: Test seam: ``after_shard(rank, written)`` runs after a rank wrote a shard (``written``: its
#: shards so far in this run). Fault-injection tests replace it (e.g. to kill the rank); the
#: engine never reads the environment for it.
after_shard: Callable[[int, int], None] = _no_fault


@dataclass
class WorkInput:
    """One input of a batch as a ``DataLoader`` worker hands it over: its ``index`` in the
    dataset and ``key``, and either ``pixels (3, H, W)`` and ``texts`` or the ``error`` that kept
    it from being decoded."""

    index: int
    key: Optional[str]
    pixels: Optional[torch.Tensor] = None
    texts: Tuple[str, ...] = ()
    error: Optional[str] = None
    #: each text's position among the image's texts (default: 0, 1, ...)
    positions: Optional[Tuple[int, ...]] = None

    def position(self, j: int) -> int:
        return j if self.positions is None or j >= len(self.positions) else self.positions[j]


class _Safe:
    """``dataset[i]`` -> a :class:`WorkInput`: decoding errors stay in the worker as data."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> WorkInput:
        try:
            key, pixels, texts = self.dataset[i]
            if not torch.is_tensor(pixels) or pixels.dim() != 3:
                raise TypeError(f"pixels must be a (3, H, W) tensor, got {type(pixels).__name__}")
            return WorkInput(i, str(key), pixels, tuple(texts))
        except Exception as e:  # a bad input never stops the run: it becomes an error row
            return WorkInput(i, key_of(self.dataset, i), error=_reason(e))


def _no_texts(x: WorkInput) -> WorkInput:
    """An input without texts is an error (e.g. an empty ``"texts"`` list in a pairs file)."""
    return WorkInput(x.index, x.key, error="no texts to explain this image for (an empty texts list)")


def _reason(e: Exception) -> str:
    """An error row's reason: a user error's message, else the exception's type and message."""
    return str(e) if isinstance(e, GradECLIPError) else f"{type(e).__name__}: {e}"


def _collate(records: List[WorkInput]) -> List[WorkInput]:
    return records


@dataclass
class _Shard:
    """A shard being filled: its rows and errors, and how many of its items are still to come."""

    index: int
    left: int
    rows: Rows = field(default_factory=list)
    errors: Rows = field(default_factory=list)
    inputs: List[WorkInput] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)


def plan(n: int, shard_size: int) -> List[range]:
    """The shards of ``n`` items: ``range``s of ``shard_size`` (the last one shorter)."""
    return [range(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def _batches(shards: List[range], batch_size: int) -> List[List[int]]:
    return [list(r[s:s + batch_size]) for r in shards for s in range(0, len(r), batch_size)]


def _error(key: Optional[str], reason: str, text: Optional[str] = None, index: Optional[int] = None,
           code: Optional[str] = None) -> Dict[str, Any]:
    """An error record; ``index`` (the input's, kept in memory only) ties it to its input."""
    rec: Dict[str, Any] = {"image": key, "error": reason}
    if text is not None:
        rec["text"] = text
    if code is not None:
        rec["code"] = code
    if index is not None:
        rec["_input"] = index
    return rec


@dataclass
class Outcome:
    """What explaining some inputs gave: ``rows``, ``errors`` and the first exception an error
    row came from (``failure``)."""

    rows: Rows = field(default_factory=list)
    errors: Rows = field(default_factory=list)
    failure: Optional[Exception] = None

    def add(self, other: "Outcome") -> None:
        self.rows += other.rows
        self.errors += other.errors
        self.failure = self.failure or other.failure


def _attempt(explain: BatchExplainer, inputs: Sequence[WorkInput]) -> Tuple[Optional[Rows], Optional[Exception]]:
    """The rows of ``inputs`` explained together, or ``(None, the exception)``."""
    try:
        rows = explain(torch.stack([x.pixels for x in inputs]), [list(x.texts) for x in inputs])
    except Exception as e:  # the caller falls back to smaller calls
        return None, e
    return [{**r, "image": x.key, "text_index": x.position(j), "_input": x.index}
            for x, rs in zip(inputs, rows) for j, r in enumerate(rs)], None


def _text_by_text(explain: BatchExplainer, x: WorkInput, failure: Exception) -> Outcome:
    """One image whose call failed with ``failure``: its texts one at a time, or (an explainer
    with ``splits_texts = False``, whose texts go together) one error row for the image."""
    if not getattr(explain, "splits_texts", True):
        return Outcome(errors=[_error(x.key, _reason(failure), index=x.index)], failure=failure)
    out = Outcome()
    for j, t in enumerate(x.texts):
        rows, e = _attempt(explain, [WorkInput(x.index, x.key, x.pixels, (t,), positions=(x.position(j),))])
        if rows is None:
            out.add(Outcome(errors=[_error(x.key, _reason(e), t, x.index)], failure=e))
        else:
            out.rows += rows[:1]
    return out


def explain_group(explain: BatchExplainer, group: Sequence[WorkInput]) -> Outcome:
    """Rows and errors of same-shape inputs: the group at once, else image by image, else text
    by text (only the inputs that fail are lost)."""
    rows, failure = _attempt(explain, group)
    if rows is not None:
        return Outcome(rows)
    out = Outcome()
    for x in group:
        rows, e = (None, failure) if len(group) == 1 else _attempt(explain, [x])
        if rows is None:
            out.add(_text_by_text(explain, x, e))
        else:
            out.rows += rows
    return out


class _Runner:
    """One rank's loop over its batches (see the module docstring)."""

    def __init__(self, explain: BatchExplainer, out: Path, log: Any) -> None:
        self.explain, self.out, self.log = explain, out, log
        text_maps = bool(getattr(explain, "text_maps", False))
        self.to_table = getattr(explain, "to_table", None) or (lambda rows: to_table(rows, text_maps))
        self.rows_done = 0
        self.first_failure: Optional[Exception] = None
        self.written = 0

    def batch(self, records: List[WorkInput], shard: _Shard) -> None:
        """Explain one batch into ``shard``; same-shape images are explained together, with
        torch's random generator seeded by the batch's first index (the same numbers whatever
        the world size, and on a rerun)."""
        torch.manual_seed(records[0].index)
        groups: Dict[Tuple[int, ...], List[WorkInput]] = {}
        for x in records:
            shard.inputs.append(x)
            x = self._refuse_texts(x, shard) if x.error is None else x
            if x.error is not None:
                shard.errors.append(_error(x.key, x.error, index=x.index))
            elif x.texts:
                groups.setdefault(tuple(x.pixels.shape), []).append(x)
        for good in groups.values():
            got = explain_group(self.explain, good)
            self.first_failure = self.first_failure or got.failure
            if not got.rows and not self.rows_done and self.first_failure is not None:
                raise RuntimeError(f"every input of this rank's first batch failed to explain ({len(good)} images), "
                                   f"a problem of the job rather than of its inputs: {_reason(self.first_failure)}"
                                   ) from self.first_failure
            shard.rows += got.rows
            shard.errors += got.errors
            self.rows_done += len(got.rows)
        shard.left -= len(records)

    def _refuse_texts(self, x: WorkInput, shard: _Shard) -> WorkInput:
        """``x`` without the texts the explainer refuses (error rows), or an error if it has none."""
        if not x.texts:
            return _no_texts(x)
        refuse = getattr(self.explain, "refused_texts", None)
        refused = refuse(x.texts) if refuse is not None else {}
        if not refused:
            return x
        keep = [j for j, t in enumerate(x.texts) if t not in refused]
        shard.errors += [_error(x.key, refused[t], t, x.index, "text_too_long") for t in x.texts if t in refused]
        return WorkInput(x.index, x.key, x.pixels, tuple(x.texts[j] for j in keep), positions=tuple(keep))

    def finish(self, shard: _Shard, rank: int) -> None:
        inputs = account_for(shard, getattr(self.explain, "splits_texts", True))
        rows = [{k: v for k, v in r.items() if k != "_input"} for r in shard.rows]
        errors = [{k: v for k, v in e.items() if k != "_input"} for e in shard.errors]
        store.write_shard(self.out, shard.index, self.to_table(rows), errors, inputs)
        self.written += 1
        print(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "shard": shard.index, "rows": len(shard.rows),
                          "errors": len(shard.errors), "seconds": round(time.perf_counter() - shard.t0, 3)}),
              file=self.log, flush=True)
        after_shard(rank, self.written)


def account_for(shard: _Shard, per_text: bool = True) -> Dict[str, Optional[int]]:
    """What became of the shard's inputs (see :data:`.store.INPUT_COUNTS`); an input with
    neither a row nor an error (an explainer that returned fewer rows than texts) gets an error
    row here, so that no input is lost without a word. ``per_text=False`` (an explainer whose rows
    are not one per text, ``splits_texts = False``): images only."""
    with_rows = {r["_input"] for r in shard.rows}
    if not per_text:
        for x in shard.inputs:
            if x.index not in with_rows and not any(e["_input"] == x.index for e in shard.errors):
                shard.errors.append(_error(x.key, "the explainer returned no row for this image", index=x.index))
        images = len(shard.inputs)
        return {"images": images, "images_with_rows": len(with_rows), "images_only_in_errors": images - len(with_rows),
                "texts": None, "rows": len(shard.rows), "text_errors": None}
    failed = {e["_input"] for e in shard.errors if "text" not in e}
    covered = {(r["_input"], r["text_index"]) for r in shard.rows}
    text_errors = {(e["_input"], e["text"]) for e in shard.errors if "text" in e}
    texts = 0
    for x in shard.inputs:
        if x.error is not None or x.index in failed:
            continue
        texts += len(x.texts)
        for j, t in enumerate(x.texts):
            if (x.index, j) not in covered and (x.index, t) not in text_errors:
                shard.errors.append(_error(x.key, "the explainer returned no row for this text", t, x.index))
                text_errors.add((x.index, t))
    images = len(shard.inputs)
    return {"images": images, "images_with_rows": len(with_rows), "images_only_in_errors": images - len(with_rows),
            "texts": texts, "rows": len(shard.rows), "text_errors": len(text_errors)}


def _loader(dataset: Any, batches: List[List[int]], num_workers: int) -> Iterator[List[WorkInput]]:
    from torch.utils.data import DataLoader

    if not batches:
        return iter(())
    return iter(DataLoader(_Safe(dataset), batch_sampler=batches, num_workers=num_workers,
                           collate_fn=_collate, persistent_workers=False))


def versions() -> Dict[str, str]:
    """The versions that made the maps, for the manifest."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "captum", "captum-gradeclip", "pyarrow", "open_clip_torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def job_config(config: Dict[str, Any], n: int, shard_size: int, batch_size: int) -> Dict[str, Any]:
    """``config`` with what fixes the shards and the batches (and so the maps' bits)."""
    return {**config, "items": n, "shard_size": shard_size, "batch_size": batch_size}


def start(out: Path, config: Dict[str, Any], ranks: "dist.Ranks") -> None:
    """Rank 0 prepares ``out`` (see :func:`.store.prepare`); every rank raises its error.

    Raises:
        ScaleError: ``out`` is not writable or holds another job.
    """
    message = store.prepare(out, config) if ranks.rank == 0 else None
    message = ranks.broadcast(message)
    if message:
        raise store.ScaleError(message)


@contextmanager
def prepared(out: Path, config: Dict[str, Any], ranks: "dist.Ranks") -> Iterator[None]:
    """``with prepared(out, config, ranks):`` :func:`start`, then the checks that need the model;
    if the block fails (a validation error, a model that does not load), what :func:`start`
    wrote is removed again (:func:`.store.unprepare`), so that the corrected command is not
    refused as another job.

    Raises:
        ScaleError: as :func:`start`; and what the block raises.
    """
    fresh = ranks.rank == 0 and not (out / "config.json").exists()
    made_out = not out.exists()
    start(out, config, ranks)
    try:
        yield
    except BaseException:
        if fresh:
            store.unprepare(out, made_out)
        raise


def _check_finished(out: Path, shards: int, ranks: "dist.Ranks") -> None:
    """Rank 0 checks every finished shard's sha256 before any work; every rank raises its error.

    Raises:
        DamagedShard: a finished shard is not the one written (one line: which, and what to do).
    """
    message = None
    if ranks.rank == 0:
        try:
            for i in range(shards):
                if store.is_done(out, i):
                    store.verify(out, i)
        except store.DamagedShard as e:
            message = str(e)
    message = ranks.broadcast(message)
    if message:
        raise store.DamagedShard(message)


def _progress(total: int, ranks: "dist.Ranks", enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=f"rank {ranks.rank}/{ranks.world}", position=ranks.rank,
                disable=not enabled, dynamic_ncols=True)


def run(dataset: Any, explainer: BatchExplainer, out: Path, ranks: "dist.Ranks", *, batch_size: int,
        shard_size: int, num_workers: int = 2, progress: bool = True) -> Dict[str, Any]:
    """This rank's unfinished shards of ``dataset``, then (rank 0) the manifest. Call
    :func:`start` first. Returns the run's summary (the manifest's ``totals`` and this run's
    ``images``, ``wall_s``, ``images_per_s``, ``skipped_shards``).

    Raises:
        ScaleError: a shard is missing at the end, the disk is full, the inputs do not add up.
        DamagedShard: a finished shard is not the one written (checked before any work).
    """
    shards = plan(len(dataset), shard_size)
    _check_finished(out, len(shards), ranks)
    mine = [i for i in range(len(shards)) if i % ranks.world == ranks.rank]
    todo = [i for i in mine if not store.is_done(out, i)]
    runner = _Runner(explainer, out, open(out / "logs" / f"rank-{ranks.rank}.log", "a"))
    t0 = time.perf_counter()
    images = sum(len(shards[i]) for i in todo)
    with runner.log, _progress(images, ranks, progress) as bar:
        pending = iter(todo)
        shard = None
        for records in _loader(dataset, _batches([shards[i] for i in todo], batch_size), num_workers):
            if shard is None:
                i = next(pending)
                shard = _Shard(i, len(shards[i]))
            runner.batch(records, shard)
            bar.update(len(records))
            if shard.left == 0:
                runner.finish(shard, ranks.rank)
                shard = None
    wall = time.perf_counter() - t0
    stats = ranks.gather({"images": images, "skipped": len(mine) - len(todo), "wall": wall})
    message, manifest = None, None
    if ranks.rank == 0:
        try:
            manifest = store.finalize(out, len(shards), {"versions": versions(), "world_size": ranks.world})
        except store.ScaleError as e:
            message = str(e)
    message = ranks.broadcast(message)
    if message:
        raise store.ScaleError(message)
    done = sum(s["images"] for s in stats)
    wall = max(s["wall"] for s in stats)
    summary = {"images": len(dataset), "images_this_run": done, "skipped_shards": sum(s["skipped"] for s in stats),
               "wall_s": round(wall, 3), "images_per_s": round(done / wall, 3) if wall > 0 and done else 0.0,
               "world_size": ranks.world}
    if manifest is not None:
        summary.update(pairs=manifest["totals"]["rows"], errors=manifest["totals"]["errors"],
                       shards=manifest["totals"]["shards"], texts_too_long=manifest["warnings"]["texts_too_long"])
    return summary


def explain_dataset(dataset: Any, explainer: BatchExplainer, out: "str | Path", *,
                    config: Optional[Dict[str, Any]] = None, batch_size: int = 16, shard_size: int = 256,
                    num_workers: int = 2, progress: bool = True, device: str = "auto") -> Dict[str, Any]:
    """Explain every ``(image, texts)`` of a map-style ``dataset`` into Parquet shards under
    ``out``: sharded over the ranks torchrun starts (or one process), resumable.

    Args:
        dataset: ``len(dataset)`` items; ``dataset[i] -> (key: str, pixels (3, H, W), texts:
            list of str)``, in a fixed order (the shards are cut from it). An item that raises
            becomes an error row.
        explainer: ``(pixels (N, 3, H, W), texts: N lists) -> N lists of rows`` (e.g.
            :class:`~.explain.CLIPExplainer`, or :class:`~.explain.AttributeAllExplainer` around
            any attribution with ``attribute_all``).
        out: the output folder (created; rerunning the same job resumes it).
        config: what identifies the job besides its size (model, options, inputs): a rerun
            with another configuration is refused. ``explainer.config()`` is added when it exists.
        batch_size, shard_size: images per batch and per shard (both fix the maps' bits).
        num_workers: ``DataLoader`` workers decoding images.
        progress: show a progress bar.
        device: see :func:`captum_gradeclip.distributed.init`.

    Returns:
        The summary dict of :func:`run` (on every rank; totals on rank 0).

    Raises:
        ScaleError: ``out`` is not writable, holds another job, or a shard is missing at the end.
        ValueError: an empty dataset, or a batch or shard size below 1.
    """
    if len(dataset) == 0 or batch_size < 1 or shard_size < 1:
        raise ValueError(f"need a non-empty dataset and sizes >= 1, got {len(dataset)} items, "
                         f"batch_size={batch_size}, shard_size={shard_size}")
    cfg = dict(config or {})
    if hasattr(explainer, "config"):
        cfg["explainer"] = explainer.config()
    out = Path(out)
    with dist.session(device) as ranks:
        start(out, job_config(cfg, len(dataset), shard_size, batch_size), ranks)
        return run(dataset, explainer, out, ranks, batch_size=batch_size, shard_size=shard_size,
                   num_workers=num_workers, progress=progress)
