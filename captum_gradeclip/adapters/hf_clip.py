"""Adapter for attention modules with ``q_proj, k_proj, v_proj, out_proj`` linear children.

That is Hugging Face's ``CLIPAttention`` (and SigLIP's, ViT-style ones alike) under every
attention backend (eager, sdpa, flash): the backends differ only between the projections and
``out_proj``, and attention probabilities are never needed.
"""

from __future__ import annotations

from typing import List

import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from .._core.functional import single_head_attention
from .base import AttentionAdapter, Capture, StartGraph, first_arg, is_linear, replace_first_arg


def _combined_mask(kwargs: dict):
    """The additive/bool attention mask of a call (transformers 4.x passes the causal part as
    ``causal_attention_mask``; 5.x folds it into ``attention_mask`` or sets ``is_causal``)."""
    mask = kwargs.get("attention_mask")
    causal = kwargs.get("causal_attention_mask")
    if causal is not None:
        mask = causal if mask is None else mask + causal
    return mask


class QKVOutProjAdapter(AttentionAdapter):
    name = "q_proj/k_proj/v_proj/out_proj attention"

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return all(is_linear(getattr(module, n, None)) for n in ("q_proj", "k_proj", "v_proj", "out_proj"))

    @property
    def out_proj(self) -> nn.Linear:
        return self.module.out_proj

    @property
    def num_heads(self) -> int:
        m = self.module
        heads = getattr(m, "num_heads", None)
        if heads is None and getattr(m, "config", None) is not None:
            heads = getattr(m.config, "num_attention_heads", None)
        if heads is None and getattr(m, "head_dim", None):
            heads = m.q_proj.out_features // m.head_dim
        if heads is None:
            raise ValueError(
                f"cannot tell the number of heads of {type(m).__name__}: it has no `num_heads`, "
                "`config.num_attention_heads` or `head_dim` attribute"
            )
        return int(heads)

    def attach(self, capture: Capture, *, single_head: bool, start_graph: StartGraph) -> List[RemovableHandle]:
        m = self.module

        def pre(mod, args, kwargs):
            capture.calls += 1
            capture.mask = _combined_mask(kwargs)
            capture.is_causal = bool(kwargs.get("is_causal", getattr(mod, "is_causal", False)))
            x = start_graph(first_arg(args, kwargs, "hidden_states"))
            capture.extra["input"] = x  # (B, L, D), for token Grad-CAM
            return replace_first_arg(args, kwargs, "hidden_states", x)

        def setter(name):
            def hook(mod, args, out):
                setattr(capture, name, out)
            return hook

        def before_out_proj(mod, args):
            capture.grad_source = args[0]

        def after(mod, args, output):
            capture.extra["attn_out"] = output[0] if isinstance(output, tuple) else output

        handles = [
            m.register_forward_pre_hook(pre, with_kwargs=True),
            m.q_proj.register_forward_hook(setter("query")),
            m.k_proj.register_forward_hook(setter("key")),
            m.v_proj.register_forward_hook(setter("value")),
            m.out_proj.register_forward_pre_hook(before_out_proj),
        ]
        if single_head:
            def replace(mod, args, kwargs, output):
                o = single_head_attention(
                    query=capture.query, key=capture.key, value=capture.value,
                    mask=capture.mask, is_causal=capture.is_causal,
                )
                capture.grad_source = o
                out = F.linear(o, mod.out_proj.weight, mod.out_proj.bias)
                capture.extra["attn_out"] = out
                return (out,) + tuple(output[1:]) if isinstance(output, tuple) else out

            handles.append(m.register_forward_hook(replace, with_kwargs=True))
        else:
            handles.append(m.register_forward_hook(after))
        return handles
