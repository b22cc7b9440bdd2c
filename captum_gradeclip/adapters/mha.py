"""Adapters for ``torch.nn.MultiheadAttention`` (OpenAI CLIP, open_clip) and for the ResNet
towers' attention pooling (``AttentionPool2d`` in both packages).

In both, ``q, k, v`` are not modules and the attention output ``o`` never passes through a
module, so the hooks read the layer's input, recompute ``q, k, v`` from the projection weights,
and differentiate the score against the layer's *output*: as ``out = W_out o + b``,
``dS/do = W_out^T dS/dout`` exactly, and the model's forward is left untouched.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._core.functional import single_head_attention
from .base import AttentionAdapter, Capture, StartGraph, first_param, is_linear


def _mha_weights(m: nn.Module) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    if getattr(m, "in_proj_weight", None) is not None:
        wq, wk, wv = m.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    b = getattr(m, "in_proj_bias", None)
    bq, bk, bv = b.chunk(3) if b is not None else (None, None, None)
    return wq, wk, wv, bq, bk, bv


def _mha_mask(attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor], batch: int, heads: int,
              length: int, src: int, dtype) -> Optional[Tensor]:
    """MHA's masks (bool: True = *blocked*; or additive) -> one additive ``(B, 1, L, S)`` mask."""
    out = None
    if attn_mask is not None:
        m = attn_mask
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        m = m.to(dtype)
        m = m.view(1, 1, length, src) if m.dim() == 2 else m.view(batch, heads, length, src)[:, :1]
        out = m
    if key_padding_mask is not None:
        k = key_padding_mask
        if k.dtype == torch.bool:
            k = torch.zeros(k.shape, dtype=dtype, device=k.device).masked_fill(k, float("-inf"))
        k = k.to(dtype).view(batch, 1, 1, src)
        out = k if out is None else out + k
    return out


class MultiheadAttentionAdapter(AttentionAdapter):
    """``torch.nn.MultiheadAttention`` used as self-attention, batch-first or sequence-first."""

    name = "torch.nn.MultiheadAttention (in_proj_weight + out_proj)"

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        has_in = getattr(module, "in_proj_weight", None) is not None or getattr(module, "q_proj_weight", None) is not None
        # MultiheadAttention's call is (query, key, value, ...): one-input fused attentions
        # (open_clip's Attention) have their own adapter
        return (has_in and is_linear(getattr(module, "out_proj", None)) and hasattr(module, "num_heads")
                and first_param(module) == "query")

    @property
    def num_heads(self) -> int:
        return int(self.module.num_heads)

    @property
    def out_proj(self) -> nn.Linear:
        return self.module.out_proj

    @property
    def seq_first(self) -> bool:
        return not bool(getattr(self.module, "batch_first", False))

    def attach(self, capture: Capture, *, single_head: bool, start_graph: StartGraph) -> List[RemovableHandle]:
        m = self.module
        batch_first = bool(getattr(m, "batch_first", False))

        def to_bf(x: Tensor) -> Tensor:
            return x if batch_first else x.transpose(0, 1)

        def pre(mod, args, kwargs):
            capture.calls += 1
            names = ("query", "key", "value")
            vals = [kwargs[n] if n in kwargs else args[i] for i, n in enumerate(names)]
            same = vals[0] is vals[1] and vals[1] is vals[2]
            if same:
                new = [start_graph(vals[0])] * 3
            else:
                new = [start_graph(v) for v in vals]
            capture.extra["input"], capture.extra["seq_first"] = new[0], not batch_first
            q_in, k_in, v_in = (to_bf(t) for t in new)
            wq, wk, wv, bq, bk, bv = _mha_weights(mod)
            capture.query = F.linear(q_in, wq, bq)
            capture.key = F.linear(k_in, wk, bk)
            capture.value = F.linear(v_in, wv, bv)
            b, n, s = q_in.shape[0], q_in.shape[1], k_in.shape[1]
            capture.mask = _mha_mask(kwargs.get("attn_mask"), kwargs.get("key_padding_mask"), b,
                                     mod.num_heads, n, s, capture.query.dtype)
            capture.is_causal = False
            pos = len(args)
            args = tuple(new[:pos])
            kwargs = {**kwargs, **{n: new[i] for i, n in enumerate(names) if i >= pos}}
            return args, kwargs

        def post(mod, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output
            if single_head:
                o = single_head_attention(query=capture.query, key=capture.key, value=capture.value,
                                          mask=capture.mask, is_causal=False)
                capture.grad_source, capture.to_o_grad = o, None
                new = F.linear(o, mod.out_proj.weight, mod.out_proj.bias)
                new = new if batch_first else new.transpose(0, 1)
                capture.extra["attn_out"] = new
                return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new
            capture.grad_source = out
            capture.extra["attn_out"] = out
            w_out = mod.out_proj.weight

            def to_o_grad(g: Tensor) -> Tensor:
                g = g if batch_first else g.transpose(-3, -2)
                return g @ w_out.to(g.dtype)

            capture.to_o_grad = to_o_grad
            return None

        return [m.register_forward_pre_hook(pre, with_kwargs=True),
                m.register_forward_hook(post, with_kwargs=True)]


def _pad_rows(pooled: Tensor, length: int) -> Tensor:
    """``(*, N, C)`` gradient of the pooled row -> ``(*, N, L, C)``, zero on the other rows."""
    out = pooled.new_zeros(*pooled.shape[:-1], length, pooled.shape[-1])
    out[..., 0, :] = pooled
    return out


class AttentionPool2dAdapter(AttentionAdapter):
    """CLIP ResNet attention pooling: the mean token queries the spatial positions of the last
    feature map ``(N, C, H, W)``; the map has that ``H x W`` grid (token 0 is the query)."""

    name = "AttentionPool2d (positional_embedding + q_proj/k_proj/v_proj/c_proj)"

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return (
            all(is_linear(getattr(module, n, None)) for n in ("q_proj", "k_proj", "v_proj", "c_proj"))
            and isinstance(getattr(module, "positional_embedding", None), torch.Tensor)
            and not hasattr(module, "out_proj")
        )

    @property
    def num_heads(self) -> int:
        return int(self.module.num_heads)

    def attach(self, capture: Capture, *, single_head: bool, start_graph: StartGraph) -> List[RemovableHandle]:
        m = self.module

        def pre(mod, args):
            capture.calls += 1
            x = start_graph(args[0])
            n, c, h, w = x.shape
            t = x.flatten(2).transpose(1, 2)  # (N, HW, C)
            t = torch.cat([t.mean(dim=1, keepdim=True), t], dim=1)
            t = t + mod.positional_embedding[None].to(t.dtype)
            capture.query = F.linear(t, mod.q_proj.weight, mod.q_proj.bias)
            capture.key = F.linear(t, mod.k_proj.weight, mod.k_proj.bias)
            capture.value = F.linear(t, mod.v_proj.weight, mod.v_proj.bias)
            capture.mask, capture.is_causal = None, False
            capture.extra["grid"] = (h, w)
            return (x,) + tuple(args[1:])

        def post(mod, args, output):
            length = capture.value.shape[1]
            if single_head:
                o = single_head_attention(query=capture.query[:, :1], key=capture.key, value=capture.value,
                                          mask=None, is_causal=False)
                capture.grad_source = o  # (N, 1, C): the pooled row
                capture.to_o_grad = lambda g: _pad_rows(g[..., 0, :], length)
                return F.linear(o[:, 0], mod.c_proj.weight, mod.c_proj.bias)
            capture.grad_source = output
            w_c = mod.c_proj.weight

            def to_o_grad(g: Tensor) -> Tensor:
                return _pad_rows(g @ w_c.to(g.dtype), length)  # (*, N, C) -> (*, N, L, C)

            capture.to_o_grad = to_o_grad
            return None

        return [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
