"""Peak memory of one explanation, measured in a fresh process per method (so that one method's
allocations never count for another)::

    python -m captum_gradeclip.benchmark.memory --side image --method "Grad-ECLIP (cosine, default)" [--model DIR]

prints ``{"extra_mb": ...}`` (MiB above the resident memory before the explanation) as its last
line. :func:`add_peak_memory` runs one such process per method of a ShapesCLIP result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import List, Optional

import torch

from .methods import image_methods, text_methods
from .protocols import shapes_items
from .report import PEAK_MB, Score

#: The caption the text methods explain.
CAPTION = "a red circle and a blue square"


def measure(side: str, method: str, model_path: Optional[str] = None) -> dict:
    """``{"extra_mb": float}``: peak memory of one explanation by ``method`` (an image method on
    the first object of scene 0 for ``side="image"``, a text method on :data:`CAPTION` for
    ``"text"``), in this process, on one thread."""
    from .._memory import PeakRSS
    from ..models import load_shapes
    from ..shapes import all_prompts

    torch.set_num_threads(1)
    clip = load_shapes(model_path)
    item = shapes_items(2)[0]
    px = clip.pixels([item["image"]])
    if side == "image":
        fn = image_methods(clip, clip.image_similarity(*clip.tokens(all_prompts())))[method]
        with PeakRSS() as mem:
            fn(px, torch.tensor([item["target"]]))
    else:
        ids, mask = clip.tokens([CAPTION])
        fn = text_methods(clip, clip.text_similarity(px))[method]
        with PeakRSS() as mem:
            fn(ids, 0, mask)
    return dict(extra_mb=mem.extra_mb)


def peak_extra_mb(side: str, method: str, model_path: Optional[str] = None) -> float:
    """:func:`measure` in a fresh Python process."""
    cmd = [sys.executable, "-m", "captum_gradeclip.benchmark.memory", "--side", side, "--method", method]
    cmd += ["--model", model_path] if model_path else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["extra_mb"]


def add_peak_memory(res: dict, model_path: Optional[str] = None) -> None:
    """Add each method's peak memory to a ShapesCLIP result ``res`` (in place): one
    :data:`~.report.PEAK_MB` score per method and side."""
    for side in ("image", "text"):
        for name in dict.fromkeys(s.method for s in res[side]):
            res[side].append(Score(name, PEAK_MB, peak_extra_mb(side, name, model_path)))


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="Peak memory of one explanation (MiB), printed as JSON.")
    ap.add_argument("--side", required=True, choices=["image", "text"])
    ap.add_argument("--method", required=True, help="a method's full name, as the benchmark lists it")
    ap.add_argument("--model", default=None, help="a ShapesCLIP checkpoint folder (default: the shipped one)")
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.side, args.method, args.model)))


if __name__ == "__main__":
    main()
