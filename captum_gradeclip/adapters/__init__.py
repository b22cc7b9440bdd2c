"""Attention adapters, chosen by module structure through a registry.

To support a new attention implementation, subclass :class:`AttentionAdapter` and register it::

    @register_adapter
    class MyAdapter(AttentionAdapter):
        @classmethod
        def matches(cls, module): ...
        def attach(self, capture): ...   # see adapters.base for the contract
"""

from __future__ import annotations

from typing import List, Type

from torch import nn

from .base import AttentionAdapter, Capture
from .fused_qkv import FusedQKVSelfAttentionAdapter
from .hf_clip import QKVOutProjAdapter
from .hf_vit import SeparateQKVAdapter
from .mha import AttentionPool2dAdapter, MultiheadAttentionAdapter
from .qkv_linear import FusedQKVLinearAdapter

_REGISTRY: List[Type[AttentionAdapter]] = []


def register_adapter(cls: Type[AttentionAdapter]) -> Type[AttentionAdapter]:
    """Register an adapter class (usable as a decorator). Later registrations win."""
    if not (isinstance(cls, type) and issubclass(cls, AttentionAdapter)):
        raise TypeError(f"register_adapter expects an AttentionAdapter subclass, got {cls!r}")
    if cls not in _REGISTRY:
        _REGISTRY.insert(0, cls)
    return cls


def registered_adapters() -> List[Type[AttentionAdapter]]:
    """The registered adapter classes, in matching order."""
    return list(_REGISTRY)


for _cls in (QKVOutProjAdapter, MultiheadAttentionAdapter, FusedQKVSelfAttentionAdapter, AttentionPool2dAdapter,
             SeparateQKVAdapter, FusedQKVLinearAdapter):
    register_adapter(_cls)


def _match(module: nn.Module):
    for cls in _REGISTRY:
        if cls.matches(module):
            return cls(module)
    return None


def find_adapter(layer: nn.Module) -> AttentionAdapter:
    """The adapter for ``layer``: the layer itself if it is a supported attention, else its one
    supported attention submodule (so a transformer block works as well as its ``self_attn``).

    Raises:
        TypeError: ``layer`` is not an ``nn.Module``, or holds no supported attention (the
            message lists the children found and how to register an adapter).
        ValueError: ``layer`` holds several supported attention modules.
    """
    if not isinstance(layer, nn.Module):
        raise TypeError(f"layer must be a torch.nn.Module, got {type(layer).__name__}")
    direct = _match(layer)
    if direct is not None:
        return direct
    found = [(name, a) for name, sub in layer.named_modules() if name for a in [_match(sub)] if a is not None]
    # keep only the outermost matches (an attention's own children never count separately)
    outer = [(n, a) for n, a in found if not any(n.startswith(o + ".") for o, _ in found if o != n)]
    if len(outer) == 1:
        return outer[0][1]
    if not outer:
        children = ", ".join(f"{n}: {type(c).__name__}" for n, c in layer.named_children()) or "none"
        raise TypeError(
            f"no supported attention found in {type(layer).__name__} (children: {children}). "
            "Pass a transformer block or its attention module (e.g. "
            "`model.vision_model.encoder.layers[-1]`), or register an adapter for your attention "
            "with `captum_gradeclip.adapters.register_adapter`. Supported: "
            + "; ".join(c.name for c in _REGISTRY)
        )
    names = ", ".join(n for n, _ in outer)
    raise ValueError(
        f"{type(layer).__name__} holds {len(outer)} attention modules ({names}); pass the one "
        "to explain, or a list of them"
    )


__all__ = [
    "AttentionAdapter",
    "AttentionPool2dAdapter",
    "Capture",
    "FusedQKVLinearAdapter",
    "FusedQKVSelfAttentionAdapter",
    "MultiheadAttentionAdapter",
    "QKVOutProjAdapter",
    "SeparateQKVAdapter",
    "find_adapter",
    "register_adapter",
    "registered_adapters",
]
