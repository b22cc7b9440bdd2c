"""Deletion / insertion curves (Petsiuk et al., RISE), for images and for words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from captum._utils.common import _format_additional_forward_args
from torch import Tensor

from ._maps import to_image_map

REPLACEMENTS = ("noise", "black", "blur", "mean")


@dataclass
class CurveResult:
    """A deletion or insertion curve.

    Attributes:
        fractions: ``(K,)`` share of pixels (words) removed/inserted at each step, 0 to 1.
        scores: ``(N, K)`` the explained score at each step.
        auc: ``(N,)`` area under ``scores`` over ``fractions`` (trapezoid).
        normalized_auc: ``(N,)`` area under ``scores / scores of the intact input``.
        accuracy: ``(N, K)`` bool, whether the target is the argmax of the prompt set (if asked).
        accuracy_auc: ``(N,)`` area under the accuracy curve (if asked).
    """

    fractions: Tensor
    scores: Tensor
    auc: Tensor
    normalized_auc: Tensor
    accuracy: Optional[Tensor] = None
    accuracy_auc: Optional[Tensor] = None


def _replacement(x: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    if kind == "noise":  # uniform noise over the input's range, as the Grad-ECLIP authors do
        lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        return lo + (hi - lo) * torch.rand(x.shape, generator=generator).to(x)
    if kind == "black":
        return torch.zeros_like(x) + x.amin(dim=(1, 2, 3), keepdim=True)
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
    if kind == "blur":
        k = max(3, (min(x.shape[-2:]) // 8) | 1)
        w = torch.ones(x.shape[1], 1, k, k, dtype=x.dtype, device=x.device) / (k * k)
        return F.conv2d(F.pad(x, [k // 2] * 4, mode="replicate"), w, groups=x.shape[1])
    raise ValueError(f"replacement must be one of {REPLACEMENTS}, got {kind!r}")


def _curve(forward_func, inputs, attributions, target, *, insert: bool, step: float, replacement: str,
           batch_size: int, additional_forward_args, accuracy: bool, seed: int) -> CurveResult:
    if inputs.dim() != 4:
        raise ValueError(f"inputs must be images (N, C, H, W), got {tuple(inputs.shape)}")
    if not 0 < step <= 1:
        raise ValueError(f"step must be a fraction of the pixels in (0, 1], got {step}")
    n, _, h, w = inputs.shape
    if attributions.shape[0] != n:
        raise ValueError(f"attributions have {attributions.shape[0]} examples, inputs {n}")
    extra = _format_additional_forward_args(additional_forward_args) or ()
    tgt = torch.as_tensor(target).reshape(-1).expand(n)
    a = to_image_map(attributions, (h, w)).flatten(1)
    order = torch.argsort(a, dim=1, descending=True, stable=True)  # most important first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w).expand(n, -1))
    per_step = max(1, round(step * h * w))
    counts = list(range(0, h * w, per_step)) + [h * w]
    fractions = torch.tensor(counts, dtype=torch.float32) / (h * w)
    g = torch.Generator().manual_seed(seed)
    repl = torch.cat([_replacement(inputs[i:i + 1], replacement, g) for i in range(n)])
    ranks = rank.view(n, 1, h, w)
    k_n = len(counts)
    counts_t = torch.tensor(counts, device=inputs.device)
    scores = torch.zeros(n * k_n)
    acc = torch.zeros(n * k_n, dtype=torch.bool)
    flat_tgt = tgt.repeat_interleave(k_n)
    with torch.no_grad():
        # all (example, step) pairs, batch_size perturbed images per forward
        for s in range(0, n * k_n, batch_size):
            idx = torch.arange(s, min(s + batch_size, n * k_n))
            ex, ks = idx // k_n, counts_t[idx % k_n].view(-1, 1, 1, 1)
            changed = ranks[ex.to(ranks.device)] < ks  # the top-k pixels of each example
            x, r = inputs[ex], repl[ex]
            xs = torch.where(changed, r, x) if not insert else torch.where(changed, x, r)
            out = forward_func(xs, *extra)
            out = out if out.dim() == 2 else out[:, None]
            t_b = flat_tgt[idx].to(out.device)
            scores[idx] = out.gather(1, t_b[:, None])[:, 0].float().cpu()
            acc[idx] = (out.argmax(1) == t_b).cpu()
    scores, acc = scores.view(n, k_n), acc.view(n, k_n)
    auc = torch.trapezoid(scores, fractions, dim=1)
    intact = scores[:, -1 if insert else 0].abs().clamp_min(1e-12)
    nauc = torch.trapezoid(scores / intact[:, None], fractions, dim=1)
    res = CurveResult(fractions, scores, auc, nauc)
    if accuracy:
        res.accuracy = acc
        res.accuracy_auc = torch.trapezoid(acc.float(), fractions, dim=1)
    return res


def deletion(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: Any,
    *,
    step: float = 0.005,
    replacement: str = "noise",
    batch_size: int = 64,
    additional_forward_args: Any = None,
    accuracy: bool = False,
    seed: int = 0,
) -> CurveResult:
    """Deletion: replace the most important pixels first, track the score (lower AUC = better).

    Args:
        forward_func: ``(N, C, H, W) -> (N, T)`` scores (e.g. cosine similarity).
        inputs: ``(N, C, H, W)`` images. attributions: their maps, any resolution.
        target: int, or ``(N,)`` list/tensor: the explained score's column.
        step: share of pixels per step (default 0.5 %, as the Grad-ECLIP authors).
        replacement: ``"noise"`` (uniform noise over the image's range, the authors' choice),
            ``"black"`` (the image minimum), ``"blur"`` or ``"mean"`` (per-channel mean).
        batch_size: perturbed images per forward.
        accuracy: also track whether ``target`` stays the argmax over the ``T`` outputs
            (zero-shot accuracy over a prompt set).
        seed: the noise's seed.

    Returns:
        :class:`CurveResult` with ``K = ceil(1 / step) + 1`` points.
    """
    return _curve(forward_func, inputs, attributions, target, insert=False, step=step, replacement=replacement,
                  batch_size=batch_size, additional_forward_args=additional_forward_args, accuracy=accuracy,
                  seed=seed)


def insertion(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: Any,
    *,
    step: float = 0.005,
    replacement: str = "noise",
    batch_size: int = 64,
    additional_forward_args: Any = None,
    accuracy: bool = False,
    seed: int = 0,
) -> CurveResult:
    """Insertion: start from the replacement image, restore the most important pixels first
    (higher AUC = better). Arguments as in :func:`deletion`."""
    return _curve(forward_func, inputs, attributions, target, insert=True, step=step, replacement=replacement,
                  batch_size=batch_size, additional_forward_args=additional_forward_args, accuracy=accuracy,
                  seed=seed)


def _word_curve(forward_func, input_ids, attributions, target, *, insert, replacement_id, words,
                additional_forward_args) -> CurveResult:
    if input_ids.dim() != 2 or attributions.shape != input_ids.shape:
        raise ValueError(f"input_ids (T, L) and attributions must have the same shape, got "
                         f"{tuple(input_ids.shape)} and {tuple(attributions.shape)}")
    if words.shape != input_ids.shape:
        raise ValueError(f"words must be a (T, L) bool mask of the word positions, got {tuple(words.shape)}")
    extra = _format_additional_forward_args(additional_forward_args) or ()
    t_n = input_ids.shape[0]
    tgt = torch.as_tensor(target).reshape(-1).expand(t_n)
    k_max = 11  # fractions 0, 0.1, ..., 1 of each text's words
    fractions = torch.linspace(0, 1, k_max)
    scores = torch.zeros(t_n, k_max)
    with torch.no_grad():
        for i in range(t_n):
            pos = words[i].nonzero().flatten()
            a = attributions[i, pos].float()
            order = pos[torch.argsort(a, descending=True, stable=True)]
            batch = []
            for f in fractions.tolist():
                k = round(f * len(pos))
                ids = input_ids[i].clone()
                if insert:
                    keep = order[:k]
                    ids[pos] = replacement_id
                    ids[keep] = input_ids[i, keep]
                else:
                    ids[order[:k]] = replacement_id
                batch.append(ids)
            ids = torch.stack(batch)
            ex = tuple(e[i:i + 1].expand(k_max, -1) if torch.is_tensor(e) and e.shape == input_ids.shape else e
                       for e in extra)
            out = forward_func(ids, *ex)
            out = out if out.dim() == 2 else out[:, None]
            scores[i] = out[:, tgt[i]].float().cpu()
    auc = torch.trapezoid(scores, fractions, dim=1)
    intact = scores[:, -1 if insert else 0].abs().clamp_min(1e-12)
    return CurveResult(fractions, scores, auc, torch.trapezoid(scores / intact[:, None], fractions, dim=1))


def word_deletion(forward_func: Callable[..., Tensor], input_ids: Tensor, attributions: Tensor, target: Any, *,
                  replacement_id: int, words: Tensor, additional_forward_args: Any = None) -> CurveResult:
    """Word deletion: replace the most important words first by ``replacement_id`` (padding or
    a neutral token) at 0, 10, ..., 100 % of each text's words (lower AUC = better).

    Args:
        forward_func: ``(T, L) [, mask] -> (T, N)`` (e.g. TextImageSimilarity).
        input_ids: ``(T, L)``. attributions: ``(T, L)`` word importances.
        target: the image column(s). words: ``(T, L)`` bool, the positions that count as words
            (between SOS and EOS).
    """
    return _word_curve(forward_func, input_ids, attributions, target, insert=False, replacement_id=replacement_id,
                       words=words, additional_forward_args=additional_forward_args)


def word_insertion(forward_func: Callable[..., Tensor], input_ids: Tensor, attributions: Tensor, target: Any, *,
                   replacement_id: int, words: Tensor, additional_forward_args: Any = None) -> CurveResult:
    """Word insertion: from all words replaced, restore the most important first (higher AUC =
    better). Arguments as in :func:`word_deletion`."""
    return _word_curve(forward_func, input_ids, attributions, target, insert=True, replacement_id=replacement_id,
                       words=words, additional_forward_args=additional_forward_args)
