"""Forward functions and token layouts for model families beyond CLIP: image classifiers
(Hugging Face ViT / DeiT, timm ViT), SigLIP / SigLIP 2, and BLIP's contrastive branch. See the
docs' "Model families" page (``docs/families.md``) for which layer to pass and what is pooled."""

from .blip import BlipImageTextSimilarity, BlipTextImageSimilarity
from .classifier import ImageClassifierLogits, classifier_layers
from .layouts import FirstTokenTextLayout, LastTokenTextLayout, ProbeLayout
from .siglip import SiglipImageTextSimilarity, SiglipTextImageSimilarity

__all__ = [
    "BlipImageTextSimilarity",
    "BlipTextImageSimilarity",
    "FirstTokenTextLayout",
    "ImageClassifierLogits",
    "LastTokenTextLayout",
    "ProbeLayout",
    "SiglipImageTextSimilarity",
    "SiglipTextImageSimilarity",
    "classifier_layers",
]
