"""captum_gradeclip.models: one bundle per model family, the same explain pipeline over both,
and user-facing errors (open_clip faked here, so these run without the extra)."""

import dataclasses
import sys
import types
from typing import ClassVar

import pytest
import torch
from openai_layout import OpenAICLIP, WordTokenizer

from captum_gradeclip import cli
from captum_gradeclip.models import (
    OPEN_CLIP_INSTALL,
    LoadedCLIP,
    ModelError,
    load,
    load_open_clip,
    load_shapes,
    register_family,
    unregister_family,
    wrap_open_clip,
)
from captum_gradeclip.shapes import render_scene



def _preprocess(image):
    return torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(image.size[0]))


def _fake_open_clip(vision="vit"):
    def create_model_and_transforms(arch, pretrained=None):
        if arch != "Tiny":
            raise RuntimeError(f"Model config for {arch} not found.")
        model = OpenAICLIP(vision=vision)
        if vision == "resnet":
            model.visual.layer4 = model.visual.stem[4]  # the last stage, as open_clip's ModifiedResNet has
        return model, None, _preprocess

    return types.SimpleNamespace(create_model_and_transforms=create_model_and_transforms,
                                 get_tokenizer=lambda arch: WordTokenizer())


def test_shapes_bundle():
    clip = load_shapes()
    assert clip.family == "hf" and clip.patch_size == 8 and clip.gradcam_name == "patch embedding"
    assert clip.image_layers == list(clip.model.vision_model.encoder.layers)
    assert clip.text_layers == list(clip.model.text_model.encoder.layers)
    px = clip.pixels([render_scene(seed=0).image] * 2)
    ids, mask = clip.tokens(["a red circle", "a blue square and a red circle"])
    assert px.shape == (2, 3, 64, 64) and ids.shape == mask.shape == (2, 9)
    assert clip.decode(ids[0, 1:4]) == ["a", "red", "circle"]
    assert clip.image_similarity(ids, mask)(px).shape == (2, 2)
    assert clip.text_similarity(px[:1])(ids, mask).shape == (2, 1)


@pytest.mark.parametrize("vision,grid,gradcam", [("vit", 4, "patch embedding"), ("resnet", 4, "layer4")])
def test_open_clip_bundle_and_explain(monkeypatch, capsys, vision, grid, gradcam):
    monkeypatch.setitem(sys.modules, "open_clip", _fake_open_clip(vision))
    clip = load(open_clip="Tiny")
    assert "random weights" in capsys.readouterr().err
    assert clip.family == "open_clip" and clip.gradcam_name == gradcam and len(clip.text_layers) == 3
    assert clip.token_embedding is clip.model.token_embedding
    res = cli.explain(clip, render_scene(seed=1).image, ["a red circle", "a big blue square"])
    assert res["maps"].shape == (2, grid, grid) and res["scores"].shape == (2,)
    title, words, attr = res["text_rows"][1]
    assert title.startswith('word importance: "a big blue square" (cos = ') and words == ["w6", "w8", "w9", "w11"]
    assert attr.shape == (4,)


def test_errors_are_user_facing(monkeypatch):
    with pytest.raises(ModelError, match="not both"):
        load(model="m", open_clip="RN50")
    monkeypatch.setitem(sys.modules, "open_clip", None)  # not installed
    with pytest.raises(ModelError, match=r"captum-gradeclip\[open-clip\]"):
        load_open_clip("ViT-B-32")
    assert "[open-clip]" in OPEN_CLIP_INSTALL
    monkeypatch.setitem(sys.modules, "open_clip", _fake_open_clip())
    with pytest.raises(ModelError, match="could not load open_clip model 'Nope'"):
        load_open_clip("Nope")


def test_unsupported_towers(monkeypatch):
    model = OpenAICLIP()
    model.visual.transformer = torch.nn.Identity()  # a tower with no blocks we know
    with pytest.raises(ModelError, match="neither an OpenAI CLIP / open_clip ViT"):
        wrap_open_clip(model, _preprocess, WordTokenizer())
    model = OpenAICLIP()
    del model.transformer  # e.g. a Hugging Face text tower inside open_clip
    clip = wrap_open_clip(model, _preprocess, WordTokenizer())
    with pytest.raises(ModelError, match="text tower is not an open_clip transformer"):
        _ = clip.text_layers


def test_cli_explain_with_fake_open_clip(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "open_clip", _fake_open_clip())
    img = tmp_path / "scene.png"
    render_scene(seed=3).image.save(img)
    out = tmp_path / "fig.png"
    assert cli.main(["explain", str(img), "--text", "a red circle", "--open-clip", "Tiny", "--out", str(out)]) == 0
    assert out.is_file()


@dataclasses.dataclass(frozen=True)
class _ToyFamily(LoadedCLIP):
    """A model family the package does not ship, written against LoadedCLIP's documented methods
    only (ARCHITECTURE.md's "a model family to the CLI": this test file is the one file it takes):
    the OpenAI-layout toy CLIP with its own word tokenizer and its own pixel transform."""

    family: ClassVar[str] = "toy"

    def pixels(self, images):
        import numpy as np

        return torch.stack([torch.from_numpy(np.asarray(im.convert("RGB").resize((32, 32)), dtype=np.float32))
                            .permute(2, 0, 1) / 255 for im in images])

    def tokens(self, texts):
        return self.tokenizer(texts), None

    def decode(self, input_ids):
        return [f"w{int(i)}" for i in input_ids]

    @property
    def text_layers(self):
        return list(self.model.transformer.resblocks)

    @property
    def token_embedding(self):
        return self.model.token_embedding

    def image_similarity(self, input_ids, attention_mask=None):
        from captum_gradeclip.openai import EncoderImageTextSimilarity

        return EncoderImageTextSimilarity(self.model, input_ids)

    def text_similarity(self, pixels):
        from captum_gradeclip.openai import EncoderTextImageSimilarity

        return EncoderTextImageSimilarity(self.model, pixels)


def _load_toy(spec):
    torch.manual_seed(int(spec))
    model = OpenAICLIP().eval()
    return _ToyFamily(model=model, preprocess=None, tokenizer=WordTokenizer(), image_layers=list(
        model.visual.transformer.resblocks), gradcam_layer=model.visual.conv1, gradcam_name="patch embedding",
        patch_size=8)


def test_a_toy_family_reaches_the_cli(tmp_path):
    """A new family registered from outside the package (0 package files) is what `--model toy:SPEC`
    loads, and the explain command and the benchmark's methods run on it."""
    from captum_gradeclip.benchmark.methods import image_methods

    register_family("toy", _load_toy)
    try:
        with pytest.raises(ValueError, match="registered"):
            register_family("toy", _load_toy)
        clip = load(model="toy:0")
        assert isinstance(clip, _ToyFamily) and clip.family == "toy"
        with pytest.raises(dataclasses.FrozenInstanceError):
            clip.family = "hf"
        img = tmp_path / "scene.png"
        render_scene(seed=3).image.save(img)
        out = tmp_path / "fig.png"
        assert cli.main(["explain", str(img), "--text", "a red circle", "--model", "toy:0", "--out", str(out)]) == 0
        assert out.is_file()
        res = cli.explain(clip, render_scene(seed=1).image, ["a red circle", "a big blue square"])
        assert res["maps"].shape == (2, 4, 4) and res["text_rows"][1][1] == ["w6", "w8", "w9", "w11"]
        sim = clip.image_similarity(*clip.tokens(["a red circle"]))
        ge = image_methods(clip, sim)["Grad-ECLIP (cosine, default)"]
        assert ge(clip.pixels([render_scene(seed=1).image]), torch.tensor([0])).shape == (1, 1, 4, 4)
    finally:
        unregister_family("toy")
    with pytest.raises(ModelError):  # unregistered: a Hugging Face name again, which does not load
        load(model="toy:0")
