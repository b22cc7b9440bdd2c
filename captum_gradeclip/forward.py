"""Forward functions for Captum: CLIP image–text similarity as ``nn.Module`` s.

Each wraps a Hugging Face ``CLIPModel`` (transformers 4.4x and 5.x) and fixes one tower's
inputs, so the other tower's inputs are the explained inputs::

    ImageTextSimilarity(model, input_ids=..., attention_mask=...)(pixel_values)  # (N, T)
    TextImageSimilarity(model, pixel_values=...)(input_ids, attention_mask)      # (T, N)

The fixed tower's embeddings are computed once, at construction, without gradients. Scores are
computed with the same operations, in the same order, as ``CLIPModel.forward``, so
``ImageTextSimilarity(..., logits=True)(pixel_values)`` equals ``model(...).logits_per_image``
bit for bit in the same process.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


def features(out: "Tensor | object") -> Tensor:
    """The embedding ``(B, E)`` out of ``get_image_features`` / ``get_text_features``'s result: a
    tensor in transformers 4.x, a ``ModelOutput`` (its ``pooler_output``) in 5.x."""
    return out if torch.is_tensor(out) else out.pooler_output


def normalize(x: Tensor) -> Tensor:
    """``x (..., E)`` over its L2 norm, exactly as ``CLIPModel.forward`` computes it
    (``x / pow(sum(x^2), 0.5)``, so that the explained score is the model's own bit for bit)."""
    return x / torch.pow(torch.sum(torch.pow(x, 2), dim=-1, keepdim=True), 0.5)


def eos_positions(input_ids: Tensor, eos_token_id: Optional[int] = None) -> Tensor:
    """Position of the pooled (EOS) token of each text, as Hugging Face CLIP pools.

    Args:
        input_ids: ``(T, L)`` token ids.
        eos_token_id: the EOS id; ``None`` or ``2`` (legacy configs) means the argmax of the ids
            (OpenAI CLIP's convention: EOS has the highest id), otherwise its first occurrence.

    Returns:
        ``(T,)`` long.

    Raises:
        ValueError: a text has no EOS token.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (T, L), got shape {tuple(input_ids.shape)}")
    if eos_token_id is None or eos_token_id == 2:
        return input_ids.to(torch.int).argmax(dim=-1).long()
    return first_eos(input_ids, eos_token_id,
                     "tokenize with the model's tokenizer (it appends EOS), and truncate with "
                     "truncation=True so EOS is kept")


def first_eos(input_ids: Tensor, eos_token_id: int, hint: str) -> Tensor:
    """``(T, L) -> (T,)``: the first position of ``eos_token_id`` in each text.

    Raises:
        ValueError: a text has no such token (the message ends with ``hint``).
    """
    hit = input_ids == eos_token_id
    missing = (~hit.any(dim=-1)).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"text(s) {missing} have no EOS token (id {eos_token_id}); {hint}")
    return hit.int().argmax(dim=-1).long()


def check_input_ids(model: nn.Module, input_ids: Tensor, attention_mask: Optional[Tensor], eos: bool = True) -> None:
    """Typed errors for token ids the model's text tower cannot take.

    Args:
        model: a Hugging Face ``CLIPModel``. input_ids: ``(T, L)``. attention_mask: ``(T, L)`` or ``None``.
        eos: also check that every text has the model's EOS token.

    Raises:
        ValueError: not ``(T, L)`` with ``T >= 1``; a mask of another shape; ids outside the
            vocabulary; a text without EOS.
        TypeError: float or bool ids.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids must have shape (T, L) with T >= 1, got {tuple(input_ids.shape)}")
    if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must have the shape of "
                         f"input_ids {tuple(input_ids.shape)}")
    vocab = getattr(getattr(getattr(model, "config", None), "text_config", None), "vocab_size", None)
    if vocab is not None and input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
        raise ValueError(f"input_ids hold ids outside the vocabulary [0, {vocab}) (min {int(input_ids.min())}, "
                         f"max {int(input_ids.max())}); tokenize with the model's own tokenizer")
    end = getattr(getattr(model, "text_model", None), "eos_token_id", None)
    if eos and end is not None:
        eos_positions(input_ids, end)  # clear error for texts without EOS


def _check_embeds(model: nn.Module, embeds: Tensor, name: str, letter: str) -> None:
    """Precomputed or computed embeddings ``(T or N, E)``: the model's width, finite, non-zero."""
    if embeds.dim() != 2 or embeds.shape[0] == 0:
        raise ValueError(f"{name} must have shape ({letter}, E) with {letter} >= 1, got {tuple(embeds.shape)}")
    width = getattr(getattr(model, "config", None), "projection_dim", None)
    if width is not None and embeds.shape[1] != width:
        raise ValueError(f"{name} have width {embeds.shape[1]}, but the model's joint embedding has "
                         f"E = {width}: use embeddings of this model (get_text_features / get_image_features)")
    norms = embeds.detach().float().norm(dim=-1)
    bad = (~torch.isfinite(norms) | (norms == 0)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"{name} rows {bad} are zero or not finite: their cosine similarity is undefined")


def _check_model(model: nn.Module) -> None:
    if hasattr(model, "logit_bias") and hasattr(getattr(model, "vision_model", None), "head"):
        raise TypeError(f"{type(model).__name__} is a SigLIP model (sigmoid logits, attention-pooling head); "
                        "use captum_gradeclip.SiglipImageTextSimilarity / SiglipTextImageSimilarity")
    for name in ("get_image_features", "get_text_features", "logit_scale"):
        if not hasattr(model, name):
            raise TypeError(
                f"model must be a transformers CLIPModel (or have get_image_features, "
                f"get_text_features and logit_scale); {type(model).__name__} has no {name!r}"
            )


class ImageTextSimilarity(nn.Module):
    r"""``pixel_values (N, 3, H, W) -> (N, T)``: cosine similarity (or CLIP logits) of each image
    with each of ``T`` fixed texts.

    Args:
        model: a Hugging Face ``CLIPModel``.
        input_ids: ``(T, L)`` token ids of the texts.
        attention_mask: ``(T, L)``, or ``None``.
        text_embeds: ``(T, E)`` precomputed projected text embeddings, instead of ``input_ids``.
        logits: return ``logit_scale.exp() * cosine`` (the model's ``logits_per_image``) instead
            of the cosine. Same maps up to scale.
        interpolate_pos_encoding: passed to the vision tower, for images of another size than
            the model's (``H`` and ``W`` must stay multiples of the patch size).

    Attributes:
        patch_size: the vision tower's patch size (read by :class:`ImageGradECLIP`).

    Raises:
        ValueError: no texts, an empty text batch, or ``attention_mask`` not shaped like
            ``input_ids``.
        TypeError: ``model`` is not a CLIP model.
    """

    def __init__(
        self,
        model: nn.Module,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        *,
        text_embeds: Optional[Tensor] = None,
        logits: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> None:
        super().__init__()
        _check_model(model)
        self.model = model
        self.logits = logits
        self.interpolate_pos_encoding = interpolate_pos_encoding
        if text_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids (T, L) of the texts, or text_embeds (T, E)")
            check_input_ids(model, input_ids, attention_mask)
            with torch.no_grad():
                text_embeds = features(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
        _check_embeds(model, text_embeds, "text_embeds", "T")
        self.register_buffer("text_embeds", normalize(text_embeds.detach()), persistent=False)
        vc = getattr(getattr(model, "config", None), "vision_config", None)
        self.patch_size = getattr(vc, "patch_size", None)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``(N, 3, H, W) -> (N, T)``."""
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate_pos_encoding else {}
        image = normalize(features(self.model.get_image_features(pixel_values=pixel_values, **kwargs)))
        text = self.text_embeds.to(image.dtype)
        sim = torch.matmul(text, image.t())
        if self.logits:
            sim = sim * self.model.logit_scale.exp()
        return sim.t()


class TextImageSimilarity(nn.Module):
    r"""``input_ids (T, L) [, attention_mask (T, L)] -> (T, N)``: cosine similarity (or logits)
    of each text with each of ``N`` fixed images.

    Args:
        model: a Hugging Face ``CLIPModel``.
        pixel_values: ``(N, 3, H, W)`` the images.
        image_embeds: ``(N, E)`` precomputed projected image embeddings, instead.
        logits: return ``logit_scale.exp() * cosine`` (the model's ``logits_per_text``).

    Raises:
        ValueError: no images or an empty batch. TypeError: ``model`` is not a CLIP model.
    """

    def __init__(
        self,
        model: nn.Module,
        pixel_values: Optional[Tensor] = None,
        *,
        image_embeds: Optional[Tensor] = None,
        logits: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> None:
        super().__init__()
        _check_model(model)
        self.model = model
        self.logits = logits
        if image_embeds is None:
            if pixel_values is None:
                raise ValueError("pass pixel_values (N, 3, H, W) of the images, or image_embeds (N, E)")
            if pixel_values.dim() != 4 or pixel_values.shape[0] == 0:
                raise ValueError(f"pixel_values must have shape (N, 3, H, W) with N >= 1, got "
                                 f"{tuple(pixel_values.shape)}")
            kwargs = {"interpolate_pos_encoding": True} if interpolate_pos_encoding else {}
            with torch.no_grad():
                image_embeds = features(model.get_image_features(pixel_values=pixel_values, **kwargs))
        _check_embeds(model, image_embeds, "image_embeds", "N")
        self.register_buffer("image_embeds", normalize(image_embeds.detach()), persistent=False)
        self.eos_token_id = getattr(getattr(model, "text_model", None), "eos_token_id", None)

    def eos_positions(self, input_ids: Tensor) -> Tensor:
        """``(T, L) -> (T,)``: the pooled position of each text, as the model pools."""
        return eos_positions(input_ids, self.eos_token_id)

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """``(T, L) -> (T, N)``."""
        check_input_ids(self.model, input_ids, attention_mask, eos=False)
        text = normalize(features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)))
        sim = torch.matmul(text, self.image_embeds.to(text.dtype).t())
        if self.logits:
            sim = sim * self.model.logit_scale.exp()
        return sim
