"""The output folder of a dataset job: its configuration, its shards, its errors, its manifest.

    OUT/config.json            the job's configuration and its fingerprint (written first)
    OUT/shard-00000.parquet    one row per (image, text) of shard 0 (written atomically)
    OUT/errors/shard-00000.jsonl  the inputs of shard 0 that could not be used (before the shard)
    OUT/errors.jsonl           all of them, merged by rank 0 at the end
    OUT/logs/rank-0.log        what each rank did
    OUT/manifest.json          configuration, versions, shards (rows, sha256), totals (at the end)

A shard is complete exactly when its Parquet file exists: it is written to a temporary name and
renamed (``os.replace``), after its errors file. A complete shard is never rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .._io import CLIError


class ScaleError(CLIError):
    """A dataset job that cannot start or finish: an unwritable output folder, a different
    configuration in it, a shard missing at the end."""


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


def fingerprint(config: Dict[str, Any]) -> str:
    """sha256 of the configuration's canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def prepare(out: Path, config: Dict[str, Any]) -> Optional[str]:
    """Make ``out`` ready for the job ``config`` (rank 0, before any work): create it, check it is
    writable, write ``config.json`` or check that the one there is the same job, remove temporary
    files a killed run left. Returns ``None``, or the error message every rank raises.
    """
    try:
        (out / "errors").mkdir(parents=True, exist_ok=True)
        (out / "logs").mkdir(exist_ok=True)
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
        _atomic_write(cfg, (json.dumps(want, indent=1, sort_keys=True) + "\n").encode())
    for tmp in list(out.glob(".*.tmp-*")) + list((out / "errors").glob(".*.tmp-*")):
        tmp.unlink(missing_ok=True)
    return None


def _diff(have: Dict[str, Any], want: Dict[str, Any]) -> str:
    keys = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    return ", ".join(f"{k}: {have.get(k)!r} there, {want.get(k)!r} now" for k in keys[:3]) or "unreadable"


def is_done(out: Path, i: int) -> bool:
    return shard_path(out, i).exists()


def write_shard(out: Path, i: int, table: Any, errors: Sequence[Dict[str, Any]]) -> None:
    """Write shard ``i``: its errors, then its Parquet table, each to a temporary name renamed
    when complete."""
    import pyarrow.parquet as pq

    _atomic_write(errors_path(out, i), "".join(json.dumps(e) + "\n" for e in errors).encode())
    path = shard_path(out, i)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


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
        ScaleError: a shard is missing.
    """
    import pyarrow.parquet as pq

    missing = [i for i in range(n_shards) if not is_done(out, i)]
    if missing:
        raise ScaleError(f"{len(missing)} shard(s) missing at the end (first: {shard_path(out, missing[0])}); "
                         "rerun the same command to finish them")
    shards: List[Dict[str, Any]] = []
    errors: List[str] = []
    for i in range(n_shards):
        lines = errors_path(out, i).read_text().splitlines() if errors_path(out, i).exists() else []
        errors += lines
        p = shard_path(out, i)
        shards.append({"file": p.name, "rows": pq.ParquetFile(p).metadata.num_rows,
                       "errors": len(lines), "sha256": sha256_file(p)})
    _atomic_write(out / "errors.jsonl", "".join(e + "\n" for e in errors).encode())
    config = json.loads((out / "config.json").read_text())
    manifest = {**config, **extra, "shards": shards,
                "totals": {"shards": n_shards, "rows": sum(s["rows"] for s in shards), "errors": len(errors)}}
    _atomic_write(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest
