"""The Grad-ECLIP formula as pure tensor functions (no hooks, no models).

Shapes use ``B`` batch, ``L`` tokens, ``D`` width, ``H`` heads, and ``*`` any leading dims
(e.g. a stack of targets ``T``) broadcast against ``B``. Everything is computed in float32.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

SPATIAL_MODES = ("cosine", "cosine_per_head", "attention", "uniform")


def _minmax(x: Tensor, mask: Tensor) -> Tensor:
    """Min-max normalise ``x`` over the positions where ``mask`` is True (last dim); 0 elsewhere.

    A constant row maps to 1 on its mask (no position is preferred).
    """
    big = torch.finfo(x.dtype).max
    lo = x.masked_fill(~mask, big).amin(-1, keepdim=True)
    hi = x.masked_fill(~mask, -big).amax(-1, keepdim=True)
    span = hi - lo
    out = torch.where(span > 0, (x - lo) / span.clamp_min(torch.finfo(x.dtype).tiny), torch.ones_like(x))
    return out.masked_fill(~mask, 0.0)


def spatial_weights(
    *,
    query: Tensor,
    keys: Tensor,
    scored: Tensor,
    attended: Tensor,
    mode: str,
    num_heads: int,
) -> Tensor:
    """Spatial weights ``lambda_i`` of the pooled query over the tokens.

    Args:
        query: ``(B, D)`` the pooled token's query projection ``q_pool``.
        keys: ``(B, L, D)`` key projections ``k_i``.
        scored: ``(B, L)`` bool, the tokens the map covers (min-max runs over these).
        attended: ``(B, L)`` bool, the keys the pooled token may attend to in the model (used by
            ``"attention"``: the softmax runs over these).
        mode: ``"cosine"``, ``"cosine_per_head"``, ``"attention"`` or ``"uniform"``.
        num_heads: heads of the attention; ``D`` must be divisible by it.

    Returns:
        ``(B, L)`` for ``"cosine"`` and ``"uniform"``, ``(B, H, L)`` for the per-head modes;
        zero outside ``scored``.

    Raises:
        ValueError: for an unknown ``mode``.
    """
    q, k = query.float(), keys.float()
    if mode == "cosine":
        cos = torch.einsum("bd,bld->bl", F.normalize(q, dim=-1), F.normalize(k, dim=-1))
        return _minmax(cos, scored)
    if mode == "uniform":
        return scored.float()
    b, n, d = k.shape
    qh = q.view(b, num_heads, d // num_heads)
    kh = k.view(b, n, num_heads, d // num_heads)
    if mode == "cosine_per_head":
        cos = torch.einsum("bhd,blhd->bhl", F.normalize(qh, dim=-1), F.normalize(kh, dim=-1))
        return _minmax(cos, scored[:, None, :])
    if mode == "attention":
        logits = torch.einsum("bhd,blhd->bhl", qh, kh) / math.sqrt(d // num_heads)
        logits = logits.masked_fill(~attended[:, None, :], float("-inf"))
        return logits.softmax(-1).masked_fill(~scored[:, None, :], 0.0)
    raise ValueError(f"spatial must be one of {SPATIAL_MODES}, got {mode!r}")


def token_map(*, weights: Tensor, values: Tensor, spatial: Tensor) -> Tensor:
    """Signed Grad-ECLIP map before the ReLU: ``sum_c w_c * lambda_i * v_i,c``.

    Args:
        weights: ``(*, B, D)`` channel weights ``w_c = dS/do_pool,c`` (``*`` e.g. targets).
        values: ``(B, L, D)`` value projections ``v_i``.
        spatial: ``(B, L)`` or ``(B, H, L)`` from :func:`spatial_weights`; per-head weights
            apply to their head's ``D / H`` channels.

    Returns:
        ``(*, B, L)`` float32.
    """
    w, v, lam = weights.float(), values.float(), spatial.float()
    if lam.dim() == 2:
        return torch.einsum("...bd,bld->...bl", w, v) * lam
    b, h, n = lam.shape
    d = v.shape[-1]
    per_head = torch.einsum("...bhd,blhd->...bhl", w.unflatten(-1, (h, d // h)), v.view(b, n, h, d // h))
    return (per_head * lam).sum(-2)


def attention_mask_rows(
    mask: Optional[Tensor], is_causal: bool, rows: Tensor, length: int
) -> Tensor:
    """The keys each query row may attend to, from a model's attention mask.

    Args:
        mask: ``None`` or a mask broadcastable to ``(B, 1, L, L)``: bool (True = attend) or
            additive float (0 = attend, very negative = masked).
        is_causal: whether a causal mask applies on top of ``mask``.
        rows: ``(B,)`` long, the query row of each batch item.
        length: ``L``.

    Returns:
        ``(B, L)`` bool.
    """
    b = rows.shape[0]
    cols = torch.arange(length, device=rows.device)
    allowed = torch.ones(b, length, dtype=torch.bool, device=rows.device)
    if is_causal:
        allowed &= cols[None, :] <= rows[:, None]
    if mask is not None:
        m = mask.expand(b, mask.shape[1], length, length)[torch.arange(b), 0, rows.to(mask.device)]
        m = m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
        allowed &= m.to(rows.device)
    return allowed


def single_head_attention(
    *, query: Tensor, key: Tensor, value: Tensor, mask: Optional[Tensor], is_causal: bool
) -> Tensor:
    """Attention with ONE head over the full width (scale ``1/sqrt(D)``), as in the Grad-ECLIP
    authors' code. This is not the model's own (multi-head) attention.

    Args:
        query, key, value: ``(B, L, D)``.
        mask: ``None`` or broadcastable to ``(B, 1, L, L)``, bool (True = attend) or additive.
        is_causal: apply a causal mask as well.

    Returns:
        ``(B, L, D)``, in the dtype of ``value``.
    """
    d = query.shape[-1]
    logits = (query.float() @ key.float().transpose(-1, -2)) / math.sqrt(d)
    n = logits.shape[-1]
    if mask is not None:
        m = mask[:, 0] if mask.dim() == 4 else mask
        logits = logits.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits + m.float()
    if is_causal:
        causal = torch.ones(n, n, dtype=torch.bool, device=logits.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    return (logits.softmax(-1) @ value.float()).to(value.dtype)
