"""The Grad-ECLIP formula and the attention it reads, as pure tensor functions (public re-export of
the core math; the dimension letters are listed in :mod:`captum_gradeclip._core.functional`)."""

from ._core.functional import (
    SPATIAL_MODES,
    additive_mask,
    allowed_keys,
    attention_probs,
    causal_mask,
    single_head_attention,
    spatial_weights,
    token_map,
)

__all__ = ["SPATIAL_MODES", "additive_mask", "allowed_keys", "attention_probs", "causal_mask",
           "single_head_attention", "spatial_weights", "token_map"]
