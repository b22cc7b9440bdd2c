"""The explorer's functional core and its page handlers, without a browser (and without Gradio:
ui.py imports it only to build the page).

Maps are compared with ``torch.allclose(atol=1e-6 * max|map|)``: the explorer and the reference
run the same operations in the same process, so they agree to float32 rounding; the tolerance
only allows for a different summation order inside the BLAS.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import hook_count

from captum_gradeclip import ImageGradECLIP
from captum_gradeclip.app import AppInputError, ExplainRequest, GradECLIPOptions, explain
from captum_gradeclip.app.methods import methods
from captum_gradeclip.methods import get_method
from captum_gradeclip.app.ui import parse_layers, read_upload, run_explain
from captum_gradeclip.cli import main
from captum_gradeclip.shapes import render_scene
from captum_gradeclip.shapes.model import WORDS


@pytest.fixture(scope="module")
def clip():
    from captum_gradeclip.models import load_shapes

    return load_shapes()


@pytest.fixture(scope="module")
def scene():
    return render_scene(seed=5, n_objects=3)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=1e-6 * float(b.abs().max().clamp_min(1e-12)))


def reference(clip, image, prompts, layers=(-1,), **kw):
    """Grad-ECLIP's maps ``(T, h, w)`` and scores ``(T,)`` computed directly with the library."""
    pixels = clip.pixels([image])
    sim = clip.image_similarity(*clip.tokens(list(prompts)))
    chosen = [clip.image_layers[i] for i in layers]
    g = ImageGradECLIP(sim, chosen if len(chosen) > 1 else chosen[0], spatial=kw.get("spatial", "cosine"))
    with torch.no_grad():
        scores = sim(pixels)[0]
    return g.attribute_all(pixels, relu_attributions=kw.get("relu", True))[0], scores


@pytest.mark.parametrize("options", [GradECLIPOptions(), GradECLIPOptions((-2, -1), "attention", False)])
def test_grad_eclip_maps_equal_attribute_all(clip, scene, options):
    exp = explain(clip, scene.image, ExplainRequest(tuple(scene.prompts), ("grad-eclip", "maskclip"), "", options))
    ref, scores = reference(clip, scene.image, scene.prompts, options.layers, spatial=options.spatial,
                            relu=options.relu)
    assert close(exp.maps["grad-eclip"], ref)
    assert torch.equal(exp.scores, scores)  # the model's own output
    assert set(exp.seconds) == {"grad-eclip", "maskclip"} and all(s > 0 for s in exp.seconds.values())
    if not options.relu:
        assert (exp.maps["grad-eclip"] < 0).any()


def test_every_method_gives_one_map_per_prompt_and_leaves_the_model_alone(clip, scene):
    model = clip.model
    before = [p.requires_grad for p in model.parameters()]
    every = methods()
    assert every[0] == "grad-eclip" and {"game", "maskclip", "layer-gradcam", "integrated-gradients"} <= set(every)
    cheap = tuple(m for m in every if m != "integrated-gradients")  # IG: T x 50 passes, run below on one prompt
    exp = explain(clip, scene.image, ExplainRequest(tuple(scene.prompts[:2]), cheap, scene.caption()))
    ig = explain(clip, scene.image, ExplainRequest(tuple(scene.prompts[:1]), ("integrated-gradients",)))
    assert hook_count(model) == 0 and [p.requires_grad for p in model.parameters()] == before
    for m in cheap:
        shape = (2, 64, 64) if get_method(m).pixel_space else (2, 8, 8)
        assert exp.maps[m].shape == shape and torch.isfinite(exp.maps[m]).all(), m
    assert ig.maps["integrated-gradients"].shape == (1, 64, 64)  # IntegratedGradients: pixel space
    assert exp.words is not None and exp.words.words == scene.caption().split()
    assert exp.words.importances.shape == (len(exp.words.words),)
    assert len(exp.arrays()) == 2 * len(cheap)
    json.dumps(exp.summary())


@pytest.mark.parametrize("request_, message", [
    (ExplainRequest(()), "at least one prompt"),
    (ExplainRequest(("a red circle", " ")), "blank"),
    (ExplainRequest(("a red circle",), ()), "at least one method"),
    (ExplainRequest(("a red circle",), ("LIME",)), "unknown image method 'LIME'"),
    (ExplainRequest(("a photo of a dog",)), "does not know 'photo', 'of', 'dog'"),
    (ExplainRequest(("a red circle",), caption="a red zebra"), "does not know 'zebra'"),
    (ExplainRequest(("a red circle 42",)), "does not know '42'"),  # digits, punctuation, other scripts:
    (ExplainRequest(("a red 圆",)), "does not know '圆'"),  # the same check as explain's
    (ExplainRequest(("a red circle!!!",)), "does not know '!'"),
    (ExplainRequest(("a red circle",), options=GradECLIPOptions((7,))), "4 attention layers"),
    (ExplainRequest(tuple(["a red circle"] * 17)), "at most 16"),
])
def test_bad_requests_name_the_problem(clip, scene, request_, message):
    with pytest.raises(AppInputError, match=message):
        explain(clip, scene.image, request_, WORDS)
    assert hook_count(clip.model) == 0


def test_read_upload(tmp_path):
    from PIL import Image

    with pytest.raises(AppInputError, match="upload or paste"):
        read_upload(None)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(AppInputError, match="cannot read the upload"):
        read_upload(str(tmp_path / "bad.png"))
    Image.new("RGB", (6000, 4000), "red").save(tmp_path / "big.jpg", quality=50)
    image, notes = read_upload(str(tmp_path / "big.jpg"))
    assert min(image.size) == 1024 and "6000 x 4000" in notes[0]
    assert parse_layers("-2, -1") == (-2, -1)
    with pytest.raises(AppInputError, match="integers"):
        parse_layers("last")


def test_handler_gives_messages_not_exceptions_and_files_that_hold_the_maps(clip, scene, tmp_path):
    path = tmp_path / "scene.png"
    scene.image.save(path)
    args = (scene.caption(), ["grad-eclip", "cls-attention"], "-1", "cosine", True)
    for bad, says in ((None, "upload or paste"), (str(path), "at least one prompt")):
        out = run_explain(clip, WORDS, bad, "", *args)
        assert out[0].startswith("**Cannot explain:**") and says in out[0] and out[1:] == ("", "", None, None, None)
    msg, grid, words, npz, js, png = run_explain(clip, WORDS, str(path), "\n".join(scene.prompts), *args)
    assert msg.startswith("Explained 3 prompt(s) with 2 method(s)")
    assert grid.count('class="gce-map"') == 6 and "<mark" in words
    ref, _ = reference(clip, scene.image, scene.prompts)
    with np.load(npz) as z:
        got = torch.stack([torch.from_numpy(z[f"{p} | grad-eclip"]) for p in scene.prompts])
    assert close(got, ref)
    assert json.loads(open(js).read())["methods"] == ["grad-eclip", "cls-attention"]
    from PIL import Image

    assert Image.open(png).size[0] > 2 * 160


def test_app_command_checks_its_flags(capsys):
    assert main(["app", "--model", "x", "--open-clip", "ViT-B-32"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["app", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
