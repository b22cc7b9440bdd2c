"""Adapter for self-attentions with ONE fused ``qkv`` linear (output ``[q | k | v]``, ``3 * D``
wide) and an output linear: BLIP's vision attention (``qkv`` + ``projection``) and timm's Vision
Transformer ``Attention`` (``qkv`` + ``proj``, optional per-head ``q_norm`` / ``k_norm``, fused
SDPA or not).

``q, k, v`` are the ``qkv`` linear's output split in three (both packages split it so), with the
per-head ``q_norm`` / ``k_norm`` applied as the module applies them; ``o`` is read at the output
linear's input. The forward is untouched. timm's ``scale_norm`` (a norm between the heads and
``proj``) and ``gated`` attention (a sigmoid gate there) make that input something other than a
softmax-weighted sum of values; they are refused with a clear error. The core never imports
timm: everything here is read from the module's children.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._core.functional import additive_mask, causal_mask
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

_OUT = ("projection", "proj")


def _out_linear(module: nn.Module) -> Optional[nn.Linear]:
    for name in _OUT:
        if is_linear(getattr(module, name, None)):
            return getattr(module, name)
    return None


class FusedQKVLinearAdapter(AttentionAdapter):
    """Batch-first ``(B, L, D)`` self-attention with a ``qkv`` linear and a ``projection`` /
    ``proj`` linear (BLIP vision, timm ViT); see the module docstring.

    Raises:
        NotImplementedError: on construction, for timm's ``scale_norm`` or ``gated`` attention.
    """

    name = "fused qkv linear + projection/proj self-attention (BLIP vision, timm ViT)"

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        qkv = getattr(module, "qkv", None)
        out = _out_linear(module)
        return (is_linear(qkv) and out is not None and qkv.out_features == 3 * out.in_features
                and isinstance(getattr(module, "num_heads", None), int))

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        unsupported = []
        if not is_identity(getattr(module, "norm", None)):
            unsupported.append("a norm between the heads and proj (scale_norm=True)")
        if getattr(module, "gate", None) is not None:
            unsupported.append("a sigmoid gate on the heads (gated=True)")
        refuse_non_softmax(module, unsupported, "the projection")

    @property
    def num_heads(self) -> int:
        return int(self.module.num_heads)

    @property
    def out_proj(self) -> nn.Linear:
        return _out_linear(self.module)

    @property
    def _has_norms(self) -> bool:
        m = self.module
        return not (is_identity(getattr(m, "q_norm", None)) and is_identity(getattr(m, "k_norm", None)))

    def _per_head(self, x: Tensor, norm: Optional[nn.Module]) -> Tensor:
        if is_identity(norm):
            return x
        b, n, d = x.shape
        return norm(x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)).transpose(1, 2).reshape(b, n, d)

    def _qkv(self, out: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        q, k, v = out.chunk(3, dim=-1)
        m = self.module
        return self._per_head(q, getattr(m, "q_norm", None)), self._per_head(k, getattr(m, "k_norm", None)), v

    @staticmethod
    def _mask(args: tuple, kwargs: dict, x: Tensor) -> Optional[Tensor]:
        """timm's ``attn_mask`` (SDPA's convention: bool True = attend, or additive), broadcast to
        ``(B or 1, 1, L, L)``, with ``is_causal`` folded in."""
        mask = additive_mask(kwargs.get("attn_mask", args[1] if len(args) > 1 else None), dtype=x.dtype,
                             true_blocks=False)
        if mask is not None:
            mask = mask.to(x.dtype)
            while mask.dim() < 4:
                mask = mask[None]
            mask = mask[:, :1]
        if bool(kwargs.get("is_causal", args[2] if len(args) > 2 else False)):
            mask = causal_mask(mask, x.shape[1], dtype=x.dtype, device=x.device)
        return mask

    def attach(self, capture: Capture) -> List[RemovableHandle]:
        m = self.module
        name = first_param(m) or "hidden_states"

        def pre(mod, args, kwargs):
            x, = capture.enter(first_arg(args, kwargs, name))
            if x.dim() != 3:
                raise ValueError(f"{type(mod).__name__} got input of shape {tuple(x.shape)}; the adapter "
                                 "expects batch-first (B, L, D)")
            capture.layer_input = x
            capture.mask = self._mask(args, kwargs, x)
            return replace_first_arg(args, kwargs, name, x)

        def after_qkv(mod, args, out):
            capture.query, capture.key, capture.value = self._qkv(out)
            if self._has_norms:  # the reproduction mode recomputes from the raw projections
                capture.raw_qkv = out.chunk(3, dim=-1)

        def before_out(mod, args):
            capture.o = args[0]

        def after(mod, args, kwargs, output):
            capture.attn_out = output[0] if isinstance(output, tuple) else output

        out = _out_linear(m)
        return [m.register_forward_pre_hook(pre, with_kwargs=True),
                m.qkv.register_forward_hook(after_qkv),
                out.register_forward_pre_hook(before_out),
                m.register_forward_hook(after, with_kwargs=True)]

