"""Grad-ECLIP against an independent, naive re-implementation of the formula.

The reference runs the CLIP towers by hand (embeddings, then every block written out with
explicit heads and masks), differentiates the score against the attention outputs it built,
and computes the map with Python loops over tokens, heads and channels.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import EOS, text_batch, tiny_clip

from captum_gradeclip import ImageGradECLIP, ImageTextSimilarity, TextGradECLIP, TextImageSimilarity

MODES = ["cosine", "cosine_per_head", "attention", "uniform"]


def manual_block(layer, x, mask_add, heads):
    attn = layer.self_attn
    b, n, d = x.shape
    h = layer.layer_norm1(x)
    q = F.linear(h, attn.q_proj.weight, attn.q_proj.bias)
    k = F.linear(h, attn.k_proj.weight, attn.k_proj.bias)
    v = F.linear(h, attn.v_proj.weight, attn.v_proj.bias)
    dh = d // heads
    qh, kh, vh = (t.view(b, n, heads, dh).transpose(1, 2) for t in (q, k, v))
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(dh)
    if mask_add is not None:
        logits = logits + mask_add
    o = (logits.softmax(-1) @ vh).transpose(1, 2).reshape(b, n, d)
    x = x + F.linear(o, attn.out_proj.weight, attn.out_proj.bias)
    x = x + layer.mlp(layer.layer_norm2(x))
    return x, (q, k, v, o)


def naive_map(q, k, v, grad_o, pooled, scored, attended, mode, heads):
    """Loops: returns the signed token map (L,) of one example."""
    n, d = v.shape
    dh = d // heads
    w = grad_o[pooled]
    out = torch.zeros(n)

    def minmax(vals):
        idx = [i for i in range(n) if scored[i]]
        lo, hi = min(vals[i] for i in idx), max(vals[i] for i in idx)
        return [((vals[i] - lo) / (hi - lo)) if scored[i] else 0.0 for i in range(n)]

    def cos(a, b):
        return float((a @ b) / (a.norm() * b.norm()))

    if mode in ("cosine", "uniform"):
        lam = minmax([cos(q[pooled], k[i]) for i in range(n)]) if mode == "cosine" else [float(s) for s in scored]
        for i in range(n):
            if scored[i]:
                out[i] = lam[i] * sum(float(w[c] * v[i, c]) for c in range(d))
        return out
    for hd in range(heads):
        sl = slice(hd * dh, (hd + 1) * dh)
        if mode == "cosine_per_head":
            lam = minmax([cos(q[pooled, sl], k[i, sl]) for i in range(n)])
        else:
            logits = [float(q[pooled, sl] @ k[i, sl]) / math.sqrt(dh) if attended[i] else -math.inf for i in range(n)]
            z = sum(math.exp(x) for x in logits if x != -math.inf)
            lam = [math.exp(x) / z if scored[i] else 0.0 for i, x in enumerate(logits)]
        for i in range(n):
            out[i] += lam[i] * sum(float(w[c] * v[i, c]) for c in range(hd * dh, (hd + 1) * dh))
    return out


def image_reference(model, pixels, text_embeds, target, explained, mode, single_head, relu=True):
    vm = model.vision_model
    x = vm.pre_layrnorm(vm.embeddings(pixels)).detach().requires_grad_(True)
    saved = {}
    for i, layer in enumerate(vm.encoder.layers):
        heads = 1 if (single_head and i in explained) else layer.self_attn.num_heads
        x, qkvo = manual_block(layer, x, None, heads)
        saved[i] = (qkvo, heads)
    img = model.visual_projection(vm.post_layernorm(x[:, 0]))
    score = (F.normalize(img, dim=-1) @ F.normalize(text_embeds, dim=-1).t())[:, target].sum()
    grads = torch.autograd.grad(score, [saved[i][0][3] for i in explained])
    b, n = x.shape[:2]
    maps = torch.zeros(b, n)
    for j, i in enumerate(explained):
        (q, k, v, _), heads = saved[i]
        for e in range(b):
            scored = [t > 0 for t in range(n)]
            m = naive_map(q[e].detach(), k[e].detach(), v[e].detach(), grads[j][e], 0, scored, [True] * n, mode, heads)
            maps[e] += m.clamp_min(0) if relu else m
    side = int(math.isqrt(n - 1))
    return maps[:, 1:].view(b, 1, side, side)


def text_reference(model, ids, mask, image_embeds, target, explained, mode, single_head, relu=True):
    tm = model.text_model
    x = tm.embeddings(input_ids=ids).detach().requires_grad_(True)
    b, n = ids.shape
    causal = torch.full((n, n), -math.inf).triu(1)
    pad = torch.zeros(b, 1, 1, n).masked_fill(mask[:, None, None, :] == 0, -math.inf)
    mask_add = causal[None, None] + pad
    saved = {}
    for i, layer in enumerate(tm.encoder.layers):
        heads = 1 if (single_head and i in explained) else layer.self_attn.num_heads
        x, qkvo = manual_block(layer, x, mask_add, heads)
        saved[i] = (qkvo, heads)
    x = tm.final_layer_norm(x)
    eos = (ids == EOS).int().argmax(1)
    txt = model.text_projection(x[torch.arange(b), eos])
    score = (F.normalize(txt, dim=-1) @ F.normalize(image_embeds, dim=-1).t())[:, target].sum()
    grads = torch.autograd.grad(score, [saved[i][0][3] for i in explained])
    maps = torch.zeros(b, n)
    for e in range(b):
        p = int(eos[e])
        scored = [t <= p for t in range(n)]
        total = torch.zeros(n)
        for j, i in enumerate(explained):
            (q, k, v, _), heads = saved[i]
            total += naive_map(q[e].detach(), k[e].detach(), v[e].detach(), grads[j][e], p, scored, scored, mode, heads)
        total = total.clamp_min(0) if relu else total
        total[0] = 0
        total[p:] = 0
        maps[e] = total
    return maps


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("single_head", [False, True])
def test_image_last_layer_matches_reference(mode, single_head, pixels, texts):
    model = tiny_clip()
    ids, mask = texts
    sim = ImageTextSimilarity(model, input_ids=ids, attention_mask=mask)
    ours = ImageGradECLIP(sim, model.vision_model.encoder.layers[-1], spatial=mode, single_head=single_head)
    got = ours.attribute(pixels, target=1)
    ref = image_reference(model, pixels, sim.text_embeds, 1, [1], mode, single_head)
    assert got.abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("relu", [True, False])
def test_image_two_layers_sum_per_layer_relu(relu, pixels, texts):
    model = tiny_clip()
    ids, mask = texts
    sim = ImageTextSimilarity(model, input_ids=ids, attention_mask=mask)
    got = ImageGradECLIP(sim, list(model.vision_model.encoder.layers)).attribute(pixels, target=2, relu_attributions=relu)
    ref = image_reference(model, pixels, sim.text_embeds, 2, [0, 1], "cosine", False, relu=relu)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("single_head", [False, True])
def test_text_multilayer_matches_reference(mode, single_head, pixels):
    model = tiny_clip()
    ids, mask = text_batch()
    tsim = TextImageSimilarity(model, pixel_values=pixels)
    layers = list(model.text_model.encoder.layers[-8:])  # all 3 of the tiny model
    got = TextGradECLIP(tsim, layers, spatial=mode, single_head=single_head).attribute(
        ids, target=1, additional_forward_args=(mask,))
    ref = text_reference(model, ids, mask, tsim.image_embeds, 1, [0, 1, 2], mode, single_head)
    assert got.abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


def test_text_signed_sum_before_relu(pixels):
    model = tiny_clip()
    ids, mask = text_batch()
    tsim = TextImageSimilarity(model, pixel_values=pixels)
    layers = list(model.text_model.encoder.layers)
    signed = TextGradECLIP(tsim, layers).attribute(ids, target=0, additional_forward_args=(mask,), relu_attributions=False)
    ref = text_reference(model, ids, mask, tsim.image_embeds, 0, [0, 1, 2], "cosine", False, relu=False)
    torch.testing.assert_close(signed, ref, rtol=1e-4, atol=1e-6)
    relu = TextGradECLIP(tsim, layers).attribute(ids, target=0, additional_forward_args=(mask,))
    torch.testing.assert_close(relu, signed.clamp_min(0))
