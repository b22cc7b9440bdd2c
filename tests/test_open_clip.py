"""Real open_clip models (random weights, tiny configs, offline) through the same classes.

Skipped where open_clip is not installed; CI runs this file in a second environment with the
``open_clip`` extra (see .ci/run).
"""

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from conftest import hook_count  # noqa: E402

from captum_gradeclip import ImageGradECLIP, TextGradECLIP  # noqa: E402
from captum_gradeclip.openai import EncoderImageTextSimilarity, EncoderTextImageSimilarity  # noqa: E402


def tiny(vision: str):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    if vision == "vit":
        vcfg = CLIPVisionCfg(layers=2, width=32, head_width=8, patch_size=8, image_size=32)
    else:
        vcfg = CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, head_width=16, image_size=64)
    tcfg = CLIPTextCfg(context_length=8, vocab_size=50, width=32, heads=4, layers=3)
    return CLIP(embed_dim=16, vision_cfg=vcfg, text_cfg=tcfg).eval()


def tokens():
    return torch.tensor([[48, 5, 6, 49, 0, 0, 0, 0], [48, 7, 8, 9, 10, 49, 0, 0], [48, 3, 49, 0, 0, 0, 0, 0]])


def spy_outputs(sim):
    outs = []
    h = sim.register_forward_hook(lambda m, a, out: outs.append(out.detach().clone()) and None)
    return outs, h


def test_open_clip_vit_image_and_text():
    model = tiny("vit")
    x = torch.randn(2, 3, 32, 32)
    sim = EncoderImageTextSimilarity(model, tokens(), logits=True)
    outs, h = spy_outputs(sim)
    g = ImageGradECLIP(sim, model.visual.transformer.resblocks[-1])
    a = g.attribute(x, target=1)
    all_maps = g.attribute_all(x)
    h.remove()
    assert a.shape == (2, 1, 4, 4) and all_maps.shape == (2, 3, 4, 4) and a.abs().sum() > 0
    torch.testing.assert_close(all_maps[:, 1:2], a, rtol=1e-5, atol=1e-7)
    with torch.enable_grad():
        assert torch.equal(outs[0], sim(x))  # the model's own score
    tsim = EncoderTextImageSimilarity(model, x)
    w = TextGradECLIP(tsim, list(model.transformer.resblocks[-8:])).attribute(tokens(), target=0)
    assert w.shape == (3, 8) and w[:, 0].eq(0).all() and w.abs().sum() > 0
    assert hook_count(model) == 0


def test_open_clip_resnet_attention_pool():
    model = tiny("resnet")
    x = torch.randn(2, 3, 64, 64)
    sim = EncoderImageTextSimilarity(model, tokens())
    outs, h = spy_outputs(sim)
    a = ImageGradECLIP(sim, model.visual.attnpool).attribute(x, target=0)
    h.remove()
    assert a.shape == (2, 1, 2, 2) and torch.isfinite(a).all()
    with torch.enable_grad():
        assert torch.equal(outs[0], sim(x))
    assert hook_count(model) == 0


def test_single_head_mode_changes_the_score():
    model = tiny("vit")
    x = torch.randn(1, 3, 32, 32)
    sim = EncoderImageTextSimilarity(model, tokens())
    outs, h = spy_outputs(sim)
    ImageGradECLIP(sim, model.visual.transformer.resblocks[-1], single_head=True).attribute(x, target=0)
    h.remove()
    with torch.enable_grad():
        assert not torch.allclose(outs[0], sim(x))
