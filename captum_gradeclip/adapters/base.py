"""What an attention adapter records (:class:`Capture`), and the adapter contract.

The contract, in full (the core relies on nothing else):

1. :meth:`AttentionAdapter.matches` decides from the module's *structure* (children, parameters,
   the signature of ``forward``), never from its class name.
2. :meth:`AttentionAdapter.attach` registers hooks on the module (and its children) and returns
   their handles; the core removes them after the one forward it explains, also on error.
3. The hook that runs first when the layer is called passes the layer's input(s) through
   :meth:`Capture.enter` and hands the returned tensors to the layer in their place: that counts
   the call (the core requires exactly one per forward), switches autograd on (the blocks before
   the explained layer ran without a graph) and makes the inputs part of the graph.
4. By the end of the forward the hooks have filled, batch-first: ``query``, ``key``, ``value``
   ``(B, L, D)``; ``o`` (the attention output before ``out_proj``, or a tensor of the graph from
   which ``o_grad`` maps gradients to ``dS/do``); ``mask`` in the one convention of
   :mod:`captum_gradeclip._core.functional` (additive float or ``None``, causal folded in); and,
   where they exist, ``layer_input`` and ``attn_out`` (in the layer's own layout, see
   ``seq_first``) and ``grid``.
5. The hooks only read; the layer's output is unchanged. The authors' reproduction mode
   (``single_head=True``) is the core's (``_core/single_head.py``): a pre-hook on :attr:`out_proj`
   replaces its input by the one-head recomputation from ``query, key, value`` (or ``raw_qkv``)
   and ``mask``. Only a backend that never calls its output projection as a module overrides
   :meth:`AttentionAdapter.single_head_hooks`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


@dataclass
class Capture:
    """Tensors of one call of an explained attention layer, still attached to the autograd graph.

    Attributes:
        num_heads: ``H`` the spatial weights split ``D`` into (1 in the reproduction mode).
        seq_first: whether ``layer_input``, ``attn_out`` and the block tensors are ``(L, B, D)``
            (the layer's own layout; ``query``, ``key``, ``value`` and ``o`` are always batch-first).
        query, key, value: ``(B, L, D)`` the input projections ``q, k, v``, as the heads use them.
        raw_qkv: ``(q, k, v)`` ``(B, L, D)`` straight out of the projection(s), recorded by
            adapters whose ``query, key`` differ from them (per-head norms or scales); ``None``:
            ``query, key, value`` are raw. The reproduction mode uses these.
        o: the tensor the score is differentiated against: the attention output before
            ``out_proj`` ``(B, L, D)``, or (where ``o`` is never a tensor of the model) the layer
            output, with ``o_grad`` mapping its gradient to ``dS/do``.
        o_grad: ``(*, <o's shape>) -> (*, B, L, D)``; identity when ``None``.
        mask: ``None`` or the additive mask ``(B or 1, 1, L, L)`` the model applied.
        layer_input: the token input of the attention ``(B, L, D)`` (or ``(L, B, D)``), where
            there is one (not for ResNet attention pooling).
        attn_out: the attention output after ``out_proj``, in the layer's layout.
        grid: ``(h, w)`` where the tokens are a feature map (ResNet attention pooling).
        block_input, block_output: the enclosing block's input and output (recorded only for the
            pooled-row shortcut of ``block_tail.py``).
        calls: how often the layer ran during the forward (the core requires exactly 1).
    """

    num_heads: int
    seq_first: bool = False
    query: Optional[Tensor] = None
    key: Optional[Tensor] = None
    value: Optional[Tensor] = None
    raw_qkv: Optional[Tuple[Tensor, Tensor, Tensor]] = None
    o: Optional[Tensor] = None
    o_grad: Optional[Callable[[Tensor], Tensor]] = None
    mask: Optional[Tensor] = None
    layer_input: Optional[Tensor] = None
    attn_out: Optional[Tensor] = None
    grid: Optional[Tuple[int, int]] = None
    block_input: Optional[Tensor] = None
    block_output: Optional[Tensor] = None
    calls: int = 0

    def enter(self, *inputs: Tensor) -> Tuple[Tensor, ...]:
        """Call once, first thing in the layer's call, with its input(s); pass the returned
        tensors on to the layer in their place (same values, now part of the autograd graph).

        Counts the call and switches autograd on: the forward runs under ``torch.no_grad()``
        up to here when no input needs gradients, so the blocks before build no graph. The same
        tensor passed several times (self-attention's ``query is key is value``) stays one tensor.
        """
        self.calls += 1
        torch.set_grad_enabled(True)
        seen = {}
        for x in inputs:
            if id(x) not in seen:
                track = x.is_floating_point() and not x.requires_grad
                seen[id(x)] = x.detach().requires_grad_(True) if track else x
        return tuple(seen[id(x)] for x in inputs)

    def batch_first(self, x: Tensor) -> Tensor:
        """``x`` ``(*, L, B, C)`` in the layer's layout -> ``(*, B, L, C)`` (no-op when batch-first)."""
        return x.transpose(-3, -2) if self.seq_first else x

    def o_gradient(self, grad: Tensor) -> Tensor:
        """``(K, <o's shape>)`` gradient -> ``(K, B, L, D)`` ``dS/do``."""
        return grad if self.o_grad is None else self.o_grad(grad)


class AttentionAdapter:
    """Reads ``q, k, v`` and ``o`` out of one kind of attention module through hooks (see the
    contract in this module's docstring).

    Subclass, implement :meth:`matches`, :attr:`num_heads` and :meth:`attach`, and register the
    class with :func:`captum_gradeclip.adapters.register_adapter`.
    """

    #: a short name for error messages
    name: str = "attention"

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        """Whether this adapter can read ``module``."""
        raise NotImplementedError

    @property
    def num_heads(self) -> int:
        """The attention's heads ``H``."""
        raise NotImplementedError

    @property
    def out_proj(self) -> Optional[nn.Linear]:
        """The output projection ``attn_out = out_proj(o)``, where there is one."""
        return None

    @property
    def seq_first(self) -> bool:
        """Whether the layer's token tensors are ``(L, B, D)`` (else ``(B, L, D)``)."""
        return False

    def attach(self, capture: Capture) -> List[RemovableHandle]:
        """Register the hooks that fill ``capture`` during one forward; return their handles.
        The hooks only read: the layer's output is unchanged."""
        raise NotImplementedError

    def single_head_hooks(self, capture: Capture) -> Optional[List[RemovableHandle]]:
        """Hooks of the reproduction mode for a backend whose :attr:`out_proj` is never called as a
        module (registered after :meth:`attach`): they replace the layer's output by the one-head
        recomputation and set ``capture.o`` (and ``o_grad``) to match. ``None`` (the default): the
        core's pre-hook on :attr:`out_proj` does it (``_core/single_head.py``)."""
        return None


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
    """``m`` is an ``nn.Linear`` (how the adapters recognise projections, by structure)."""
    return isinstance(m, nn.Linear)


def is_identity(m: Optional[nn.Module]) -> bool:
    """A child that is absent or ``nn.Identity`` (an option the model was built without)."""
    return m is None or isinstance(m, nn.Identity)


def refuse_non_softmax(module: nn.Module, unsupported: List[str], before: str) -> None:
    """Raise ``NotImplementedError`` naming the ``unsupported`` features of ``module`` that make
    its output before ``before`` (the output projection) something other than a softmax-weighted
    sum of values; nothing when the list is empty."""
    if unsupported:
        raise NotImplementedError(
            f"{type(module).__name__} uses {' and '.join(unsupported)}: its output before {before} is not a "
            "softmax-weighted sum of values, which Grad-ECLIP's decomposition needs. Explain a model "
            "without it, or register your own adapter with `captum_gradeclip.adapters.register_adapter`."
        )


def token_input_hook(capture: Capture, name: str,
                     mask_of: Callable[[nn.Module, tuple, dict, Tensor], Optional[Tensor]]) -> Callable:
    """A forward pre-hook (``with_kwargs=True``) for an attention called on token states: passes
    its input ``name`` through :meth:`Capture.enter`, records it as ``layer_input`` and the call's
    mask as ``mask_of(module, args, kwargs, x)``."""
    def pre(mod, args, kwargs):
        x, = capture.enter(first_arg(args, kwargs, name))
        capture.mask = mask_of(mod, args, kwargs, x)
        capture.layer_input = x
        return replace_first_arg(args, kwargs, name, x)

    return pre


def projection_hooks(capture: Capture, *, query: nn.Module, key: nn.Module, value: nn.Module,
                     out: nn.Module) -> List[RemovableHandle]:
    """Hooks recording the outputs of separate ``q, k, v`` linears as ``query, key, value`` and
    the input of the output linear as ``o``."""
    def setter(field: str) -> Callable:
        def hook(mod, args, output):
            setattr(capture, field, output)
        return hook

    def before_out(mod, args):
        capture.o = args[0]

    return [query.register_forward_hook(setter("query")), key.register_forward_hook(setter("key")),
            value.register_forward_hook(setter("value")), out.register_forward_pre_hook(before_out)]
