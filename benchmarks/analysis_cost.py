"""What an analysis costs per pair, relative to one ``explain-dataset`` row.

    python benchmarks/analysis_cost.py                # ShapesCLIP, 16 and 32 held-out scenes
    python benchmarks/analysis_cost.py --scenes 8     # quicker

The scenes (seeds 790,000 ..., inside the concreteness study's held-out range, 2-4 objects) are
saved as PNGs with pairs files, and each command runs in this process on the same files
(1 torch thread, no DataLoader workers: all the work is in this process, and its CPU time,
``time.process_time``, is what is measured, so other jobs on shared cores do not count):

- ``explain-dataset`` (the unit, its defaults: ``--batch-size 16``): ``--pairs`` with each scene's
  caption; one row = one (image, caption) image map; ``--text-maps``: the same plus its word map;
- ``analyze decomposition --pairs`` (caption, phrases): per pair, the caption, its P phrases and
  the caption without each phrase are explained (1 + 2P texts, image and word maps, in the
  engine's one ``attribute_all`` and one text backward per batch), then the statistics;
- ``analyze concreteness --pairs`` (caption): the caption's maps, then words and statistics;
- both studies at ``--batch-size 1`` (their default: one ``attribute_all`` over exactly the pair's
  texts) and 16 (the engine's batches: the columns are the union of the batch's texts, which
  every image of the batch pays for, image and word maps alike).

Each command runs on ``n`` and on ``2n`` pairs: the cost per pair is the difference over ``n`` (the
marginal cost: loading the model, the statistics' bootstrap and the figure are paid once per run
and left out), and the table also shows what is left at ``n`` pairs (those fixed seconds).
Another study may add itself to ``STUDIES``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

SEED0 = 790_000


def make_inputs(root: Path, n: int, tag: str = "") -> Dict[str, Path]:
    """``n`` scenes as PNGs under ``root`` and the pairs files the commands read (named with ``tag``)."""
    from captum_gradeclip.shapes import render_scene

    caps, dec = [], []
    for i in range(n):
        sc = render_scene(seed=SEED0 + i, n_objects=2 + i % 3)
        sc.image.save(root / f"s{i}.png")
        caps.append({"image": f"s{i}.png", "texts": [sc.caption()]})
        dec.append({"image": f"s{i}.png", "texts": [sc.caption()], "phrases": sc.prompts})
    files = {"captions": root / f"captions{tag}.jsonl", "decomposition": root / f"decomposition{tag}.jsonl"}
    for key, lines in (("captions", caps), ("decomposition", dec)):
        files[key].write_text("".join(json.dumps(x) + "\n" for x in lines))
    return files


def timed(argv: List[str]) -> float:
    from captum_gradeclip.cli import main

    t0 = time.process_time()  # this process's CPU time: other jobs on shared cores do not count
    code = main(argv)
    if code != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed with status {code}")
    return time.process_time() - t0


def _explain(files: Dict[str, Path], out: Path, text_maps: bool) -> float:
    argv = ["explain-dataset", "--images", str(files["captions"].parent), "--pairs", str(files["captions"]),
            "--out", str(out), "--workers", "0", "--no-progress"]
    return timed(argv + (["--text-maps"] if text_maps else []))


def _study(name: str, pairs: str, batch: int, *extra: str) -> Callable[[Dict[str, Path], Path], float]:
    return lambda f, out: timed(["analyze", name, "--pairs", str(f[pairs]), "--batch-size", str(batch), *extra,
                                 "--out", str(out)])


#: label -> (files, output folder) -> wall seconds of the command
STUDIES: Dict[str, Callable[[Dict[str, Path], Path], float]] = {
    "analyze decomposition --batch-size 1 (default)": _study("decomposition", "decomposition", 1),
    "analyze decomposition --batch-size 16": _study("decomposition", "decomposition", 16),
    "analyze concreteness --batch-size 1 (default)": _study("concreteness", "captions", 1, "--min-count", "1"),
    "analyze concreteness --batch-size 16": _study("concreteness", "captions", 16, "--min-count", "1"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=16, help="n: each command runs on n and on 2n pairs")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each command and size; the fastest counts")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        big, small = make_inputs(root, 2 * args.scenes, "-2n"), make_inputs(root, args.scenes, "-n")
        _explain(small, root / "warmup", False)  # imports and first-call costs out of the measurements

        def marginal(fn: Callable[[Dict[str, Path], Path], float], name: str) -> Tuple[float, float]:
            """(seconds per extra pair between n and 2n pairs, the fixed seconds left at n)."""
            t_n = min(fn(small, root / f"{name}-n{k}") for k in range(args.repeats))
            t_2n = min(fn(big, root / f"{name}-2n{k}") for k in range(args.repeats))
            per = (t_2n - t_n) / args.scenes
            return per, t_n - per * args.scenes

        cells = {"explain-dataset (the unit: 1 row per pair)": lambda f, out: _explain(f, out, False),
                 "explain-dataset --text-maps": lambda f, out: _explain(f, out, True), **STUDIES}
        rows = [(label, *marginal(fn, f"c{i}")) for i, (label, fn) in enumerate(cells.items())]
    unit = rows[0][1]
    print(f"\nShapesCLIP, {args.scenes} and {2 * args.scenes} pairs, CPU time, fastest of {args.repeats} run(s) each\n")
    print("| command | CPU ms per pair | x one explain-dataset row | fixed CPU s (model, statistics, figure) |")
    print("|---|---:|---:|---:|")
    for label, per, fixed in rows:
        print(f"| {label} | {1000 * per:.1f} | {per / unit:.2f} | {fixed:.1f} |")

if __name__ == "__main__":
    main()
