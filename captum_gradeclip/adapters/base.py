"""What an attention adapter captures, and the adapter interface."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

#: Called by an adapter's pre-hook on the first tensor entering an explained layer: switches
#: autograd on (the blocks before ran without a graph) and returns a tensor that is part of the
#: graph, with the same values.
StartGraph = Callable[[Tensor], Tensor]


@dataclass
class Capture:
    """Tensors of one attention call, batch-first, still attached to the autograd graph.

    Attributes:
        query, key, value: ``(B, L, D)`` the input projections ``q, k, v``.
        grad_source: the tensor the score is differentiated against: the attention output
            before ``out_proj`` ``o`` ``(B, L, D)``, or (where ``o`` is never a tensor of the
            model) the layer output, with ``to_o_grad`` mapping its gradient to ``dS/do``.
        to_o_grad: ``(*, B, L, D_out) -> (*, B, L, D)``; identity when ``None``.
        mask: the attention mask the model used (``None``, bool or additive), ``(B, 1, L, L)``
            broadcastable.
        is_causal: whether a causal mask applied on top of ``mask``.
        num_heads: heads of the attention.
        calls: how often the layer ran during the forward (must be exactly 1).
    """

    num_heads: int
    query: Optional[Tensor] = None
    key: Optional[Tensor] = None
    value: Optional[Tensor] = None
    grad_source: Optional[Tensor] = None
    to_o_grad: Optional[Callable[[Tensor], Tensor]] = None
    mask: Optional[Tensor] = None
    is_causal: bool = False
    calls: int = 0
    extra: dict = field(default_factory=dict)


class AttentionAdapter:
    """Reads ``q, k, v`` and ``o`` out of one kind of attention module through hooks.

    Subclass, implement :meth:`matches` and :meth:`attach`, and register the class with
    :func:`captum_gradeclip.adapters.register_adapter`. Adapters are chosen by module
    structure, never by class name.
    """

    #: a short name for error messages
    name: str = "attention"

    @property
    def out_proj(self) -> Optional[nn.Linear]:
        """The output projection ``attn_out = out_proj(o)``, where there is one."""
        return None

    @property
    def seq_first(self) -> bool:
        """Whether the layer's tensors are ``(L, B, D)`` (else ``(B, L, D)``)."""
        return False

    @property
    def graph_free_prefix(self) -> bool:
        """Whether the blocks before this layer may run under ``torch.no_grad()`` without
        changing the model's numbers (False where PyTorch picks another kernel without grad)."""
        return True

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        """Whether this adapter can read ``module``."""
        raise NotImplementedError

    @property
    def num_heads(self) -> int:
        raise NotImplementedError

    def attach(
        self, capture: Capture, *, single_head: bool, start_graph: StartGraph
    ) -> List[RemovableHandle]:
        """Register the hooks that fill ``capture`` during one forward; return their handles.

        With ``single_head=False`` the hooks only read: the layer's output is unchanged.
        With ``single_head=True`` the layer's output is replaced by the authors' one-head
        recomputation (the reproduction mode).
        """
        raise NotImplementedError


def first_arg(args: tuple, kwargs: dict, name: str) -> Any:
    """The argument ``name`` of a call, whether passed by keyword or first positionally."""
    return kwargs[name] if name in kwargs else args[0]


def replace_first_arg(args: tuple, kwargs: dict, name: str, value: Any):
    """``(args, kwargs)`` with argument ``name`` (keyword or first positional) replaced."""
    if name in kwargs:
        return args, {**kwargs, name: value}
    return (value,) + tuple(args[1:]), kwargs


def first_param(module: nn.Module) -> str:
    """The name of the first parameter of ``module.forward`` (``""`` if it cannot be read)."""
    try:
        params = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return ""
    return params[0] if params else ""


def is_linear(m: Any) -> bool:
    return isinstance(m, nn.Linear)


def float_tensor(x: Any) -> bool:
    return torch.is_tensor(x) and x.is_floating_point()
