"""What the attribution classes read from their forward function: the contract, as Protocols.

A forward function is any callable ``f(inputs, *additional_forward_args) -> scores`` with
``scores`` of shape ``(B, K)`` (or ``(B,)``, read as ``K = 1``), exactly as for Captum's own
methods. Everything else is optional; where an attribute is missing, the class asks for it as a
constructor argument instead (``patch_size=``, ``eos_token_id=``). The similarity modules in
:mod:`captum_gradeclip.forward` and :mod:`captum_gradeclip.openai` implement all of it. The
attributes are read in one place each: :class:`~captum_gradeclip._core.layout.ImageLayout`,
:class:`~captum_gradeclip._core.layout.TextLayout` and :class:`~captum_gradeclip.baselines.MaskCLIP`.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Tuple, Union

from torch import Tensor, nn


class ScoreFunction(Protocol):
    """``inputs (B, ...) [, *additional] -> (B, K)`` or ``(B,)`` scores. Required."""

    def __call__(self, inputs: Tensor, *additional: Any) -> Tensor: ...


class ImageScoreFunction(ScoreFunction, Protocol):
    """An image-tower forward function ``pixel_values (N, 3, H, W) -> (N, K)``.

    Optional attributes, read by ``ImageGradECLIP`` and the image baselines:

    - ``patch_size``: ``int`` or ``(ph, pw)``, the ViT patch size; gives the ``(h, w)`` grid as
      ``(H / ph, W / pw)``. Missing: pass ``patch_size=`` to the class (not needed for ResNet
      attention pooling, whose grid is the feature map's).
    - ``pooled_token``: the index of the token the tower pools (``0``: class token), or ``None``
      when it pools no single token (average pooling, attentional poolers): then Grad-ECLIP,
      which explains the pooled token's attention row, refuses the model.
    - ``image_pool``: a name for how the tower pools, quoted in that error.
    - ``image_layout(patch_size)``: a method returning the
      :class:`~captum_gradeclip._core.layout.ImageLayout` ``ImageGradECLIP`` uses, for a tower that
      pools otherwise (SigLIP's attention-pooling probe, see :mod:`captum_gradeclip.families`).
    """

    patch_size: Optional[Union[int, Tuple[int, int]]]
    pooled_token: Optional[int]
    image_pool: str


class TextScoreFunction(ScoreFunction, Protocol):
    """A text-tower forward function ``input_ids (T, L) [, attention_mask (T, L)] -> (T, K)``.

    Optional method, read by ``TextGradECLIP`` and the text baselines: ``eos_positions(input_ids)
    -> (T,)`` long, the position the tower pools. Missing: the class finds the first
    ``eos_token_id`` (its constructor argument) or, without one, the argmax of the ids.
    Optional method ``text_layout(eos_token_id)``: the
    :class:`~captum_gradeclip._core.layout.TextLayout` ``TextGradECLIP`` uses, for a tower that
    pools another token than EOS (BLIP's CLS, SigLIP's last token).
    """

    def eos_positions(self, input_ids: Tensor) -> Tensor:
        """``input_ids (T, L)`` -> ``(T,)`` long: the position the text tower pools."""
        ...


class EmbeddingSimilarity(ImageScoreFunction, Protocol):
    """An image-tower similarity that exposes its model and the fixed texts (for MaskCLIP):
    ``model`` (the CLIP model) and ``text_embeds`` ``(K, E)`` (normalised)."""

    model: nn.Module
    text_embeds: Tensor
