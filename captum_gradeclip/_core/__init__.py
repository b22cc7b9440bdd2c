"""The method: pure math (``functional``), token layouts, the neutral attribution base and
Grad-ECLIP's classes."""

from .base import AttentionLayerAttribution
from .gradeclip import ImageGradECLIP, LayerGradECLIP, TextGradECLIP
from .layout import ImageLayout, LayerTokens, TextLayout, TokenLayout

__all__ = ["AttentionLayerAttribution", "ImageGradECLIP", "ImageLayout", "LayerGradECLIP", "LayerTokens",
           "TextGradECLIP", "TextLayout", "TokenLayout"]
