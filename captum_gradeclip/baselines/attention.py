"""Attention-based baselines: the pooled token's attention row, attention rollout and GAME
(Chefer et al.), each once for the image tower and once for the text tower (only the token
layout differs). The attention weights are recomputed from the model's own ``q, k`` and mask with
:func:`~captum_gradeclip.functional.attention_probs` (the backend may never materialise them)."""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import torch
from torch import Tensor

from .._core.base import AttentionLayerAttribution, LayerSpec
from .._core.functional import attention_probs
from .._core.layout import ImageLayout, LayerTokens, TextLayout


def full_attention(layer: LayerTokens) -> Tensor:
    """``(B, H, L, L)``: the model's softmax attention in ``layer``, from its ``q, k`` and mask."""
    cap = layer.capture
    return attention_probs(query=cap.query.detach(), key=cap.key.detach(), mask=cap.mask, num_heads=cap.num_heads)


def _for_every_target(m: Tensor, n_targets: int) -> Tensor:
    """``(B, L)`` -> ``(K, B, L)``: a target-independent map, repeated (a view)."""
    return m.unsqueeze(0).expand(n_targets, *m.shape)


class AttentionRow(AttentionLayerAttribution):
    """The pooled token's softmax attention over the tokens of the last given layer, heads
    averaged; the same map for every target. Use :class:`CLSAttention` / :class:`TextAttention`."""

    needs_grad = False

    def combine(self, layers: List[LayerTokens], *, relu: bool, targets: Any, n_targets: int) -> Tensor:
        """``(K, B, L)``: the last layer's pooled-row attention ``(B, L)``, heads averaged, the same for
        each of the ``K`` targets (``relu`` and ``targets`` change nothing: attention is not signed)."""
        layer = layers[-1]
        a = full_attention(layer).mean(1)  # heads averaged
        return _for_every_target(layer.only_scored(layer.at_pooled(a)), n_targets)


class Rollout(AttentionLayerAttribution):
    """Attention rollout (Abnar & Zuidema, 2020) over the given layers (first to last):
    ``prod_l (0.5 A_l + 0.5 I)``, heads averaged, pooled row. Use :class:`AttentionRollout` /
    :class:`TextRollout`."""

    needs_grad = False

    def combine(self, layers: List[LayerTokens], *, relu: bool, targets: Any, n_targets: int) -> Tensor:
        """``(K, B, L)``: the pooled row of ``prod_l (0.5 A_l + 0.5 I)`` (rows renormalised, heads
        averaged) over the layers first to last, the same for each of the ``K`` targets."""
        r = None
        for layer in layers:
            a = full_attention(layer).mean(1)
            eye = torch.eye(a.shape[-1], device=a.device)
            a = 0.5 * a + 0.5 * eye
            a = a / a.sum(-1, keepdim=True)
            r = a if r is None else a @ r
        return _for_every_target(layers[-1].only_scored(layers[-1].at_pooled(r)), n_targets)


class Relevance(AttentionLayerAttribution):
    """Chefer et al. (ICCV 2021), "GAME": ``R <- R + E_h[(grad_A * A)^+] R`` over the given
    layers, with ``grad_A = grad_o v^T`` per head (exact, as ``o = A v``); pooled row. Use
    :class:`GAME` / :class:`TextGAME`."""

    pooled_grad_only = False  # needs the gradient at every token

    def combine(self, layers: List[LayerTokens], *, relu: bool, targets: Any, n_targets: int) -> Tensor:
        """``(K, B, L)``: the pooled row of the relevance ``R`` accumulated over the layers, one per
        target (``grad_A`` from each target's ``dS/do``, ``(K, B, L, D)``)."""
        r = None
        for layer in layers:
            cap = layer.capture
            a = full_attention(layer)  # (B, H, L, L)
            g = layer.o_grad().float()  # (K, B, L, D)
            k, b, n, d = g.shape
            h = cap.num_heads
            gh = g.view(k, b, n, h, d // h).transpose(2, 3)  # (K, B, H, L, dh)
            vh = cap.value.detach().float().view(b, n, h, d // h).transpose(1, 2)  # (B, H, L, dh)
            grad_a = gh @ vh.transpose(-1, -2)[None]  # (K, B, H, L, L)
            cam = (grad_a * a[None]).clamp_min(0).mean(2)  # (K, B, L, L)
            eye = torch.eye(n, device=g.device).expand(k, b, n, n)
            r = eye + cam if r is None else r + cam @ r
        return layers[-1].only_scored(layers[-1].at_pooled(r))


# ---- the image and text versions: the same method, another token layout -----------------------


class CLSAttention(AttentionRow):
    """The class token's attention over the patches (heads averaged) in ``layer`` (use the last
    block). ``attribute(pixel_values (N, 3, H, W)) -> (N, 1, h, w)``; the same map for every
    target. ``patch_size``: as in :class:`~captum_gradeclip.ImageGradECLIP`."""

    def __init__(self, forward_func: Callable[..., Tensor], layer: LayerSpec,
                 device_ids: Optional[List[int]] = None, *, patch_size: Optional[int] = None) -> None:
        super().__init__(forward_func, layer, device_ids, layout=ImageLayout(forward_func, patch_size))


class AttentionRollout(Rollout):
    """Attention rollout over the image tower's ``layer`` list (pass all blocks, first to last).
    ``(N, 3, H, W) -> (N, 1, h, w)``."""

    def __init__(self, forward_func: Callable[..., Tensor], layer: LayerSpec,
                 device_ids: Optional[List[int]] = None, *, patch_size: Optional[int] = None) -> None:
        super().__init__(forward_func, layer, device_ids, layout=ImageLayout(forward_func, patch_size))


class GAME(Relevance):
    """Chefer et al.'s gradient-weighted attention relevance over the image tower's ``layer`` list
    (pass all blocks). ``(N, 3, H, W) -> (N, 1, h, w)``."""

    def __init__(self, forward_func: Callable[..., Tensor], layer: LayerSpec,
                 device_ids: Optional[List[int]] = None, *, patch_size: Optional[int] = None) -> None:
        super().__init__(forward_func, layer, device_ids, layout=ImageLayout(forward_func, patch_size))


class TextAttention(AttentionRow):
    """The EOS token's attention over the words in ``layer`` (heads averaged).
    ``input_ids (T, L) -> (T, L)``. ``eos_token_id``: as in :class:`~captum_gradeclip.TextGradECLIP`."""

    def __init__(self, forward_func: Callable[..., Tensor], layer: LayerSpec,
                 device_ids: Optional[List[int]] = None, *, eos_token_id: Optional[int] = None) -> None:
        super().__init__(forward_func, layer, device_ids, layout=TextLayout(forward_func, eos_token_id))


class TextRollout(Rollout):
    """Attention rollout over the text tower's ``layer`` list (pass all blocks). ``(T, L) -> (T, L)``."""

    def __init__(self, forward_func: Callable[..., Tensor], layer: LayerSpec,
                 device_ids: Optional[List[int]] = None, *, eos_token_id: Optional[int] = None) -> None:
        super().__init__(forward_func, layer, device_ids, layout=TextLayout(forward_func, eos_token_id))


class TextGAME(Relevance):
    """Chefer et al.'s relevance over the text tower's ``layer`` list (pass all blocks).
    ``(T, L) -> (T, L)``."""

    def __init__(self, forward_func: Callable[..., Tensor], layer: LayerSpec,
                 device_ids: Optional[List[int]] = None, *, eos_token_id: Optional[int] = None) -> None:
        super().__init__(forward_func, layer, device_ids, layout=TextLayout(forward_func, eos_token_id))
