"""captum-gradeclip: Grad-ECLIP explanations of CLIP image–text matching, as Captum attributions."""

from ._core import ImageGradECLIP, LayerGradECLIP, TextGradECLIP
from .adapters import AttentionAdapter, register_adapter
from .families import (
                       BlipImageTextSimilarity,
                       BlipTextImageSimilarity,
                       ImageClassifierLogits,
                       SiglipImageTextSimilarity,
                       SiglipTextImageSimilarity,
)
from .forward import ImageTextSimilarity, TextImageSimilarity, eos_positions

__version__ = "0.1.0"

__all__ = [
    "AttentionAdapter",
    "BlipImageTextSimilarity",
    "BlipTextImageSimilarity",
    "ImageClassifierLogits",
    "ImageGradECLIP",
    "ImageTextSimilarity",
    "LayerGradECLIP",
    "TextGradECLIP",
    "SiglipImageTextSimilarity",
    "SiglipTextImageSimilarity",
    "TextImageSimilarity",
    "eos_positions",
    "register_adapter",
    "__version__",
]
