"""The Grad-ECLIP formula as pure tensor functions (public re-export of the core math)."""

from ._core.functional import (
    SPATIAL_MODES,
    attention_mask_rows,
    single_head_attention,
    spatial_weights,
    token_map,
)

__all__ = ["SPATIAL_MODES", "attention_mask_rows", "single_head_attention", "spatial_weights", "token_map"]
