"""MaskCLIP (Zhou et al., ECCV 2022): dense patch embeddings through the value path, scored
against the text."""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._core.base import AttentionLayerAttribution, LayerSpec
from .._core.layout import ImageLayout, LayerTokens


def value_head(model: Any, attn: Any) -> Callable[[Tensor], Tensor]:
    """MaskCLIP's head: ``values (B, L, D) -> embeddings (B, L, E)``, the way the pooled token
    reaches the embedding: ``out_proj``, post-LayerNorm and projection of a ViT (Hugging Face:
    ``post_layernorm`` / ``visual_projection``; OpenAI CLIP and open_clip: ``ln_post`` / ``proj``),
    or ``c_proj`` of a ResNet attention pool.

    Raises:
        TypeError: a model whose image tower is none of these.
    """
    if hasattr(attn, "c_proj") and not hasattr(attn, "out_proj"):
        return lambda v: attn.c_proj(v)
    visual = getattr(model, "visual", None)
    if hasattr(model, "vision_model") and hasattr(model, "visual_projection"):
        post, proj = model.vision_model.post_layernorm, model.visual_projection
    elif visual is not None and hasattr(visual, "ln_post"):
        post = visual.ln_post
        proj = (lambda y: y) if getattr(visual, "proj", None) is None else (lambda y: y @ visual.proj)
    else:
        raise TypeError(f"MaskCLIP does not know how {type(model).__name__}'s image tower maps tokens to "
                        "the embedding (expected a Hugging Face CLIP, an OpenAI CLIP / open_clip ViT or "
                        "a ResNet attention pool)")
    return lambda v: proj(post(F.linear(v, attn.out_proj.weight, attn.out_proj.bias)))


class MaskCLIP(AttentionLayerAttribution):
    """MaskCLIP: each patch's value vector of ``layer`` (the last block) through ``out_proj``, the
    post-LayerNorm and the projection (a ResNet attention pool: through ``c_proj``), scored
    (cosine) against the target text's embedding. ``(N, 3, H, W) -> (N, 1, h, w)``.

    Needs a forward function with ``.model`` and ``.text_embeds`` ``(K, E)``
    (:class:`~captum_gradeclip._core.protocols.EmbeddingSimilarity`:
    :class:`~captum_gradeclip.ImageTextSimilarity` or
    :class:`~captum_gradeclip.openai.EncoderImageTextSimilarity`).

    Raises:
        TypeError: (at ``attribute``) a forward function without ``.model`` / ``.text_embeds``.
    """

    needs_grad = False

    def __init__(self, forward_func: Callable[..., Tensor], layer: LayerSpec,
                 device_ids: Optional[List[int]] = None, *, patch_size: Optional[int] = None) -> None:
        super().__init__(forward_func, layer, device_ids, layout=ImageLayout(forward_func, patch_size))

    def combine(self, layers: List[LayerTokens], *, relu: bool, targets: Any, n_targets: int) -> Tensor:
        """``(K, B, L)``: the cosine of each token's dense embedding ``(B, L, E)`` (its value vector through
        the head) with the target text's embedding ``(K, E)``; no gradient.

        Raises:
            TypeError: a forward function without ``.model`` / ``.text_embeds``.
        """
        sim = self.forward_func
        model = getattr(sim, "model", None)
        if model is None or not hasattr(sim, "text_embeds"):
            raise TypeError("MaskCLIP needs an ImageTextSimilarity or EncoderImageTextSimilarity forward "
                            "function (with .model and .text_embeds)")
        layer = layers[-1]
        head = value_head(model, self.attention_modules[-1])
        with torch.no_grad():
            y = F.normalize(head(layer.capture.value.detach()).float(), dim=-1)  # (B, L, E)
            text = sim.text_embeds.float()  # (K, E), normalised
            if torch.is_tensor(targets) and targets.numel() > 1 and n_targets > 1:
                m = torch.einsum("ble,ke->kbl", y, text[targets])
            else:
                tgt = torch.as_tensor(0 if targets is None else targets).reshape(-1)
                tgt = tgt.expand(y.shape[0]) if tgt.numel() == 1 else tgt
                m = torch.einsum("ble,be->bl", y, text[tgt.to(text.device)])[None]
        return layer.only_scored(m)
