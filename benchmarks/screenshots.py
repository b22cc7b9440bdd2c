"""The docs' screenshots, from the same browser runs as tests/test_browser.py::

    python benchmarks/screenshots.py [--out docs]

``docs/app.png``: the explorer (ShapesCLIP, served on 127.0.0.1) after headless Chromium uploaded
a held-out scene, typed its prompts and caption and clicked explain (Grad-ECLIP, GAME, MaskCLIP).
``docs/report.png``: the report of an explain-dataset job on 60 rendered scenes with 4 prompts
(the top of the page: totals, caps, scores per text, the best and worst images of a text).
Both are saved with a 256-colour palette to keep the repository small.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser_helpers import css, driver, explain, fill, open_app, start_app, wait_for  # noqa: E402


def save(d, path: Path) -> None:
    from PIL import Image

    raw = path.with_suffix(".raw.png")
    d.save_screenshot(str(raw))
    Image.open(raw).convert("RGB").quantize(256).save(path, optimize=True)
    raw.unlink()
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


def app_shot(out: Path, tmp: Path) -> None:
    from captum_gradeclip.models import load_shapes
    from captum_gradeclip.shapes import render_scene
    from captum_gradeclip.shapes.model import WORDS

    scene = render_scene(seed=7, n_objects=3)
    image = tmp / "scene.png"
    scene.image.save(image)
    demo, url = start_app(load_shapes(), WORDS)
    d = driver(1400, 1060)
    try:
        open_app(d, url)
        fill(d, str(image), scene.prompts + ["a red circle"], scene.caption())
        explain(d, 4 * 3)
        d.execute_script("window.scrollTo(0, 0)")
        save(d, out / "app.png")
    finally:
        d.quit()
        demo.close()


def report_shot(out: Path, tmp: Path) -> None:
    from captum_gradeclip.shapes import render_scene

    images = tmp / "images"
    images.mkdir()
    for s in range(60):
        render_scene(seed=1000 + s).image.save(images / f"scene{s:03d}.png")
    (tmp / "prompts.txt").write_text("a red circle\na blue square\na green triangle\na yellow cross\n")
    run = [sys.executable, "-m", "captum_gradeclip"]
    subprocess.run(run + ["explain-dataset", "--images", str(images), "--prompts", str(tmp / "prompts.txt"),
                          "--out", str(tmp / "job"), "--no-progress", "--workers", "0"], check=True)
    subprocess.run(run + ["report", str(tmp / "job"), "--images", str(images), "--best", "6"], check=True)
    d = driver(1280, 1000)
    try:
        d.get((tmp / "job" / "report.html").as_uri())
        wait_for(d, lambda d: d.execute_script("return document.readyState") == "complete")
        css(d, "#texts th")[2].click()  # sort the per-text table by mean score
        save(d, out / "report.png")
    finally:
        d.quit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs"))
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        app_shot(out, Path(tmp))
        report_shot(out, Path(tmp))


if __name__ == "__main__":
    main()
