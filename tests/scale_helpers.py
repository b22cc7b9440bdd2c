"""Shared inputs for the dataset-engine tests: a folder of ShapesCLIP scenes and a prompt file."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from conftest import SHAPES_REDUCTION, float32_tolerance


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


def assert_same_rows(got: dict, want: dict) -> None:
    """The same ``(image, text)`` pairs, each with the same score and map to float32 rounding."""
    assert sorted(got) == sorted(want)
    for pair, (score, m) in want.items():
        other_score, other_m = got[pair]
        assert abs(other_score - score) <= float32_tolerance(1.0, SHAPES_REDUCTION), (pair, score, other_score)
        a, b = np.frombuffer(m, dtype=np.float16), np.frombuffer(other_m, dtype=np.float16)
        scale = float(np.abs(a.astype(np.float32)).max()) if a.size else 0.0
        tol = float32_tolerance(scale, SHAPES_REDUCTION) + np.spacing(np.abs(a)).astype(np.float32)
        assert a.shape == b.shape and (np.abs(a.astype(np.float32) - b.astype(np.float32)) <= tol).all(), pair
