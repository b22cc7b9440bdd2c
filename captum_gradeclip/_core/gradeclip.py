"""Grad-ECLIP as Captum ``LayerAttribution`` classes: the method is :meth:`LayerGradECLIP.combine`;
the image and text classes only choose a token layout."""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from torch import Tensor

from .base import AttentionLayerAttribution, LayerSpec
from .functional import SPATIAL_MODES, spatial_weights, token_map
from .layout import ImageLayout, LayerTokens, TextLayout, TokenLayout


class LayerGradECLIP(AttentionLayerAttribution):
    r"""Grad-ECLIP on one or several attention layers of any transformer tower.

    For the pooled token ``p`` and every token ``i`` of an explained attention layer:
    ``H_i = ReLU(sum_c w_c * lambda_i * v_i,c)``, with channel weights ``w_c = dS/do_p,c`` (the
    gradient of the explained score at the attention output before ``out_proj``, pooled token
    only) and spatial weights ``lambda_i`` (by default the min-max normalised cosine between
    ``q_p`` and ``k_i``). Several layers: the layout's rule (image: per-layer ReLU maps summed;
    text: signed maps summed, then the ReLU).

    The model's forward is never changed (hooks only read) unless ``single_head=True``.
    Use :class:`ImageGradECLIP` and :class:`TextGradECLIP` for CLIP's towers; this class, with
    the default layout, pools token 0 and returns one value per token ``(B, L)``.

    Args:
        forward_func: maps the inputs to scores ``(B, K)`` (or ``(B,)``), e.g.
            :class:`~captum_gradeclip.ImageTextSimilarity`.
        layer: a transformer block or its attention module, or a list of them.
        device_ids: as in Captum (DataParallel); unused otherwise.
        spatial: ``"cosine"`` (default), ``"cosine_per_head"``, ``"attention"`` or ``"uniform"``,
            see :func:`~captum_gradeclip.functional.spatial_weights`.
        single_head: reproduction mode of the authors' code: the explained attention layers are
            recomputed with ONE head over the full width (scale ``1/sqrt(width)``), so the map
            explains a modified model and the score differs from the model's. Default ``False``:
            the model's own forward.
        layout: the token layout; default :class:`~captum_gradeclip._core.layout.TokenLayout`.

    Raises:
        ValueError: unknown ``spatial``; an empty layer list; a layer with several attention
            modules.
        TypeError: a layer without a supported attention module (the message lists its children).
    """

    #: Grad-ECLIP's rule for several layers: ReLU on each layer's map, then the sum (False: the
    #: image tower's rule), or the sum of the signed maps, then the ReLU (True: the text tower's)
    sum_before_relu: bool = False

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        *,
        spatial: str = "cosine",
        single_head: bool = False,
        layout: Optional[TokenLayout] = None,
    ) -> None:
        if spatial not in SPATIAL_MODES:
            raise ValueError(f"spatial must be one of {SPATIAL_MODES}, got {spatial!r}")
        super().__init__(forward_func, layer, device_ids, layout=layout if layout is not None else TokenLayout())
        self.spatial = spatial
        self.single_head = bool(single_head)

    def combine(self, layers: List[LayerTokens], *, relu: bool, targets: Any, n_targets: int) -> Tensor:
        """``(K, B, L)``: the sum over layers of ``sum_c w_c * lambda_i * v_i,c``."""
        per_layer_relu = relu and not self.sum_before_relu
        total = None
        for layer in layers:
            cap = layer.capture
            lam = spatial_weights(query=layer.at_pooled(cap.query.detach()),
                                  keys=cap.key.detach(), scored=layer.scored, attended=layer.attended,
                                  mode=self.spatial, num_heads=cap.num_heads)
            m = layer.only_scored(token_map(weights=layer.channel_weights(), values=cap.value.detach(), spatial=lam))
            m = m.clamp_min(0) if per_layer_relu else m
            total = m if total is None else total + m
        return total.clamp_min(0) if relu and self.sum_before_relu else total


class ImageGradECLIP(LayerGradECLIP):
    r"""Grad-ECLIP for the image tower of a ViT (or ResNet attention-pool) CLIP.

    Explains ``forward_func(pixel_values) -> (N, K)`` scores (e.g.
    :class:`~captum_gradeclip.ImageTextSimilarity`). The map covers the patch tokens (the class
    token and any other extra tokens are dropped); its grid is the input's height and width
    divided by the patch size, so non-square inputs work. Several layers: per-layer ReLU maps
    are summed (``relu_attributions=False``: signed maps summed).

    ``attribute(pixel_values (N, 3, H, W), target) -> (N, 1, h, w)``;
    ``attribute_all(pixel_values) -> (N, K, h, w)``, ``(h, w) = (H/p, W/p)``. Upsample with
    ``captum.attr.LayerAttribution.interpolate(attr, (H, W))``.

    Args:
        forward_func, layer, device_ids, spatial, single_head: see :class:`LayerGradECLIP`.
        patch_size: the ViT patch size. Default: ``forward_func.patch_size`` (set by
            :class:`~captum_gradeclip.ImageTextSimilarity`). Not needed for ResNet attention
            pooling (its grid is the feature map's).

    Raises:
        ValueError, TypeError: see :class:`LayerGradECLIP`; a forward function whose tower
            pools no single token.
    """

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        *,
        spatial: str = "cosine",
        single_head: bool = False,
        patch_size: Optional[int] = None,
    ) -> None:
        make = getattr(forward_func, "image_layout", None)  # a tower that pools its own way (SigLIP's probe)
        super().__init__(forward_func, layer, device_ids, spatial=spatial, single_head=single_head,
                         layout=make(patch_size) if callable(make) else ImageLayout(forward_func, patch_size))

    @property
    def patch_size(self) -> Any:
        """The patch size the grid is computed with (``int``, ``(ph, pw)`` or ``None``)."""
        return self.layout.patch_size


class TextGradECLIP(LayerGradECLIP):
    r"""Grad-ECLIP for the text tower (word importances).

    Explains ``forward_func(input_ids, *additional_forward_args) -> (T, K)`` scores (e.g.
    :class:`~captum_gradeclip.TextImageSimilarity`). The pooled token is the EOS token; spatial
    weights are min-max normalised over the positions from SOS through EOS (as the authors do).
    Several layers (the authors use the last 8): the signed per-layer maps are summed and the
    ReLU applied to the sum. The map is zero at SOS, EOS and every position after EOS (padding).

    ``attribute(input_ids (T, L), target, additional_forward_args=(attention_mask,)) -> (T, L)``;
    ``attribute_all(input_ids) -> (T, K, L)``.

    Args:
        forward_func, layer, device_ids, spatial, single_head: see :class:`LayerGradECLIP`.
        eos_token_id: where the pooled (EOS) token is, when ``forward_func`` has no
            ``eos_positions(input_ids)`` method: the first occurrence of this id; if ``None``
            too, the argmax of the ids (OpenAI CLIP's convention).

    Raises:
        ValueError, TypeError: see :class:`LayerGradECLIP`.
    """

    sum_before_relu = True

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        *,
        spatial: str = "cosine",
        single_head: bool = False,
        eos_token_id: Optional[int] = None,
    ) -> None:
        make = getattr(forward_func, "text_layout", None)  # a tower that pools CLS or the last token
        super().__init__(forward_func, layer, device_ids, spatial=spatial, single_head=single_head,
                         layout=make(eos_token_id) if callable(make) else TextLayout(forward_func, eos_token_id))

    @property
    def eos_token_id(self) -> Optional[int]:
        """The EOS id used when the forward function has no ``eos_positions``."""
        return self.layout.eos_token_id
