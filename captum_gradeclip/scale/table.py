"""The rows of a dataset job as an Arrow table, and reading them back with maps as tensors.

One row per (image, text): ``image`` (string: the path relative to the input root), ``text``
(string), ``text_index`` (int32: the text's position among the image's texts), ``score``
(float32: the explained cosine), ``map`` (list<float16>: the raw map, flattened row-major),
``map_h``, ``map_w`` (int32: its grid); with word maps also ``words`` (list<string>: the text's
tokens between SOS and EOS) and ``word_map`` (list<float16>: one value per token).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch


def schema(text_maps: bool) -> Any:
    """The Arrow schema of a job's shards."""
    import pyarrow as pa

    fields = [("image", pa.string()), ("text", pa.string()), ("text_index", pa.int32()),
              ("score", pa.float32()), ("map", pa.list_(pa.float16())), ("map_h", pa.int32()),
              ("map_w", pa.int32())]
    if text_maps:
        fields += [("words", pa.list_(pa.string())), ("word_map", pa.list_(pa.float16()))]
    return pa.schema(fields)


def to_table(rows: Sequence[Dict[str, Any]], text_maps: bool) -> Any:
    """Rows ``{"image", "text", "text_index", "score", "map" (h, w)[, "words", "word_map" (W,)]}``
    as an Arrow table of :func:`schema`."""
    import numpy as np
    import pyarrow as pa

    def lists(values: List[torch.Tensor]) -> Any:
        """Tensors as one list<float16> array (one flat buffer and its offsets)."""
        offsets = np.cumsum([0] + [v.numel() for v in values], dtype=np.int32)
        flat = torch.cat([v.reshape(-1) for v in values]) if values else torch.zeros(0)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.to(torch.float16).numpy(), type=pa.float16()))

    cols: Dict[str, Any] = {
        "image": [r["image"] for r in rows], "text": [r["text"] for r in rows],
        "text_index": [r["text_index"] for r in rows], "score": [r["score"] for r in rows],
        "map": lists([r["map"] for r in rows]),
        "map_h": [r["map"].shape[0] for r in rows], "map_w": [r["map"].shape[1] for r in rows],
    }
    if text_maps:
        cols["words"] = [list(r["words"]) for r in rows]
        cols["word_map"] = lists([r["word_map"] for r in rows])
    return pa.Table.from_pydict(cols, schema=schema(text_maps))


def _files(out: Union[str, Path]) -> List[Path]:
    files = sorted(Path(out).glob("shard-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no shard-*.parquet files in {out}")
    return files


def _recorded(out: Path) -> Dict[str, str]:
    """file name -> the sha256 the manifest records (a finished job), else the shards' sums files."""
    import json

    try:
        return {s["file"]: s["sha256"] for s in json.loads((out / "manifest.json").read_text())["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def read_maps(out: Union[str, Path], columns: Optional[Sequence[str]] = None,
              verify: bool = True) -> Iterator[Dict[str, Any]]:
    """The rows of a finished (or partly finished) job, shard by shard, with ``map`` as a float32
    tensor ``(map_h, map_w)`` and ``word_map`` (if any) as ``(W,)``.

    Args:
        out: the job's output folder.
        columns: only these columns (``map`` needs ``map_h`` and ``map_w``, added for it).
        verify: check each shard's sha256 against the manifest's (or, before the end, the one
            recorded when it was written) before reading it; ``False`` skips it, for speed.

    Yields:
        one dict per row.

    Raises:
        FileNotFoundError: no shards in ``out``.
        DamagedShard: (``verify``) a shard is not the one written, or not readable Parquet.
    """
    import pyarrow.parquet as pq

    from . import store

    cols = None if columns is None else list(dict.fromkeys(
        list(columns) + (["map_h", "map_w"] if "map" in columns else [])))
    out = Path(out)
    recorded = _recorded(out) if verify else {}
    for f in _files(out):
        if verify:
            store.verify(out, int(f.stem.split("-")[1]), recorded.get(f.name))
        table = pq.read_table(f, columns=cols)
        lists = {c: _tensors(table.column(c)) for c in ("map", "word_map") if c in table.column_names}
        plain = table.drop_columns(list(lists)).to_pylist()
        for i, row in enumerate(plain):
            for c, values in lists.items():
                row[c] = values[i]
            if "map" in row:
                row["map"] = row["map"].reshape(row["map_h"], row["map_w"])
            yield row


def _tensors(column: Any) -> List[torch.Tensor]:
    """A list<float16> column as float32 tensors, one per row (one conversion of the buffer)."""
    import numpy as np

    arr = column.combine_chunks()
    flat = torch.from_numpy(np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32))
    offsets = arr.offsets.to_numpy() - arr.offsets[0].as_py()
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(arr))]
