"""The core's structure as a contract: a method is a small subclass of the neutral base, options
that do not apply to a method are refused, a third-party attention plugs in through the documented
adapter contract, and the mask/attention helpers keep one convention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import hook_count, tiny_clip
from torch import nn

from captum_gradeclip import ImageGradECLIP, ImageTextSimilarity, TextGradECLIP
from captum_gradeclip import baselines as B
from captum_gradeclip._core import AttentionLayerAttribution, ImageLayout, LayerGradECLIP
from captum_gradeclip.adapters import AttentionAdapter, Capture, register_adapter, registered_adapters
from captum_gradeclip.functional import additive_mask, allowed_keys, attention_probs, causal_mask


@pytest.fixture
def sim():
    model = tiny_clip()
    ids = torch.tensor([[48, 5, 6, 49], [48, 7, 8, 49]])
    return model, ImageTextSimilarity(model, input_ids=ids)


IMAGE_BASELINES = [B.CLSAttention, B.AttentionRollout, B.GAME, B.TokenGradCAM, B.MaskCLIP]
TEXT_BASELINES = [B.TextAttention, B.TextRollout, B.TextGAME]


@pytest.mark.parametrize("cls", IMAGE_BASELINES + TEXT_BASELINES)
def test_baselines_are_not_gradeclip_and_refuse_its_options(cls, sim):
    model, s = sim
    assert issubclass(cls, AttentionLayerAttribution) and not issubclass(cls, LayerGradECLIP)
    layer = model.vision_model.encoder.layers[-1]
    for option in ({"spatial": "attention"}, {"single_head": True}):
        with pytest.raises(TypeError, match="unexpected keyword"):
            cls(s, layer, **option)


def test_layout_options_belong_to_their_tower(sim):
    model, s = sim
    layer = model.vision_model.encoder.layers[-1]
    with pytest.raises(TypeError, match="eos_token_id"):
        ImageGradECLIP(s, layer, eos_token_id=49)
    with pytest.raises(TypeError, match="patch_size"):
        TextGradECLIP(s, layer, patch_size=8)
    with pytest.raises(TypeError, match="eos_token_id"):
        B.CLSAttention(s, layer, eos_token_id=49)


def test_a_new_method_is_a_short_subclass(sim, pixels):
    """A method written against the documented override points only: the value norm of each patch
    (gradient-free), checked against a hand computation from the model's own v_proj."""
    model, s = sim

    class ValueNorm(AttentionLayerAttribution):
        needs_grad = False

        def combine(self, layers, *, relu, targets, n_targets):
            layer = layers[-1]
            m = layer.only_scored(layer.capture.value.detach().float().norm(dim=-1))
            return m.unsqueeze(0).expand(n_targets, *m.shape)

    attn = model.vision_model.encoder.layers[-1].self_attn
    got = ValueNorm(s, attn, layout=ImageLayout(s)).attribute(pixels, target=1)
    seen = {}
    h = attn.register_forward_pre_hook(lambda m, a, k: seen.update(x=k.get("hidden_states", a[0] if a else None)),
                                       with_kwargs=True)
    with torch.no_grad():
        s(pixels)
    h.remove()
    want = attn.v_proj(seen["x"]).norm(dim=-1)[:, 1:].reshape(2, 1, 4, 4)
    torch.testing.assert_close(got, want)
    assert hook_count(model) == 0


class _ToyAttention(nn.Module):
    """A third-party self-attention: fused `qkv`, `proj`, one head per 8 channels."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.qkv, self.proj, self.heads = nn.Linear(d, 3 * d), nn.Linear(d, d), heads

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).chunk(3, -1)
        split = lambda t: t.view(b, n, self.heads, -1).transpose(1, 2)  # noqa: E731
        o = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, n, d)
        return self.proj(o)


class _ToyAdapter(AttentionAdapter):
    """Written from the contract in adapters/base.py only."""

    name = "toy qkv/proj"

    @classmethod
    def matches(cls, module):
        return isinstance(module, _ToyAttention)

    @property
    def num_heads(self):
        return self.module.heads

    @property
    def out_proj(self):
        return self.module.proj

    def attach(self, capture: Capture):
        def pre(mod, args):
            x, = capture.enter(args[0])
            capture.layer_input = x
            capture.query, capture.key, capture.value = mod.qkv(x).chunk(3, -1)
            return (x,)

        def before_proj(mod, args):
            capture.o = args[0]

        return [self.module.register_forward_pre_hook(pre), self.module.proj.register_forward_pre_hook(before_proj)]


def test_third_party_attention_through_the_adapter_contract():
    torch.manual_seed(0)
    register_adapter(_ToyAdapter)
    try:
        emb, attn, head = nn.Linear(3, 32), _ToyAttention(), nn.Linear(32, 5)

        def f(x):  # (B, L, 3) -> (B, 5): scores read the token-0 row
            return head(attn(emb(x))[:, 0])

        x = torch.randn(2, 6, 3)
        g = LayerGradECLIP(f, attn)
        got = g.attribute(x, target=3)  # (B, L)
        # by hand: w = dS/do at token 0, lambda = minmax cos(q_0, k_i) over tokens 1..5
        t = emb(x)
        q, k, v = attn.qkv(t).chunk(3, -1)
        w = head.weight[3] @ attn.proj.weight  # (D,): S is linear in o_0
        cos = F.cosine_similarity(q[:, :1], k, dim=-1)[:, 1:]
        lam = (cos - cos.amin(1, keepdim=True)) / (cos.amax(1, keepdim=True) - cos.amin(1, keepdim=True))
        want = torch.cat([torch.zeros(2, 1), ((v[:, 1:] @ w) * lam).clamp_min(0)], 1)
        torch.testing.assert_close(got, want.detach())
        assert not attn._forward_pre_hooks and not attn.proj._forward_pre_hooks
    finally:
        from captum_gradeclip.adapters import _REGISTRY

        _REGISTRY.remove(_ToyAdapter)
    assert _ToyAdapter not in registered_adapters()


def test_capture_enter_counts_and_keeps_shared_inputs_shared():
    cap = Capture(num_heads=1)
    x = torch.randn(2, 3)
    with torch.no_grad():
        a, b, c = cap.enter(x, x, x)
        assert torch.is_grad_enabled()  # switched on for the explained layer and after
    assert cap.calls == 1 and a is b is c and a.requires_grad and torch.equal(a, x)
    ids = torch.tensor([1, 2])
    assert cap.enter(ids)[0] is ids and cap.calls == 2  # integer inputs pass as they are


def test_one_mask_convention():
    allowed = torch.tensor([[True, True, False]])
    add = additive_mask(allowed, dtype=torch.float32, true_blocks=False)
    assert add.tolist() == [[0.0, 0.0, float("-inf")]]
    assert torch.equal(additive_mask(~allowed, dtype=torch.float32, true_blocks=True), add)
    assert additive_mask(add, dtype=torch.float16, true_blocks=True) is add  # already additive
    c = causal_mask(None, 3, dtype=torch.float32, device=torch.device("cpu"))
    assert c.shape == (1, 1, 3, 3) and torch.isinf(c[0, 0]).int().tolist() == [[0, 1, 1], [0, 0, 1], [0, 0, 0]]
    rows = allowed_keys(c, torch.tensor([0, 2]), 3)
    assert rows.tolist() == [[True, False, False], [True, True, True]]
    hf_style = torch.full((1, 1, 3, 3), torch.finfo(torch.float32).min).triu(1)
    assert allowed_keys(hf_style, torch.tensor([1]), 3).tolist() == [[True, True, False]]


def test_attention_probs_matches_sdpa_and_zeroes_empty_rows():
    torch.manual_seed(0)
    q, k = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    mask = causal_mask(None, 5, dtype=torch.float32, device=torch.device("cpu"))
    p = attention_probs(query=q, key=k, mask=mask, num_heads=4)
    qh, kh = (t.view(2, 5, 4, 4).transpose(1, 2) for t in (q, k))
    want = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(4) + mask, -1)
    torch.testing.assert_close(p, want)
    blocked = torch.full((1, 1, 5, 5), float("-inf"))
    assert torch.equal(attention_probs(query=q, key=k, mask=blocked, num_heads=4), torch.zeros(2, 4, 5, 5))


class _NormedInProj(nn.Module):
    """open_clip-style `Attention`: fused in_proj_weight, per-head ln_q / ln_k, head_scale, out_proj."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.randn(3 * d, d) / d ** 0.5)
        self.in_proj_bias = nn.Parameter(0.1 * torch.randn(3 * d))
        self.out_proj, self.num_heads = nn.Linear(d, d), heads
        self.ln_q, self.ln_k = nn.LayerNorm(d // heads), nn.LayerNorm(d // heads)
        self.head_scale = nn.Parameter(0.5 + torch.rand(heads, 1, 1))

    def raw(self, x):
        return F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, -1)

    def forward(self, x, attn_mask=None):
        b, n, d = x.shape
        split = lambda t: t.view(b, n, self.num_heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = self.raw(x)
        o = F.scaled_dot_product_attention(self.ln_q(split(q)), self.ln_k(split(k)), split(v)) * self.head_scale
        return self.out_proj(o.transpose(1, 2).reshape(b, n, d))


class _NormedQKV(nn.Module):
    """timm-style `Attention`: a `qkv` linear, per-head q_norm / k_norm, `proj`."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.qkv, self.proj, self.num_heads = nn.Linear(d, 3 * d), nn.Linear(d, d), heads
        self.q_norm, self.k_norm = nn.LayerNorm(d // heads), nn.LayerNorm(d // heads)

    def raw(self, x):
        return self.qkv(x).chunk(3, -1)

    def forward(self, x, attn_mask=None):
        b, n, d = x.shape
        split = lambda t: t.view(b, n, self.num_heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = self.raw(x)
        o = F.scaled_dot_product_attention(self.q_norm(split(q)), self.k_norm(split(k)), split(v))
        return self.proj(o.transpose(1, 2).reshape(b, n, d))


def _single_head_by_hand(attn, out, t):
    """The authors' recomputation from the raw projections: one head over the full width."""
    q, k, v = attn.raw(t) if hasattr(attn, "raw") else attn.qkv(t).chunk(3, -1)
    o = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v
    return out(o), q, k, v


@pytest.mark.parametrize("make,out", [(_NormedInProj, "out_proj"), (_NormedQKV, "proj"), (_ToyAttention, "proj")])
def test_single_head_is_the_cores_one_hook(make, out):
    """single_head=True is the core's pre-hook on the adapter's out_proj: the model runs on the
    one-head recomputation from the raw projections (per-head norms and scales left out, as the
    authors do), for shipped adapters and for the toy third-party one, which has no single-head
    code at all. The map is checked by hand: w = dS/do_0, lambda = minmax cos(q_0, k_i)."""
    torch.manual_seed(1)
    register_adapter(_ToyAdapter)
    try:
        emb, attn, head = nn.Linear(3, 32), make(), nn.Linear(32, 5)
        seen = []

        def f(x):
            s = head(attn(emb(x))[:, 0])
            seen.append(s.detach())
            return s

        x = torch.randn(2, 6, 3)
        own = f(x)
        got = LayerGradECLIP(f, attn, single_head=True).attribute(x, target=3)
        t = emb(x)
        y, q, k, v = _single_head_by_hand(attn, getattr(attn, out), t)
        torch.testing.assert_close(seen[-1], head(y[:, 0]).detach())  # the modified model's score
        assert not torch.allclose(seen[-1], own.detach(), atol=1e-3)  # ... which is not the model's own
        w = head.weight[3] @ getattr(attn, out).weight
        cos = F.cosine_similarity(q[:, :1], k, dim=-1)[:, 1:]
        lam = (cos - cos.amin(1, keepdim=True)) / (cos.amax(1, keepdim=True) - cos.amin(1, keepdim=True))
        want = torch.cat([torch.zeros(2, 1), ((v[:, 1:] @ w) * lam).clamp_min(0)], 1)
        torch.testing.assert_close(got, want.detach())
        assert hook_count(attn) == 0
        torch.testing.assert_close(f(x), own)  # the model is back to its own forward
    finally:
        from captum_gradeclip.adapters import _REGISTRY

        _REGISTRY.remove(_ToyAdapter)


def test_two_threads_on_one_explainer_get_their_own_maps(sim, pixels):
    """The explained-forward lock: threads sharing one explainer (and its model's modules) never mix
    their captures; benchmarks/forward_lock.py measures what it costs (and puts the lock back)."""
    import importlib.util
    import pathlib
    import threading

    from captum_gradeclip._core import base

    model, s = sim
    g = ImageGradECLIP(s, model.vision_model.encoder.layers[-1])
    want = [g.attribute(pixels * (1 + i), target=i % 2) for i in range(4)]
    got = [None] * 4

    def work(i):
        got[i] = g.attribute(pixels * (1 + i), target=i % 2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert hook_count(model) == 0
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "forward_lock.py"
    spec = importlib.util.spec_from_file_location("forward_lock", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lock, threads_before = base._HOOKED_FORWARD, torch.get_num_threads()
    try:
        rows = bench.cells(quick=True, calls=2, texts=2)
    finally:
        torch.set_num_threads(threads_before)
    assert [r["cell"] for r in rows][0] == "1 thread" and all(r["seconds"] > 0 for r in rows)
    assert base._HOOKED_FORWARD is lock
