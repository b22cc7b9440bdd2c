"""The Grad-ECLIP formula and the attention it reads, as pure tensor functions (no hooks, no models).

Dimension letters, used with one meaning across the package:

====  =====================================================================================
N     images (the batch of the image tower)
T     texts (the batch of the text tower)
B     the batch of the explained input, whichever tower: ``B = N`` (image) or ``B = T`` (text)
K     targets: the scores explained at once (``attribute``: 1; ``attribute_all``: every
      column of the forward function's ``(B, K)`` output)
L     tokens of the explained layer (``Lq`` query rows where it differs)
D     width of the attention (``q, k, v, o``); ``H`` heads of ``D / H`` channels each
E     the joint embedding width
h, w  the patch grid of an image map
====  =====================================================================================

Attention masks have ONE convention everywhere past the adapters: ``None`` (every key allowed) or
an **additive** float mask broadcastable to ``(B, 1, Lq, L)`` (``0`` = attend, very negative or
``-inf`` = blocked), with any causal mask already folded in. Adapters convert the model's own
masks with :func:`additive_mask` and :func:`causal_mask`; everything that needs attention weights
calls :func:`attention_probs` (the counterpart of Hugging Face's ``eager_attention_forward``).
Everything is computed in float32.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

SPATIAL_MODES = ("cosine", "cosine_per_head", "attention", "uniform")


# ---- masks ----------------------------------------------------------------------------------


def additive_mask(mask: Optional[Tensor], *, dtype: torch.dtype, true_blocks: bool) -> Optional[Tensor]:
    """A model's attention mask in the one convention (additive float, ``-inf`` = blocked).

    Args:
        mask: ``None``, a bool mask, or an additive float mask (returned as it is).
        dtype: the float dtype of a converted bool mask.
        true_blocks: what ``True`` means in a bool mask: blocked (``nn.MultiheadAttention``'s
            convention) or allowed (Hugging Face's and SDPA's).

    Returns:
        ``None`` or a float mask of ``mask``'s shape.
    """
    if mask is None or mask.dtype != torch.bool:
        return mask
    blocked = mask if true_blocks else ~mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(blocked, float("-inf"))


def causal_mask(mask: Optional[Tensor], length: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``mask`` (additive, or ``None``) with a causal mask folded in: ``(*, L, L)``, ``-inf``
    above the diagonal."""
    causal = torch.zeros(length, length, dtype=dtype, device=device).masked_fill(
        ~torch.ones(length, length, dtype=torch.bool, device=device).tril(), float("-inf"))
    return causal[None, None] if mask is None else mask + causal.to(mask.dtype)


def allowed_keys(mask: Optional[Tensor], rows: Tensor, length: int) -> Tensor:
    """``(B, L)`` bool: the keys the query row ``rows[b]`` of each example may attend to.

    Args:
        mask: ``None`` or an additive mask broadcastable to ``(B, 1, L, L)``.
        rows: ``(B,)`` long, one query row per example.
        length: ``L``.
    """
    b = rows.shape[0]
    allowed = torch.ones(b, length, dtype=torch.bool, device=rows.device)
    if mask is not None:
        m = mask.expand(b, mask.shape[1], length, length)[torch.arange(b), 0, rows.to(mask.device)]
        allowed &= (m > torch.finfo(m.dtype).min / 2).to(rows.device)
    return allowed


# ---- attention ------------------------------------------------------------------------------


def attention_probs(*, query: Tensor, key: Tensor, mask: Optional[Tensor], num_heads: int) -> Tensor:
    """Softmax attention weights per head, ``softmax(q_h k_h^T / sqrt(D / H) + mask)``.

    Args:
        query: ``(B, Lq, D)``.
        key: ``(B, L, D)``.
        mask: ``None`` or additive, broadcastable to ``(B, 1, Lq, L)``.
        num_heads: ``H``; ``1`` gives the authors' single head over the full width.

    Returns:
        ``(B, H, Lq, L)`` float32; a row with no allowed key is all zeros.
    """
    b, lq, d = query.shape
    dh = d // num_heads
    qh = query.float().view(b, lq, num_heads, dh).transpose(1, 2)
    kh = key.float().view(b, key.shape[1], num_heads, dh).transpose(1, 2)
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(dh)
    if mask is not None:
        logits = logits + mask.float()
    return logits.softmax(-1).nan_to_num(0.0)


def single_head_attention(*, query: Tensor, key: Tensor, value: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Attention with ONE head over the full width (scale ``1/sqrt(D)``), as in the Grad-ECLIP
    authors' code. This is not the model's own (multi-head) attention.

    Args:
        query: ``(B, Lq, D)``. key, value: ``(B, L, D)``.
        mask: ``None`` or additive, broadcastable to ``(B, 1, Lq, L)``.

    Returns:
        ``(B, Lq, D)``, in the dtype of ``value``.
    """
    probs = attention_probs(query=query, key=key, mask=mask, num_heads=1)[:, 0]
    return (probs @ value.float()).to(value.dtype)


# ---- Grad-ECLIP -----------------------------------------------------------------------------


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
        num_heads: ``H``; ``D`` must be divisible by it.

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
    if mode == "cosine_per_head":
        b, n, d = k.shape
        qh = q.view(b, num_heads, d // num_heads)
        kh = k.view(b, n, num_heads, d // num_heads)
        cos = torch.einsum("bhd,blhd->bhl", F.normalize(qh, dim=-1), F.normalize(kh, dim=-1))
        return _minmax(cos, scored[:, None, :])
    if mode == "attention":
        blocked = additive_mask(attended, dtype=torch.float32, true_blocks=False)
        probs = attention_probs(query=q[:, None], key=k, mask=blocked[:, None, None, :], num_heads=num_heads)
        return probs[:, :, 0].masked_fill(~scored[:, None, :], 0.0)
    raise ValueError(f"spatial must be one of {SPATIAL_MODES}, got {mode!r}")


def token_map(*, weights: Tensor, values: Tensor, spatial: Tensor) -> Tensor:
    """Signed Grad-ECLIP map before the ReLU: ``sum_c w_c * lambda_i * v_i,c``.

    Args:
        weights: ``(*, B, D)`` channel weights ``w_c = dS/do_pool,c`` (``*`` e.g. ``K`` targets).
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
