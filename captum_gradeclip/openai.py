"""Forward functions for OpenAI CLIP (the ``clip`` package) and open_clip models.

Both packages expose ``model.encode_image(images)`` and ``model.encode_text(tokens)``, pool the
text at the EOS token (the argmax of the ids), and use ``torch.nn.MultiheadAttention`` in their
transformers (``AttentionPool2d`` in the ResNet towers), which the adapters read. Neither package
is imported here::

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16", pretrained="openai")
    tokens = open_clip.get_tokenizer("ViT-B-16")(["a dog", "a cat"])
    sim = EncoderImageTextSimilarity(model, tokens)                         # (N, 3, H, W) -> (N, T)
    ImageGradECLIP(sim, model.visual.transformer.resblocks[-1]).attribute(images, target=0)
    tsim = EncoderTextImageSimilarity(model, images)                        # (T, L) -> (T, N)
    TextGradECLIP(tsim, list(model.transformer.resblocks[-8:])).attribute(tokens, target=0)
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._core.fastpath import mha_fast_path_off
from .forward import eos_positions, first_eos


def _patch_size(visual: nn.Module) -> Optional[int]:
    p = getattr(visual, "patch_size", None)
    if p is None and isinstance(getattr(visual, "conv1", None), nn.Conv2d) and not hasattr(visual, "attnpool"):
        p = visual.conv1.kernel_size
    if isinstance(p, (tuple, list)):
        p = p[0] if p[0] == p[-1] else tuple(p)
    return p


def image_attention_layers(model: nn.Module) -> List[nn.Module]:
    """The layers Grad-ECLIP can explain in an OpenAI CLIP / open_clip image tower, in order: the
    transformer blocks of a ViT (``visual.transformer.resblocks``), or ``[visual.attnpool]`` of a
    ResNet.

    Raises:
        ValueError: another tower (timm or Hugging Face towers inside open_clip).
    """
    visual = model.visual
    if hasattr(visual, "attnpool"):
        return [visual.attnpool]
    if hasattr(getattr(visual, "transformer", None), "resblocks"):
        return list(visual.transformer.resblocks)
    raise ValueError(f"the image tower {type(visual).__name__} is neither an OpenAI CLIP / open_clip ViT "
                     "nor a ResNet with attention pooling (timm and Hugging Face towers are not supported)")


def _image_pool(visual: nn.Module) -> str:
    """How the image tower pools: ``"tok"`` (class token), ``"attnpool"`` (ResNet attention
    pooling), or what else it does (open_clip's ``pool_type`` "avg"/"none", an attentional pooler)."""
    if hasattr(visual, "attnpool"):
        return "attnpool"
    if getattr(visual, "attn_pool", None) is not None:
        return "attentional pooler (attn_pool)"
    return str(getattr(visual, "pool_type", "tok"))


def _text_pool(model: nn.Module) -> Tuple[str, Optional[int]]:
    """open_clip's text pooling (``text_pool_type``, ``text_eos_id``); OpenAI's is the argmax."""
    text = getattr(model, "text", None)
    pool = getattr(model, "text_pool_type", None) or getattr(text, "pool_type", None) or "argmax"
    eos = getattr(model, "text_eos_id", None)
    eos = eos if eos is not None else getattr(text, "eos_id", None)
    return str(pool), eos


def _logits(model: nn.Module, img: Tensor, txt: Tensor) -> Tensor:
    """``(N, T)`` logits as open_clip's ``get_logits`` computes them (a SigLIP-style
    ``logit_bias`` added where the model has one)."""
    out = model.logit_scale.exp() * img @ txt.t()
    bias = getattr(model, "logit_bias", None)
    return out + bias if bias is not None else out


def _check(model: nn.Module) -> None:
    for name in ("encode_image", "encode_text"):
        if not callable(getattr(model, name, None)):
            raise TypeError(f"model must have encode_image and encode_text (OpenAI CLIP / open_clip); "
                            f"{type(model).__name__} has no {name!r}")


class EncoderImageTextSimilarity(nn.Module):
    r"""``images (N, 3, H, W) -> (N, T)`` cosine similarity (or logits) with ``T`` fixed texts.

    Args:
        model: an OpenAI CLIP or open_clip model (``encode_image``, ``encode_text``).
        text_tokens: ``(T, L)`` token ids from the package's tokenizer.
        text_embeds: ``(T, E)`` precomputed text embeddings instead.
        logits: multiply by ``model.logit_scale.exp()`` (and add ``model.logit_bias`` where the
            model has one, as open_clip's SigLIP-style models do).

    The output equals the package's own ``logit_scale * image_features @ text_features.T`` (or
    the cosine), bit for bit in the same process, when the model runs with autograd on (as Captum's methods and the
    explained forward run it); under ``torch.no_grad()`` PyTorch's fused attention kernel for
    batch-first ``nn.MultiheadAttention`` may differ in the last bits (the cached embeddings are
    computed with that kernel switched off: see ``captum_gradeclip._core.fastpath``).

    Attributes:
        patch_size: of a ViT image tower (``None`` for ResNets: their grid comes from the
            attention pool).
        image_pool: how the image tower pools (``"tok"``: class token; ``"attnpool"``: ResNet
            attention pooling; else open_clip's ``pool_type``, e.g. ``"avg"``).
        pooled_token: ``0``, the row Grad-ECLIP explains, or ``None`` when the tower pools no
            single token (then :class:`~captum_gradeclip.ImageGradECLIP` refuses it; other
            Captum methods still work on this forward).
    """

    def __init__(self, model: nn.Module, text_tokens: Optional[Tensor] = None, *,
                 text_embeds: Optional[Tensor] = None, logits: bool = False) -> None:
        super().__init__()
        _check(model)
        self.model, self.logits = model, logits
        if text_embeds is None:
            if text_tokens is None or text_tokens.dim() != 2 or text_tokens.shape[0] == 0:
                raise ValueError("pass text_tokens (T, L) with T >= 1, or text_embeds (T, E)")
            with torch.no_grad(), mha_fast_path_off():  # the kernels the model runs with autograd on
                text_embeds = model.encode_text(text_tokens)
        self.register_buffer("text_embeds", F.normalize(text_embeds.detach().float(), dim=-1), persistent=False)
        visual = getattr(model, "visual", model)
        self.patch_size = _patch_size(visual)
        self.image_pool = _image_pool(visual)
        self.pooled_token: Optional[int] = 0 if self.image_pool in ("tok", "attnpool") else None

    def forward(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W) -> (N, T)``."""
        img = F.normalize(self.model.encode_image(images), dim=-1)
        txt = self.text_embeds.to(img.dtype)
        # the packages' own expression and order: logit_scale * image_features @ text_features.T
        return _logits(self.model, img, txt) if self.logits else img @ txt.t()


class EncoderTextImageSimilarity(nn.Module):
    r"""``text_tokens (T, L) -> (T, N)`` cosine similarity (or logits) with ``N`` fixed images.

    Args:
        model: an OpenAI CLIP or open_clip model. images: ``(N, 3, H, W)``.
        image_embeds: ``(N, E)`` precomputed instead. logits: multiply by the logit scale.

    Attributes:
        text_pool, text_eos_id: how the text tower pools (open_clip's ``text_pool_type`` and
            ``text_eos_id``; ``"argmax"`` for OpenAI CLIP), read by :meth:`eos_positions`.
    """

    def __init__(self, model: nn.Module, images: Optional[Tensor] = None, *,
                 image_embeds: Optional[Tensor] = None, logits: bool = False) -> None:
        super().__init__()
        _check(model)
        self.model, self.logits = model, logits
        if image_embeds is None:
            if images is None or images.dim() != 4 or images.shape[0] == 0:
                raise ValueError("pass images (N, 3, H, W) with N >= 1, or image_embeds (N, E)")
            with torch.no_grad(), mha_fast_path_off():
                image_embeds = model.encode_image(images)
        self.register_buffer("image_embeds", F.normalize(image_embeds.detach().float(), dim=-1), persistent=False)
        self.text_pool, self.text_eos_id = _text_pool(model)

    def eos_positions(self, text_tokens: Tensor) -> Tensor:
        """``(T, L) -> (T,)``: the position the text tower pools: the highest id (OpenAI CLIP and
        open_clip's default ``"argmax"``), the first ``text_eos_id`` (``"eos"``) or the last
        position (``"last"``).

        Raises:
            ValueError: the tower pools the first token or no single token (nothing to explain
                before it), or a text has no EOS id.
        """
        if self.text_pool == "argmax":
            return eos_positions(text_tokens, None)
        if self.text_pool == "eos" and self.text_eos_id is not None:  # not the argmax, even for id 2
            return first_eos(text_tokens, int(self.text_eos_id),
                             "tokenize with the model's tokenizer (open_clip.get_tokenizer)")
        if self.text_pool == "last":
            return torch.full((text_tokens.shape[0],), text_tokens.shape[1] - 1, dtype=torch.long,
                              device=text_tokens.device)
        raise ValueError(f"the text tower pools with pool_type={self.text_pool!r}; Grad-ECLIP explains "
                         "a tower that pools one token after the words ('argmax', 'eos' or 'last')")

    def forward(self, text_tokens: Tensor) -> Tensor:
        """``(T, L) -> (T, N)``."""
        txt = F.normalize(self.model.encode_text(text_tokens), dim=-1)
        img = self.image_embeds.to(txt.dtype)
        # as the packages compute logits_per_text: the image-by-text product, transposed
        return (_logits(self.model, img, txt) if self.logits else img @ txt.t()).t()
