"""timm Vision Transformers (extras environment: timm needs torchvision): fused ``qkv`` with
optional per-head ``q_norm`` / ``k_norm``, fused SDPA or not, register tokens; against a
line-by-line reference written from timm's ``Attention`` and ``Block``."""

import pytest
import torch
from conftest import hook_count
from family_references import attend, recipe

from captum_gradeclip import ImageGradECLIP
from captum_gradeclip.adapters import FusedQKVLinearAdapter, find_adapter
from captum_gradeclip.families import ImageClassifierLogits

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5, **kw)
    return m.eval()


def reference(model, px, target):
    """timm ``VisionTransformer.forward`` by hand, the last block's attention written out."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(px))))
    for blk in model.blocks[:-1]:
        x = blk(x)
    blk = model.blocks[-1]
    a = blk.attn
    b, n, d = x.shape
    q, k, v = a.qkv(blk.norm1(x)).chunk(3, dim=-1)

    def per_head(t, norm):  # timm normalises (B, H, L, D / H) per head
        return norm(t.view(b, n, a.num_heads, -1).transpose(1, 2)).transpose(1, 2).reshape(b, n, d)

    q, k = per_head(q, a.q_norm), per_head(k, a.k_norm)
    o = attend(q, k, v, a.num_heads).detach().requires_grad_(True)
    x = x + blk.ls1(a.proj(o))
    x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    score = model.forward_head(model.norm(x))[:, target].sum()
    g = torch.autograd.grad(score, o)[0]
    return recipe(g, q, k, v, 0, list(range(n - 16, n)))


@pytest.mark.parametrize("kw", [{}, {"qk_norm": True}, {"reg_tokens": 2, "init_values": 0.5}])
@pytest.mark.parametrize("fused", [True, False])
def test_timm_vit_matches_reference(kw, fused):
    model = tiny(**kw)
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    torch.manual_seed(1)
    px = torch.randn(2, 3, 32, 32)
    fn = ImageClassifierLogits(model)
    assert fn.pooled_token == 0 and fn.patch_size == (8, 8)
    assert isinstance(find_adapter(model.blocks[-1]), FusedQKVLinearAdapter)
    before = ({n: p.requires_grad for n, p in model.named_parameters()}, hook_count(model))
    maps = ImageGradECLIP(fn, model.blocks[-1]).attribute(px, target=3)
    ref = reference(model, px, 3)
    assert torch.allclose(maps.flatten(1), ref, atol=1e-6 * float(ref.abs().max()) + 1e-12, rtol=1e-4)
    every = ImageGradECLIP(fn, model.blocks[-1]).attribute_all(px)
    assert torch.allclose(every[:, 3:4], maps, atol=1e-6 * float(maps.abs().max()) + 1e-12, rtol=1e-4)
    assert before == ({n: p.requires_grad for n, p in model.named_parameters()}, hook_count(model))
    assert all(p.grad is None for p in model.parameters())


def test_timm_average_pooling_and_scale_norm_are_refused():
    avg = tiny(global_pool="avg", class_token=False)
    with pytest.raises(ValueError, match="not a class token"):
        ImageGradECLIP(ImageClassifierLogits(avg), avg.blocks[-1])
    sn = tiny(scale_attn_norm=True)
    with pytest.raises(NotImplementedError, match="scale_norm"):
        ImageGradECLIP(ImageClassifierLogits(sn), sn.blocks[-1])
