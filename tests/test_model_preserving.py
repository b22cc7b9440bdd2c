"""The explanation explains the user's model: same score, no side effects, fp16/bf16, backends."""

import pytest
import torch
from conftest import hook_count, text_batch, tiny_clip

from captum_gradeclip import ImageGradECLIP, ImageTextSimilarity, TextGradECLIP, TextImageSimilarity


class Spy(torch.nn.Module):
    """Records what the wrapped forward function returned."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.outputs = inner, []
        self.patch_size = getattr(inner, "patch_size", None)
        if hasattr(inner, "eos_positions"):
            self.eos_positions = inner.eos_positions

    def forward(self, *args):
        out = self.inner(*args)
        self.outputs.append(out.detach().clone())
        return out


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_similarity_equals_model_logits_bit_for_bit(attn, pixels):
    model = tiny_clip(attn)
    ids, mask = text_batch()
    ref = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    img = ImageTextSimilarity(model, input_ids=ids, attention_mask=mask, logits=True)
    txt = TextImageSimilarity(model, pixel_values=pixels, logits=True)
    with torch.no_grad():
        assert torch.equal(img(pixels), ref.logits_per_image)
        assert torch.equal(txt(ids, mask), ref.logits_per_text)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_explained_score_is_the_models_own(attn, pixels):
    model = tiny_clip(attn)
    ids, mask = text_batch()
    spy = Spy(ImageTextSimilarity(model, input_ids=ids, attention_mask=mask, logits=True))
    ImageGradECLIP(spy, list(model.vision_model.encoder.layers)).attribute(pixels, target=0)
    ImageGradECLIP(spy, model.vision_model.encoder.layers[-1]).attribute_all(pixels)
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    ref = out.logits_per_image
    assert torch.equal(spy.outputs[0], ref) and torch.equal(spy.outputs[1], ref)

    tspy = Spy(TextImageSimilarity(model, pixel_values=pixels, logits=True))
    TextGradECLIP(tspy, list(model.text_model.encoder.layers)).attribute(ids, target=1, additional_forward_args=(mask,))
    assert torch.equal(tspy.outputs[0], out.logits_per_text)


def test_single_head_mode_explains_a_modified_model(pixels):
    model = tiny_clip()
    ids, mask = text_batch()
    spy = Spy(ImageTextSimilarity(model, input_ids=ids, attention_mask=mask))
    ImageGradECLIP(spy, model.vision_model.encoder.layers[-1], single_head=True).attribute(pixels, target=0)
    with torch.no_grad():
        own = spy.inner(pixels)
    assert not torch.allclose(spy.outputs[0], own)  # reproduction mode: a different score
    assert hook_count(model) == 0
    with torch.no_grad():
        assert torch.equal(spy.inner(pixels), own)  # and the model is back to itself


def test_blocks_before_the_explained_layer_build_no_graph(pixels, texts):
    model = tiny_clip()
    ids, mask = texts
    sim = ImageTextSimilarity(model, input_ids=ids, attention_mask=mask)
    seen = {}

    def rec(name):
        def hook(mod, args, out):
            seen[name] = (torch.is_grad_enabled(), out.requires_grad)
        return hook

    layers = model.vision_model.encoder.layers
    handles = [layers[0].register_forward_hook(rec("first")), layers[1].register_forward_hook(rec("explained"))]
    try:
        ImageGradECLIP(sim, layers[1]).attribute(pixels, target=0)
        assert seen["first"] == (False, False)
        assert seen["explained"] == (True, True)
        # an input that needs gradients keeps the whole graph (Captum's infidelity, say)
        ImageGradECLIP(sim, layers[1]).attribute(pixels.clone().requires_grad_(True), target=0)
        assert seen["first"] == (True, True)
    finally:
        for h in handles:
            h.remove()
    assert torch.is_grad_enabled()


def _state(model):
    return ({n: p.requires_grad for n, p in model.named_parameters()},
            {n: m.training for n, m in model.named_modules()},
            model.config.to_json_string(), hook_count(model))


@pytest.mark.parametrize("train_mode", [False, True])
def test_no_side_effects_on_success(train_mode, pixels, texts):
    model = tiny_clip()
    model.train(train_mode)
    for p in model.vision_model.embeddings.parameters():
        p.requires_grad_(False)  # a partly frozen model
    ids, mask = texts
    sim = ImageTextSimilarity(model, input_ids=ids, attention_mask=mask)
    before = _state(model)
    ImageGradECLIP(sim, model.vision_model.encoder.layers[-1]).attribute(pixels, target=0)
    ImageGradECLIP(sim, model.vision_model.encoder.layers[-1], single_head=True).attribute_all(pixels)
    tsim = TextImageSimilarity(model, pixel_values=pixels)
    TextGradECLIP(tsim, list(model.text_model.encoder.layers)).attribute(ids, target=0, additional_forward_args=(mask,))
    assert _state(model) == before
    assert all(p.grad is None for p in model.parameters())


def test_fully_frozen_model_still_explained(pixels, texts):
    model = tiny_clip().requires_grad_(False)
    ids, mask = texts
    sim = ImageTextSimilarity(model, input_ids=ids, attention_mask=mask)
    a = ImageGradECLIP(sim, model.vision_model.encoder.layers[-1]).attribute(pixels, target=0)
    assert a.abs().sum() > 0
    assert not any(p.requires_grad for p in model.parameters())


def test_no_side_effects_on_error(pixels, texts):
    model = tiny_clip()
    ids, mask = texts
    sim = ImageTextSimilarity(model, input_ids=ids, attention_mask=mask)
    before = _state(model)
    g = ImageGradECLIP(sim, model.vision_model.encoder.layers[-1])
    with pytest.raises(IndexError):
        g.attribute(pixels, target=7)
    assert _state(model) == before

    def failing(x):
        sim(x)
        raise RuntimeError("boom inside the forward")

    with pytest.raises(RuntimeError, match="boom"):
        ImageGradECLIP(failing, model.vision_model.encoder.layers[-1], patch_size=8).attribute(pixels, target=0)
    assert _state(model) == before
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gives_finite_maps(dtype, pixels, texts):
    ids, mask = texts
    ref_model = tiny_clip()
    ref = ImageGradECLIP(ImageTextSimilarity(ref_model, input_ids=ids, attention_mask=mask),
                         ref_model.vision_model.encoder.layers[-1]).attribute(pixels, target=0)
    model = tiny_clip(dtype=dtype)
    sim = ImageTextSimilarity(model, input_ids=ids, attention_mask=mask)
    a = ImageGradECLIP(sim, model.vision_model.encoder.layers[-1]).attribute(pixels.to(dtype), target=0)
    assert a.dtype == torch.float32 and torch.isfinite(a).all()
    # the same map as in float32, up to half-precision noise
    assert torch.nn.functional.cosine_similarity(a.flatten(), ref.flatten(), dim=0) > 0.95
    tsim = TextImageSimilarity(model, pixel_values=pixels.to(dtype))
    w = TextGradECLIP(tsim, list(model.text_model.encoder.layers)).attribute(ids, target=0, additional_forward_args=(mask,))
    assert torch.isfinite(w).all() and w.abs().sum() > 0


@pytest.mark.parametrize("spatial", ["cosine", "attention"])
def test_eager_and_sdpa_give_the_same_maps(spatial, pixels, texts):
    ids, mask = texts
    maps = {}
    for attn in ("eager", "sdpa"):
        model = tiny_clip(attn)
        sim = ImageTextSimilarity(model, input_ids=ids, attention_mask=mask)
        tsim = TextImageSimilarity(model, pixel_values=pixels)
        maps[attn] = (
            ImageGradECLIP(sim, model.vision_model.encoder.layers[-1], spatial=spatial).attribute_all(pixels),
            TextGradECLIP(tsim, list(model.text_model.encoder.layers), spatial=spatial).attribute_all(
                ids, additional_forward_args=(mask,)),
        )
    for a, b in zip(maps["eager"], maps["sdpa"]):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
