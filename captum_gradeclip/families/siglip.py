"""Forward functions for Hugging Face SigLIP / SigLIP 2 (``SiglipModel``): image-text scores as
``SiglipModel.forward`` computes them, the sigmoid logit ``cos * exp(logit_scale) + logit_bias``
(default) or the cosine.

The vision tower pools with an attention-pooling head (``model.vision_model.head``: a learned
probe is the one query of an ``nn.MultiheadAttention`` over the patch tokens); ``ImageGradECLIP``
explains that attention, with the probe as the pooled query and every patch as a key
(:class:`~captum_gradeclip.families.layouts.ProbeLayout`). The text tower pools the last position
(:class:`~captum_gradeclip.families.layouts.LastTokenTextLayout`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..forward import features
from .layouts import LastTokenTextLayout, ProbeLayout


def _norm(x: Tensor) -> Tensor:
    # exactly SiglipModel.forward's normalisation
    return x / x.norm(p=2, dim=-1, keepdim=True)


def _check_siglip(model: nn.Module) -> None:
    for name in ("vision_model", "text_model", "logit_scale", "logit_bias"):
        if not hasattr(model, name):
            raise TypeError(f"model must be a transformers SiglipModel (or Siglip2Model); "
                            f"{type(model).__name__} has no {name!r}")
    if not getattr(model.vision_model, "use_head", True):
        raise ValueError("this SigLIP vision tower has no pooling head (vision_use_head=False) and returns "
                         "no pooled embedding; there is no image-text score to explain")


def _scores(model: nn.Module, text: Tensor, image: Tensor, logits: bool) -> Tensor:
    """``(T, N)``: ``logits_per_text`` as ``SiglipModel.forward`` computes it (or the cosine)."""
    sim = torch.matmul(text, image.t().to(text.device))
    if logits:
        sim = sim * model.logit_scale.to(text.device).exp() + model.logit_bias.to(text.device)
    return sim


class SiglipImageTextSimilarity(nn.Module):
    r"""``pixel_values (N, 3, H, W) -> (N, T)``: SigLIP's sigmoid logits (or cosines) of each image
    with ``T`` fixed texts; ``logits=True`` equals ``model(...).logits_per_image`` bit for bit in the same process.

    Args:
        model: a ``SiglipModel``.
        input_ids: ``(T, L)`` token ids (SigLIP is trained with ``padding="max_length"``).
        attention_mask: ``(T, L)`` or ``None``.
        logits: the sigmoid logit (default) or the cosine.

    Attributes:
        patch_size: the vision tower's patch size. pooled_token: ``None`` (no encoder token is
        pooled; the probe is). image_layout: the probe layout ``ImageGradECLIP`` uses.

    Raises:
        TypeError: not a SigLIP model. ValueError: a tower without pooling head; no texts.
    """

    image_pool = "an attention-pooling head (a learned probe over the patch tokens)"
    pooled_token: Optional[int] = None

    def __init__(self, model: nn.Module, input_ids: Tensor, attention_mask: Optional[Tensor] = None, *,
                 logits: bool = True) -> None:
        super().__init__()
        _check_siglip(model)
        if input_ids.dim() != 2 or input_ids.shape[0] == 0:
            raise ValueError(f"input_ids must have shape (T, L) with T >= 1, got {tuple(input_ids.shape)}")
        self.model, self.logits = model, logits
        with torch.no_grad():
            text = features(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
        self.register_buffer("text_embeds", _norm(text), persistent=False)
        self.patch_size = model.config.vision_config.patch_size

    def image_layout(self, patch_size: Any = None) -> ProbeLayout:
        """The layout ``ImageGradECLIP`` uses: the probe is pooled, every patch is a key."""
        return ProbeLayout(self, patch_size)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``(N, 3, H, W) -> (N, T)``."""
        image = _norm(features(self.model.get_image_features(pixel_values=pixel_values)))
        return _scores(self.model, self.text_embeds.to(image.dtype), image, self.logits).t()


class SiglipTextImageSimilarity(nn.Module):
    r"""``input_ids (T, L) [, attention_mask (T, L)] -> (T, N)``: SigLIP's sigmoid logits (or
    cosines) of each text with ``N`` fixed images; ``logits=True`` equals
    ``model(...).logits_per_text`` bit for bit in the same process. The pooled token is the last position.

    Args:
        model: a ``SiglipModel``. pixel_values: ``(N, 3, H, W)``. logits: as above.

    Raises:
        TypeError: not a SigLIP model. ValueError: a tower without pooling head; no images.
    """

    def __init__(self, model: nn.Module, pixel_values: Tensor, *, logits: bool = True) -> None:
        super().__init__()
        _check_siglip(model)
        if pixel_values.dim() != 4 or pixel_values.shape[0] == 0:
            raise ValueError(f"pixel_values must have shape (N, 3, H, W) with N >= 1, got {tuple(pixel_values.shape)}")
        self.model, self.logits = model, logits
        with torch.no_grad():
            image = features(model.get_image_features(pixel_values=pixel_values))
        self.register_buffer("image_embeds", _norm(image), persistent=False)

    def eos_positions(self, input_ids: Tensor) -> Tensor:
        """``(T, L) -> (T,)``: the pooled position, ``L - 1`` for every text."""
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, dtype=torch.long, device=input_ids.device)

    def text_layout(self, eos_token_id: Optional[int] = None) -> LastTokenTextLayout:
        """The layout ``TextGradECLIP`` uses: the last position is pooled."""
        return LastTokenTextLayout(self, eos_token_id)

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """``(T, L) -> (T, N)``."""
        text = _norm(features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)))
        return _scores(self.model, text, self.image_embeds.to(text.dtype), self.logits)
