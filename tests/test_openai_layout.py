"""OpenAI CLIP / open_clip layouts: nn.MultiheadAttention (sequence- and batch-first) and the
ResNet attention pool, against independent line-by-line implementations."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import hook_count
from openai_layout import OpenAICLIP, tokens

from captum_gradeclip import ImageGradECLIP, TextGradECLIP
from captum_gradeclip.openai import EncoderImageTextSimilarity, EncoderTextImageSimilarity


def mha_block_by_hand(block, x, heads_override=None, mask=None):
    """One ResidualAttentionBlock on batch-first x (N, L, D), written out."""
    attn = block.attn
    n, length, d = x.shape
    h = heads_override or attn.num_heads
    y = block.ln_1(x)
    wq, wk, wv = attn.in_proj_weight.chunk(3)
    bq, bk, bv = attn.in_proj_bias.chunk(3)
    q, k, v = F.linear(y, wq, bq), F.linear(y, wk, bk), F.linear(y, wv, bv)
    dh = d // h
    qh, kh, vh = (t.view(n, length, h, dh).transpose(1, 2) for t in (q, k, v))
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(dh)
    if mask is not None:
        logits = logits + mask
    o = (logits.softmax(-1) @ vh).transpose(1, 2).reshape(n, length, d)
    x = x + F.linear(o, attn.out_proj.weight, attn.out_proj.bias)
    return x + block.mlp(block.ln_2(x)), (q, k, v, o)


def vit_reference(model, images, text_embeds, target, single_head):
    """The published recipe, line by line: run to the last block, recompute it (with one head
    over the full width in the authors' mode), score, differentiate at the attention output."""
    vis = model.visual
    x = vis.conv1(images).flatten(2).permute(0, 2, 1)
    x = torch.cat([vis.class_embedding.expand(x.shape[0], 1, -1), x], 1) + vis.positional_embedding
    x = vis.ln_pre(x)
    blocks = list(vis.transformer.resblocks)
    for b in blocks[:-1]:
        x, _ = mha_block_by_hand(b, x)
    x = x.detach().requires_grad_(True)
    x, (q, k, v, o) = mha_block_by_hand(blocks[-1], x, heads_override=1 if single_head else None)
    img = vis.ln_post(x[:, 0]) @ vis.proj
    s = (F.normalize(img, dim=-1) @ text_embeds.t())[:, target].sum()
    g = torch.autograd.grad(s, o)[0]
    maps = []
    for e in range(images.shape[0]):
        cos = F.cosine_similarity(q[e, :1], k[e, 1:], dim=-1)
        lam = (cos - cos.min()) / (cos.max() - cos.min())
        maps.append(F.relu((g[e, :1] * v[e, 1:] * lam[:, None]).sum(-1)).detach())
    side = int(math.isqrt(maps[0].numel()))
    return torch.stack(maps).view(-1, 1, side, side), s


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
    # reference: by hand, causal mask, EOS = argmax, sum over layers, zero outside the words
    x = (model.token_embedding(ids) + model.positional_embedding).detach().requires_grad_(True)
    mask = model.transformer.resblocks[0].attn_mask
    saved = []
    for b in layers:
        x, qkvo = mha_block_by_hand(b, x, mask=mask)
        saved.append(qkvo)
    x = model.ln_final(x)
    eos = ids.argmax(-1)
    txt = x[torch.arange(3), eos] @ model.text_projection
    s = (F.normalize(txt, dim=-1) @ tsim.image_embeds.t())[:, 1].sum()
    grads = torch.autograd.grad(s, [o for *_, o in saved])
    ref = torch.zeros(3, 8)
    for (q, k, v, _), g in zip(saved, grads):
        for t in range(3):
            p = int(eos[t])
            for hd in range(4):
                sl = slice(hd * 8, hd * 8 + 8)
                a = ((q[t, p, sl] @ k[t, :p + 1, sl].t()) / math.sqrt(8)).softmax(-1)
                ref[t, :p + 1] += (a[:, None] * g[t, p, sl] * v[t, :p + 1, sl]).sum(-1).detach()
    for t in range(3):
        ref[t, 0] = 0
        ref[t, int(eos[t]):] = 0
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("single_head", [False, True])
def test_resnet_attention_pool(single_head, pixels):
    model = OpenAICLIP(vision="resnet").eval()
    sim = EncoderImageTextSimilarity(model, tokens())
    assert sim.patch_size is None
    g = ImageGradECLIP(sim, model.visual.attnpool, single_head=single_head)
    got = g.attribute(pixels, target=0)
    assert got.shape == (2, 1, 4, 4)
    # reference by hand
    pool = model.visual.attnpool
    feat = model.visual.stem(pixels).detach()
    t = feat.flatten(2).transpose(1, 2)
    t = torch.cat([t.mean(1, keepdim=True), t], 1) + pool.positional_embedding
    q, k, v = pool.q_proj(t), pool.k_proj(t), pool.v_proj(t)
    heads = 1 if single_head else pool.num_heads
    dh = 32 // heads
    o = torch.cat([((q[:, :1, i * dh:(i + 1) * dh] @ k[:, :, i * dh:(i + 1) * dh].transpose(1, 2)) / math.sqrt(dh))
                   .softmax(-1) @ v[:, :, i * dh:(i + 1) * dh] for i in range(heads)], -1)  # (N, 1, C)
    o = o.detach().requires_grad_(True)
    img = pool.c_proj(o[:, 0])
    s = (F.normalize(img, dim=-1) @ sim.text_embeds.t())[:, 0].sum()
    w = torch.autograd.grad(s, o)[0][:, 0]
    cos = F.cosine_similarity(q[:, :1], k[:, 1:], dim=-1)
    lam = (cos - cos.amin(1, keepdim=True)) / (cos.amax(1, keepdim=True) - cos.amin(1, keepdim=True))
    ref = F.relu((w[:, None] * v[:, 1:]).sum(-1) * lam).view(2, 1, 4, 4).detach()
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
