"""Time and peak memory of ``captum-gradeclip explain`` on a huge JPEG, with the image decoded in
full (``Image.open(path).convert("RGB")``, as before) and as the command reads it now (decoded
reduced to a 1024 px shorter side, ``captum_gradeclip._io.open_image``)::

    python benchmarks/huge_image.py [--side 6000]

Each reading runs ``explain`` with the shipped ShapesCLIP in its own process (twice, alternating),
and prints its wall time and peak resident memory (the JPEG is written by another process, so
that the measured ones start small).

``--bomb``: instead, a 1-bit PNG declaring 13000 x 13000 px (about 20 KB on disk) read by every
reader (the image folder, a WebDataset tar, a Parquet file through ``datasets``, the app's upload
through its ``gr.Image``), each in its own process: peak resident memory after the imports and
after reading it, and what the reader said. ``--tree DIR`` runs another checkout's package (e.g.
the main branch, to compare)::

    python benchmarks/huge_image.py --bomb [--app-server] [--tree /path/to/other/checkout]

``--app-server`` also starts ``captum-gradeclip app`` and uploads the PNG with ``gradio_client``
(the server's peak resident memory before and after, and how long it took to answer).
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


BOMB = r"""
import resource, sys
kind, path = sys.argv[1], sys.argv[2]
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if kind == "folder":
    from captum_gradeclip.scale.data import ImageFolderDataset, WorkItem
    from pathlib import Path
    ds = ImageFolderDataset(Path(path).parent, [WorkItem(Path(path).name, ("a",))], lambda ims: [ims[0]])
    read = lambda: ds[0]
elif kind == "webdataset":
    from captum_gradeclip.scale.sources import WebDatasetSource
    src = WebDatasetSource(path)
    read = lambda: src.image(0)
elif kind == "parquet":
    from captum_gradeclip.scale.sources import HFSource
    src = HFSource(path)
    read = lambda: src.image(0)
else:  # the app: the page's image component, then the explain button's reader
    import gradio as gr
    from gradio.data_classes import ImageData
    from captum_gradeclip.app import ui
    wrap = getattr(ui, "_as_file", None) or getattr(ui, "_lenient")
    image = wrap(gr.Image(type="filepath"))
    read = lambda: ui.read_upload(image.preprocess(ImageData(path=path, orig_name="bomb.png")))
before = peak()
try:
    read()
    said = "decoded"
except Exception as e:
    said = f"{type(e).__name__}: {str(e)[:90]}"
print("RESULT", before, peak(), said)
"""


def make_bomb(folder: str, side: int = 13000) -> None:
    """``folder/bomb.png`` (1-bit, ``side x side``), ``folder/bomb.tar`` holding it, and
    ``folder/bomb.parquet`` (its bytes in an image struct column)."""
    import tarfile

    from PIL import Image

    png = os.path.join(folder, "bomb.png")
    Image.new("1", (side, side)).save(png)
    with tarfile.open(os.path.join(folder, "bomb.tar"), "w") as tar:
        tar.add(png, arcname="bomb.png")
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = open(png, "rb").read()
    col = pa.array([{"bytes": data, "path": "bomb.png"}], pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": col}), os.path.join(folder, "bomb.parquet"))


def bomb(tree: str) -> None:
    env = {**os.environ, "PYTHONPATH": tree, "HF_DATASETS_CACHE": tempfile.mkdtemp()}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-c", f"from benchmarks.huge_image import make_bomb; make_bomb({tmp!r})"],
                       check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        print(f"13000 x 13000 1-bit PNG, {os.path.getsize(os.path.join(tmp, 'bomb.png')) / 1e3:.0f} KB; package: {tree}")
        for kind, name in (("folder", "bomb.png"), ("webdataset", "bomb.tar"), ("parquet", "bomb.parquet"),
                           ("app", "bomb.png")):
            out = subprocess.run([sys.executable, "-c", BOMB, kind, os.path.join(tmp, name)], capture_output=True,
                                 text=True, env=env, cwd=tmp)
            if "RESULT" not in out.stdout:
                print(f"  {kind:10s} failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            before, after, said = out.stdout.split("RESULT")[-1].strip().split(" ", 2)
            print(f"  {kind:10s} peak RSS {float(before):6.0f} MB after the imports, {float(after):6.0f} MB after "
                  f"reading: {said}")


def app_server(tree: str, port: int = 7871, method: str = "Grad-ECLIP") -> None:
    """The bomb uploaded to a running ``captum-gradeclip app`` through ``gradio_client``: the
    server's peak resident memory (``VmHWM``) before and after, and its answer."""
    import re
    import time

    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory() as tmp:
        make_bomb(tmp)
        env = {**os.environ, "PYTHONPATH": tree, "GRADIO_ANALYTICS_ENABLED": "False"}
        server = subprocess.Popen([sys.executable, "-m", "captum_gradeclip", "app", "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)

        def peak() -> float:
            status = open(f"/proc/{server.pid}/status").read()
            return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024

        try:
            for _ in range(180):
                try:
                    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                    break
                except Exception:  # not up yet
                    time.sleep(1)
            before, t0 = peak(), time.perf_counter()
            said = client.predict(handle_file(os.path.join(tmp, "bomb.png")), "a red circle", "", [method], "-1",
                                  "cosine", True, api_name="/explain")[0]
            print(f"  app server peak RSS {before:6.0f} MB before the upload, {peak():6.0f} MB after; answered in "
                  f"{time.perf_counter() - t0:.1f} s: {said[:100]}")
        finally:
            server.terminate()
            server.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--bomb", action="store_true", help="the 13000 x 13000 PNG through every reader")
    ap.add_argument("--app-server", action="store_true", help="with --bomb: also upload it to a running app")
    ap.add_argument("--method", default="Grad-ECLIP", help="the app's method name (the registry's name on newer trees)")
    ap.add_argument("--tree", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="the checkout whose package --bomb runs (default: this one)")
    args = ap.parse_args()
    if args.bomb:
        bomb(os.path.abspath(args.tree))
        return app_server(os.path.abspath(args.tree), method=args.method) if args.app_server else None
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
