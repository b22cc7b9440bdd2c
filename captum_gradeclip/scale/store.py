"""The output folder of a dataset job: its configuration, its shards, its errors, its manifest.

    OUT/config.json            the job's configuration and its fingerprint (written first)
    OUT/shard-00000.parquet    one row per (image, text) of shard 0 (written atomically)
    OUT/errors/shard-00000.jsonl  the inputs of shard 0 that could not be used (before the shard)
    OUT/sums/shard-00000.json  shard 0's sha256 and what became of its inputs (before the shard)
    OUT/errors.jsonl           all of them, merged by rank 0 at the end
    OUT/logs/rank-0.log        what each rank did
    OUT/manifest.json          configuration, versions, shards (rows, sha256), totals (at the end)

A shard is complete exactly when its Parquet file exists: it is written to a temporary name and
renamed (``os.replace``), after its errors file and its sums file. A complete shard is never
rewritten; one whose bytes no longer match its recorded sha256 (truncated, overwritten, replaced
by another shard) is refused by :func:`verify` with the advice to delete it (a rerun redoes it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import InputError


class ScaleError(InputError):
    """A dataset job that cannot start or finish: an unwritable output folder, a different
    configuration in it, a shard missing at the end, a full disk."""


class DamagedShard(ScaleError, ValueError):
    """A finished shard whose bytes are not the ones written (truncated, overwritten, replaced)."""


#: How to install what the dataset engine needs beyond the package.
SCALE_INSTALL = "pip install 'captum-gradeclip[scale]'"


def require_pyarrow(what: str) -> None:
    """Raises :class:`ScaleError` (naming ``what`` needs it) when pyarrow is not installed."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ScaleError(f"{what} writes Parquet with pyarrow: {SCALE_INSTALL}") from None


def shard_path(out: Path, i: int) -> Path:
    return out / f"shard-{i:05d}.parquet"


def errors_path(out: Path, i: int) -> Path:
    return out / "errors" / f"shard-{i:05d}.jsonl"


def sums_path(out: Path, i: int) -> Path:
    return out / "sums" / f"shard-{i:05d}.json"


def fingerprint(config: Dict[str, Any]) -> str:
    """sha256 of the configuration's canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = _tmp(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def prepare(out: Path, config: Dict[str, Any]) -> Optional[str]:
    """Make ``out`` ready for the job ``config`` (rank 0, before any work): create it, check it is
    writable, write ``config.json`` or check that the one there is the same job, remove temporary
    files a killed run left. Returns ``None``, or the error message every rank raises.
    """
    try:
        (out / "errors").mkdir(parents=True, exist_ok=True)
        (out / "logs").mkdir(exist_ok=True)
        (out / "sums").mkdir(exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return f"cannot write to --out {out}: {e.strerror or e}; choose a folder you can write to"
    want = {"fingerprint": fingerprint(config), "config": config}
    cfg = out / "config.json"
    if cfg.exists():
        try:
            have = json.loads(cfg.read_text())
        except ValueError:
            have = {}
        if have.get("fingerprint") != want["fingerprint"]:
            return (f"{out} holds another job (its config.json differs: {_diff(have.get('config', {}), config)}); "
                    "rerun with the same options to resume it, or give a new --out")
    else:
        try:
            _atomic_write(cfg, (json.dumps(want, indent=1, sort_keys=True) + "\n").encode())
        except OSError as e:
            return f"cannot write {cfg}: {e.strerror or e}; free space or choose a folder you can write to"
    for folder in (out, out / "errors", out / "sums"):
        for tmp in folder.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)
    return None


def unprepare(out: Path, made_out: bool) -> None:
    """Undo :func:`prepare` after a job failed before its first shard (a validation error, a
    model that does not load): remove ``config.json`` and the empty folders, so that the
    corrected command is not refused as another job. Nothing is removed once a shard exists."""
    if any(out.glob("shard-*.parquet")):
        return
    (out / "config.json").unlink(missing_ok=True)
    for folder in (out / "errors", out / "logs", out / "sums") + ((out,) if made_out else ()):
        for log in folder.glob("rank-*.log") if folder.name == "logs" else ():
            if log.stat().st_size == 0:
                log.unlink()
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone
            pass


def _diff(have: Dict[str, Any], want: Dict[str, Any]) -> str:
    keys = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    return ", ".join(f"{k}: {have.get(k)!r} there, {want.get(k)!r} now" for k in keys[:3]) or "unreadable"


def is_done(out: Path, i: int) -> bool:
    return shard_path(out, i).exists()


def _write_parquet(table: Any, path: Path) -> None:
    """``pq.write_table`` (a seam: fault-injection tests replace it to fill the disk)."""
    import pyarrow.parquet as pq

    pq.write_table(table, path)


def write_shard(out: Path, i: int, table: Any, errors: Sequence[Dict[str, Any]], inputs: Dict[str, Any]) -> None:
    """Write shard ``i``: its errors, then its sums (sha256 of the Parquet bytes, and ``inputs``:
    what became of its inputs), then its Parquet table, each to a temporary name renamed when
    complete; nothing partial is left behind, whatever stops it.

    Raises:
        ScaleError: the disk is full or ``out`` cannot be written (one line naming ``out``).
    """
    path = shard_path(out, i)
    tmp = _tmp(path)
    try:
        _atomic_write(errors_path(out, i), "".join(json.dumps(e) + "\n" for e in errors).encode())
        _write_parquet(table, tmp)
        sums = {"file": path.name, "sha256": sha256_file(tmp), "inputs": inputs}
        _atomic_write(sums_path(out, i), (json.dumps(sums) + "\n").encode())
        os.replace(tmp, path)
    except OSError as e:
        raise _write_error(out, i, e, table) from None
    finally:
        tmp.unlink(missing_ok=True)


def _write_error(out: Path, i: int, e: OSError, table: Any) -> ScaleError:
    import errno
    import shutil

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(out).free
        return ScaleError(f"no space left on the device of --out {out} while writing shard {i} ({free / 2**20:.1f} MiB "
                          f"free; the shard needs about {max(table.nbytes, 1) / 2**20:.1f} MiB, the remaining shards "
                          "as much each): free space and rerun the same command; finished shards are kept")
    return ScaleError(f"cannot write shard {i} to --out {out}: {e.strerror or e}; make it writable and rerun the "
                      "same command; finished shards are kept")


def recorded_sum(out: Path, i: int) -> Optional[Dict[str, Any]]:
    """Shard ``i``'s sums file (``None``: none, e.g. written by an older version)."""
    try:
        return json.loads(sums_path(out, i).read_text())
    except (OSError, ValueError):
        return None


def verify(out: Path, i: int, expected: Optional[str] = None) -> str:
    """Check that finished shard ``i`` holds the bytes that were written: its sha256 against
    ``expected`` (default: its sums file); without a recorded sum, that it is readable Parquet.
    Returns its sha256.

    Raises:
        DamagedShard: one line naming the shard and what to do.
    """
    path = shard_path(out, i)
    expected = expected or (recorded_sum(out, i) or {}).get("sha256")
    advice = "delete it and rerun the same command to redo it"
    digest = sha256_file(path)
    if expected is not None:
        if digest != expected:
            raise DamagedShard(f"{path} is not the shard that was written (its sha256 differs from the recorded one: "
                               f"truncated, overwritten or replaced); {advice}")
        return digest
    import pyarrow.parquet as pq

    try:
        _ = pq.ParquetFile(path).metadata.num_rows
        return digest
    except Exception as e:  # pyarrow raises several types for a broken file
        raise DamagedShard(f"{path} is not a readable Parquet file ({type(e).__name__}); {advice}") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def finalize(out: Path, n_shards: int, extra: Dict[str, Any]) -> Dict[str, Any]:
    """Rank 0, after every rank finished: check every shard is there, merge the errors, write
    ``manifest.json``; returns it.

    Raises:
        ScaleError: a shard is missing, or the inputs do not add up (see :func:`account`).
        DamagedShard: a shard is not the one written.
    """
    import pyarrow.parquet as pq

    missing = [i for i in range(n_shards) if not is_done(out, i)]
    if missing:
        raise ScaleError(f"{len(missing)} shard(s) missing at the end (first: {shard_path(out, missing[0])}); "
                         "rerun the same command to finish them")
    shards: List[Dict[str, Any]] = []
    errors: List[str] = []
    for i in range(n_shards):
        digest = verify(out, i)
        lines = errors_path(out, i).read_text().splitlines() if errors_path(out, i).exists() else []
        errors += lines
        p = shard_path(out, i)
        shards.append({"file": p.name, "rows": pq.ParquetFile(p).metadata.num_rows,
                       "errors": len(lines), "sha256": digest,
                       "inputs": (recorded_sum(out, i) or {}).get("inputs")})
    config = json.loads((out / "config.json").read_text())
    too_long = sum('"code": "text_too_long"' in e for e in errors)
    manifest = {**config, **extra, "shards": shards,
                "totals": {"shards": n_shards, "rows": sum(s["rows"] for s in shards), "errors": len(errors)},
                "inputs": account(shards, config["config"].get("items")), "warnings": {"texts_too_long": too_long}}
    try:
        _atomic_write(out / "errors.jsonl", "".join(e + "\n" for e in errors).encode())
        _atomic_write(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    except OSError as e:
        raise ScaleError(f"cannot write the manifest of --out {out}: {e.strerror or e}; free space and rerun the "
                         "same command (every shard is done: it only writes the manifest)") from None
    return manifest


#: What a shard's sums file counts about its inputs, by kind: ``images`` = ``images_with_rows``
#: + ``images_only_in_errors``; ``texts`` (the texts of the images that were decoded) = ``rows``
#: + ``text_errors``.
INPUT_COUNTS = ("images", "images_with_rows", "images_only_in_errors", "texts", "rows", "text_errors")


def account(shards: Sequence[Dict[str, Any]], items: Optional[int]) -> Optional[Dict[str, Any]]:
    """The job's inputs by kind, summed over the shards' ``inputs``, checked: every input seen is
    in the rows or in the errors (``None`` when a shard predates the counts).

    Raises:
        ScaleError: the counts do not add up (an input lost without a word).
    """
    if any(s.get("inputs") is None for s in shards):
        return None
    per_text = all(s["inputs"]["texts"] is not None for s in shards)
    tot = {k: sum(s["inputs"][k] for s in shards) if per_text or k not in ("texts", "text_errors") else None
           for k in INPUT_COUNTS}
    if (tot["images"] != tot["images_with_rows"] + tot["images_only_in_errors"]
            or (per_text and tot["texts"] != tot["rows"] + tot["text_errors"])
            or (items is not None and tot["images"] != items)):
        raise ScaleError(f"the job's inputs do not add up ({tot}, {items} items): some were neither written nor "
                         "recorded as errors; report this as a bug")
    return {**tot, "checked": "images = images_with_rows + images_only_in_errors; texts = rows + text_errors"}
