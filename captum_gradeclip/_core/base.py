"""The neutral base of every method that reads one attention layer's tokens.

:class:`AttentionLayerAttribution.attribute` runs, in order:

1. :meth:`~AttentionLayerAttribution._capture`: the forward function, once, with the adapters'
   hooks on the explained layers (registered for this call only, removed in ``finally``); the
   blocks before the first explained layer run without a graph.
2. :meth:`~AttentionLayerAttribution._gradients`: ``dS/d(source)`` for the method's gradient
   sources, one backward for one target or one batched backward for all ``K`` targets; or
   ``dS/do`` at the pooled row only, through the block-tail shortcut (``block_tail.py``).
3. ``combine``: the method itself, from a :class:`~captum_gradeclip._core.layout.LayerTokens`
   per layer to ``(K, B, L)`` token maps.
4. the layout's ``finalize``: ``(K, B, L)`` -> ``(K, B, *S)`` (a patch grid, or words).

A method is a subclass that implements ``combine`` (and, if it differentiates something other
than ``o``, ``grad_sources``), and sets ``needs_grad`` / ``pooled_grad_only``.
"""

from __future__ import annotations

import numbers
import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from captum._utils.common import _format_additional_forward_args, _select_targets
from captum._utils.typing import TargetType
from captum.attr import GradientAttribution, LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn

from ..adapters import AttentionAdapter, Capture, find_adapter
from . import fastpath
from .block_tail import BlockTail
from .layout import LayerTokens, TokenLayout
from .single_head import single_head_hooks

LayerSpec = Union[nn.Module, Sequence[nn.Module]]

#: Held while an explained forward runs with hooks on: hooks live on the (shared) model's modules
#: and PyTorch's MHA fast-path switch is process-wide, so explained forwards of different threads
#: take turns (the backward passes and the maps, which use per-call state only, run in parallel).
#: A throughput limit: one process runs ONE explained forward at a time, whatever the explainer
#: or model, so threads gain only on the backward and the maps (``benchmarks/forward_lock.py``
#: measures it; ARCHITECTURE.md has the numbers). Parallel throughput comes from processes: the
#: dataset engine's torchrun ranks.
_HOOKED_FORWARD = threading.RLock()


def _has_fast_path_mha(forward_func: Any) -> bool:
    """Whether the modules of ``forward_func`` hold a batch-first ``nn.MultiheadAttention`` in eval
    mode (PyTorch computes it with another kernel when grad is off) that cannot be kept off it
    (a torch without ``torch.backends.mha``): then the whole forward runs with autograd."""
    if fastpath.CAN_DISABLE or not isinstance(forward_func, nn.Module):
        return False
    return any(isinstance(m, nn.MultiheadAttention) and m.batch_first and not m.training
               for m in forward_func.modules())


def score_grads(scores: Tensor, sources: List[Tensor], target: TargetType, all_targets: bool,
                retain_graph: bool = False) -> List[Optional[Tensor]]:
    """``dS/dsource`` for each source, stacked over targets: ``(K, *source.shape)`` for every
    column of ``scores (B, K)`` (one batched backward), or ``(1, ...)`` for ``target``."""
    n, k = scores.shape
    with torch.enable_grad():
        if all_targets:
            eye = torch.eye(k, dtype=scores.dtype, device=scores.device)
            grads = torch.autograd.grad(scores, sources, grad_outputs=eye[:, None, :].expand(k, n, k),
                                        is_grads_batched=True, retain_graph=retain_graph, allow_unused=True)
            return [None if g is None else g.detach() for g in grads]
        selected = scores[:, 0] if target is None else _select_targets(scores, target)
        grads = torch.autograd.grad(selected.sum(), sources, retain_graph=retain_graph, allow_unused=True)
        return [None if g is None else g.detach()[None] for g in grads]


def check_target(target: TargetType, n: int, k: int) -> TargetType:
    """Typed errors for targets Captum would reject with an assert (or silently mis-index);
    returns the target with negative indices (Python's convention) made non-negative.

    Raises:
        IndexError: an index outside ``[-K, K)``.
        TypeError: a float, bool or other non-integer target.
        ValueError: no target for ``K > 1`` scores; a list or tensor that is not one index per example.
    """
    def check_int(i: int) -> int:
        if not -k <= i < k:
            raise IndexError(
                f"target {i} is out of range: the forward function returns {k} score(s) per "
                f"example, so target must be in [0, {k - 1}]"
            )
        return i % k

    if target is None:
        if k != 1:
            raise ValueError(
                f"target is required: the forward function returns {k} scores per example "
                "(pass an int, a list of N ints or a (N,) tensor, or use attribute_all)"
            )
        return None
    if isinstance(target, bool):
        raise TypeError("target must be an int, a list of ints or a tensor, got a bool")
    if isinstance(target, numbers.Integral):  # int, numpy integers
        return check_int(int(target))
    if torch.is_tensor(target):
        if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
            raise TypeError(f"a tensor target must hold integer indices, got dtype {target.dtype}")
        if target.numel() == 1:
            return check_int(int(target.item()))
        if target.dim() != 1 or target.numel() != n:
            raise ValueError(f"a tensor target must have shape ({n},) (one index per example), got {tuple(target.shape)}")
        return torch.tensor([check_int(int(i)) for i in target.tolist()], dtype=torch.long, device=target.device)
    if isinstance(target, list):
        if len(target) != n:
            raise ValueError(f"a list target must have one entry per example ({n}), got {len(target)}")
        if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in target):
            bad = next(i for i in target if not isinstance(i, numbers.Integral) or isinstance(i, bool))
            raise TypeError(f"a list target must hold ints, got {type(bad).__name__}")
        return [check_int(int(i)) for i in target]
    raise TypeError(f"target must be None, an int, a list of ints or a tensor, got {type(target).__name__}")


def _check_forward_func(forward_func: Any) -> None:
    """A whole CLIP model is not a forward function of one tower: say which wrapper to use."""
    if not callable(forward_func):
        raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
    if hasattr(forward_func, "get_image_features") and hasattr(forward_func, "get_text_features"):
        raise TypeError(
            f"forward_func is a whole {type(forward_func).__name__}; pass a forward function of one tower "
            "that returns (N, K) scores: ImageTextSimilarity(model, input_ids=...) to explain images, "
            "TextImageSimilarity(model, pixel_values=...) to explain texts"
        )
    if hasattr(forward_func, "encode_image") and hasattr(forward_func, "encode_text"):
        raise TypeError(
            f"forward_func is a whole {type(forward_func).__name__}; pass "
            "captum_gradeclip.openai.EncoderImageTextSimilarity(model, tokens) (or "
            "EncoderTextImageSimilarity(model, images) for texts)"
        )


def _check_layers(adapters: List[AttentionAdapter]) -> None:
    seen = {}
    for i, a in enumerate(adapters):
        if id(a.module) in seen:
            raise ValueError(f"layers {seen[id(a.module)]} and {i} are the same attention module "
                             f"({type(a.module).__name__}); pass each layer once")
        seen[id(a.module)] = i


@dataclass
class _Forward:
    """One explained forward: the captures of the explained layers and the ``(B, K)`` scores."""

    captures: List[Capture]
    scores: Tensor


class AttentionLayerAttribution(LayerAttribution, GradientAttribution):
    r"""Attributions computed from the tokens of one or several attention layers (the neutral base
    of Grad-ECLIP and the attention baselines; see this module's docstring for the data flow).

    Args:
        forward_func: ``inputs (B, ...) [, *additional] -> (B, K)`` scores (or ``(B,)``),
            see :class:`~captum_gradeclip._core.protocols.ScoreFunction`.
        layer: a transformer block or its attention module, or a list of them.
        device_ids: as in Captum (DataParallel); unused otherwise.
        layout: which token is pooled and what the map covers
            (:class:`~captum_gradeclip._core.layout.TokenLayout` and subclasses).

    Raises:
        TypeError: ``forward_func`` is not callable; a layer without a supported attention
            module (the message lists its children).
        ValueError: an empty layer list; a layer with several attention modules.
    """

    #: whether the method needs gradients of the score (gradient-free methods: one forward)
    needs_grad: bool = True
    #: whether the method needs ``dS/do`` at the pooled token only (then the block-tail shortcut
    #: may compute it); methods that need gradients at every token set False
    pooled_grad_only: bool = True
    #: the reproduction mode of the authors' code (only Grad-ECLIP offers it)
    single_head: bool = False

    def __init__(self, forward_func: Callable[..., Tensor], layer: LayerSpec,
                 device_ids: Optional[List[int]] = None, *, layout: TokenLayout) -> None:
        _check_forward_func(forward_func)
        layers = list(layer) if isinstance(layer, (list, tuple, nn.ModuleList)) else [layer]
        if not layers:
            raise ValueError("layer is an empty list; pass at least one transformer block or attention module")
        self._adapters: List[AttentionAdapter] = [find_adapter(m) for m in layers]
        _check_layers(self._adapters)
        tail = BlockTail.find(layers[0], self._adapters[0]) if len(layers) == 1 else None
        self._tail = tail if (self.needs_grad and self.pooled_grad_only) else None
        self.layout = layout
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)

    @property
    def attention_modules(self) -> List[nn.Module]:
        """The explained attention modules, one per layer (first to last): what the adapters hook."""
        return [a.module for a in self._adapters]

    # ---- Captum's attribution protocol -------------------------------------------------------
    def has_convergence_delta(self) -> bool:
        """Captum's protocol: ``False``, no convergence delta (the map is not a completeness decomposition)."""
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        """Captum's protocol: ``False``, the map is not multiplied by the inputs."""
        return False

    # ---- what a method defines ---------------------------------------------------------------
    def grad_sources(self, capture: Capture) -> List[Tensor]:
        """The tensors the score is differentiated against, for one layer (default: ``o``)."""
        return [capture.o]

    def combine(self, layers: List[LayerTokens], *, relu: bool, targets: Any, n_targets: int) -> Tensor:
        """The method: ``(K, B, L)`` token maps from the explained layers (first to last).

        Args:
            layers: one :class:`~captum_gradeclip._core.layout.LayerTokens` per explained layer.
            relu: whether to apply the method's ReLU.
            targets: what ``attribute`` was asked for (``target``), or ``arange(K)`` for
                ``attribute_all``.
            n_targets: ``K`` of the result (1 for ``attribute``).
        """
        raise NotImplementedError

    # ---- the public API ---------------------------------------------------------------------
    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        relu_attributions: bool = True,
    ) -> Tensor:
        r"""The map of the score ``forward_func(inputs, *additional_forward_args)[:, target]``.

        Args:
            inputs: the forward function's first input(s); the first tensor's dim 0 is the
                batch ``B`` (``N`` images or ``T`` texts).
            target: which score of ``(B, K)`` to explain: an int, a list of ``B`` ints, a
                ``(B,)`` tensor (Captum's convention), or ``None`` when the output is ``(B,)``.
            additional_forward_args: further arguments of ``forward_func`` (not explained).
            relu_attributions: apply the method's ReLU (default). ``False``: the signed map.

        Returns:
            The map, float32, on the inputs' device: ``(N, 1, h, w)`` for an image tower,
            ``(T, L)`` for a text tower, ``(B, L)`` for the plain token layout.

        Raises:
            IndexError: target out of range.
            TypeError, ValueError: inputs or a target of the wrong type or shape; layers not run
                by ``forward_func`` (or run more than once).
        """
        maps = self._explain(inputs, additional_forward_args, target=target, all_targets=False,
                             relu=relu_attributions)
        return self.layout.single(maps)

    def attribute_all(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        additional_forward_args: Any = None,
        *,
        relu_attributions: bool = True,
    ) -> Tensor:
        r"""Maps for every score ``k`` of the ``(B, K)`` output, from ONE forward pass and ONE
        batched backward pass (``torch.autograd.grad(..., is_grads_batched=True)``).

        Args:
            inputs, additional_forward_args, relu_attributions: as in :meth:`attribute`.

        Returns:
            ``(B, K, *S)``: ``maps[:, k]`` equals ``attribute(inputs, target=k)``, with ``*S``
            ``(h, w)`` for an image tower and ``(L,)`` for a text tower.
        """
        maps = self._explain(inputs, additional_forward_args, target=None, all_targets=True,
                             relu=relu_attributions)
        return maps.transpose(0, 1)

    # ---- the machinery ----------------------------------------------------------------------
    def _explain(self, inputs: Any, additional_forward_args: Any, *, target: TargetType,
                 all_targets: bool, relu: bool) -> Tensor:
        """``(K, B, *S)`` maps: capture, gradients, combine, finalize."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError("attribute() needs autograd, which torch.inference_mode() switches off; "
                               "call it outside the inference_mode block (it builds no graph for the "
                               "blocks before the explained layer anyway)")
        inputs = (inputs,) if torch.is_tensor(inputs) else tuple(inputs)
        additional = _format_additional_forward_args(additional_forward_args) or ()
        self.layout.check(inputs)
        run = self._capture(inputs, additional)
        n, k = run.scores.shape
        if not all_targets:
            target = check_target(target, n, k)
        layers = [self.layout.tokens(inputs, cap) for cap in run.captures]
        self._gradients(run, layers, target, all_targets)
        targets = torch.arange(k) if all_targets else target
        maps = self.combine(layers, relu=relu, targets=targets, n_targets=k if all_targets else 1)
        return self.layout.finalize(maps, layers[-1]).detach().to(inputs[0].device)

    def _capture(self, inputs: Tuple[Tensor, ...], additional: Tuple[Any, ...]) -> _Forward:
        """Run ``forward_func`` once with the hooks on; check the layers ran once and the scores'
        shape."""
        captures = [Capture(num_heads=1 if self.single_head else a.num_heads, seq_first=a.seq_first)
                    for a in self._adapters]
        with _HOOKED_FORWARD:
            output = self._hooked_forward(inputs, additional, captures)
        self._check_forward(captures, output, inputs[0].shape[0])
        return _Forward(captures, output if output.dim() == 2 else output[:, None])

    def _hooked_forward(self, inputs: Tuple[Tensor, ...], additional: Tuple[Any, ...],
                        captures: List[Capture]) -> Any:
        """``forward_func(*inputs, *additional)`` with the adapters' hooks on (removed after, also
        on error), the blocks before the explained layers without a graph, and PyTorch's MHA fast
        path off."""
        need_graph = any(torch.is_tensor(x) and x.requires_grad for x in inputs) or \
            _has_fast_path_mha(self.forward_func)
        handles = []
        try:
            for adapter, cap in zip(self._adapters, captures):
                handles += adapter.attach(cap)
                if self.single_head:
                    handles += single_head_hooks(adapter, cap)
            if self._tail is not None:
                handles += self._tail.attach(captures[0])
            with torch.enable_grad() if need_graph else torch.no_grad(), fastpath.mha_fast_path_off():
                output = self.forward_func(*inputs, *additional)
        finally:
            for h in handles:
                h.remove()
        return output

    def _check_forward(self, captures: List[Capture], output: Any, n: int) -> None:
        """Each explained layer ran once; the output is ``(N,)`` or ``(N, K)`` scores."""
        for adapter, cap in zip(self._adapters, captures):
            if cap.calls != 1:
                raise ValueError(
                    f"the explained layer {type(adapter.module).__name__} ran {cap.calls} times "
                    "during forward_func; it must run exactly once (pass a layer of the tower "
                    "the forward function computes)"
                )
        if not torch.is_tensor(output) or output.dim() not in (1, 2) or output.shape[0] != n:
            got = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
            raise ValueError(f"forward_func must return scores of shape (N,) or (N, K) with N = {n}, got {got}")

    def _gradients(self, run: _Forward, layers: List[LayerTokens], target: TargetType, all_targets: bool) -> None:
        """Fill ``layers[i].grads`` (or ``layers[0].pooled_o_grad``, through the shortcut)."""
        if self._shortcut(run, layers[0], target, all_targets) or not self.needs_grad:
            return
        per_layer = [self.grad_sources(c) for c in run.captures]
        sources = [x for srcs in per_layer for x in srcs]
        if any(x is None or not x.requires_grad for x in sources) or not run.scores.requires_grad:
            raise ValueError("the score does not depend on the explained layer(s) through autograd; "
                             "pass layers of the tower the forward function differentiates")
        flat = score_grads(run.scores, sources, target, all_targets)
        if any(g is None for g in flat):
            raise ValueError("the score does not depend on the explained layer(s); pass layers "
                             "of the tower the forward function runs")
        it = iter(flat)
        for layer, srcs in zip(layers, per_layer):
            layer.grads = [next(it) for _ in srcs]

    def _shortcut(self, run: _Forward, layer: LayerTokens, target: TargetType, all_targets: bool) -> bool:
        """``dS/do`` at the pooled rows through the block's tail (see ``block_tail.py``), where it
        holds; ``False`` sends the caller to the full backward."""
        out = layer.capture.block_output
        if self._tail is None or out is None or not (out.requires_grad and run.scores.requires_grad):
            return False
        g = score_grads(run.scores, [out], target, all_targets, retain_graph=True)[0]
        if g is not None:
            layer.pooled_o_grad = self._tail.pooled_o_grad(layer.capture, g, layer.pooled)
        return layer.pooled_o_grad is not None
