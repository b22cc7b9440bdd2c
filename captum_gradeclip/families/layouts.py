"""Token layouts for towers that pool otherwise than CLIP's (class token / EOS token).

- :class:`ProbeLayout`: SigLIP's vision tower pools with an attention-pooling head: a learned
  probe is the ONE query of an ``nn.MultiheadAttention`` over the patch tokens. The explained
  layer is that head; the pooled row is row 0 of the query (the probe), and every key is a patch
  (the map covers all ``L = h * w`` keys). The encoder's own blocks pool no token and are refused.
- :class:`FirstTokenTextLayout`: BLIP's text encoder (image-text contrastive branch) pools CLS
  (position 0); the map covers the words between CLS and the first SEP.
- :class:`LastTokenTextLayout`: SigLIP's text tower pools the last position (``L - 1``, which is
  padding when texts are padded to ``max_length``, as SigLIP is trained); the map covers every
  position but that one. There is no start token.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .._core.layout import ImageLayout, LayerTokens, TextLayout
from ..adapters import Capture


class ProbeLayout(ImageLayout):
    """Attention pooling with a learned probe: the probe (query row 0) is pooled; every key is a
    patch token: ``attribute -> (N, 1, h, w)``, ``attribute_all -> (N, K, h, w)``.

    Args:
        forward_func: read for ``patch_size``.
        patch_size: overrides ``forward_func.patch_size``.

    Raises:
        ValueError: a ``patch_size`` that is not a positive int or a pair of them (as
            :class:`~captum_gradeclip._core.layout.ImageLayout` checks).
        ValueError: (at ``attribute``) the explained layer is a self-attention (its query has
            ``L`` rows, not one probe): pass the pooling head instead.
    """

    #: the tower pools with the head's probe (query row 0), not with a token of the layer
    pools_a_token = False

    def tokens(self, inputs: Tuple[Tensor, ...], capture: Capture) -> LayerTokens:
        rows, keys = capture.query.shape[1], capture.key.shape[1]
        if rows != 1:
            raise ValueError(
                f"the explained layer is a self-attention ({rows} queries over {keys} keys), but this "
                "tower pools with an attention-pooling head whose one query is a learned probe: no "
                "token of the encoder is pooled. Pass the head (SigLIP: `model.vision_model.head`)"
            )
        return super().tokens(inputs, capture)

    def scored(self, inputs, pooled, capture, grid):
        b, n = capture.key.shape[:2]
        return torch.ones(b, n, dtype=torch.bool, device=capture.key.device)


class FirstTokenTextLayout(TextLayout):
    """A text tower that pools its first token (BLIP's CLS): the map covers every token the CLS
    token attends to and is returned per word, zero at CLS, at the end token (the forward
    function's ``eos_positions``, BLIP's first SEP), after it and at padding:
    ``attribute -> (T, L)``, ``attribute_all -> (T, K, L)``."""

    def pooled(self, inputs, capture):
        return torch.zeros(inputs[0].shape[0], dtype=torch.long, device=capture.value.device)

    def scored(self, inputs, pooled, capture, grid):
        """CLS through the end token (as the authors normalise over SOS through EOS)."""
        end = self.eos(inputs[0]).to(capture.value.device)
        return torch.arange(capture.value.shape[1], device=end.device)[None, :] <= end[:, None]

    def finalize(self, maps: Tensor, tokens: LayerTokens) -> Tensor:
        pos = torch.arange(maps.shape[-1], device=maps.device)[None, :]
        scored = tokens.scored.to(maps.device)
        end = torch.where(scored, pos, torch.zeros_like(pos)).amax(-1, keepdim=True)
        words = (pos > 0) & (pos < end) & scored
        return torch.where(words, maps, torch.zeros((), dtype=maps.dtype, device=maps.device))


class LastTokenTextLayout(TextLayout):
    """A text tower that pools its last position (SigLIP): the map covers every position and is
    returned per token, zero at the pooled (last) one and at masked padding:
    ``attribute -> (T, L)``, ``attribute_all -> (T, K, L)``."""

    def finalize(self, maps: Tensor, tokens: LayerTokens) -> Tensor:
        pos = torch.arange(maps.shape[-1], device=maps.device)[None, :]
        words = (pos != tokens.pooled[:, None].to(maps.device)) & tokens.attended.to(maps.device)
        return torch.where(words, maps, torch.zeros((), dtype=maps.dtype, device=maps.device))
