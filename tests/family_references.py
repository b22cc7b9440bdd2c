"""Line-by-line Grad-ECLIP references for the model families, written from each model's
definition (the Hugging Face modeling files, timm's Attention) and sharing no code with the
package: run the tower by hand up to the explained layer, recompute that layer from its weights,
score, differentiate at the attention output before the output projection, and apply the recipe
``ReLU(sum_c w_c * lambda_i * v_i,c)`` with ``lambda`` the min-max normalised cosine of the pooled
query and each scored key."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attend(q, k, v, heads, mask=None):
    """Multi-head softmax attention on (B, Lq, D), (B, L, D): returns o (B, Lq, D)."""
    b, lq, d = q.shape
    dh = d // heads
    qh = q.view(b, lq, heads, dh).transpose(1, 2)
    kh = k.view(b, k.shape[1], heads, dh).transpose(1, 2)
    vh = v.view(b, v.shape[1], heads, dh).transpose(1, 2)
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(dh)
    if mask is not None:
        logits = logits + mask
    return (logits.softmax(-1) @ vh).transpose(1, 2).reshape(b, lq, d)


def recipe(g, q, k, v, pooled, keys):
    """The map over ``keys`` (a list of positions) for each example: ``(B, len(keys))``."""
    maps = []
    for e in range(q.shape[0]):
        p = int(pooled[e]) if torch.is_tensor(pooled) else pooled
        cos = F.cosine_similarity(q[e, p:p + 1], k[e, keys], dim=-1)
        lam = (cos - cos.min()) / (cos.max() - cos.min())
        maps.append(F.relu((g[e, p] * v[e, keys] * lam[:, None]).sum(-1)).detach())
    return torch.stack(maps)


def vit_block(layer, x):
    """transformers 5.x ``ViTLayer`` / ``DeiTLayer`` by hand; returns the output and (q, k, v, o)."""
    a = layer.attention
    y = layer.layernorm_before(x)
    q, k, v = a.q_proj(y), a.k_proj(y), a.v_proj(y)
    o = attend(q, k, v, a.num_attention_heads)
    h = a.o_proj(o) + x
    return layer.mlp(layer.layernorm_after(h)) + h, (q, k, v, o)


def vit_classifier_reference(model, base, px, target, extra, pooled=0, head=None):
    """ViT / DeiT classifier: map of logit ``target`` at the last block, pooled at ``pooled``."""
    x = base.embeddings(px)
    for layer in base.layers[:-1]:
        x, _ = vit_block(layer, x)
    x = x.detach().requires_grad_(True)
    x, (q, k, v, o) = vit_block(base.layers[-1], x)
    x = base.layernorm(x)
    clf = model.classifier if head is None else getattr(model, f"{head}_classifier")
    score = clf(x[:, pooled])[:, target].sum()
    g = torch.autograd.grad(score, o)[0]
    return recipe(g, q, k, v, pooled, list(range(extra, q.shape[1])))


def siglip_head_reference(model, px, text_embeds, target):
    """SigLIP: the pooling head's attention, probe as the query, every patch as a key."""
    vm = model.vision_model
    hidden = vm.post_layernorm(vm.encoder(inputs_embeds=vm.embeddings(px)).last_hidden_state).detach()
    head = vm.head
    mha = head.attention
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    probe = head.probe.expand(px.shape[0], 1, -1)
    q, k, v = F.linear(probe, wq, bq), F.linear(hidden, wk, bk), F.linear(hidden, wv, bv)
    o = attend(q, k, v, mha.num_heads).detach().requires_grad_(True)
    h = mha.out_proj(o)
    h = h + head.mlp(head.layernorm(h))
    img = h[:, 0]
    img = img / img.norm(dim=-1, keepdim=True)
    score = ((img @ text_embeds.t()) * model.logit_scale.exp() + model.logit_bias)[:, target].sum()
    g = torch.autograd.grad(score, o)[0]
    return recipe(g, q, k, v, 0, list(range(k.shape[1])))


def blip_vision_reference(model, px, text_feat, target):
    """BLIP ITC, image side: last vision block with the fused qkv, pooled at CLS."""
    vm = model.vision_model
    x = vm.embeddings(px)
    for layer in vm.encoder.layers[:-1]:
        x = layer(x)
    x = x.detach()
    layer = vm.encoder.layers[-1]
    a = layer.self_attn
    q, k, v = a.qkv(layer.layer_norm1(x)).chunk(3, dim=-1)
    o = attend(q, k, v, a.num_heads).detach().requires_grad_(True)
    h = a.projection(o) + x
    h = layer.mlp(layer.layer_norm2(h)) + h
    img = F.normalize(model.vision_proj(vm.post_layernorm(h)[:, 0]), dim=-1)
    score = (img @ text_feat.t())[:, target].sum()
    g = torch.autograd.grad(score, o)[0]
    return recipe(g, q, k, v, 0, list(range(1, k.shape[1])))
