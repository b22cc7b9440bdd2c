"""Deletion / insertion curves (Petsiuk et al., RISE), for images and for words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from captum._utils.common import _format_additional_forward_args
from torch import Tensor

from ._maps import check_finite, check_targets, to_image_map

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


def _check_images(inputs: Tensor, attributions: Tensor, step: float) -> None:
    """Raises TypeError / ValueError for inputs that are not finite ``(N, C, H, W)`` images, maps of
    another count, or a step outside ``(0, 1]``."""
    if not torch.is_tensor(inputs) or not torch.is_tensor(attributions):
        raise TypeError(f"inputs and attributions must be tensors, got {type(inputs).__name__} and "
                        f"{type(attributions).__name__}")
    if inputs.dim() != 4:
        raise ValueError(f"inputs must be images (N, C, H, W), got {tuple(inputs.shape)}")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 1:
        raise ValueError(f"step must be a fraction of the pixels in (0, 1], got {step!r}")
    if attributions.dim() == 0 or attributions.shape[0] != inputs.shape[0]:
        raise ValueError(f"attributions {tuple(attributions.shape)} must have one map per input, N = {inputs.shape[0]}")
    check_finite(inputs, "inputs")


def _scores(forward_func, inputs: Tensor, repl: Tensor, ranks: Tensor, counts: List[int], target: Any, extra,
            insert: bool, batch_size: int) -> Tuple[Tensor, Tensor]:
    """``(scores (N, K), argmax hits (N, K))`` of ``target`` with the top ``counts[k]`` pixels of
    each example (``ranks (N, 1, H, W)``) deleted (replaced by ``repl``) or inserted.

    Raises:
        TypeError / ValueError / IndexError: bad targets (checked on the first forward's width).
    """
    n, k_n = inputs.shape[0], len(counts)
    counts_t = torch.tensor(counts, device=inputs.device)
    scores = torch.zeros(n * k_n)
    acc = torch.zeros(n * k_n, dtype=torch.bool)
    flat_tgt = None
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
            if flat_tgt is None:
                flat_tgt = check_targets(target, n, out.shape[1]).repeat_interleave(k_n)
            t_b = flat_tgt[idx].to(out.device)
            scores[idx] = out.gather(1, t_b[:, None])[:, 0].float().cpu()
            acc[idx] = (out.argmax(1) == t_b).cpu()
    return scores.view(n, k_n), acc.view(n, k_n)


def _curve(forward_func, inputs, attributions, target, *, insert: bool, step: float, replacement: str,
           batch_size: int, additional_forward_args, accuracy: bool, seed: int) -> CurveResult:
    _check_images(inputs, attributions, step)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n, _, h, w = inputs.shape
    extra = _format_additional_forward_args(additional_forward_args) or ()
    a = to_image_map(attributions, (h, w)).flatten(1)
    order = torch.argsort(a, dim=1, descending=True, stable=True)  # most important first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w).expand(n, -1))
    per_step = max(1, round(step * h * w))
    counts = list(range(0, h * w, per_step)) + [h * w]
    fractions = torch.tensor(counts, dtype=torch.float32) / (h * w)
    g = torch.Generator().manual_seed(seed)
    repl = torch.cat([_replacement(inputs[i:i + 1], replacement, g) for i in range(n)])
    scores, acc = _scores(forward_func, inputs, repl, rank.view(n, 1, h, w).to(inputs.device), counts, target,
                          extra, insert, batch_size)
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

    Raises:
        ValueError: NaN / Inf in ``inputs`` or ``attributions``, a map count other than ``N``, a
            ``step`` outside ``(0, 1]``, an unknown ``replacement``, or neither one target nor ``N``.
        TypeError: float or bool targets.
        IndexError: a target outside the forward function's ``T`` outputs (negative ones count
            from the end).
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


def _check_words(input_ids: Tensor, attributions: Tensor, words: Tensor) -> None:
    """Raises ValueError for shapes that differ, non-finite attributions, or a text without words."""
    if not all(torch.is_tensor(t) for t in (input_ids, attributions, words)):
        raise TypeError("input_ids, attributions and words must be tensors")
    if input_ids.dim() != 2 or attributions.shape != input_ids.shape:
        raise ValueError(f"input_ids (T, L) and attributions must have the same shape, got "
                         f"{tuple(input_ids.shape)} and {tuple(attributions.shape)}")
    if words.shape != input_ids.shape or words.dtype != torch.bool:
        raise ValueError(f"words must be a (T, L) bool mask of the word positions, got {tuple(words.shape)} "
                         f"{words.dtype}")
    check_finite(attributions)
    empty = ~words.any(1)
    if empty.any():
        raise ValueError(f"text(s) {empty.nonzero().flatten().tolist()[:10]} have no word position in `words`: "
                         "nothing to delete; leave them out")


def _word_curve(forward_func, input_ids, attributions, target, *, insert, replacement_id, words,
                additional_forward_args) -> CurveResult:
    _check_words(input_ids, attributions, words)
    extra = _format_additional_forward_args(additional_forward_args) or ()
    t_n = input_ids.shape[0]
    k_max = 11  # fractions 0, 0.1, ..., 1 of each text's words
    fractions = torch.linspace(0, 1, k_max)
    scores = torch.zeros(t_n, k_max)
    tgt = None
    with torch.no_grad():
        for i in range(t_n):
            pos = words[i].nonzero().flatten()
            order = pos[torch.argsort(attributions[i, pos].float(), descending=True, stable=True)]
            batch = []
            for f in fractions.tolist():
                k = round(f * len(pos))
                ids = input_ids[i].clone()
                if insert:
                    ids[pos] = replacement_id
                    ids[order[:k]] = input_ids[i, order[:k]]
                else:
                    ids[order[:k]] = replacement_id
                batch.append(ids)
            ex = tuple(e[i:i + 1].expand(k_max, -1) if torch.is_tensor(e) and e.shape == input_ids.shape else e
                       for e in extra)
            out = forward_func(torch.stack(batch), *ex)
            out = out if out.dim() == 2 else out[:, None]
            tgt = check_targets(target, t_n, out.shape[1]) if tgt is None else tgt
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
            (between SOS and EOS); every text needs at least one.

    Raises:
        ValueError: shapes that differ, NaN / Inf attributions, a text without word positions.
        TypeError / IndexError: targets as in :func:`deletion`.
    """
    return _word_curve(forward_func, input_ids, attributions, target, insert=False, replacement_id=replacement_id,
                       words=words, additional_forward_args=additional_forward_args)


def word_insertion(forward_func: Callable[..., Tensor], input_ids: Tensor, attributions: Tensor, target: Any, *,
                   replacement_id: int, words: Tensor, additional_forward_args: Any = None) -> CurveResult:
    """Word insertion: from all words replaced, restore the most important first (higher AUC =
    better). Arguments as in :func:`word_deletion`."""
    return _word_curve(forward_func, input_ids, attributions, target, insert=True, replacement_id=replacement_id,
                       words=words, additional_forward_args=additional_forward_args)
