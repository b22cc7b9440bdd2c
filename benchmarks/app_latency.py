"""Time from the explorer's "explain" click to the rendered grid, and the app's resident memory::

    python benchmarks/app_latency.py [--repeats 3] [--skip-vit]

For ShapesCLIP (``captum-gradeclip app``) and a ViT-B/16-sized CLIP with random weights (vision:
12 layers, width 768, patch 16 at 224 px; text: 12 layers, width 512; built with ``CLIPConfig``,
saved to a temporary folder and served with ``captum-gradeclip app --model FOLDER``), the app
runs as its own process on 127.0.0.1; headless Chromium (selenium) uploads a scene, types 4
prompts, keeps the 3 methods ticked by default (Grad-ECLIP, GAME, MaskCLIP) and clicks explain; the time is from the
click until the 12 maps of the new grid have loaded. The first click is a warm-up (reported
apart); the median of the next ``--repeats`` is the latency. Memory: the app process's VmRSS
after the runs and its peak (VmHWM), from /proc.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser_helpers import css, driver, explain, fill, free_port, message, open_app, wait_for  # noqa: E402

from captum_gradeclip.app.ui import DEFAULT_METHODS  # noqa: E402  (Grad-ECLIP, GAME, MaskCLIP)

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow cross"]


def vit_b16_folder(folder: Path) -> None:
    """A random ViT-B/16-sized CLIP with ShapesCLIP's tokenizer, saved as a ``save_pretrained`` folder."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from captum_gradeclip.shapes import load_shapes_clip

    tok = load_shapes_clip()[1].tokenizer
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=512, intermediate_size=2048,
                                      num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                                      pad_token_id=tok.pad_token_id),
                     vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, image_size=224, patch_size=16),
                     projection_dim=512)
    CLIPModel(cfg).eval().save_pretrained(folder)
    image = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    CLIPProcessor(image_processor=image, tokenizer=tok).save_pretrained(folder)


def serve(flags: list) -> tuple:
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "captum_gradeclip", "app", "--port", str(port), *flags], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited with {proc.returncode}") from None
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the app did not answer in 300 s")


def memory_mb(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    kb = {ln.split(":")[0]: int(ln.split()[1]) for ln in status if ln.startswith(("VmRSS", "VmHWM"))}
    return {"rss_mb": kb["VmRSS"] / 1024, "peak_rss_mb": kb["VmHWM"] / 1024}


def measure(name: str, flags: list, image: str, repeats: int) -> dict:
    t0 = time.perf_counter()
    proc, url = serve(flags)
    start_s = time.perf_counter() - t0
    d = driver(1280, 1400)
    try:
        open_app(d, url)
        wait_for(d, lambda d: [b.text.strip() for b in css(d, "#gce-methods label.selected")] == list(DEFAULT_METHODS))
        fill(d, image, PROMPTS)
        first = explain(d, 12)
        times = [explain(d, 12) for _ in range(repeats)]
        said = message(d)  # the server's own compute time of the last click
        mem = memory_mb(proc.pid)
    finally:
        d.quit()
        proc.terminate()
        proc.wait(30)
    res = {"model": name, "message": said, "start_s": start_s, "first_click_s": first, "median_click_s": statistics.median(times),
           "clicks_s": times, **mem}
    print(f"{name}: app up in {start_s:.1f} s; click -> grid of 4 prompts x 3 methods: first {first:.2f} s, "
          f"median of {repeats} {res['median_click_s']:.2f} s ({', '.join(f'{t:.2f}' for t in times)}); "
          f"app RSS {mem['rss_mb']:.0f} MB (peak {mem['peak_rss_mb']:.0f} MB); the page said: {said}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-vit", action="store_true")
    args = ap.parse_args()
    from captum_gradeclip.shapes import render_scene

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        image = str(Path(tmp) / "scene.png")
        render_scene(seed=3, n_objects=3).image.save(image)
        measure("ShapesCLIP", [], image, args.repeats)
        if not args.skip_vit:
            vit_b16_folder(Path(tmp) / "vit-b16")
            measure("ViT-B/16-sized random CLIP", ["--model", str(Path(tmp) / "vit-b16")], image, args.repeats)


if __name__ == "__main__":
    main()
