"""Grad-ECLIP as Captum ``LayerAttribution`` classes."""

from __future__ import annotations

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
from .functional import SPATIAL_MODES, attention_mask_rows, spatial_weights, token_map

LayerSpec = Union[nn.Module, Sequence[nn.Module]]


def _start_graph(x: Tensor) -> Tensor:
    """Switch autograd on at the first explained layer and make its input part of the graph.

    The forward runs under ``torch.no_grad()`` up to here when no input needs gradients, so the
    blocks before the explained layers build no graph. The returned tensor has the same values.
    """
    torch.set_grad_enabled(True)
    if x.requires_grad or not x.is_floating_point():
        return x
    return x.detach().requires_grad_(True)


def _has_fast_path_mha(forward_func: Any) -> bool:
    """Whether the modules of ``forward_func`` hold a batch-first ``nn.MultiheadAttention`` in eval
    mode (PyTorch computes it with another kernel when grad is off) that cannot be kept off it
    (a torch without ``torch.backends.mha``): then the whole forward runs with autograd."""
    if fastpath.CAN_DISABLE or not isinstance(forward_func, nn.Module):
        return False
    return any(isinstance(m, nn.MultiheadAttention) and m.batch_first and not m.training
               for m in forward_func.modules())


def _score_grads(scores: Tensor, sources: List[Tensor], target: TargetType, all_targets: bool,
                 retain_graph: bool = False) -> List[Optional[Tensor]]:
    """``dS/dsource`` for each source, stacked over targets: ``(T, *source.shape)`` for every
    column of ``scores (N, T)`` (one batched backward), or ``(1, ...)`` for ``target``."""
    n, t = scores.shape
    with torch.enable_grad():
        if all_targets:
            eye = torch.eye(t, dtype=scores.dtype, device=scores.device)
            grads = torch.autograd.grad(scores, sources, grad_outputs=eye[:, None, :].expand(t, n, t),
                                        is_grads_batched=True, retain_graph=retain_graph, allow_unused=True)
            return [None if g is None else g.detach() for g in grads]
        selected = scores[:, 0] if target is None else _select_targets(scores, target)
        grads = torch.autograd.grad(selected.sum(), sources, retain_graph=retain_graph, allow_unused=True)
        return [None if g is None else g.detach()[None] for g in grads]


def _check_target(target: TargetType, n: int, t: int) -> None:
    """Typed errors for targets Captum would reject with an assert (or silently mis-index)."""
    def check_int(i: int) -> None:
        if not -t <= i < t:
            raise IndexError(
                f"target {i} is out of range: the forward function returns {t} score(s) per "
                f"example, so target must be in [0, {t - 1}]"
            )

    if target is None:
        if t != 1:
            raise ValueError(
                f"target is required: the forward function returns {t} scores per example "
                "(pass an int, a list of N ints or a (N,) tensor, or use attribute_all)"
            )
        return
    if isinstance(target, bool):
        raise TypeError("target must be an int, a list of ints or a tensor, got a bool")
    if isinstance(target, int):
        check_int(target)
        return
    if torch.is_tensor(target):
        if target.numel() == 1:
            check_int(int(target.item()))
            return
        if target.dim() != 1 or target.numel() != n:
            raise ValueError(f"a tensor target must have shape ({n},) (one index per example), got {tuple(target.shape)}")
        for i in target.tolist():
            check_int(int(i))
        return
    if isinstance(target, list):
        if len(target) != n:
            raise ValueError(f"a list target must have one entry per example ({n}), got {len(target)}")
        for i in target:
            if not isinstance(i, int):
                raise TypeError(f"a list target must hold ints, got {type(i).__name__}")
            check_int(i)
        return
    raise TypeError(f"target must be None, an int, a list of ints or a tensor, got {type(target).__name__}")


class LayerGradECLIP(LayerAttribution, GradientAttribution):
    r"""Grad-ECLIP on one or several attention layers of any transformer tower.

    For the pooled token ``p`` and every token ``i`` of an explained attention layer:
    ``H_i = ReLU(sum_c w_c * lambda_i * v_i,c)``, with channel weights ``w_c = dS/do_p,c`` (the
    gradient of the explained score at the attention output before ``out_proj``, pooled token
    only) and spatial weights ``lambda_i`` (by default the min-max normalised cosine between
    ``q_p`` and ``k_i``).

    Subclasses say which token is pooled, which tokens the map covers and how it is shaped:
    use :class:`ImageGradECLIP` and :class:`TextGradECLIP`.

    The model's forward is never changed (hooks only read) unless ``single_head=True``.
    """

    #: how per-layer maps combine: ReLU each then sum (image) or sum then ReLU (text)
    _relu_per_layer: bool = True

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        *,
        spatial: str = "cosine",
        single_head: bool = False,
    ) -> None:
        r"""
        Args:
            forward_func: maps the inputs to scores ``(N, T)`` (or ``(N,)``), e.g.
                :class:`~captum_gradeclip.ImageTextSimilarity`.
            layer: a transformer block or its attention module, or a list of them (their maps
                are summed).
            device_ids: as in Captum (DataParallel); unused otherwise.
            spatial: ``"cosine"`` (default), ``"cosine_per_head"``, ``"attention"`` or
                ``"uniform"``, see :func:`~captum_gradeclip.functional.spatial_weights`.
            single_head: reproduction mode of the authors' code: the explained attention layers
                are recomputed with ONE head over the full width (scale ``1/sqrt(width)``), so the
                map explains a modified model and the score differs from the model's. Default
                ``False``: the model's own forward.

        Raises:
            ValueError: unknown ``spatial``; an empty layer list; a layer with several attention
                modules.
            TypeError: a layer without a supported attention module (the message lists its
                children).
        """
        if spatial not in SPATIAL_MODES:
            raise ValueError(f"spatial must be one of {SPATIAL_MODES}, got {spatial!r}")
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
        layers = list(layer) if isinstance(layer, (list, tuple, nn.ModuleList)) else [layer]
        if not layers:
            raise ValueError("layer is an empty list; pass at least one transformer block or attention module")
        self._adapters: List[AttentionAdapter] = [find_adapter(m) for m in layers]
        self._tails = [BlockTail.find(m, a) for m, a in zip(layers, self._adapters)]
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)
        self.spatial = spatial
        self.single_head = bool(single_head)

    # ---- Captum's attribution protocol -------------------------------------------------------
    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    # ---- what subclasses define -------------------------------------------------------------
    def _check_inputs(self, inputs: Tuple[Tensor, ...], additional: Tuple[Any, ...]) -> None:
        if not inputs or not torch.is_tensor(inputs[0]):
            raise TypeError("inputs must be a tensor or a tuple of tensors")
        if inputs[0].shape[0] == 0:
            raise ValueError("inputs hold an empty batch (N = 0); pass at least one example")

    def _pooled_positions(self, inputs: Tuple[Tensor, ...], additional: Tuple[Any, ...],
                          capture: Capture) -> Tensor:
        """``(B,)`` long: the pooled token of each example."""
        b = capture.value.shape[0]
        return torch.zeros(b, dtype=torch.long, device=capture.value.device)

    def _scored(self, inputs: Tuple[Tensor, ...], pooled: Tensor, capture: Capture) -> Tensor:
        """``(B, L)`` bool: the tokens the map covers (min-max normalisation runs over them)."""
        b, n = capture.value.shape[:2]
        s = torch.ones(b, n, dtype=torch.bool, device=capture.value.device)
        s[torch.arange(b), pooled] = False
        return s

    def _finalize(self, maps: Tensor, inputs: Tuple[Tensor, ...], pooled: Tensor, capture: Capture) -> Tensor:
        """``(T, B, L)`` token maps -> ``(T, B, *S)`` output maps."""
        return maps

    def _single(self, maps: Tensor) -> Tensor:
        """``(1, B, *S)`` -> what :meth:`attribute` returns."""
        return maps[0]

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
        r"""Grad-ECLIP map of the score ``forward_func(inputs, *additional_forward_args)[:, target]``.

        Args:
            inputs: the forward function's first input(s); the first tensor's dim 0 is the
                batch ``N``.
            target: which score of ``(N, T)`` to explain: an int, a list of ``N`` ints, a
                ``(N,)`` tensor (Captum's convention), or ``None`` when the output is ``(N,)``.
            additional_forward_args: further arguments of ``forward_func`` (not explained).
            relu_attributions: apply the method's ReLU (default). ``False`` returns the signed
                map.

        Returns:
            The map, float32, on the inputs' device (shape given by the subclass).

        Raises:
            IndexError: target out of range.
            ValueError, TypeError: see the subclass; layers not run by ``forward_func``.
        """
        maps = self._run(inputs, additional_forward_args, target=target, all_targets=False,
                         relu=relu_attributions)
        return self._single(maps)

    def attribute_all(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        additional_forward_args: Any = None,
        *,
        relu_attributions: bool = True,
    ) -> Tensor:
        r"""Maps for every score ``t`` of the ``(N, T)`` output, from ONE forward pass and ONE
        batched backward pass (``torch.autograd.grad(..., is_grads_batched=True)``).

        Args:
            inputs, additional_forward_args, relu_attributions: as in :meth:`attribute`.

        Returns:
            ``(N, T, *S)``: ``maps[:, t]`` equals ``attribute(inputs, target=t)`` with ``*S``
            the per-example map shape of the subclass.
        """
        maps = self._run(inputs, additional_forward_args, target=None, all_targets=True,
                         relu=relu_attributions)
        return maps.transpose(0, 1)

    # ---- the machinery ----------------------------------------------------------------------
    #: whether the map needs dS/do (gradient-free baselines set False: one forward, no backward)
    _needs_grad: bool = True
    #: whether dS/do at the pooled token may come from the block-tail shortcut (block_tail.py);
    #: methods that need the gradient at every token set False
    _fast_grad: bool = True

    def _sources(self, capture: Capture) -> List[Tensor]:
        """The tensors the score is differentiated against, for one layer."""
        return [capture.grad_source]

    def _run(self, inputs, additional_forward_args, *, target, all_targets: bool, relu: bool) -> Tensor:
        inputs = (inputs,) if torch.is_tensor(inputs) else tuple(inputs)
        additional = _format_additional_forward_args(additional_forward_args) or ()
        self._check_inputs(inputs, additional)
        # in the reproduction mode the explained layers have one head, for the spatial weights too
        captures = [Capture(num_heads=1 if self.single_head else a.num_heads) for a in self._adapters]
        need_graph = any(torch.is_tensor(x) and x.requires_grad for x in inputs)
        # (batch-first MultiheadAttention's no-grad fast path is switched off during the forward)
        need_graph = need_graph or not all(a.graph_free_prefix for a in self._adapters) or _has_fast_path_mha(
            self.forward_func)
        tail = self._tails[0] if (self._fast_grad and len(captures) == 1) else None
        handles = []
        try:
            for adapter, cap in zip(self._adapters, captures):
                handles += adapter.attach(cap, single_head=self.single_head, start_graph=_start_graph)
            if tail is not None:
                handles += tail.attach(captures[0])
            with torch.enable_grad() if need_graph else torch.no_grad(), fastpath.mha_fast_path_off():
                output = self.forward_func(*inputs, *additional)
        finally:
            for h in handles:
                h.remove()
        for adapter, cap in zip(self._adapters, captures):
            if cap.calls != 1:
                raise ValueError(
                    f"the explained layer {type(adapter.module).__name__} ran {cap.calls} times "
                    "during forward_func; it must run exactly once (pass a layer of the tower "
                    "the forward function computes)"
                )
        if not torch.is_tensor(output) or output.dim() not in (1, 2) or output.shape[0] != inputs[0].shape[0]:
            got = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
            raise ValueError(f"forward_func must return scores of shape (N,) or (N, T) with N = "
                             f"{inputs[0].shape[0]}, got {got}")
        scores = output if output.dim() == 2 else output[:, None]
        n, t = scores.shape
        if not all_targets:
            _check_target(target, n, t)
        grads: List[Optional[List[Tensor]]] = [None] * len(captures)
        pooled_grad = None
        if tail is not None and captures[0].extra.get("block_out") is not None:
            # the shortcut: differentiate against the block output, carry the pooled row through
            # the block's tail (see block_tail.py); falls through to the full backward if it fails
            cap = captures[0]
            out = cap.extra["block_out"]
            if out.requires_grad and scores.requires_grad:
                g = _score_grads(scores, [out], target, all_targets, retain_graph=True)[0]
                if g is not None:
                    pooled_grad = tail.pooled_o_grad(cap, g, self._pooled_positions(inputs, additional, cap))
        if self._needs_grad and pooled_grad is None:
            per_layer = [self._sources(c) for c in captures]
            sources = [x for srcs in per_layer for x in srcs]
            if any(x is None or not x.requires_grad for x in sources) or not scores.requires_grad:
                raise ValueError("the score does not depend on the explained layer(s) through autograd; "
                                 "pass layers of the tower the forward function differentiates")
            flat = _score_grads(scores, sources, target, all_targets)
            if any(g is None for g in flat):
                raise ValueError("the score does not depend on the explained layer(s); pass layers "
                                 "of the tower the forward function runs")
            it = iter(flat)
            grads = [[next(it) for _ in srcs] for srcs in per_layer]
        layers = []
        for cap, g in zip(captures, grads):
            pooled = self._pooled_positions(inputs, additional, cap)
            length = cap.value.shape[1]
            layers.append(LayerContext(
                capture=cap, grads=g, pooled=pooled, scored=self._scored(inputs, pooled, cap),
                attended=attention_mask_rows(cap.mask, cap.is_causal, pooled, length),
                pooled_o_grad=pooled_grad,
            ))
        targets = torch.arange(t) if all_targets else target
        total = self._combine(layers, relu=relu, targets=targets, n_targets=t if all_targets else 1)
        out = self._finalize(total, inputs, layers[-1].pooled, layers[-1].capture)
        return out.detach().to(inputs[0].device)

    def _o_grad(self, layer: "LayerContext") -> Tensor:
        """``(T, B, L, D)``: dS/do of one layer."""
        g = layer.grads[0]
        return layer.capture.to_o_grad(g) if layer.capture.to_o_grad is not None else g

    def _combine(self, layers: List["LayerContext"], *, relu: bool, targets: Any, n_targets: int) -> Tensor:
        """Per-layer Grad-ECLIP maps, combined: ``(T, B, L)``."""
        total = None
        for layer in layers:
            cap, pooled = layer.capture, layer.pooled
            rows = torch.arange(pooled.shape[0], device=pooled.device)
            if layer.pooled_o_grad is not None:
                w = layer.pooled_o_grad  # (T, B, D)
            else:
                w = self._o_grad(layer)[:, rows, pooled]  # (T, B, D)
            lam = spatial_weights(query=cap.query.detach()[rows, pooled], keys=cap.key.detach(),
                                  scored=layer.scored, attended=layer.attended, mode=self.spatial,
                                  num_heads=cap.num_heads)
            m = token_map(weights=w, values=cap.value.detach(), spatial=lam)
            m = torch.where(layer.scored, m, torch.zeros((), dtype=m.dtype, device=m.device))
            if relu and self._relu_per_layer:
                m = m.clamp_min(0)
            total = m if total is None else total + m
        if relu and not self._relu_per_layer:
            total = total.clamp_min(0)
        return total


@dataclass
class LayerContext:
    """What one explained layer gave: its capture, gradients (``(T, B, ...)`` per source, or
    ``None``), pooled positions ``(B,)``, scored and attended tokens ``(B, L)``."""

    capture: Capture
    grads: Optional[List[Tensor]]
    pooled: Tensor
    scored: Tensor
    attended: Tensor
    pooled_o_grad: Optional[Tensor] = None


class ImageGradECLIP(LayerGradECLIP):
    r"""Grad-ECLIP for the image tower of a ViT (or ResNet attention-pool) CLIP.

    Explains ``forward_func(pixel_values) -> (N, T)`` scores (e.g.
    :class:`~captum_gradeclip.ImageTextSimilarity`). The map covers the patch tokens (the class
    token and any other extra tokens are dropped); its grid is the input's height and width
    divided by the patch size, so non-square inputs work. Several layers: per-layer ReLU maps
    are summed (``relu_attributions=False``: signed maps summed).

    ``attribute(pixel_values (N, 3, H, W), target) -> (N, 1, H/p, W/p)``;
    ``attribute_all(pixel_values) -> (N, T, H/p, W/p)``. Upsample with
    ``captum.attr.LayerAttribution.interpolate(attr, (H, W))``.
    """

    _relu_per_layer = True

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        *,
        spatial: str = "cosine",
        single_head: bool = False,
        patch_size: Optional[int] = None,
    ) -> None:
        r"""
        Args:
            forward_func, layer, device_ids, spatial, single_head: see :class:`LayerGradECLIP`.
            patch_size: the ViT patch size. Default: ``forward_func.patch_size`` (set by
                :class:`~captum_gradeclip.ImageTextSimilarity`). Not needed for ResNet
                attention pooling (its grid is the feature map's).

        Raises:
            ValueError, TypeError: see :class:`LayerGradECLIP`.
        """
        super().__init__(forward_func, layer, device_ids, spatial=spatial, single_head=single_head)
        if hasattr(forward_func, "pooled_token") and forward_func.pooled_token is None:
            raise ValueError(
                f"the image tower pools with {getattr(forward_func, 'image_pool', 'no single token')!r}, "
                "not a class token: Grad-ECLIP explains the pooled token's attention row. Use a "
                "model that pools the class token, or a method without that assumption (e.g. "
                "captum_gradeclip.baselines or Captum's LayerGradCam)"
            )
        self.patch_size = patch_size if patch_size is not None else getattr(forward_func, "patch_size", None)

    def _check_inputs(self, inputs, additional) -> None:
        super()._check_inputs(inputs, additional)
        x = inputs[0]
        if x.dim() != 4:
            raise ValueError(f"pixel_values must have shape (N, C, H, W), got a tensor of rank {x.dim()} "
                             f"and shape {tuple(x.shape)}")
        p = self.patch_size
        if p is not None:
            ph, pw = (p, p) if isinstance(p, int) else tuple(p)
            if x.shape[-2] % ph or x.shape[-1] % pw:
                raise ValueError(
                    f"image size {tuple(x.shape[-2:])} is not a multiple of the patch size {p}; "
                    "resize or crop the image (e.g. with the model's processor)"
                )

    def _grid(self, inputs, capture: Capture) -> Tuple[int, int]:
        if "grid" in capture.extra:
            return capture.extra["grid"]
        p = self.patch_size
        if p is None:
            raise ValueError("cannot tell the patch grid: pass patch_size= to ImageGradECLIP, or use a "
                             "forward function with a `patch_size` attribute (ImageTextSimilarity has one)")
        ph, pw = (p, p) if isinstance(p, int) else tuple(p)
        h, w = inputs[0].shape[-2] // ph, inputs[0].shape[-1] // pw
        if h * w > capture.value.shape[1]:
            raise ValueError(f"the explained layer has {capture.value.shape[1]} tokens, fewer than the "
                             f"{h} x {w} patch grid of a {tuple(inputs[0].shape[-2:])} image with patch "
                             f"size {p}: is patch_size right?")
        return h, w

    def _scored(self, inputs, pooled, capture):
        h, w = self._grid(inputs, capture)
        b, n = capture.value.shape[:2]
        s = torch.zeros(b, n, dtype=torch.bool, device=capture.value.device)
        s[:, n - h * w:] = True
        return s

    def _finalize(self, maps, inputs, pooled, capture):
        h, w = self._grid(inputs, capture)
        return maps[..., maps.shape[-1] - h * w:].unflatten(-1, (h, w))

    def _single(self, maps):
        return maps[0].unsqueeze(1)


class TextGradECLIP(LayerGradECLIP):
    r"""Grad-ECLIP for the text tower (word importances).

    Explains ``forward_func(input_ids, *additional_forward_args) -> (T, N)`` scores (e.g.
    :class:`~captum_gradeclip.TextImageSimilarity`). The pooled token is the EOS token; spatial
    weights are min-max normalised over the positions from SOS through EOS (as the authors do).
    Several layers (the authors use the last 8): the signed per-layer maps are summed and the
    ReLU applied to the sum. The map is zero at SOS, EOS and every position after EOS (padding).

    ``attribute(input_ids (T, L), target, additional_forward_args=(attention_mask,)) -> (T, L)``;
    ``attribute_all(input_ids) -> (T, N, L)``.
    """

    _relu_per_layer = False

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        *,
        spatial: str = "cosine",
        single_head: bool = False,
        eos_token_id: Optional[int] = None,
    ) -> None:
        r"""
        Args:
            forward_func, layer, device_ids, spatial, single_head: see :class:`LayerGradECLIP`.
            eos_token_id: where the pooled (EOS) token is, when ``forward_func`` has no
                ``eos_positions(input_ids)`` method: the first occurrence of this id; if
                ``None`` too, the argmax of the ids (OpenAI CLIP's convention).

        Raises:
            ValueError, TypeError: see :class:`LayerGradECLIP`.
        """
        super().__init__(forward_func, layer, device_ids, spatial=spatial, single_head=single_head)
        self.eos_token_id = eos_token_id

    def _check_inputs(self, inputs, additional) -> None:
        super()._check_inputs(inputs, additional)
        ids = inputs[0]
        if ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (T, L), got a tensor of rank {ids.dim()} and "
                             f"shape {tuple(ids.shape)}")
        if ids.is_floating_point():
            raise TypeError(f"input_ids must be integer token ids, got dtype {ids.dtype}")
        self._eos(ids)  # raises for texts without EOS

    def _eos(self, ids: Tensor) -> Tensor:
        fn = getattr(self.forward_func, "eos_positions", None)
        if fn is not None:
            return fn(ids)
        from ..forward import eos_positions

        return eos_positions(ids, self.eos_token_id)

    def _pooled_positions(self, inputs, additional, capture):
        return self._eos(inputs[0]).to(capture.value.device)

    def _scored(self, inputs, pooled, capture):
        n = capture.value.shape[1]
        return torch.arange(n, device=pooled.device)[None, :] <= pooled[:, None]

    def _finalize(self, maps, inputs, pooled, capture):
        pos = torch.arange(maps.shape[-1], device=maps.device)[None, :]
        words = (pos > 0) & (pos < pooled[:, None].to(maps.device))
        return torch.where(words, maps, torch.zeros((), dtype=maps.dtype, device=maps.device))
