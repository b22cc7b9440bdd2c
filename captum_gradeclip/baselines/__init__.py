"""Baseline explanation methods for CLIP, on the same Captum-style API as Grad-ECLIP.

Each class takes ``(forward_func, layer_or_layers)`` and has ``attribute(inputs, target,
additional_forward_args)`` (image: ``(N, 1, h, w)``; text: ``(T, L)``) and ``attribute_all``.
They share Grad-ECLIP's machinery (:class:`~captum_gradeclip._core.base.AttentionLayerAttribution`,
the adapters), so they read the model's own ``q, k, v`` and never rely on attention probabilities
the backend may not materialise (they are recomputed from ``q, k``); none of them is a Grad-ECLIP.

Image: :class:`CLSAttention`, :class:`AttentionRollout`, :class:`TokenGradCAM`, :class:`GAME`,
:class:`MaskCLIP`, :class:`RISE`. Text: :class:`TextAttention`, :class:`TextRollout`,
:class:`TextGAME`.
"""

from .attention import (
    GAME,
    AttentionRollout,
    AttentionRow,
    CLSAttention,
    Relevance,
    Rollout,
    TextAttention,
    TextGAME,
    TextRollout,
    full_attention,
)
from .gradcam import TokenGradCAM
from .maskclip import MaskCLIP, value_head
from .rise import RISE

__all__ = ["AttentionRollout", "AttentionRow", "CLSAttention", "GAME", "MaskCLIP", "RISE", "Relevance", "Rollout",
           "TextAttention", "TextGAME", "TextRollout", "TokenGradCAM", "full_attention", "value_head"]
