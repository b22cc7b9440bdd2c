"""The dataset engine: shards of a work list, explained batch by batch on every rank, written
atomically, resumable.

The ``n`` items of a dataset (sorted by whoever built it) are cut into fixed shards of
``shard_size``; shard ``i`` belongs to rank ``i % world`` (no padding, no duplicates, whatever
the world size). Each rank reads the images of its unfinished shards through one ``DataLoader``
(workers decode in the background), in batches that never cross a shard's end, explains each
batch with the batch explainer (:mod:`.explain`) and writes a shard when its last batch is done.
Batches are the same whatever the world size, so the maps are too, to float32 rounding (a
process's thread count changes the order of float sums, not the batches).

Faults: an input that cannot be decoded or explained is an error row, never a crash; a killed
rank loses at most its unfinished shards; the same command again skips finished shards.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .. import distributed as dist
from .._io import CLIError
from . import store
from .data import key_of
from .table import to_table

#: Test-only hook: ``"RANK:N"`` makes rank RANK kill itself with SIGKILL after writing N shards
#: (the kill-and-resume tests use it; never set it otherwise).
KILL_ENV = "CAPTUM_GRADECLIP_KILL_AFTER"

#: ``(pixels (N, 3, H, W), texts: N lists) -> N lists of row dicts``. Optional attributes the
#: engine reads: ``config()`` (recorded in the job's configuration), ``to_table(rows)`` (an Arrow
#: table of a shard's rows; default :func:`.table.to_table`), ``text_maps`` (default schema with
#: word maps), ``splits_texts`` (``False``: a failing image is not retried text by text).
BatchExplainer = Callable[[torch.Tensor, Sequence[Sequence[str]]], List[List[Dict[str, Any]]]]


class _Safe:
    """``dataset[i]`` -> ``("ok", i, key, pixels, texts)`` or ``("error", i, key, reason)``:
    decoding errors stay in the worker as data."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Tuple[Any, ...]:
        try:
            key, pixels, texts = self.dataset[i]
            if not torch.is_tensor(pixels) or pixels.dim() != 3:
                raise TypeError(f"pixels must be a (3, H, W) tensor, got {type(pixels).__name__}")
            return ("ok", i, str(key), pixels, list(texts))
        except Exception as e:  # a bad input never stops the run: it becomes an error row
            return ("error", i, key_of(self.dataset, i), _reason(e))


def _reason(e: Exception) -> str:
    """An error row's reason: a user error's message, else the exception's type and message."""
    return str(e) if isinstance(e, CLIError) else f"{type(e).__name__}: {e}"


def _collate(records: List[Tuple[Any, ...]]) -> List[Tuple[Any, ...]]:
    return records


@dataclass
class _Shard:
    """A shard being filled: its rows and errors, and how many of its items are still to come."""

    index: int
    left: int
    rows: List[Dict[str, Any]] = field(default_factory=list)
    errors: List[Dict[str, Any]] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)


def plan(n: int, shard_size: int) -> List[range]:
    """The shards of ``n`` items: ``range``s of ``shard_size`` (the last one shorter)."""
    return [range(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def _batches(shards: List[range], batch_size: int) -> List[List[int]]:
    return [list(r[s:s + batch_size]) for r in shards for s in range(0, len(r), batch_size)]


def _error(key: Optional[str], reason: str, text: Optional[str] = None) -> Dict[str, Any]:
    rec = {"image": key, "error": reason}
    if text is not None:
        rec["text"] = text
    return rec


class _Runner:
    """One rank's loop over its batches (see the module docstring)."""

    def __init__(self, explain: BatchExplainer, out: Path, log: Any) -> None:
        self.explain, self.out, self.log = explain, out, log
        text_maps = bool(getattr(explain, "text_maps", False))
        self.to_table = getattr(explain, "to_table", None) or (lambda rows: to_table(rows, text_maps))
        self.rows_done = 0
        self.first_failure: Optional[Exception] = None
        self.written = 0
        kill = os.environ.get(KILL_ENV, "")
        self.kill_rank, _, n = kill.partition(":")
        self.kill_after = int(n) if n else 0

    def explain_group(self, good: List[Tuple[Any, ...]]) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
        """Rows and errors of same-shape examples: the batch at once, else image by image, else
        text by text (only the inputs that fail are lost)."""
        try:
            return self._rows(good, self.explain(torch.stack([g[3] for g in good]), [g[4] for g in good])), []
        except Exception as e:
            if len(good) == 1:
                return self._one_failed(good[0], e)
        rows, errors = [], []
        for g in good:
            r, e = self.explain_group([g])
            rows += r
            errors += e
        return rows, errors

    def _one_failed(self, g: Tuple[Any, ...], e: Exception) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
        """One image that failed: text by text, or (an explainer with ``splits_texts = False``,
        whose texts go together) an error row for the image."""
        if getattr(self.explain, "splits_texts", True):
            return self._texts_one_by_one(g)
        self.first_failure = self.first_failure or e
        return [], [_error(g[2], _reason(e))]

    def _texts_one_by_one(self, g: Tuple[Any, ...]) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
        rows, errors = [], []
        for j, t in enumerate(g[4]):
            try:
                r = self.explain(g[3][None], [[t]])[0]
            except Exception as e:
                self.first_failure = self.first_failure or e
                errors.append(_error(g[2], _reason(e), t))
                continue
            rows += [{**r[0], "image": g[2], "text_index": j}]
        return rows, errors

    def _rows(self, good: List[Tuple[Any, ...]], rows: List[List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
        return [{**r, "image": g[2], "text_index": j} for g, rs in zip(good, rows) for j, r in enumerate(rs)]

    def batch(self, records: List[Tuple[Any, ...]], shard: _Shard) -> None:
        """Explain one batch into ``shard``; same-shape images are explained together, with
        torch's random generator seeded by the batch's first index (the same numbers whatever
        the world size, and on a rerun)."""
        torch.manual_seed(records[0][1])
        groups: Dict[Tuple[int, ...], List[Tuple[Any, ...]]] = {}
        for rec in records:
            if rec[0] == "error":
                shard.errors.append(_error(rec[2], rec[3]))
            else:
                groups.setdefault(tuple(rec[3].shape), []).append(rec)
        for good in groups.values():
            rows, errors = self.explain_group(good)
            if not rows and not self.rows_done and self.first_failure is not None:
                raise RuntimeError(f"every input of this rank's first batch failed to explain ({len(good)} images), "
                                   f"a problem of the job rather than of its inputs: {_reason(self.first_failure)}"
                                   ) from self.first_failure
            shard.rows += rows
            shard.errors += errors
            self.rows_done += len(rows)
        shard.left -= len(records)

    def finish(self, shard: _Shard, rank: int) -> None:
        store.write_shard(self.out, shard.index, self.to_table(shard.rows), shard.errors)
        self.written += 1
        print(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "shard": shard.index, "rows": len(shard.rows),
                          "errors": len(shard.errors), "seconds": round(time.perf_counter() - shard.t0, 3)}),
              file=self.log, flush=True)
        if self.kill_after and self.kill_rank == str(rank) and self.written >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


def _loader(dataset: Any, batches: List[List[int]], num_workers: int) -> Iterator[List[Tuple[Any, ...]]]:
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
        ScaleError: a shard is missing at the end.
    """
    shards = plan(len(dataset), shard_size)
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
                       shards=manifest["totals"]["shards"])
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
