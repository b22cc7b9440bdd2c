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

from .._core.functional import additive_mask, single_head_attention
from .base import AttentionAdapter, Capture, first_param, is_linear


def _mha_weights(m: nn.Module) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    if getattr(m, "in_proj_weight", None) is not None:
        wq, wk, wv = m.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    b = getattr(m, "in_proj_bias", None)
    bq, bk, bv = b.chunk(3) if b is not None else (None, None, None)
    return wq, wk, wv, bq, bk, bv


def _mha_mask(attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor], batch: int, heads: int,
              length: int, src: int, dtype: torch.dtype) -> Optional[Tensor]:
    """MHA's masks (bool: True = *blocked*; or additive) -> one additive ``(B or 1, 1, L, S)`` mask."""
    out = additive_mask(attn_mask, dtype=dtype, true_blocks=True)
    if out is not None:
        out = out.to(dtype)
        out = out.view(1, 1, length, src) if out.dim() == 2 else out.view(batch, heads, length, src)[:, :1]
    pad = additive_mask(key_padding_mask, dtype=dtype, true_blocks=True)
    if pad is not None:
        pad = pad.to(dtype).view(batch, 1, 1, src)
        out = pad if out is None else out + pad
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

    def attach(self, capture: Capture) -> List[RemovableHandle]:
        m = self.module
        names = ("query", "key", "value")

        def pre(mod, args, kwargs):
            new = capture.enter(*(kwargs[n] if n in kwargs else args[i] for i, n in enumerate(names)))
            capture.layer_input = new[0]
            q_in, k_in, v_in = (capture.batch_first(t) for t in new)
            wq, wk, wv, bq, bk, bv = _mha_weights(mod)
            capture.query = F.linear(q_in, wq, bq)
            capture.key = F.linear(k_in, wk, bk)
            capture.value = F.linear(v_in, wv, bv)
            b, n, s = q_in.shape[0], q_in.shape[1], k_in.shape[1]
            capture.mask = _mha_mask(kwargs.get("attn_mask"), kwargs.get("key_padding_mask"), b,
                                     mod.num_heads, n, s, capture.query.dtype)
            pos = len(args)
            return tuple(new[:pos]), {**kwargs, **{n: new[i] for i, n in enumerate(names) if i >= pos}}

        def post(mod, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output
            capture.o = capture.attn_out = out
            w_out = mod.out_proj.weight
            capture.o_grad = lambda g: capture.batch_first(g) @ w_out.to(g.dtype)
            return None

        return [m.register_forward_pre_hook(pre, with_kwargs=True),
                m.register_forward_hook(post, with_kwargs=True)]

    def single_head_hooks(self, capture: Capture) -> List[RemovableHandle]:
        """The fused path never calls ``out_proj`` as a module: the layer's output is replaced."""
        def replace(mod, args, kwargs, output):
            capture.o = single_head_attention(query=capture.query, key=capture.key, value=capture.value,
                                              mask=capture.mask)
            capture.o_grad = None
            new = F.linear(capture.o, mod.out_proj.weight, mod.out_proj.bias)
            capture.attn_out = new.transpose(0, 1) if capture.seq_first else new
            return (capture.attn_out,) + tuple(output[1:]) if isinstance(output, tuple) else capture.attn_out

        return [self.module.register_forward_hook(replace, with_kwargs=True)]


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

    def attach(self, capture: Capture) -> List[RemovableHandle]:
        m = self.module

        def pre(mod, args):
            x, = capture.enter(args[0])
            n, c, h, w = x.shape
            t = x.flatten(2).transpose(1, 2)  # (N, HW, C)
            t = torch.cat([t.mean(dim=1, keepdim=True), t], dim=1)
            t = t + mod.positional_embedding[None].to(t.dtype)
            capture.query = F.linear(t, mod.q_proj.weight, mod.q_proj.bias)
            capture.key = F.linear(t, mod.k_proj.weight, mod.k_proj.bias)
            capture.value = F.linear(t, mod.v_proj.weight, mod.v_proj.bias)
            capture.grid = (h, w)
            return (x,) + tuple(args[1:])

        def post(mod, args, output):
            length = capture.value.shape[1]
            capture.o = output
            w_c = mod.c_proj.weight
            capture.o_grad = lambda g: _pad_rows(g @ w_c.to(g.dtype), length)  # (*, N, C) -> (*, N, L, C)
            return None

        return [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]

    def single_head_hooks(self, capture: Capture) -> List[RemovableHandle]:
        """The pool's ``c_proj`` is never called as a module: the pooled output is replaced by the
        one-head recomputation of the pooled row."""
        def replace(mod, args, output):
            length = capture.value.shape[1]
            o = single_head_attention(query=capture.query[:, :1], key=capture.key, value=capture.value, mask=None)
            capture.o = o  # (N, 1, C): the pooled row
            capture.o_grad = lambda g: _pad_rows(g[..., 0, :], length)
            return F.linear(o[:, 0], mod.c_proj.weight, mod.c_proj.bias)

        return [self.module.register_forward_hook(replace)]
