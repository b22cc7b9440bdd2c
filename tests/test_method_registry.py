"""The one method registry and the one meaning of every method flag.

- A method registered from outside the package (one factory + one ``register_method`` call, this
  test file only) reaches ``explain``, ``explain-dataset``, ``segment``, ``benchmark`` and the
  explorer's functional core.
- ``--layers`` means the same layers in every command, counted from the end; the old spellings
  that meant other things (``explain --layers 3`` = the last 3; ``explain-dataset --layers 3`` =
  index 3) fail with one line naming the new spelling.
- The map ``explain --save-maps`` writes equals the map of the same image and prompt from
  ``explain-dataset`` with the same flags (within float16 storage), for every all-prompts method.
"""

import json

import numpy as np
import pytest
import torch

from captum_gradeclip import ImageGradECLIP
from captum_gradeclip.cli import main
from captum_gradeclip.methods import (
    Explainer,
    GradECLIPOptions,
    Method,
    build,
    get_method,
    method_names,
    register_method,
    resolve_layers,
    unregister_method,
)
from captum_gradeclip.models import load_shapes
from captum_gradeclip.shapes import render_scene

pytest.importorskip("pyarrow")


class _CenterPrior:
    """A toy attribution: the map is the score times a fixed centre bump (one pass for all
    prompts), so the test can compute its expected value by hand."""

    def __init__(self, forward_func, grid):
        self.forward_func, self.grid = forward_func, grid

    def _bump(self, device):
        ys, xs = torch.meshgrid(torch.arange(self.grid), torch.arange(self.grid), indexing="ij")
        c = (self.grid - 1) / 2
        return torch.exp(-((ys - c) ** 2 + (xs - c) ** 2) / 4.0).to(device)

    def attribute_all(self, pixels):
        with torch.no_grad():
            s = self.forward_func(pixels)  # (N, T)
        return s[:, :, None, None] * self._bump(pixels.device)

    def attribute(self, pixels, target=None):
        all_ = self.attribute_all(pixels)
        t = torch.as_tensor(target, device=pixels.device).reshape(-1).expand(len(pixels))
        return all_[torch.arange(len(pixels)), t][:, None]


def _toy_factory(clip, sim, options):
    return Explainer(_CenterPrior(sim, 8))


@pytest.fixture
def toy_method():
    register_method(Method("center-prior", "image", "all-prompts", "Centre prior (toy)", _toy_factory))
    try:
        yield "center-prior"
    finally:
        unregister_method("center-prior")


def _write_images(tmp_path, seeds=(1, 2, 3)):
    images = tmp_path / "images"
    images.mkdir()
    for s in seeds:
        render_scene(seed=s).image.save(images / f"s{s}.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    return images, prompts


def _rows(out):
    from captum_gradeclip.scale import read_maps

    return list(read_maps(out))


def test_registry_names_are_one_spelling_and_lookups_fail_clearly():
    names = method_names("image")
    assert names[0] == "grad-eclip" and len(names) == len(set(names))
    assert all(n == n.lower() and " " not in n and "_" not in n for n in names + method_names("text"))
    assert {"game", "maskclip", "rollout", "token-gradcam", "cls-attention", "rise", "layer-gradcam",
            "integrated-gradients", "occlusion"} <= set(names)
    assert get_method("game").cost == "all-prompts" and get_method("integrated-gradients").cost == "per-prompt"
    with pytest.raises(ValueError, match="unknown image method 'GAME'; the image methods are: grad-eclip"):
        get_method("GAME")
    with pytest.raises(ValueError, match="kebab-case"):
        Method("My Method", "image", "all-prompts", "x", _toy_factory)
    with pytest.raises(ValueError, match="registered already"):
        register_method(get_method("game"))


def test_layers_are_python_indices_in_the_api():
    layers = ["l0", "l1", "l2", "l3"]
    assert resolve_layers((-1,), layers) == ["l3"]
    assert resolve_layers((-3, -2, -1), layers) == ["l1", "l2", "l3"] == resolve_layers((1, 2, 3), layers)
    with pytest.raises(ValueError, match="layer -5: this image tower has 4 attention layers"):
        resolve_layers((-5,), layers)
    with pytest.raises(ValueError, match="distinct"):
        GradECLIPOptions(layers=())


def test_a_toy_method_reaches_every_command(toy_method, tmp_path, capsys):
    from captum_gradeclip.app import ExplainRequest, explain
    from captum_gradeclip.benchmark.methods import image_methods, method_keys

    clip = load_shapes()
    scene = render_scene(seed=5)
    sim = clip.image_similarity(*clip.tokens(scene.prompts))
    pixels = clip.pixels([scene.image])
    with torch.no_grad():
        scores = sim(pixels)
    expected = _CenterPrior(sim, 8).attribute_all(pixels)  # (1, T, 8, 8)

    # explain: the toy's maps, in the figure and in --save-maps
    img = tmp_path / "scene.png"
    scene.image.save(img)
    npz = tmp_path / "maps.npz"
    assert main(["explain", str(img), *sum((["--text", t] for t in scene.prompts), []), "--method", toy_method,
                 "--out", str(tmp_path / "fig.png"), "--save-maps", str(npz)]) == 0
    saved = np.load(npz)
    assert str(saved["__method__"]) == toy_method and list(saved["__texts__"]) == scene.prompts
    for k, t in enumerate(scene.prompts):
        np.testing.assert_allclose(saved[t], expected[0, k].numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(saved["__scores__"], scores[0].numpy(), rtol=1e-6)

    # explain-dataset: rows hold the toy's maps, the job config names it
    images, prompts = _write_images(tmp_path)
    out = tmp_path / "job"
    assert main(["explain-dataset", "--images", str(images), "--prompts", str(prompts), "--out", str(out),
                 "--method", toy_method, "--workers", "0", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["explainer"]["method"] == toy_method
    rows = _rows(out)
    assert len(rows) == 6
    row = rows[0]
    one = _CenterPrior(clip.image_similarity(*clip.tokens([row["text"]])), 8).attribute_all(
        clip.pixels([render_scene(seed=int(row["image"][1])).image]))[0, 0]
    torch.testing.assert_close(row["map"].float(), one.half().float(), rtol=0, atol=1e-3 * float(one.abs().max()))

    # segment: the toy's maps make the labels
    seg = tmp_path / "seg"
    assert main(["segment", "--images", str(images), "--prompts", str(prompts), "--out", str(seg),
                 "--method", toy_method, "--no-progress"]) == 0
    assert json.loads((seg / "manifest.json").read_text())["config"]["method"] == toy_method

    # the benchmark: offered by its exact name, built by the registry
    assert toy_method in method_keys()
    bench = {n.key: fn for n, fn in image_methods(clip, sim).items()}
    torch.testing.assert_close(bench[toy_method](pixels, torch.tensor([1])), expected[:, 1:2])

    # the explorer's functional core
    exp = explain(clip, scene.image, ExplainRequest(tuple(scene.prompts), ("grad-eclip", toy_method)))
    torch.testing.assert_close(exp.maps[toy_method], expected[0])
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["--layers", "3"], "--layers 3: layers are counted from the end, -1 the last"),
    (["--layers", "0"], "--layers 0: layers are counted from the end"),
    (["--last", "0"], "--last must be at least 1"),
    (["--method", "game", "--spatial", "attention"], "--spatial: Grad-ECLIP's options do not apply to --method game"),
    (["--method", "no-such"], "unknown image method 'no-such'"),
])
@pytest.mark.parametrize("command", ["explain", "explain-dataset", "segment"])
def test_one_meaning_per_flag_and_old_spellings_fail(command, argv, message, tmp_path, capsys):
    images, prompts = _write_images(tmp_path, seeds=(1,))
    base = {"explain": ["explain", str(images / "s1.png"), "--text", "a red circle", "--out", str(tmp_path / "f.png")],
            "explain-dataset": ["explain-dataset", "--images", str(images), "--prompts", str(prompts),
                                "--out", str(tmp_path / "o"), "--workers", "0", "--no-progress"],
            "segment": ["segment", "--images", str(images), "--prompts", str(prompts), "--out", str(tmp_path / "o"),
                        "--no-progress"]}[command]
    assert main(base + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_the_same_layers_flag_gives_the_same_layers_everywhere(tmp_path, capsys):
    """--last 2 == --layers -2 -1 == GradECLIPOptions((-2, -1)) == ImageGradECLIP on the last two
    blocks, in explain (--save-maps) and explain-dataset."""
    clip = load_shapes()
    images, prompts = _write_images(tmp_path, seeds=(4,))
    image = render_scene(seed=4).image
    texts = ["a red circle", "a blue square"]
    sim = clip.image_similarity(*clip.tokens(texts))
    ref = ImageGradECLIP(sim, clip.image_layers[-2:], spatial="attention").attribute_all(clip.pixels([image]))[0]
    via_api = build("grad-eclip", clip, sim, GradECLIPOptions((-2, -1), "attention")).attribute_all(
        clip.pixels([image]))[0]
    torch.testing.assert_close(via_api, ref, rtol=0, atol=0)
    for i, flags in enumerate((["--last", "2"], ["--layers", "-2", "-1"])):
        npz = tmp_path / f"m{i}.npz"
        assert main(["explain", str(images / "s4.png"), "--text", texts[0], "--text", texts[1], *flags,
                     "--spatial", "attention", "--out", str(tmp_path / "f.png"), "--save-maps", str(npz)]) == 0
        saved = np.load(npz)
        for k, t in enumerate(texts):
            np.testing.assert_allclose(saved[t], ref[k].numpy(), rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
        out = tmp_path / f"job{i}"
        assert main(["explain-dataset", "--images", str(images), "--prompts", str(prompts), "--out", str(out),
                     *flags, "--spatial", "attention", "--workers", "0", "--no-progress"]) == 0
        rows = {r["text"]: r["map"].float() for r in _rows(out)}
        for k, t in enumerate(texts):
            scale = float(ref[k].abs().max())
            torch.testing.assert_close(rows[t], ref[k].half().float(), rtol=0, atol=1e-3 * scale + 1e-6)
    capsys.readouterr()


@pytest.mark.parametrize("method", ["grad-eclip", "game", "maskclip", "rollout", "token-gradcam", "cls-attention"])
def test_explain_maps_equal_explain_dataset_maps(method, tmp_path, capsys):
    images, prompts = _write_images(tmp_path, seeds=(6,))
    texts = ["a red circle", "a blue square"]
    npz = tmp_path / "m.npz"
    assert main(["explain", str(images / "s6.png"), "--text", texts[0], "--text", texts[1], "--method", method,
                 "--out", str(tmp_path / "f.png"), "--save-maps", str(npz)]) == 0
    out = tmp_path / "job"
    assert main(["explain-dataset", "--images", str(images), "--prompts", str(prompts), "--out", str(out),
                 "--method", method, "--workers", "0", "--no-progress"]) == 0
    saved = np.load(npz)
    rows = {r["text"]: r for r in _rows(out)}
    for t in texts:
        m = torch.from_numpy(saved[t])
        scale = float(m.abs().max()) or 1.0
        # float16 storage: half an ulp of the largest value, plus float32 summation-order noise
        torch.testing.assert_close(rows[t]["map"].float(), m, rtol=0, atol=scale * (2 ** -11 + 1e-5))
    np.testing.assert_allclose(saved["__scores__"], [rows[t]["score"] for t in texts], rtol=1e-5, atol=1e-6)
    capsys.readouterr()


def test_unknown_words_are_error_rows_in_explain_dataset_as_explain_refuses_them(tmp_path, capsys):
    images, _ = _write_images(tmp_path, seeds=(1,))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n<script>alert(3)</script>\na blue <b>ring</b>\n")
    out = tmp_path / "job"
    assert main(["explain-dataset", "--images", str(images), "--prompts", str(prompts), "--out", str(out),
                 "--workers", "0", "--no-progress"]) == 0
    rows = _rows(out)
    assert [r["text"] for r in rows] == ["a red circle"]
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["text"] for e in errors) == ["<script>alert(3)</script>", "a blue <b>ring</b>"]
    assert all("does not know" in e["error"] and e["code"] == "unknown_words" for e in errors)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["warnings"]["texts_too_long"] == 0 and manifest["totals"]["errors"] == 2
    out2 = tmp_path / "job2"
    assert main(["explain-dataset", "--images", str(images), "--prompts", str(prompts), "--out", str(out2),
                 "--workers", "0", "--no-progress", "--allow-unknown-words"]) == 0
    assert len(_rows(out2)) == 3 and "warning: the model does not know" in capsys.readouterr().err
    assert main(["explain", str(images / "s1.png"), "--text", "<script>alert(3)</script>",
                 "--out", str(tmp_path / "f.png")]) == 2
    assert "does not know" in capsys.readouterr().err
