"""Shared inputs for the dataset-engine tests: a folder of ShapesCLIP scenes and a prompt file."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple


def make_folder(root: Path, n: int = 7, bad: bool = False) -> Tuple[Path, Path]:
    """``n`` 64 px scenes (some in a subfolder), optionally a zero-byte and a corrupt image, and a
    prompt file of three prompts; returns ``(images, prompts)``."""
    from captum_gradeclip.shapes import render_scene

    images = root / "images"
    (images / "sub").mkdir(parents=True)
    for s in range(n):
        render_scene(seed=s).image.save(images / ("sub" if s % 3 == 0 else "") / f"scene{s}.png")
    if bad:
        (images / "empty.png").write_bytes(b"")
        (images / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    prompts = root / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n\na green triangle\n")
    return images, prompts


def rows_by_pair(out: Path) -> Dict[Tuple[str, str], Tuple[float, bytes]]:
    """``(image, text) -> (score, map bytes)`` of a job's output; fails on a pair seen twice."""
    import numpy as np
    import pyarrow.parquet as pq

    rows: Dict[Tuple[str, str], Tuple[float, bytes]] = {}
    for f in sorted(out.glob("shard-*.parquet")):
        t = pq.read_table(f).to_pydict()
        for image, text, score, m in zip(t["image"], t["text"], t["score"], t["map"]):
            assert (image, text) not in rows, f"pair {(image, text)} written twice"
            rows[(image, text)] = (score, np.asarray(m, dtype=np.float16).tobytes())
    return rows
