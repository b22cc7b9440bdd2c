"""OpenAI CLIP / open_clip layouts: nn.MultiheadAttention (sequence- and batch-first) and the
ResNet attention pool, against independent line-by-line implementations."""


import pytest
import torch
from conftest import hook_count
from openai_layout import OpenAICLIP, tokens
from references import attnpool_reference, text_reference, vit_reference

from captum_gradeclip import ImageGradECLIP, TextGradECLIP
from captum_gradeclip.openai import EncoderImageTextSimilarity, EncoderTextImageSimilarity


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("single_head", [False, True])
def test_vit_mha_matches_published_recipe(batch_first, single_head, pixels):
    model = OpenAICLIP(batch_first=batch_first).eval()
    sim = EncoderImageTextSimilarity(model, tokens())
    assert sim.patch_size == 8
    got = ImageGradECLIP(sim, model.visual.transformer.resblocks[-1], single_head=single_head).attribute(pixels, target=2)
    ref, _ = vit_reference(model, pixels, sim.text_embeds, 2, single_head)
    assert got.abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    assert hook_count(model) == 0


@pytest.mark.parametrize("batch_first", [False, True])
def test_default_mode_explains_the_unmodified_score(batch_first, pixels):
    model = OpenAICLIP(batch_first=batch_first).eval()
    sim = EncoderImageTextSimilarity(model, tokens(), logits=True)
    outs = []
    h = sim.register_forward_hook(lambda m, a, out: outs.append(out.detach().clone()) and None)
    ImageGradECLIP(sim, model.visual.transformer.resblocks[-1]).attribute(pixels, target=0)
    ImageGradECLIP(sim, model.visual.transformer.resblocks[-1], single_head=True).attribute(pixels, target=0)
    h.remove()
    with torch.enable_grad():
        own = sim(pixels)
    assert torch.equal(outs[0], own)
    assert not torch.allclose(outs[1], own)


def test_text_tower_mha_with_causal_mask(pixels):
    model = OpenAICLIP().eval()
    tsim = EncoderTextImageSimilarity(model, pixels)
    ids = tokens()
    layers = list(model.transformer.resblocks)
    got = TextGradECLIP(tsim, layers, spatial="attention").attribute(ids, target=1, relu_attributions=False)
    ref = text_reference(model, ids, tsim.image_embeds, 1, layers, model.transformer.resblocks[0].attn_mask)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("single_head", [False, True])
def test_resnet_attention_pool(single_head, pixels):
    model = OpenAICLIP(vision="resnet").eval()
    sim = EncoderImageTextSimilarity(model, tokens())
    assert sim.patch_size is None
    g = ImageGradECLIP(sim, model.visual.attnpool, single_head=single_head)
    got = g.attribute(pixels, target=0)
    assert got.shape == (2, 1, 4, 4)
    ref = attnpool_reference(model.visual.attnpool, model.visual.stem(pixels).detach(), sim.text_embeds, 0, single_head)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    if not single_head:  # the model's own score
        outs = []
        h = sim.register_forward_hook(lambda m, a, out: outs.append(out.detach().clone()) and None)
        g.attribute(pixels, target=0)
        h.remove()
        with torch.enable_grad():
            assert torch.equal(outs[0], sim(pixels))
    assert hook_count(model) == 0


def test_openai_errors(pixels):
    model = OpenAICLIP().eval()
    with pytest.raises(TypeError, match="encode_image and encode_text"):
        EncoderImageTextSimilarity(torch.nn.Linear(2, 2), tokens())
    with pytest.raises(ValueError, match="T >= 1"):
        EncoderImageTextSimilarity(model, tokens()[:0])
    sim = EncoderImageTextSimilarity(model, tokens())
    with pytest.raises(TypeError, match=r"no supported attention found in Sequential"):
        ImageGradECLIP(sim, model.visual.transformer.resblocks[-1].mlp)
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        ImageGradECLIP(sim, model.visual.transformer.resblocks[-1]).attribute(torch.randn(1, 3, 33, 32), target=0)
    assert hook_count(model) == 0


def test_core_never_imports_open_clip_or_clip():
    """open_clip is an optional extra: importing the package (all of it but the CLI's
    --open-clip path) loads neither open_clip, OpenAI's clip nor torchvision, where they are
    installed too (CI's extras environment)."""
    import subprocess
    import sys

    code = ("import sys, captum_gradeclip, captum_gradeclip.openai, captum_gradeclip.adapters, "
            "captum_gradeclip.baselines, captum_gradeclip.metrics, captum_gradeclip.cli; "
            "print(sorted(m for m in ('open_clip', 'clip', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
