"""Adapter for attentions with three separate ``q, k, v`` linears and an output linear, under any
of the Hugging Face names for them:

- transformers 5.x ViT / DeiT (and their relatives): ``q_proj, k_proj, v_proj, o_proj`` on the
  attention module itself;
- transformers 4.x ViT / DeiT: ``attention.query / key / value`` and ``output.dense`` (the
  attention module holds a self-attention and a self-output child);
- BERT-style encoders such as BLIP's text encoder: ``self.query / key / value`` and
  ``output.dense``.

Matched by structure (which linears exist), never by class name. ``o`` is read at the output
linear's input (the concatenated heads, before the projection), so the forward is untouched under
every attention backend; whatever follows the projection (dropout, a residual LayerNorm in the
BERT layout) is the model's own. The mask is the call's ``attention_mask`` argument, found by name
in the module's signature (4.x ViT's second positional argument is a ``head_mask``, not a mask).
"""

from __future__ import annotations

import inspect
from typing import List, Optional, Tuple

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._core.functional import additive_mask, causal_mask
from .base import AttentionAdapter, Capture, is_linear, projection_hooks, token_input_hook

#: (q, k, v, out) paths inside the attention module, one tuple per naming
_NAMINGS: Tuple[Tuple[str, str, str, str], ...] = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),
    ("attention.query", "attention.key", "attention.value", "output.dense"),
    ("self.query", "self.key", "self.value", "output.dense"),
)


def _get(module: nn.Module, path: str) -> Optional[nn.Module]:
    for name in path.split("."):
        module = getattr(module, name, None)
        if not isinstance(module, nn.Module):
            return None
    return module


def _naming(module: nn.Module) -> Optional[Tuple[str, str, str, str]]:
    for names in _NAMINGS:
        if all(is_linear(_get(module, p)) for p in names):
            return names
    return None


def call_argument(module: nn.Module, args: tuple, kwargs: dict, name: str) -> Optional[Tensor]:
    """The argument ``name`` of a call of ``module``, by keyword or by its position in the
    signature of ``module.forward`` (``None`` when not passed)."""
    if name in kwargs:
        return kwargs[name]
    try:
        params = [p for p in inspect.signature(module.forward).parameters]
    except (TypeError, ValueError):
        return None
    i = params.index(name) if name in params else -1
    return args[i] if 0 <= i < len(args) else None


class SeparateQKVAdapter(AttentionAdapter):
    """Hugging Face ViT / DeiT attention (5.x ``q_proj/k_proj/v_proj/o_proj``, 4.x
    ``attention.query/key/value`` + ``output.dense``) and BERT-style ``self.query/key/value`` +
    ``output.dense`` (BLIP's text encoder); see the module docstring.

    Raises:
        ValueError: (during the forward) the layer is called as cross-attention
            (``encoder_hidden_states``): explain a self-attention layer instead.
    """

    name = "q_proj/k_proj/v_proj/o_proj or query/key/value + output.dense attention (HF ViT, DeiT, BERT-style)"

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return _naming(module) is not None

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        names = _naming(module)
        self._q, self._k, self._v, self._out = (_get(module, p) for p in names)
        prefix = names[0].rpartition(".")[0]
        self._self_attn = _get(module, prefix) if prefix else module

    @property
    def out_proj(self) -> nn.Linear:
        return self._out

    @property
    def num_heads(self) -> int:
        for m in (self._self_attn, self.module):
            for attr in ("num_attention_heads", "num_heads"):
                if isinstance(getattr(m, attr, None), int):
                    return int(getattr(m, attr))
            for attr in ("head_dim", "attention_head_size"):
                if isinstance(getattr(m, attr, None), int):
                    return self._q.out_features // int(getattr(m, attr))
        cfg = getattr(self.module, "config", None)
        if cfg is not None and getattr(cfg, "num_attention_heads", None):
            return int(cfg.num_attention_heads)
        raise ValueError(f"cannot tell the number of heads of {type(self.module).__name__}: it has no "
                         "`num_attention_heads`, `num_heads`, `head_dim` or `attention_head_size` attribute")

    def _mask(self, mod: nn.Module, args: tuple, kwargs: dict, x: Tensor) -> Optional[Tensor]:
        if call_argument(mod, args, kwargs, "encoder_hidden_states") is not None:
            raise ValueError(f"{type(mod).__name__} is called as cross-attention (encoder_hidden_states): "
                             "Grad-ECLIP explains a self-attention layer; pass the layer's self-attention "
                             "(e.g. `layer.attention`, not `layer.crossattention`)")
        mask = additive_mask(call_argument(mod, args, kwargs, "attention_mask"), dtype=x.dtype, true_blocks=False)
        if bool(kwargs.get("is_causal", getattr(self._self_attn, "is_causal", False))):
            mask = causal_mask(mask, x.shape[1], dtype=x.dtype, device=x.device)
        return mask

    def attach(self, capture: Capture) -> List[RemovableHandle]:
        def after_out(mod, args, output):
            capture.attn_out = output

        pre = token_input_hook(capture, "hidden_states", self._mask)
        return [self.module.register_forward_pre_hook(pre, with_kwargs=True),
                *projection_hooks(capture, query=self._q, key=self._k, value=self._v, out=self._out),
                self._out.register_forward_hook(after_out)]
