"""Time and peak memory of ``captum-gradeclip explain`` on a huge JPEG, with the image decoded in
full (``Image.open(path).convert("RGB")``, as before) and as the command reads it now (decoded
reduced to a 1024 px shorter side, ``captum_gradeclip._io.open_image``)::

    python benchmarks/huge_image.py [--side 6000]

Each reading runs ``explain`` with the shipped ShapesCLIP in its own process (twice, alternating),
and prints its wall time and peak resident memory (the JPEG is written by another process, so
that the measured ones start small).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

RUN = r"""
import sys, time
from captum_gradeclip import cli
if sys.argv[1] == "full":
    from PIL import Image
    def full(p):
        with Image.open(p) as im:
            return im.convert("RGB")
    cli.open_image = full
t0 = time.perf_counter()
assert cli.main(["explain", sys.argv[2], "--text", "a red circle", "--out", sys.argv[3]]) == 0
import resource
print("RESULT", time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def make_jpeg(path: str, side: int) -> None:
    """A ``side x side`` JPEG: a ShapesCLIP scene, upscaled, with noise (so it compresses like a photo)."""
    import numpy as np
    from PIL import Image

    from captum_gradeclip.shapes import render_scene

    im = np.asarray(render_scene(seed=5).image.resize((side, side), Image.BILINEAR)).astype(np.int16)
    noise = np.random.default_rng(0).integers(-20, 20, (side, side, 1), dtype=np.int16)
    Image.fromarray(np.clip(im + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        jpg = os.path.join(tmp, "huge.jpg")
        # in its own process: a child's peak-memory count starts from its parent's at fork time
        subprocess.run([sys.executable, "-c", f"from benchmarks.huge_image import make_jpeg; make_jpeg({jpg!r}, "
                        f"{args.side})"], check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        print(f"{args.side} x {args.side} JPEG, {os.path.getsize(jpg) / 1e6:.1f} MB")
        for _ in range(args.repeats):
            for mode in ("full", "reduced"):
                out = subprocess.run([sys.executable, "-c", RUN, mode, jpg, os.path.join(tmp, "fig.png")],
                                     capture_output=True, text=True, check=True).stdout
                secs, mb = map(float, out.split("RESULT")[-1].split())
                print(f"  {mode:8s} decode: explain took {secs:5.1f} s, peak RSS {mb:6.0f} MB")


if __name__ == "__main__":
    main()
