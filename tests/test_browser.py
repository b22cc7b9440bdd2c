"""The explorer and a report in a real headless Chromium (selenium), and the explorer's API
endpoint through gradio_client.

Skipped, with the reason, where gradio, gradio_client, selenium or Debian's chromium and
chromium-driver are missing; CI installs them (`.ci/run`). The app is started once for the module
on 127.0.0.1 (a free port); every wait is bounded (browser_helpers.WAIT).

Maps are compared with ``torch.allclose(atol=1e-6 * max|map|)``: the server computes them in this
process with the same operations, then stores them as float32 in the .npz, so they agree to float32
rounding (the tolerance allows only a different summation order).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from browser_helpers import browser_missing, css, driver, explain, fill, message, open_app, start_app, wait_for

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))

METHODS3 = ["grad-eclip", "game", "maskclip"]


@pytest.fixture(scope="module")
def clip():
    from captum_gradeclip.models import load_shapes

    return load_shapes()


@pytest.fixture(scope="module")
def app(clip):
    from captum_gradeclip.shapes.model import WORDS

    demo, url = start_app(clip, WORDS)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def browser():
    d = driver()
    yield d
    d.quit()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from captum_gradeclip.shapes import render_scene

    s = render_scene(seed=11, n_objects=3)
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    s.image.save(path)
    return s, str(path)


def api(url, image, prompts, methods=METHODS3, caption=""):
    from gradio_client import Client, handle_file

    return Client(url, verbose=False).predict(handle_file(image), "\n".join(prompts), caption, methods, "-1",
                                              "cosine", True, api_name="/explain")


def reference(clip, image, prompts):
    """``method -> (T, h, w)`` computed directly with the library's classes."""
    from captum_gradeclip import ImageGradECLIP
    from captum_gradeclip.baselines import GAME, MaskCLIP

    pixels = clip.pixels([image])
    sim = clip.image_similarity(*clip.tokens(list(prompts)))
    layers = clip.image_layers
    return {"grad-eclip": ImageGradECLIP(sim, layers[-1]).attribute_all(pixels)[0],
            "game": GAME(sim, layers).attribute_all(pixels)[0],
            "maskclip": MaskCLIP(sim, layers[-1]).attribute_all(pixels)[0]}


def test_page_draws_the_grid_and_the_api_returns_attribute_alls_maps(clip, app, browser, scene):
    s, path = scene
    prompts = s.prompts + ["a red circle"]
    open_app(browser, app)
    fill(browser, path, prompts, s.caption())
    explain(browser, 4 * 3)
    assert message(browser).startswith("Explained 4 prompt(s) with 3 method(s)")
    assert len(css(browser, "#gce-words mark")) == len(s.caption().split())
    msg, grid, _, npz, _, _ = api(app, path, prompts)
    assert grid.count('class="gce-map"') == 12
    ref = reference(clip, s.image, prompts)
    with np.load(npz) as z:
        for m, want in ref.items():
            got = torch.stack([torch.from_numpy(z[f"{p} | {m}"]) for p in prompts])
            assert torch.allclose(got, want, rtol=0, atol=1e-6 * float(want.abs().max())), m


def test_server_survives_bad_input(app, browser, scene, tmp_path):
    from PIL import Image

    s, path = scene
    open_app(browser, app)
    fill(browser, path, [])
    explain(browser, None, "type at least one prompt")
    fill(browser, None, ["a photo of a dog"])
    explain(browser, None, "does not know")
    assert "Traceback" not in browser.page_source
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    Image.new("RGB", (6000, 6000), "navy").save(tmp_path / "huge.jpg", quality=40)
    assert api(app, str(tmp_path / "bad.png"), ["a red circle"])[0].startswith("**Cannot explain:** cannot read")
    msg, grid = api(app, str(tmp_path / "huge.jpg"), ["a red circle"], ["maskclip"])[:2]
    assert "6000 x 6000 px" in msg and grid.count('class="gce-map"') == 1
    assert api(app, path, ["a red zebra"])[0].startswith("**Cannot explain:** \"a red zebra\": the model does not know 'zebra'")
    fill(browser, None, s.prompts[:2])  # and the page still explains
    explain(browser, 2 * 3)


def test_report_renders_sorts_and_filters(browser, tmp_path):
    from captum_gradeclip.app.report import write_report
    from captum_gradeclip.scale.store import write_shard
    from captum_gradeclip.scale.table import to_table

    pytest.importorskip("pyarrow")
    g = torch.Generator().manual_seed(0)
    rows = [{"image": f"img{i}.png", "text": t, "text_index": j, "score": float(torch.rand(1, generator=g)),
             "map": torch.rand(8, 8, generator=g)} for i in range(10) for j, t in enumerate(["a cat", "a dog"])]
    for sub in ("errors", "sums"):  # the folders the engine makes before its first shard
        (tmp_path / sub).mkdir()
    inputs = {"images": 10, "images_with_rows": 10, "images_only_in_errors": 0, "texts": 20, "rows": 20,
              "text_errors": 0}  # what the engine records per shard (scale.store.INPUT_COUNTS)
    write_shard(tmp_path, 0, to_table(rows, False), [], inputs)
    report = write_report(tmp_path, tmp_path / "r.html")  # no --images: maps on grey, no thumbnails
    browser.get(report.as_uri())
    wait_for(browser, lambda d: css(d, "#rows tbody tr"))
    assert len(css(browser, "img.overlay")) == 20 and len(css(browser, "img.extreme")) == 2 * 2 * 8
    assert all(i.get_attribute("naturalWidth") not in (None, "0") for i in css(browser, "img"))
    header = [h for h in css(browser, "#rows th") if h.text.startswith("score")][0]
    col = css(browser, "#rows th").index(header)

    def scores():
        return [float(r.find_elements("css selector", "td")[col].get_attribute("data-v"))
                for r in css(browser, "#rows tbody tr")]

    header.click()
    assert scores() == sorted(r["score"] for r in rows)
    header.click()
    assert scores() == sorted((r["score"] for r in rows), reverse=True)
    css(browser, "#filter")[0].send_keys("a dog")
    assert css(browser, "#shown")[0].text == "10"


def test_render_scene_button_fills_the_inputs(app, browser):
    from captum_gradeclip.shapes import render_scene

    open_app(browser, app)
    seed = css(browser, "#gce-seed input")[0]
    seed.clear()
    seed.send_keys("4")
    css(browser, "#gce-scene")[0].click()
    want = render_scene(seed=4, n_objects=3)
    wait_for(browser, lambda d: css(d, "#gce-prompts textarea")[0].get_attribute("value") == "\n".join(want.prompts))
    wait_for(browser, lambda d: css(d, "#gce-image img"))
    assert css(browser, "#gce-caption textarea")[0].get_attribute("value") == want.caption()
    explain(browser, 3 * 3)
