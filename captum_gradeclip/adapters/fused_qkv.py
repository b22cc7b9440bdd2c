"""Adapter for self-attention modules with a fused ``in_proj_weight`` that take ONE input and call
``out_proj`` as a module: open_clip's own ``Attention`` (its ``CustomResidualAttentionBlock``,
chosen when a config sets ``qk_norm`` or ``scale_heads``; shipped configs use
``nn.MultiheadAttention``).

``q, k, v`` are recomputed from ``in_proj_weight`` on the captured input; the per-head query/key
norms (``ln_q``, ``ln_k``) are applied as the module applies them, and a per-head output scale
(``head_scale``) is folded into ``v`` (``o = head_scale * softmax(q k^T) v`` exactly). ``o`` itself
is read at ``out_proj``'s input, so the model's forward is untouched. Scaled cosine attention and
an inner LayerNorm before ``out_proj`` make ``o`` something other than a weighted sum of values
with softmax-of-dot-product weights; those are refused with a clear error. In the reproduction
mode (``single_head=True``, the core's) the layer is recomputed from the raw projections, recorded
as ``raw_qkv``, with one head over the full width, as the authors do: per-head norms and scales
belong to the model's heads and are left out there.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._core.functional import additive_mask
from .base import (
    AttentionAdapter,
    Capture,
    first_arg,
    first_param,
    is_identity,
    is_linear,
    refuse_non_softmax,
    replace_first_arg,
)


class FusedQKVSelfAttentionAdapter(AttentionAdapter):
    """Batch-first ``(B, L, D)`` self-attention called as ``attn(x, attn_mask=None)`` with
    ``in_proj_weight (3D, D)`` and an ``out_proj`` module (see the module docstring).

    Raises:
        NotImplementedError: on construction, for scaled cosine attention or an inner LayerNorm.
    """

    name = "fused in_proj_weight + out_proj self-attention with one input (open_clip Attention)"

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return (
            getattr(module, "in_proj_weight", None) is not None
            and is_linear(getattr(module, "out_proj", None))
            and hasattr(module, "num_heads")
            and first_param(module) not in ("", "query")
        )

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        unsupported = []
        if getattr(module, "logit_scale", None) is not None or getattr(module, "scaled_cosine", False):
            unsupported.append("scaled cosine attention (scaled_cosine=True)")
        if not is_identity(getattr(module, "ln_inner", None)):
            unsupported.append("a LayerNorm between the attention and out_proj (inner_norm=True)")
        refuse_non_softmax(module, unsupported, "out_proj")

    @property
    def num_heads(self) -> int:
        return int(self.module.num_heads)

    @property
    def out_proj(self) -> nn.Linear:
        return self.module.out_proj

    def _per_head(self, x: Tensor, norm) -> Tensor:
        if is_identity(norm):
            return x
        b, n, d = x.shape
        return norm(x.view(b, n, self.num_heads, d // self.num_heads)).reshape(b, n, d)

    @staticmethod
    def _mask(args: tuple, kwargs: dict, x: Tensor, dtype: torch.dtype) -> Optional[Tensor]:
        """The call's ``attn_mask`` ((L, L) or (B * H, L, L), bool True = blocked, or additive)
        as one additive ``(B or 1, 1, L, L)`` mask."""
        mask = additive_mask(kwargs.get("attn_mask", args[1] if len(args) > 1 else None), dtype=dtype,
                             true_blocks=True)
        if mask is None:
            return None
        b, n = x.shape[:2]
        mask = mask.to(dtype)
        return mask.view(1, 1, n, n) if mask.dim() == 2 else mask.reshape(b, -1, n, n)[:, :1]

    def attach(self, capture: Capture) -> List[RemovableHandle]:
        m = self.module
        name = first_param(m)

        def pre(mod, args, kwargs):
            x, = capture.enter(first_arg(args, kwargs, name))
            if x.dim() != 3:
                raise ValueError(f"{type(mod).__name__} got input of shape {tuple(x.shape)}; the adapter "
                                 "expects batch-first (B, L, D)")
            capture.layer_input = x
            capture.query, capture.key, capture.value = self._qkv(mod, x, capture)
            capture.mask = self._mask(args, kwargs, x, capture.query.dtype)
            return replace_first_arg(args, kwargs, name, x)

        def before_out_proj(mod, args):
            capture.o = args[0]

        def after(mod, args, kwargs, output):
            capture.attn_out = output

        return [m.register_forward_pre_hook(pre, with_kwargs=True),
                m.out_proj.register_forward_pre_hook(before_out_proj),
                m.register_forward_hook(after, with_kwargs=True)]

    def _qkv(self, mod: nn.Module, x: Tensor, capture: Capture) -> Tuple[Tensor, Tensor, Tensor]:
        """``q, k, v`` ``(B, L, D)`` as the module computes them; where per-head norms or scales
        apply, the raw projections go to ``capture.raw_qkv`` (the authors' recomputation knows one
        head over the full width and the raw projections only)."""
        q, k, v = F.linear(x, mod.in_proj_weight, mod.in_proj_bias).chunk(3, dim=-1)
        hs = getattr(mod, "head_scale", None)
        if not (is_identity(getattr(mod, "ln_q", None)) and is_identity(getattr(mod, "ln_k", None))) or hs is not None:
            capture.raw_qkv = (q, k, v)
        q = self._per_head(q, getattr(mod, "ln_q", None))
        k = self._per_head(k, getattr(mod, "ln_k", None))
        if hs is not None:  # (H, 1, 1): scales each head's attention output, so its values
            b, n, d = v.shape
            v = (v.view(b, n, self.num_heads, -1) * hs.view(1, 1, self.num_heads, 1).to(v.dtype)).reshape(b, n, d)
        return q, k, v
