"""The student's dense patch features in the joint embedding space, and pooling them by region.

The features are MaskCLIP's (Zhou et al., ECCV 2022): each patch token's *value* vector of the
image tower's last attention block, sent the way the pooled token reaches the embedding
(``out_proj``, the post-LayerNorm and the visual projection;
:func:`~captum_gradeclip.baselines.maskclip.value_head`). Unlike the last layer's patch tokens,
these live in the space the text embeddings are compared in, so a region pooled from them can be
scored against a phrase. They are computed from the tower's hidden states, without hooks, in the
same forward that gives the global image embedding, so one call serves both losses (and runs
inside :class:`~torch.nn.parallel.DistributedDataParallel`'s forward).
"""

from __future__ import annotations

from typing import Any, Tuple

import torch
from torch import Tensor

from ..baselines.maskclip import value_head


def _check_hf_clip(model: Any) -> None:
    for name in ("vision_model", "visual_projection"):
        if not hasattr(model, name):
            raise TypeError(f"dense features need a Hugging Face CLIPModel (with vision_model and "
                            f"visual_projection); {type(model).__name__} has no {name!r}")


def dense_features(model: Any, pixel_values: Tensor) -> Tuple[Tensor, Tensor]:
    """Dense patch embeddings and the global image embedding, from one forward of the image tower.

    Args:
        model: a Hugging Face ``CLIPModel``.
        pixel_values: ``(N, 3, H, W)``, ``H`` and ``W`` multiples of the patch size.

    Returns:
        ``(dense, image_embeds)``: ``dense (N, h, w, E)`` the last block's value path of every patch
        through ``out_proj``, ``post_layernorm`` and ``visual_projection`` (not normalised);
        ``image_embeds (N, E)`` the model's projected pooled embedding (``get_image_features``).

    Raises:
        TypeError: ``model`` is not a Hugging Face CLIP.
        ValueError: ``pixel_values`` is not ``(N, 3, H, W)``.
    """
    _check_hf_clip(model)
    if pixel_values.dim() != 4:
        raise ValueError(f"pixel_values must be (N, 3, H, W), got shape {tuple(pixel_values.shape)}")
    vision = model.vision_model
    out = vision(pixel_values=pixel_values, output_hidden_states=True)
    last = vision.encoder.layers[-1]
    attn = last.self_attn
    values = attn.v_proj(last.layer_norm1(out.hidden_states[-2]))  # (N, L, D)
    dense = value_head(model, attn)(values[:, 1:])  # (N, h*w, E): patches only
    patch = model.config.vision_config.patch_size
    h, w = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
    image_embeds = model.visual_projection(out.pooler_output)
    return dense.reshape(len(pixel_values), h, w, -1), image_embeds


def pool_regions(dense: Tensor, masks: Tensor, image_index: Tensor) -> Tensor:
    """Region embeddings: the mask-weighted mean of each region's image's patch embeddings.

    Args:
        dense: ``(N, h, w, E)`` patch embeddings.
        masks: ``(R, h, w)`` non-negative weights of each region on the patch grid.
        image_index: ``(R,)`` long, which image each region lies in.

    Returns:
        ``(R, E)``: ``sum_p m_p f_p / sum_p m_p`` (not normalised).

    Raises:
        ValueError: shapes that disagree, negative weights, or a region whose weights are all zero.
    """
    if masks.dim() != 3 or masks.shape[1:] != dense.shape[1:3]:
        raise ValueError(f"masks must be (R, h, w) = (R, {dense.shape[1]}, {dense.shape[2]}) like the "
                         f"dense grid, got {tuple(masks.shape)}")
    if image_index.shape != (masks.shape[0],):
        raise ValueError(f"image_index must be (R,) = ({masks.shape[0]},), got {tuple(image_index.shape)}")
    masks = masks.to(dense.dtype)
    total = masks.flatten(1).sum(-1)
    if bool((masks < 0).any()) or bool((total <= 0).any()):
        raise ValueError("region masks must be non-negative with a positive sum; regions "
                         f"{(total <= 0).nonzero().flatten().tolist()} have none")
    feats = dense[image_index].flatten(1, 2)  # (R, h*w, E)
    return torch.einsum("rp,rpe->re", masks.flatten(1), feats) / total[:, None]
