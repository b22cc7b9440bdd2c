"""Grad-CAM on ViT tokens."""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import torch
from torch import Tensor

from .._core.base import AttentionLayerAttribution, LayerSpec
from .._core.layout import ImageLayout, LayerTokens
from ..adapters import Capture


class TokenGradCAM(AttentionLayerAttribution):
    """Grad-CAM on ViT tokens: the input of ``layer``'s attention (after its LayerNorm), channel
    weights = mean gradient over the patch tokens, map = ReLU(sum_c w_c x_i,c).
    ``(N, 3, H, W) -> (N, 1, h, w)``. ``patch_size``: as in :class:`~captum_gradeclip.ImageGradECLIP`.

    Raises:
        TypeError: (at ``attribute``) an attention without token inputs (ResNet attention pooling:
            use Captum's ``LayerGradCam`` on the last stage instead).
    """

    pooled_grad_only = False

    def __init__(self, forward_func: Callable[..., Tensor], layer: LayerSpec,
                 device_ids: Optional[List[int]] = None, *, patch_size: Optional[int] = None) -> None:
        super().__init__(forward_func, layer, device_ids, layout=ImageLayout(forward_func, patch_size))

    def grad_sources(self, capture: Capture) -> List[Tensor]:
        """The gradient is taken at the attention's input, ``(B, L, D)`` (after the block's LayerNorm).

        Raises:
            TypeError: an attention without token inputs (ResNet attention pooling).
        """
        if capture.layer_input is None:
            raise TypeError("TokenGradCAM needs a transformer block (its attention reads token inputs); "
                            "for a ResNet tower use Captum's LayerGradCam on the last stage (e.g. "
                            "model.visual.layer4)")
        return [capture.layer_input]

    def combine(self, layers: List[LayerTokens], *, relu: bool, targets: Any, n_targets: int) -> Tensor:
        """``(K, B, L)``: ``sum_c w_c x_i,c`` with ``w (K, B, D)`` the gradient averaged over the scored
        tokens and ``x (B, L, D)`` the attention's input; ReLU unless ``relu=False``."""
        layer = layers[-1]
        cap = layer.capture
        x = cap.batch_first(cap.layer_input.detach().float())  # (B, L, D)
        g = cap.batch_first(layer.grads[0].float())  # (K, B, L, D)
        s = layer.scored.to(g.dtype)[None, :, :, None]
        w = (g * s).sum(-2) / s.sum(-2).clamp_min(1)  # (K, B, D)
        m = layer.only_scored(torch.einsum("kbd,bld->kbl", w, x))
        return m.clamp_min(0) if relu else m
