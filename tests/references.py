"""Independent line-by-line implementations of the published Grad-ECLIP recipe, written against
the OpenAI CLIP / open_clip module layout (``conv1``, ``class_embedding``, ``transformer.resblocks``
with ``ln_1 / attn / ln_2 / mlp``, ``attnpool`` ...), used by the layout and real-package tests.
They share no code with the package."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _maybe(block, name):
    m = getattr(block, name, None)
    return (lambda x: x) if m is None else m


def mha_block_by_hand(block, x, heads_override=None, mask=None):
    """One ResidualAttentionBlock on batch-first x (N, L, D), written out. Handles
    ``nn.MultiheadAttention`` and open_clip's own ``Attention`` (per-head ``ln_q``/``ln_k`` and
    ``head_scale``), and the optional LayerScale ``ls_1``/``ls_2``.

    Returns the block output and ``(q, k, v, o)`` with ``o`` the input of ``out_proj``
    (``v`` scaled per head where the attention has a ``head_scale``)."""
    attn = block.attn
    n, length, d = x.shape
    h = heads_override or attn.num_heads
    dh = d // h
    y = block.ln_1(x)
    wq, wk, wv = attn.in_proj_weight.chunk(3)
    bq, bk, bv = attn.in_proj_bias.chunk(3)
    q, k, v = F.linear(y, wq, bq), F.linear(y, wk, bk), F.linear(y, wv, bv)
    if heads_override is None:
        ln_q, ln_k = getattr(attn, "ln_q", nn.Identity()), getattr(attn, "ln_k", nn.Identity())
        q = ln_q(q.view(n, length, h, dh)).reshape(n, length, d)
        k = ln_k(k.view(n, length, h, dh)).reshape(n, length, d)
        hs = getattr(attn, "head_scale", None)
        if hs is not None:
            v = (v.view(n, length, h, dh) * hs.view(1, 1, h, 1)).reshape(n, length, d)
    qh, kh, vh = (t.view(n, length, h, dh).transpose(1, 2) for t in (q, k, v))
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(dh)
    if mask is not None:
        logits = logits + mask
    o = (logits.softmax(-1) @ vh).transpose(1, 2).reshape(n, length, d)
    x = x + _maybe(block, "ls_1")(_maybe(block, "ln_attn")(F.linear(o, attn.out_proj.weight, attn.out_proj.bias)))
    return x + _maybe(block, "ls_2")(block.mlp(block.ln_2(x))), (q, k, v, o)


def vit_reference(model, images, text_embeds, target, single_head):
    """The published recipe, line by line: run to the last block, recompute it (with one head
    over the full width in the authors' mode), score, differentiate at the attention output.
    Returns ``((N, 1, h, w) map, score)``."""
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


def text_reference(model, ids, image_embeds, target, layers, mask):
    """Signed text map by hand (spatial="attention"): causal mask, EOS = argmax of the ids, the
    per-layer maps summed, zero outside the words. ``layers`` are the model's text blocks (all of
    them, run in order); returns ``(T, L)``."""
    x = (model.token_embedding(ids) + model.positional_embedding).detach().requires_grad_(True)
    saved = []
    for b in layers:
        x, qkvo = mha_block_by_hand(b, x, mask=mask)
        saved.append(qkvo)
    x = model.ln_final(x)
    eos = ids.argmax(-1)
    t_count = ids.shape[0]
    txt = x[torch.arange(t_count), eos] @ model.text_projection
    s = (F.normalize(txt, dim=-1) @ image_embeds.t())[:, target].sum()
    grads = torch.autograd.grad(s, [o for *_, o in saved])
    ref = torch.zeros(ids.shape)
    for b, (q, k, v, _), g in zip(layers, saved, grads):
        heads = b.attn.num_heads
        dh = q.shape[-1] // heads
        for t in range(t_count):
            p = int(eos[t])
            for hd in range(heads):
                sl = slice(hd * dh, hd * dh + dh)
                a = ((q[t, p, sl] @ k[t, :p + 1, sl].t()) / math.sqrt(dh)).softmax(-1)
                ref[t, :p + 1] += (a[:, None] * g[t, p, sl] * v[t, :p + 1, sl]).sum(-1).detach()
    for t in range(t_count):
        ref[t, 0] = 0
        ref[t, int(eos[t]):] = 0
    return ref


def attnpool_reference(pool, feat, text_embeds, target, single_head):
    """ResNet attention pooling by hand on the feature map ``feat (N, C, h, w)``: the mean token
    queries every position; returns the ``(N, 1, h, w)`` map."""
    n, c, hh, ww = feat.shape
    t = feat.flatten(2).transpose(1, 2)
    t = torch.cat([t.mean(1, keepdim=True), t], 1) + pool.positional_embedding
    q, k, v = pool.q_proj(t), pool.k_proj(t), pool.v_proj(t)
    heads = 1 if single_head else pool.num_heads
    dh = c // heads
    o = torch.cat([((q[:, :1, i * dh:(i + 1) * dh] @ k[:, :, i * dh:(i + 1) * dh].transpose(1, 2)) / math.sqrt(dh))
                   .softmax(-1) @ v[:, :, i * dh:(i + 1) * dh] for i in range(heads)], -1)  # (N, 1, C)
    o = o.detach().requires_grad_(True)
    img = pool.c_proj(o[:, 0])
    s = (F.normalize(img, dim=-1) @ text_embeds.t())[:, target].sum()
    w = torch.autograd.grad(s, o)[0][:, 0]
    cos = F.cosine_similarity(q[:, :1], k[:, 1:], dim=-1)
    lam = (cos - cos.amin(1, keepdim=True)) / (cos.amax(1, keepdim=True) - cos.amin(1, keepdim=True))
    return F.relu((w[:, None] * v[:, 1:]).sum(-1) * lam).view(n, 1, hh, ww).detach()


def check_attnpool(model, similarity_cls, tokens, target, single_head, grid=(2, 2)):
    """Explain a ResNet tower's attention pool (images (2, 3, 64, 64)) and compare with
    :func:`attnpool_reference` on the feature map the pool received, and the explained score
    with the model's own (equal unless ``single_head``)."""
    from conftest import hook_count

    from captum_gradeclip import ImageGradECLIP

    torch.manual_seed(2)
    x = torch.randn(2, 3, 64, 64)
    sim = similarity_cls(model, tokens)
    pool = model.visual.attnpool
    feats = []
    h = pool.register_forward_pre_hook(lambda m, a: feats.append(a[0].detach()))
    model.visual(x)
    h.remove()
    outs, h = record_outputs(sim)
    got = ImageGradECLIP(sim, pool, single_head=single_head).attribute(x, target=target)
    h.remove()
    assert got.shape == (2, 1, *grid)
    ref = attnpool_reference(pool, feats[0], sim.text_embeds, target, single_head)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    with torch.enable_grad():
        assert torch.equal(outs[0], sim(x)) != single_head
    assert hook_count(model) == 0
    return sim


def record_outputs(module):
    """Record every output of ``module``; returns ``(list, handle)``."""
    outs = []
    handle = module.register_forward_hook(lambda m, a, out: outs.append(out.detach().clone()) and None)
    return outs, handle


def model_state(model):
    """What an explanation must leave as it found it: requires_grad, train/eval flags, hooks,
    gradients."""
    from conftest import hook_count

    return ({n: p.requires_grad for n, p in model.named_parameters()},
            {n: m.training for n, m in model.named_modules()},
            hook_count(model),
            [n for n, p in model.named_parameters() if p.grad is not None])


def hf_clip_to_open_clip(hf):
    """The same network in open_clip's layout: a Hugging Face ``CLIPModel`` (ViT, quick_gelu)
    copied weight by weight into ``open_clip.model.CLIP`` (q/k/v stacked into ``in_proj_weight``,
    linear projections transposed). Strict load: nothing left over, nothing missing."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vc, tc = hf.config.vision_config, hf.config.text_config
    vcfg = CLIPVisionCfg(layers=vc.num_hidden_layers, width=vc.hidden_size,
                         head_width=vc.hidden_size // vc.num_attention_heads,
                         mlp_ratio=vc.intermediate_size / vc.hidden_size, patch_size=vc.patch_size,
                         image_size=vc.image_size)
    tcfg = CLIPTextCfg(context_length=tc.max_position_embeddings, vocab_size=tc.vocab_size, width=tc.hidden_size,
                       heads=tc.num_attention_heads, layers=tc.num_hidden_layers,
                       mlp_ratio=tc.intermediate_size / tc.hidden_size)
    oc = CLIP(embed_dim=hf.config.projection_dim, vision_cfg=vcfg, text_cfg=tcfg, quick_gelu=True)
    h = hf.state_dict()
    sd = {}

    def blocks(src: str, dst: str, n: int) -> None:
        for i in range(n):
            s, d = f"{src}.encoder.layers.{i}.", f"{dst}.resblocks.{i}."
            for a, b in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                         ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")):
                sd[d + b + ".weight"], sd[d + b + ".bias"] = h[s + a + ".weight"], h[s + a + ".bias"]
            sd[d + "attn.in_proj_weight"] = torch.cat([h[s + f"self_attn.{p}_proj.weight"] for p in "qkv"])
            sd[d + "attn.in_proj_bias"] = torch.cat([h[s + f"self_attn.{p}_proj.bias"] for p in "qkv"])

    v = "vision_model."
    sd["visual.conv1.weight"] = h[v + "embeddings.patch_embedding.weight"]
    sd["visual.class_embedding"] = h[v + "embeddings.class_embedding"]
    sd["visual.positional_embedding"] = h[v + "embeddings.position_embedding.weight"]
    for a, b in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        sd[f"visual.{b}.weight"], sd[f"visual.{b}.bias"] = h[v + a + ".weight"], h[v + a + ".bias"]
    sd["visual.proj"] = h["visual_projection.weight"].t()
    blocks("vision_model", "visual.transformer", vc.num_hidden_layers)
    t = "text_model."
    sd["token_embedding.weight"] = h[t + "embeddings.token_embedding.weight"]
    sd["positional_embedding"] = h[t + "embeddings.position_embedding.weight"]
    sd["ln_final.weight"], sd["ln_final.bias"] = h[t + "final_layer_norm.weight"], h[t + "final_layer_norm.bias"]
    sd["text_projection"] = h["text_projection.weight"].t()
    blocks("text_model", "transformer", tc.num_hidden_layers)
    sd["logit_scale"] = h["logit_scale"]
    oc.load_state_dict({k: x.clone() for k, x in sd.items()}, strict=True)
    return oc.eval()
