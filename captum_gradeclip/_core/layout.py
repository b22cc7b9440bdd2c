"""Token layouts: what differs between explaining an image tower and a text tower.

A layout says, for the tokens of an explained layer, which one is pooled (the row whose
attention is explained), which ones the map covers, and how the ``(K, B, L)`` token maps become
what the user gets (a patch grid, or one value per word). The methods never ask which tower they
run on; they read a :class:`LayerTokens`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor

from ..adapters import Capture
from .functional import allowed_keys


def _zero_outside(keep: Tensor, x: Tensor) -> Tensor:
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


@dataclass
class LayerTokens:
    """One explained layer, as a method sees it.

    Attributes:
        capture: what the adapter recorded (``query, key, value`` ``(B, L, D)``...).
        pooled: ``(B,)`` long, the pooled token of each example.
        scored: ``(B, L)`` bool, the tokens the map covers.
        attended: ``(B, L)`` bool, the keys the pooled token attends to in the model.
        grid: ``(h, w)`` of an image map, else ``None``.
        grads: the score's gradients, one ``(K, *source.shape)`` per gradient source of the
            method (``None`` for gradient-free methods and when ``pooled_o_grad`` is given).
        pooled_o_grad: ``(K, B, D)`` ``dS/do`` at the pooled rows, where the block-tail shortcut
            computed it.
    """

    capture: Capture
    pooled: Tensor
    scored: Tensor
    attended: Tensor
    grid: Optional[Tuple[int, int]] = None
    grads: Optional[List[Tensor]] = None
    pooled_o_grad: Optional[Tensor] = None

    def o_grad(self) -> Tensor:
        """``(K, B, L, D)``: ``dS/do`` at every token."""
        return self.capture.o_gradient(self.grads[0])

    def channel_weights(self) -> Tensor:
        """``(K, B, D)``: ``w_c = dS/do_pool,c``, the gradient at the pooled token."""
        if self.pooled_o_grad is not None:
            return self.pooled_o_grad
        return self.at_pooled(self.o_grad())

    def at_pooled(self, x: Tensor) -> Tensor:
        """``(*, B, L, C)`` -> ``(*, B, C)``: each example's row at its pooled token (token
        features, or the pooled query's row of an ``(L, L)`` attention matrix)."""
        return x[..., self._rows(), self.pooled, :]

    def only_scored(self, x: Tensor) -> Tensor:
        """``x (*, B, L)`` with the tokens outside the map set to zero."""
        return _zero_outside(self.scored, x)

    def _rows(self) -> Tensor:
        return torch.arange(self.pooled.shape[0], device=self.pooled.device)


class TokenLayout:
    """Any transformer tower: token 0 is pooled, the map covers every other token and is returned
    per token: ``attribute -> (B, L)``, ``attribute_all -> (B, K, L)``."""

    #: whether tokens the pooled token may not attend to (padding) are left out of the map
    masked_keys_unscored: bool = False

    def check(self, inputs: Tuple[Tensor, ...]) -> None:
        """Raise ``TypeError``/``ValueError`` for inputs this layout cannot explain."""
        if not inputs or not torch.is_tensor(inputs[0]):
            raise TypeError("inputs must be a tensor or a tuple of tensors")
        if inputs[0].shape[0] == 0:
            raise ValueError("inputs hold an empty batch (N = 0); pass at least one example")
        for i, x in enumerate(inputs):
            if torch.is_tensor(x) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
                bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
                raise ValueError(f"inputs[{i}] holds NaN or Inf values (examples {bad}); the map of a "
                                 "non-finite input is undefined: clean or drop those examples")

    def pooled(self, inputs: Tuple[Tensor, ...], capture: Capture) -> Tensor:
        """``(B,)`` long: the pooled token of each example."""
        return torch.zeros(capture.value.shape[0], dtype=torch.long, device=capture.value.device)

    def scored(self, inputs: Tuple[Tensor, ...], pooled: Tensor, capture: Capture,
               grid: Optional[Tuple[int, int]]) -> Tensor:
        """``(B, L)`` bool: the tokens the map covers (min-max normalisation runs over them)."""
        b, n = capture.value.shape[:2]
        s = torch.ones(b, n, dtype=torch.bool, device=capture.value.device)
        s[torch.arange(b), pooled] = False
        return s

    def grid(self, inputs: Tuple[Tensor, ...], capture: Capture) -> Optional[Tuple[int, int]]:
        """``(h, w)`` of an image map, or ``None``."""
        return None

    def tokens(self, inputs: Tuple[Tensor, ...], capture: Capture) -> LayerTokens:
        """The :class:`LayerTokens` of one captured layer (without gradients yet)."""
        grid = self.grid(inputs, capture)
        pooled = self.pooled(inputs, capture)
        attended = allowed_keys(capture.mask, pooled, capture.value.shape[1])
        blind = (~attended.any(-1)).nonzero().flatten().tolist()
        if blind:
            raise ValueError(f"in example(s) {blind} the pooled token may attend to no token (an all-zero "
                             "attention_mask?): there is nothing to explain; pass a mask with 1 on the "
                             "tokens of each input")
        scored = self.scored(inputs, pooled, capture, grid)
        if self.masked_keys_unscored:
            scored = scored & attended
        return LayerTokens(capture=capture, pooled=pooled, scored=scored, attended=attended, grid=grid)

    def finalize(self, maps: Tensor, tokens: LayerTokens) -> Tensor:
        """``(K, B, L)`` token maps -> ``(K, B, *S)`` output maps."""
        return maps

    def single(self, maps: Tensor) -> Tensor:
        """``(1, B, *S)`` -> what ``attribute`` returns."""
        return maps[0]


#: the most non-patch tokens (class, distillation, register tokens) an image tower may carry
MAX_EXTRA_TOKENS = 16


class ImageLayout(TokenLayout):
    """An image tower: the class token (or a ResNet's mean token) is pooled; the map covers the
    patch tokens (the last ``h * w``) on the grid ``(H / p, W / p)`` of the input's height and
    width (or the attention pool's feature map): ``attribute -> (N, 1, h, w)``,
    ``attribute_all -> (N, K, h, w)``.

    Args:
        forward_func: read for ``patch_size``, ``pooled_token`` and ``image_pool``
            (see :class:`~captum_gradeclip._core.protocols.ImageScoreFunction`).
        patch_size: overrides ``forward_func.patch_size``.

    Raises:
        ValueError: the forward function says its tower pools no single token.
    """

    #: whether the forward function's tower must pool one of the layer's tokens (a layout whose
    #: pooled row is the layer's own query, like an attention-pooling probe, sets False)
    pools_a_token: bool = True

    def __init__(self, forward_func: Any, patch_size: Any = None) -> None:
        if self.pools_a_token and hasattr(forward_func, "pooled_token") and forward_func.pooled_token is None:
            raise ValueError(
                f"the image tower pools with {getattr(forward_func, 'image_pool', 'no single token')!r}, "
                "not a class token: Grad-ECLIP explains the pooled token's attention row. Use a "
                "model that pools the class token, or a method without that assumption (e.g. "
                "captum_gradeclip.baselines or Captum's LayerGradCam)"
            )
        self.patch_size = patch_size if patch_size is not None else getattr(forward_func, "patch_size", None)
        p = self._patch()
        if p is not None and not (len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                       for v in p)):
            raise ValueError(f"patch_size must be a positive int or a pair of them, got {self.patch_size!r}")
        token = getattr(forward_func, "pooled_token", 0) if self.pools_a_token else 0
        #: the pooled token's index (DeiT's distillation head pools token 1)
        self.pooled_token = token if isinstance(token, int) and not isinstance(token, bool) else 0

    def pooled(self, inputs: Tuple[Tensor, ...], capture: Capture) -> Tensor:
        return torch.full((capture.value.shape[0],), self.pooled_token, dtype=torch.long, device=capture.value.device)

    def _patch(self) -> Optional[Tuple[int, ...]]:
        p = self.patch_size
        if p is None:
            return None
        return (p, p) if not isinstance(p, (tuple, list)) else tuple(p)

    def check(self, inputs: Tuple[Tensor, ...]) -> None:
        super().check(inputs)
        x = inputs[0]
        if x.dim() != 4:
            raise ValueError(f"pixel_values must have shape (N, C, H, W), got a tensor of rank {x.dim()} "
                             f"and shape {tuple(x.shape)}")
        p = self._patch()
        if p is not None and (x.shape[-2] % p[0] or x.shape[-1] % p[1]):
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} is not a multiple of the patch size {self.patch_size}; "
                "resize or crop the image (e.g. with the model's processor)"
            )

    def grid(self, inputs: Tuple[Tensor, ...], capture: Capture) -> Tuple[int, int]:
        if capture.grid is not None:
            return capture.grid
        p = self._patch()
        if p is None:
            raise ValueError("cannot tell the patch grid: pass patch_size= to ImageGradECLIP, or use a "
                             "forward function with a `patch_size` attribute (ImageTextSimilarity has one)")
        h, w = inputs[0].shape[-2] // p[0], inputs[0].shape[-1] // p[1]
        extra = capture.value.shape[1] - h * w
        if not (0 <= extra <= MAX_EXTRA_TOKENS and (extra <= 1 or extra < h * w)):
            raise ValueError(f"the explained layer has {capture.value.shape[1]} tokens, but the {h} x {w} patch "
                             f"grid of a {tuple(inputs[0].shape[-2:])} image with patch size {self.patch_size} "
                             f"leaves {extra} for the class (and other extra) tokens: is patch_size right?")
        return h, w

    def scored(self, inputs, pooled, capture, grid):
        b, n = capture.value.shape[:2]
        s = torch.zeros(b, n, dtype=torch.bool, device=capture.value.device)
        s[:, n - grid[0] * grid[1]:] = True
        return s

    def finalize(self, maps: Tensor, tokens: LayerTokens) -> Tensor:
        h, w = tokens.grid
        return maps[..., maps.shape[-1] - h * w:].unflatten(-1, (h, w))

    def single(self, maps: Tensor) -> Tensor:
        return maps[0].unsqueeze(1)


class TextLayout(TokenLayout):
    """A text tower: the EOS token is pooled; the map covers SOS through EOS (as the authors
    normalise; padding the model masks is left out, so left-padded texts work too) and is
    returned per word, zero at SOS, EOS, padding and after EOS:
    ``attribute -> (T, L)``, ``attribute_all -> (T, K, L)``. Several layers: the signed maps are
    summed, then the ReLU.

    Args:
        forward_func: read for ``eos_positions(input_ids)``
            (see :class:`~captum_gradeclip._core.protocols.TextScoreFunction`).
        eos_token_id: without that method, EOS is the first occurrence of this id, or (``None``)
            the argmax of the ids (OpenAI CLIP's convention).
    """

    masked_keys_unscored = True

    def __init__(self, forward_func: Any, eos_token_id: Optional[int] = None) -> None:
        self.forward_func, self.eos_token_id = forward_func, eos_token_id

    def eos(self, input_ids: Tensor) -> Tensor:
        """``(T, L) -> (T,)``: where each text is pooled. Raises ``ValueError`` for no EOS."""
        fn = getattr(self.forward_func, "eos_positions", None)
        if fn is not None:
            return fn(input_ids)
        from ..forward import eos_positions

        return eos_positions(input_ids, self.eos_token_id)

    def check(self, inputs: Tuple[Tensor, ...]) -> None:
        super().check(inputs)
        ids = inputs[0]
        if ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (T, L), got a tensor of rank {ids.dim()} and "
                             f"shape {tuple(ids.shape)}")
        if ids.is_floating_point():
            raise TypeError(f"input_ids must be integer token ids, got dtype {ids.dtype}")
        self.eos(ids)  # raises for texts without EOS

    def pooled(self, inputs, capture):
        return self.eos(inputs[0]).to(capture.value.device)

    def scored(self, inputs, pooled, capture, grid):
        n = capture.value.shape[1]
        return torch.arange(n, device=pooled.device)[None, :] <= pooled[:, None]

    def finalize(self, maps: Tensor, tokens: LayerTokens) -> Tensor:
        """Zero outside the words: SOS is the first token the EOS token attends to (position 0,
        or the first after left padding), EOS the pooled one."""
        pos = torch.arange(maps.shape[-1], device=maps.device)[None, :]
        sos = tokens.attended.int().argmax(-1, keepdim=True).to(maps.device)
        words = (pos > sos) & (pos < tokens.pooled[:, None].to(maps.device)) & tokens.attended.to(maps.device)
        return _zero_outside(words, maps)
