"""Forward functions for BLIP's image-text contrastive branch (``BlipForImageTextRetrieval``
called with ``use_itm_head=False``): the cosine of the projected CLS embeddings, computed as the
model computes its ``itm_score`` (bit for bit in the same process).

Image maps: the vision tower pools CLS (token 0); its attention has a fused ``qkv`` and a
``projection`` (:class:`~captum_gradeclip.adapters.FusedQKVLinearAdapter`). Word maps: the text
encoder is BERT-style (``self.query/key/value`` + ``output.dense``, post-LayerNorm) and pools CLS
(:class:`~captum_gradeclip.families.layouts.FirstTokenTextLayout`); pass its self-attention
(``model.text_encoder.encoder.layer[i].attention``: the layers also hold a cross-attention, used
by the ITM head only).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..forward import first_eos
from .layouts import FirstTokenTextLayout


def _check_blip(model: nn.Module) -> None:
    for name in ("vision_model", "text_encoder", "vision_proj", "text_proj"):
        if not hasattr(model, name):
            raise TypeError(f"model must be a transformers BlipForImageTextRetrieval; "
                            f"{type(model).__name__} has no {name!r}")


def _image_feat(model: nn.Module, pixel_values: Tensor) -> Tensor:
    embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    return F.normalize(model.vision_proj(embeds[:, 0, :]), dim=-1)


def _text_feat(model: nn.Module, input_ids: Tensor, attention_mask: Optional[Tensor]) -> Tensor:
    embeds = model.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return F.normalize(model.text_proj(embeds[:, 0, :]), dim=-1)


class BlipImageTextSimilarity(nn.Module):
    r"""``pixel_values (N, 3, H, W) -> (N, T)``: BLIP's contrastive cosine of each image with ``T``
    fixed texts, equal to ``model(input_ids, pixel_values, use_itm_head=False).itm_score``.

    Args:
        model: a ``BlipForImageTextRetrieval``.
        input_ids: ``(T, L)``. attention_mask: ``(T, L)`` or ``None``.

    Attributes:
        patch_size: the vision tower's patch size. pooled_token: ``0`` (CLS).

    Raises:
        TypeError: not a BLIP retrieval model. ValueError: no texts.
    """

    pooled_token = 0
    image_pool = "class token"

    def __init__(self, model: nn.Module, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> None:
        super().__init__()
        _check_blip(model)
        if input_ids.dim() != 2 or input_ids.shape[0] == 0:
            raise ValueError(f"input_ids must have shape (T, L) with T >= 1, got {tuple(input_ids.shape)}")
        self.model = model
        with torch.no_grad():
            self.register_buffer("text_feat", _text_feat(model, input_ids, attention_mask), persistent=False)
        self.patch_size = model.config.vision_config.patch_size

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``(N, 3, H, W) -> (N, T)``."""
        image = _image_feat(self.model, pixel_values)
        return image @ self.text_feat.to(image.dtype).t()


class BlipTextImageSimilarity(nn.Module):
    r"""``input_ids (T, L) [, attention_mask (T, L)] -> (T, N)``: BLIP's contrastive cosine of each
    text with ``N`` fixed images (the transpose of the model's ``itm_score``, bit for bit in the same process). The
    pooled token is CLS; the map covers the words up to the first SEP.

    Args:
        model: a ``BlipForImageTextRetrieval``. pixel_values: ``(N, 3, H, W)``.

    Raises:
        TypeError: not a BLIP retrieval model. ValueError: no images.
    """

    def __init__(self, model: nn.Module, pixel_values: Tensor) -> None:
        super().__init__()
        _check_blip(model)
        if pixel_values.dim() != 4 or pixel_values.shape[0] == 0:
            raise ValueError(f"pixel_values must have shape (N, 3, H, W) with N >= 1, got {tuple(pixel_values.shape)}")
        self.model = model
        with torch.no_grad():
            self.register_buffer("image_feat", _image_feat(model, pixel_values), persistent=False)
        self.sep_token_id = int(model.config.text_config.sep_token_id)

    def eos_positions(self, input_ids: Tensor) -> Tensor:
        """``(T, L) -> (T,)``: the first SEP of each text (where the words end)."""
        return first_eos(input_ids, self.sep_token_id, "tokenize with BLIP's tokenizer (it appends [SEP])")

    def text_layout(self, eos_token_id: Any = None) -> FirstTokenTextLayout:
        """The layout ``TextGradECLIP`` uses: CLS is pooled."""
        return FirstTokenTextLayout(self, eos_token_id)

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """``(T, L) -> (T, N)``."""
        text = _text_feat(self.model, input_ids, attention_mask)
        return (self.image_feat.to(text.dtype) @ text.t()).t()
