"""OpenAI's own ``clip`` package (PyPI: openai-clip), random weights built in code, through the
same classes: sequence-first ``nn.MultiheadAttention`` (ViT and text) and ``AttentionPool2d``
(ResNet), against the line-by-line references in references.py.

Skipped where ``clip`` is not installed; CI installs it in its second environment (.ci/run).
"""

import warnings

import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the package imports pkg_resources, deprecated
    clip = pytest.importorskip("clip")

from conftest import hook_count  # noqa: E402
from openai_layout import tokens  # noqa: E402
from references import (  # noqa: E402
    check_attnpool,
    model_state,
    record_outputs,
    text_reference,
    vit_reference,
)

from captum_gradeclip import ImageGradECLIP, TextGradECLIP  # noqa: E402
from captum_gradeclip.adapters import MultiheadAttentionAdapter, find_adapter  # noqa: E402
from captum_gradeclip.openai import EncoderImageTextSimilarity, EncoderTextImageSimilarity  # noqa: E402


def tiny(vision: str = "vit"):
    from clip.model import CLIP

    torch.manual_seed(0)
    if vision == "vit":  # OpenAI sets heads = width // 64: width 128 -> 2 heads
        cfg = dict(image_resolution=32, vision_layers=2, vision_width=128, vision_patch_size=8)
    else:  # ResNet: attention pool width = 32 * width, heads = width * 32 // 64
        cfg = dict(image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=8, vision_patch_size=None)
    return CLIP(embed_dim=16, context_length=8, vocab_size=50, transformer_width=32, transformer_heads=4,
                transformer_layers=3, **cfg).eval()


@pytest.mark.parametrize("single_head", [False, True])
def test_vit_matches_published_recipe(single_head, pixels):
    model = tiny()
    block = model.visual.transformer.resblocks[-1]
    adapter = find_adapter(block)
    assert isinstance(adapter, MultiheadAttentionAdapter) and adapter.seq_first and adapter.num_heads == 2
    sim = EncoderImageTextSimilarity(model, tokens())
    outs, h = record_outputs(sim)
    got = ImageGradECLIP(sim, block, single_head=single_head).attribute(pixels, target=1)
    h.remove()
    ref, _ = vit_reference(model, pixels, sim.text_embeds, 1, single_head)
    assert got.shape == (2, 1, 4, 4) and got.abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    with torch.enable_grad():
        assert torch.equal(outs[0], sim(pixels)) != single_head  # own score unless reproducing
    assert hook_count(model) == 0


def test_text_tower_and_tokenizer(pixels):
    model = tiny()
    tsim = EncoderTextImageSimilarity(model, pixels)
    layers = list(model.transformer.resblocks)
    got = TextGradECLIP(tsim, layers, spatial="attention").attribute(tokens(), target=0, relu_attributions=False)
    ref = text_reference(model, tokens(), tsim.image_embeds, 0, layers, model.build_attention_mask())
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    ids = clip.tokenize(["a red circle", "a blue square left of a green star"])  # (2, 77), EOS = 49407
    eos = tsim.eos_positions(ids)
    assert ids[torch.arange(2), eos].eq(49407).all() and eos.tolist() == [4, 9]


@pytest.mark.parametrize("single_head", [False, True])
def test_resnet_attention_pool_matches_reference(single_head):
    sim = check_attnpool(tiny("resnet"), EncoderImageTextSimilarity, tokens(), 2, single_head)
    assert sim.patch_size is None and sim.image_pool == "attnpool"


def test_no_side_effects_and_errors(pixels):
    model = tiny().train()
    for p in model.visual.conv1.parameters():
        p.requires_grad_(False)
    before = model_state(model)
    sim = EncoderImageTextSimilarity(model, tokens())
    ImageGradECLIP(sim, model.visual.transformer.resblocks[-1]).attribute_all(pixels)
    TextGradECLIP(EncoderTextImageSimilarity(model, pixels), list(model.transformer.resblocks)).attribute(
        tokens(), target=0)
    with pytest.raises(IndexError):
        ImageGradECLIP(sim, model.visual.transformer.resblocks[-1]).attribute(pixels, target=[0, 5])
    with pytest.raises(TypeError, match=r"no supported attention found in Sequential \(children: c_fc"):
        ImageGradECLIP(sim, model.visual.transformer.resblocks[-1].mlp)
    assert model_state(model) == before


def test_blocks_before_the_explained_layer_build_no_graph(pixels):
    """Sequence-first MultiheadAttention has no no-grad fast path, so the blocks before the
    explained one run without autograd (as on the Hugging Face path)."""
    model = tiny()
    sim = EncoderImageTextSimilarity(model, tokens())
    seen = {}
    blocks = model.visual.transformer.resblocks
    handles = [blocks[i].register_forward_hook(
        lambda m, a, out, i=i: seen.__setitem__(i, (torch.is_grad_enabled(), out.requires_grad))) for i in (0, 1)]
    try:
        ImageGradECLIP(sim, blocks[1]).attribute(pixels, target=0)
    finally:
        for h in handles:
            h.remove()
    assert seen == {0: (False, False), 1: (True, True)}


@pytest.mark.parametrize("vision", ["vit", "resnet"])
def test_similarity_equals_the_packages_own_logits(vision):
    model = tiny(vision)
    torch.manual_seed(3)
    x = torch.randn(2, 3, 32 if vision == "vit" else 64, 32 if vision == "vit" else 64)
    with torch.enable_grad():
        per_image, per_text = model(x, tokens())
        assert torch.equal(EncoderImageTextSimilarity(model, tokens(), logits=True)(x), per_image)
        assert torch.equal(EncoderTextImageSimilarity(model, x, logits=True)(tokens()), per_text)
