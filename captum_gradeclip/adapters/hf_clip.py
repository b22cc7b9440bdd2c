"""Adapter for attention modules with ``q_proj, k_proj, v_proj, out_proj`` linear children.

That is Hugging Face's ``CLIPAttention`` (and SigLIP's, ViT-style ones alike) under every
attention backend (eager, sdpa, flash): the backends differ only between the projections and
``out_proj``, and attention probabilities are never needed.
"""

from __future__ import annotations

from typing import List, Optional

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._core.functional import additive_mask, causal_mask
from .base import AttentionAdapter, Capture, is_linear, projection_hooks, token_input_hook


def _model_mask(kwargs: dict, mod: nn.Module, x: Tensor) -> Optional[Tensor]:
    """The call's attention mask in the one convention (additive, causal folded in):
    transformers 4.x passes the causal part as ``causal_attention_mask``; 5.x folds it into
    ``attention_mask`` (additive, or bool under sdpa) or sets ``is_causal``."""
    mask = additive_mask(kwargs.get("attention_mask"), dtype=x.dtype, true_blocks=False)
    causal = kwargs.get("causal_attention_mask")
    if causal is not None:
        mask = causal if mask is None else mask + causal
    if bool(kwargs.get("is_causal", getattr(mod, "is_causal", False))):
        mask = causal_mask(mask, x.shape[1], dtype=x.dtype, device=x.device)
    return mask


class QKVOutProjAdapter(AttentionAdapter):
    """Attention with ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` linear modules (Hugging Face
    CLIP, SigLIP and others, under every attention backend): hooks on the four modules read
    ``q, k, v (B, L, D)`` and the heads' concatenation ``o (B, L, D)`` before ``out_proj``."""
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

    def attach(self, capture: Capture) -> List[RemovableHandle]:
        m = self.module

        def after(mod, args, output):
            capture.attn_out = output[0] if isinstance(output, tuple) else output

        pre = token_input_hook(capture, "hidden_states", lambda mod, args, kwargs, x: _model_mask(kwargs, mod, x))
        return [m.register_forward_pre_hook(pre, with_kwargs=True),
                *projection_hooks(capture, query=m.q_proj, key=m.k_proj, value=m.v_proj, out=m.out_proj),
                m.register_forward_hook(after)]
