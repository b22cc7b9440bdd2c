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

Every dataset job comes in through one door, :func:`run_job`: a typed :class:`~.job.JobSpec`
(output folder, configuration, size, ``load(device) -> (dataset, explainer)``), the explainer a
:class:`~.protocols.BatchExplainer` whose declared attributes the engine reads; it answers with
typed records (:mod:`.records`: :class:`~.records.ErrorRow`, :class:`~.records.InputCounts`,
:class:`~.records.RunSummary`). :func:`explain_dataset` is that door for a dataset and an
explainer already built.
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
from .job import JobSpec
from .protocols import BatchExplainer, as_batch_explainer
from .records import TEXT_TOO_LONG, ErrorRow, InputCounts, RunSummary

__all__ = ["BatchExplainer", "JobSpec", "RunSummary", "explain_dataset", "run", "run_job"]

Rows = List[Dict[str, Any]]
Errors = List[ErrorRow]


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
    errors: Errors = field(default_factory=list)
    inputs: List[WorkInput] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)


def plan(n: int, shard_size: int) -> List[range]:
    """The shards of ``n`` items: ``range``s of ``shard_size`` (the last one shorter)."""
    return [range(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def _batches(shards: List[range], batch_size: int) -> List[List[int]]:
    return [list(r[s:s + batch_size]) for r in shards for s in range(0, len(r), batch_size)]


@dataclass
class Outcome:
    """What explaining some inputs gave: ``rows``, ``errors`` and the first exception an error
    row came from (``failure``)."""

    rows: Rows = field(default_factory=list)
    errors: Errors = field(default_factory=list)
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
    if not explain.splits_texts:
        return Outcome(errors=[ErrorRow(x.key, _reason(failure), input=x.index)], failure=failure)
    out = Outcome()
    for j, t in enumerate(x.texts):
        rows, e = _attempt(explain, [WorkInput(x.index, x.key, x.pixels, (t,), positions=(x.position(j),))])
        if rows is None:
            out.add(Outcome(errors=[ErrorRow(x.key, _reason(e), t, input=x.index)], failure=e))
        else:
            out.rows += rows[:1]
    return out


def _code(reason: str) -> str:
    """The error code of a refused text: a :class:`~captum_gradeclip.text_checks.Problem` names its
    own (``unknown_words``, ``empty_text``, ...); a plain reason is a text too long."""
    from ..text_checks import Problem

    return reason.code if isinstance(reason, Problem) else TEXT_TOO_LONG


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
                shard.errors.append(ErrorRow(x.key, x.error, input=x.index))
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
        refused = self.explain.refused_texts(x.texts)
        if not refused:
            return x
        keep = [j for j, t in enumerate(x.texts) if t not in refused]
        shard.errors += [ErrorRow(x.key, str(refused[t]), t, _code(refused[t]), x.index) for t in x.texts if t in refused]
        return WorkInput(x.index, x.key, x.pixels, tuple(x.texts[j] for j in keep), positions=tuple(keep))

    def finish(self, shard: _Shard, rank: int) -> None:
        inputs = account_for(shard, self.explain.splits_texts)
        rows = [{k: v for k, v in r.items() if k != "_input"} for r in shard.rows]
        errors = [e.to_dict() for e in shard.errors]
        store.write_shard(self.out, shard.index, self.explain.to_table(rows), errors, inputs.to_dict())
        self.written += 1
        print(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "shard": shard.index, "rows": len(shard.rows),
                          "errors": len(shard.errors), "seconds": round(time.perf_counter() - shard.t0, 3)}),
              file=self.log, flush=True)
        after_shard(rank, self.written)


def account_for(shard: _Shard, per_text: bool = True) -> InputCounts:
    """What became of the shard's inputs (see :data:`.store.INPUT_COUNTS`); an input with
    neither a row nor an error (an explainer that returned fewer rows than texts) gets an error
    row here, so that no input is lost without a word. ``per_text=False`` (an explainer whose rows
    are not one per text, ``splits_texts = False``): images only."""
    with_rows = {r["_input"] for r in shard.rows}
    images = len(shard.inputs)
    if not per_text:
        for x in shard.inputs:
            if x.index not in with_rows and not any(e.input == x.index for e in shard.errors):
                shard.errors.append(ErrorRow(x.key, "the explainer returned no row for this image", input=x.index))
        return InputCounts(images, len(with_rows), images - len(with_rows), None, len(shard.rows), None)
    failed = {e.input for e in shard.errors if not e.per_text}
    covered = {(r["_input"], r["text_index"]) for r in shard.rows}
    text_errors = {(e.input, e.text) for e in shard.errors if e.per_text}
    texts = 0
    for x in shard.inputs:
        if x.error is not None or x.index in failed:
            continue
        texts += len(x.texts)
        for j, t in enumerate(x.texts):
            if (x.index, j) not in covered and (x.index, t) not in text_errors:
                shard.errors.append(ErrorRow(x.key, "the explainer returned no row for this text", t, input=x.index))
                text_errors.add((x.index, t))
    return InputCounts(images, len(with_rows), images - len(with_rows), texts, len(shard.rows), len(text_errors))


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


def run(dataset: Any, explainer: Any, out: Path, ranks: "dist.Ranks", *, batch_size: int,
        shard_size: int, num_workers: int = 2, progress: bool = True) -> RunSummary:
    """This rank's unfinished shards of ``dataset``, then (rank 0) the manifest. Call
    :func:`start` first (or use :func:`run_job`, which does both). ``explainer``: a
    :class:`~.protocols.BatchExplainer` (anything else callable gets its defaults,
    :func:`~.protocols.as_batch_explainer`). Returns the run's :class:`~.records.RunSummary`.

    Raises:
        ScaleError: a shard is missing at the end, the disk is full, the inputs do not add up.
        DamagedShard: a finished shard is not the one written (checked before any work).
    """
    shards = plan(len(dataset), shard_size)
    _check_finished(out, len(shards), ranks)
    mine = [i for i in range(len(shards)) if i % ranks.world == ranks.rank]
    todo = [i for i in mine if not store.is_done(out, i)]
    runner = _Runner(as_batch_explainer(explainer), out, open(out / "logs" / f"rank-{ranks.rank}.log", "a"))
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
    stats = ranks.gather({"images": images, "skipped": len(mine) - len(todo), "wall": time.perf_counter() - t0})
    return _summary(len(dataset), stats, _finalize(out, len(shards), ranks), ranks)


def _finalize(out: Path, n_shards: int, ranks: "dist.Ranks") -> Optional[Dict[str, Any]]:
    """Rank 0 writes the manifest (:func:`.store.finalize`) and returns it; every rank raises
    rank 0's error (other ranks return ``None``)."""
    message, manifest = None, None
    if ranks.rank == 0:
        try:
            manifest = store.finalize(out, n_shards, {"versions": versions(), "world_size": ranks.world})
        except store.ScaleError as e:
            message = str(e)
    message = ranks.broadcast(message)
    if message:
        raise store.ScaleError(message)
    return manifest


def _summary(n: int, stats: List[Dict[str, Any]], manifest: Optional[Dict[str, Any]],
             ranks: "dist.Ranks") -> RunSummary:
    """The run's summary from every rank's ``stats`` and (rank 0) the manifest's totals."""
    done = sum(s["images"] for s in stats)
    wall = max(s["wall"] for s in stats)
    totals: Dict[str, Any] = {}
    if manifest is not None:
        totals = dict(pairs=manifest["totals"]["rows"], errors=manifest["totals"]["errors"],
                      shards=manifest["totals"]["shards"], texts_too_long=manifest["warnings"]["texts_too_long"])
    return RunSummary(images=n, images_this_run=done, skipped_shards=sum(s["skipped"] for s in stats),
                      wall_s=round(wall, 3), images_per_s=round(done / wall, 3) if wall > 0 and done else 0.0,
                      world_size=ranks.world, rank=ranks.rank, **totals)


def run_job(spec: JobSpec) -> RunSummary:
    """Run the dataset job ``spec`` on this rank: the ranks torchrun started (or one process,
    :func:`captum_gradeclip.distributed.session`), the output folder prepared for
    ``spec.config`` (:func:`prepared`: a ``spec.load`` that fails leaves no job behind), the
    dataset and explainer that ``spec.load(device)`` gives, then :func:`run`.

    Returns:
        The run's :class:`~.records.RunSummary` (on every rank; the totals on rank 0).

    Raises:
        ValueError: an empty dataset, or a batch or shard size below 1.
        ScaleError: ``spec.out`` is not writable, holds another job, or a shard is missing at
            the end; and what ``spec.load`` raises.
    """
    _check_sizes(spec.n_items, spec.batch_size, spec.shard_size)
    out = Path(spec.out)
    with dist.session(spec.device) as ranks:
        with prepared(out, job_config(spec.config, spec.n_items, spec.shard_size, spec.batch_size), ranks):
            dataset, explainer = spec.load(ranks.device)
        if len(dataset) != spec.n_items:
            raise ValueError(f"the job says {spec.n_items} items, its dataset has {len(dataset)}")
        return run(dataset, explainer, out, ranks, batch_size=spec.batch_size, shard_size=spec.shard_size,
                   num_workers=spec.num_workers, progress=spec.progress)


def _check_sizes(n: int, batch_size: int, shard_size: int) -> None:
    if n == 0 or batch_size < 1 or shard_size < 1:
        raise ValueError(f"need a non-empty dataset and sizes >= 1, got {n} items, "
                         f"batch_size={batch_size}, shard_size={shard_size}")


def explain_dataset(dataset: Any, explainer: Any, out: "str | Path", *,
                    config: Optional[Dict[str, Any]] = None, batch_size: int = 16, shard_size: int = 256,
                    num_workers: int = 2, progress: bool = True, device: str = "auto") -> RunSummary:
    """Explain every ``(image, texts)`` of a map-style ``dataset`` into Parquet shards under
    ``out``: sharded over the ranks torchrun starts (or one process), resumable (a
    :class:`~.job.JobSpec` whose dataset and explainer are already built, run by :func:`run_job`).

    Args:
        dataset: ``len(dataset)`` items; ``dataset[i] -> (key: str, pixels (3, H, W), texts:
            list of str)``, in a fixed order (the shards are cut from it). An item that raises
            becomes an error row.
        explainer: a :class:`~.protocols.BatchExplainer`, ``(pixels (N, 3, H, W), texts: N
            lists) -> N lists of rows`` (e.g. :class:`~.explain.CLIPExplainer`, or
            :class:`~.explain.AttributeAllExplainer` around any attribution with
            ``attribute_all``); a plain callable gets the defaults of
            :class:`~.protocols.BaseBatchExplainer`.
        out: the output folder (created; rerunning the same job resumes it).
        config: what identifies the job besides its size (model, options, inputs): a rerun
            with another configuration is refused. ``explainer.config()`` is added (as
            ``"explainer"``) unless it is ``None``.
        batch_size, shard_size: images per batch and per shard (both fix the maps' bits).
        num_workers: ``DataLoader`` workers decoding images.
        progress: show a progress bar.
        device: see :func:`captum_gradeclip.distributed.init`.

    Returns:
        The :class:`~.records.RunSummary` of :func:`run` (on every rank; totals on rank 0).

    Raises:
        ScaleError: ``out`` is not writable, holds another job, or a shard is missing at the end.
        ValueError: an empty dataset, or a batch or shard size below 1.
    """
    _check_sizes(len(dataset), batch_size, shard_size)
    explainer = as_batch_explainer(explainer)
    cfg = dict(config or {})
    described = explainer.config()
    if described is not None:
        cfg["explainer"] = described
    return run_job(JobSpec(Path(out), cfg, len(dataset), lambda device: (dataset, explainer), batch_size=batch_size,
                           shard_size=shard_size, num_workers=num_workers, progress=progress, device=device))
