"""Size and load time of ``captum-gradeclip report`` for a 10 000-row job::

    python benchmarks/report_scale.py [--scenes 2500] [--prompts 4]

Renders ``--scenes`` ShapesCLIP scenes (64 px PNGs) into a temporary folder, runs
``captum-gradeclip explain-dataset`` on them with ``--prompts`` prompts (scenes x prompts rows:
a real job, not a synthesised Parquet), writes the report with the default caps (8 best and 8
worst rows per text, 200 random rows), then loads it in headless Chromium (selenium) and reads
the page's own Navigation Timing (``loadEventEnd - startTime``: every embedded image decoded).
Prints the job's rows, the times of both commands, the report's size, its images and its load time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser_helpers import css, driver, wait_for  # noqa: E402

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow cross", "a white ring", "a purple bar"]


def timed(cmd: list) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "captum_gradeclip", *cmd], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def load_time(report: Path, repeats: int = 3) -> list:
    d = driver(1280, 1000)
    try:
        out = []
        for _ in range(repeats):
            d.get("about:blank")
            d.get(report.as_uri())
            wait_for(d, lambda d: d.execute_script("return document.readyState") == "complete")
            ms = d.execute_script("const e = performance.getEntriesByType('navigation')[0]; "
                                  "return e.loadEventEnd - e.startTime")
            out.append((ms / 1000, len(css(d, "img")), len(css(d, "#rows tbody tr"))))
        return out
    finally:
        d.quit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=2500)
    ap.add_argument("--prompts", type=int, default=4)
    args = ap.parse_args()
    from captum_gradeclip.shapes import render_scene

    with tempfile.TemporaryDirectory() as tmp:
        images, out = Path(tmp) / "images", Path(tmp) / "job"
        images.mkdir()
        for s in range(args.scenes):
            render_scene(seed=s).image.save(images / f"scene{s:05d}.png")
        (Path(tmp) / "prompts.txt").write_text("\n".join(PROMPTS[:args.prompts]) + "\n")
        job_s = timed(["explain-dataset", "--images", str(images), "--prompts", str(Path(tmp) / "prompts.txt"),
                       "--out", str(out), "--no-progress", "--batch-size", "32", "--workers", "1"])
        report_s = timed(["report", str(out), "--images", str(images)])
        report = out / "report.html"
        loads = load_time(report)
        rows = args.scenes * args.prompts
        print(f"job: {args.scenes} scenes x {args.prompts} prompts = {rows} rows, explain-dataset {job_s:.1f} s; "
              f"report: {report_s:.1f} s to write, {report.stat().st_size / 1e6:.2f} MB, {loads[0][1]} images, "
              f"{loads[0][2]} table rows; load in headless Chromium: "
              + ", ".join(f"{t:.2f}" for t, _, _ in loads) + " s")


if __name__ == "__main__":
    main()
