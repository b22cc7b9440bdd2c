"""Study 1: how an image-text match is composed of its phrases.

For each (image, caption, phrases): the caption's image map ``M (h, w)``, each phrase's map
``M_p (P, h, w)`` (Grad-ECLIP, one batched ``attribute_all`` over the pair's texts), and the
phrase weights ``w_p``: the caption's word map (Grad-ECLIP on the text tower) merged into words
(:mod:`.words`), normalised to sum 1 over the caption's words, summed over each phrase's words.
Then:

- composition: Pearson r between ``M`` and ``sum_p w_p M_p`` (and, as a control, the unweighted
  mean of the ``M_p``), and the IoU of their top-20% cells;
- faithfulness of the word weights: the drop of the caption's cosine when phrase ``p`` is deleted
  from it, against ``w_p`` (Spearman over the caption's phrases; undefined below 2 phrases or
  when either side is constant);
- with true masks (ShapesCLIP): the pointing game of each ``M_p`` on its object, and the share
  of ``M``'s positive energy inside the union of the caption's objects.

ShapesCLIP's scenes for this study: seeds :data:`DECOMPOSITION_SEED_START` ... (700,000-749,999;
2-4 objects, the caption naming all of them, the phrases the objects' prompts), disjoint from
ShapesCLIP's training (1,000,000 and up), the benchmark (0-99), ``shapes.evaluate`` (0-499), the
configuration study (10,000-10,059), fine-tuning's evaluation and calibration
(500,000-699,999), the concreteness study (750,000-799,999) and the attributes study
(800,000-899,999).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .stats import bootstrap_ci, pearson, spearman
from .words import merge_words, word_values

__all__ = ["DECOMPOSITION_SEED_START", "DecompositionRow", "PairError", "PairSpec", "from_maps", "TOP_FRACTION", "check_phrases", "decompose",
           "deleted", "job_texts", "phrase_weights", "summarize", "top_iou"]

#: First ShapesCLIP scene seed of this study (see the module docstring).
DECOMPOSITION_SEED_START = 700_000
#: The share of a map's cells that make its top region (for the IoU).
TOP_FRACTION = 0.2


@dataclass(frozen=True)
class DecompositionRow:
    """One pair's numbers (a row of ``rows.parquet``); NaN where undefined.

    Attributes:
        image, caption, phrases: the pair. score: the caption's cosine with the image.
        weights: ``w_p`` per phrase (the caption's word map share of its words).
        drops: the caption's cosine minus that of the caption with phrase ``p`` deleted.
        r_weighted, r_mean: Pearson r of ``M`` with ``sum_p w_p M_p`` and with ``mean_p M_p``.
        iou_weighted, iou_mean: IoU of the top-20% cells of ``M`` and of each of those.
        spearman_drop_weight: Spearman of ``drops`` and ``weights`` over the phrases.
        pointing: per phrase 1/0 (its map's maximum on its object), empty without masks.
        pointing_rate: their mean. energy_in_objects: share of ``M``'s positive energy in the
            union of the phrases' objects. object_area: the union's share of the image (what a
            uniform map would put there).
    """

    image: str
    caption: str
    phrases: Tuple[str, ...]
    score: float
    weights: Tuple[float, ...]
    drops: Tuple[float, ...]
    r_weighted: float
    r_mean: float
    iou_weighted: float
    iou_mean: float
    spearman_drop_weight: float
    pointing: Tuple[float, ...] = ()
    pointing_rate: float = math.nan
    energy_in_objects: float = math.nan
    object_area: float = math.nan


@dataclass(frozen=True)
class PairSpec:
    """What one pair asks: ``image`` (its key in the job), ``caption``, ``phrases``, and the
    phrases' true ``masks`` ``(P, H, W)`` bool where known (ShapesCLIP), else ``None``."""

    image: str
    caption: str
    phrases: Tuple[str, ...]
    masks: Optional[Tensor] = None


@dataclass(frozen=True)
class PairError:
    """A pair that could not be analysed, and why (a line of ``errors.jsonl``)."""

    image: str
    text: str
    error: str


def deleted(caption: str, phrase: str) -> str:
    """``caption`` with the first case-insensitive occurrence of ``phrase`` removed and the
    spaces collapsed: ``("a red circle and a blue ring", "a red circle") -> "and a blue ring"``.

    Raises:
        ValueError: the phrase is not in the caption, or nothing is left.
    """
    i = caption.lower().find(phrase.lower())
    if i < 0:
        raise ValueError(f"the phrase {phrase!r} is not in the caption {caption!r}")
    rest = " ".join((caption[:i] + " " + caption[i + len(phrase):]).split())
    if not re.search(r"[^\W_]", rest):
        raise ValueError(f"deleting {phrase!r} leaves nothing of the caption {caption!r}: give phrases that are parts of it")
    return rest


def check_phrases(caption: str, phrases: Sequence[str]) -> List[str]:
    """The phrases, checked (at least one; each a non-empty part of the caption, leaving words
    when deleted). Raises ``ValueError`` naming the problem."""
    if not phrases:
        raise ValueError(f"the caption {caption!r} has no phrases: give \"phrases\": [...] (spans of the caption)")
    for p in phrases:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"phrases must be non-empty strings, got {p!r}")
        deleted(caption, p)
    return [p.strip() for p in phrases]


def job_texts(caption: str, phrases: Sequence[str]) -> List[str]:
    """The texts a pair needs explained: the caption, its phrases, and the caption without each
    phrase (for the similarity drops), each once."""
    return list(dict.fromkeys([caption, *phrases, *(deleted(caption, p) for p in phrases)]))


def _find(tokens: Sequence[str], part: Sequence[str], taken: set) -> int:
    for i in range(len(tokens) - len(part) + 1):
        if list(tokens[i:i + len(part)]) == list(part) and i not in taken:
            return i
    return -1


def phrase_weights(caption_tokens: Sequence[str], word_map: Tensor, phrase_tokens: Sequence[Sequence[str]]) -> Tensor:
    """``w_p``: the caption's word map ``(L,)`` (over its BPE tokens between start and end)
    merged into words, normalised to sum 1 over the words, summed over each phrase's words.
    Returns ``(P,)``. A phrase that occurs twice takes its next unused occurrence.

    Raises:
        ValueError: a phrase's tokens are not a run of the caption's, the lengths differ, or
            the map is zero on every word.
    """
    if len(caption_tokens) != word_map.numel():
        raise ValueError(f"{len(caption_tokens)} caption tokens but a word map of {word_map.numel()} values")
    spans = merge_words(caption_tokens)
    values = word_values(word_map.double(), spans)
    total = float(values.sum()) if spans else 0.0
    if not total > 0:
        raise ValueError(f"the caption's word map sums to {total:.3g} over its words: nothing to normalise")
    share = values / total
    out, taken = [], set()
    for toks in phrase_tokens:
        i = _find(caption_tokens, toks, taken)
        if i < 0:
            raise ValueError(f"the phrase's tokens {list(toks)} are not a run of the caption's {list(caption_tokens)}")
        taken.add(i)
        out.append(sum(float(v) for s, v in zip(spans, share) if s.start >= i and s.end <= i + len(toks)))
    return torch.tensor(out, dtype=torch.float64)


def top_iou(a: Tensor, b: Tensor, fraction: float = TOP_FRACTION) -> float:
    """IoU of the top ``fraction`` of cells (``ceil(fraction * h * w)``, ties by position) of two
    maps ``(h, w)``."""
    k = max(1, math.ceil(fraction * a.numel()))
    ta = set(torch.argsort(-a.reshape(-1).double(), stable=True)[:k].tolist())
    tb = set(torch.argsort(-b.reshape(-1).double(), stable=True)[:k].tolist())
    return len(ta & tb) / len(ta | tb)


def _masks_numbers(M: Tensor, Mp: Tensor, masks: Tensor) -> Tuple[Tuple[float, ...], float, float, float]:
    """Pointing per phrase (NaN for an object with no visible pixel), their mean, the share of
    ``M``'s positive energy in the union of the objects' masks ``(P, H, W)``, and the union's area share."""
    from ..metrics import energy_pointing_game, pointing_game

    hits = []
    for m, mask in zip(Mp, masks):
        hits.append(float(pointing_game(m[None, None].float(), mask[None])[0]) if mask.any() else math.nan)
    valid = [h for h in hits if not math.isnan(h)]
    union = masks.any(0)
    energy = float(energy_pointing_game(M[None, None].float(), union[None])[0]) if union.any() else math.nan
    return tuple(hits), sum(valid) / len(valid) if valid else math.nan, energy, float(union.float().mean())


def decompose(*, image: str, caption: str, phrases: Sequence[str], M: Tensor, Mp: Tensor, weights: Tensor,
              score: float, deletion_scores: Sequence[float], masks: Optional[Tensor] = None) -> DecompositionRow:
    """One pair's numbers.

    Args:
        M: ``(h, w)`` the caption's map. Mp: ``(P, h, w)`` the phrases' maps. weights: ``(P,)``
            ``w_p``. score: the caption's cosine. deletion_scores: ``P`` cosines of the caption
            without each phrase. masks: ``(P, H, W)`` bool, each phrase's object (or ``None``).
    """
    w = weights.double()
    combo = (w[:, None, None] * Mp.double()).sum(0)
    mean = Mp.double().mean(0)
    drops = tuple(float(score) - float(d) for d in deletion_scores)
    rho = spearman(drops, w) if len(drops) >= 2 else math.nan
    none = ((), math.nan, math.nan, math.nan)
    pointing, rate, energy, area = _masks_numbers(M, Mp, masks) if masks is not None else none
    return DecompositionRow(
        image=image, caption=caption, phrases=tuple(phrases), score=float(score), weights=tuple(w.tolist()),
        drops=drops, r_weighted=pearson(M.reshape(-1), combo.reshape(-1)),
        r_mean=pearson(M.reshape(-1), mean.reshape(-1)), iou_weighted=top_iou(M, combo), iou_mean=top_iou(M, mean),
        spearman_drop_weight=rho, pointing=pointing, pointing_rate=rate, energy_in_objects=energy, object_area=area)


#: The per-pair numbers :func:`summarize` averages.
SUMMARY_FIELDS = ("r_weighted", "r_mean", "iou_weighted", "iou_mean", "spearman_drop_weight", "pointing_rate",
                  "energy_in_objects", "object_area")


def summarize(rows: Sequence[DecompositionRow], *, n_boot: int = 1000) -> Dict[str, Any]:
    """Means over pairs with 95% percentile bootstrap intervals of every :data:`SUMMARY_FIELDS`
    number (over the pairs where it is defined; ``n`` says how many, ``undefined`` how many
    not), and the paired difference ``r_weighted - r_mean``."""
    out: Dict[str, Any] = {"pairs": len(rows), "n_boot": n_boot, "top_fraction": TOP_FRACTION}
    for name in SUMMARY_FIELDS:
        vs = [getattr(r, name) for r in rows if not math.isnan(getattr(r, name))]
        out[name] = {"n": len(vs), "undefined": len(rows) - len(vs),
                     "mean": bootstrap_ci(vs, n_boot=n_boot) if vs else None}
    diff = [r.r_weighted - r.r_mean for r in rows if not math.isnan(r.r_weighted - r.r_mean)]
    out["r_weighted_minus_r_mean"] = {"n": len(diff), "mean": bootstrap_ci(diff, n_boot=n_boot) if diff else None}
    drops = [d for r in rows for d in r.drops]
    out["deletions_lowering_score"] = sum(d > 0 for d in drops) / len(drops) if drops else None
    out["by_n_phrases"] = _by_n_phrases(rows)
    return out


def _by_n_phrases(rows: Sequence[DecompositionRow]) -> Dict[str, Dict[str, Any]]:
    """Plain means of the main numbers for the pairs with each number of phrases."""
    out: Dict[str, Dict[str, Any]] = {}
    for n in sorted({len(r.phrases) for r in rows}):
        group = [r for r in rows if len(r.phrases) == n]
        cell: Dict[str, Any] = {"pairs": len(group)}
        for name in ("r_weighted", "r_mean", "spearman_drop_weight", "pointing_rate"):
            vs = [getattr(r, name) for r in group if not math.isnan(getattr(r, name))]
            cell[name] = sum(vs) / len(vs) if vs else None
        out[str(n)] = cell
    return out


def _one(spec: PairSpec, job: Dict[Tuple[str, str], Dict[str, Any]], tokens_of: Any) -> Tuple[DecompositionRow, Dict[str, Any]]:
    """The row of one pair from the job's rows, and what the figure needs (raises ``ValueError``)."""
    texts = job_texts(spec.caption, spec.phrases)
    missing = [t for t in texts if (spec.image, t) not in job]
    if missing:
        raise ValueError(f"the maps have no row for {missing[0]!r} (run explain-dataset --text-maps on job_pairs.jsonl)")
    cap = job[spec.image, spec.caption]
    if cap.get("word_map") is None:
        raise ValueError("the maps have no word maps: run explain-dataset with --text-maps")
    weights = phrase_weights(tokens_of(spec.caption), cap["word_map"], [tokens_of(p) for p in spec.phrases])
    M = cap["map"].double()
    Mp = torch.stack([job[spec.image, p]["map"].double() for p in spec.phrases])
    dels = [job[spec.image, deleted(spec.caption, p)]["score"] for p in spec.phrases]
    row = decompose(image=spec.image, caption=spec.caption, phrases=spec.phrases, M=M, Mp=Mp, weights=weights,
                    score=cap["score"], deletion_scores=dels, masks=spec.masks)
    return row, {"caption": spec.caption, "phrases": spec.phrases, "M": M, "Mp": Mp, "weights": weights,
                 "r": row.r_weighted}


def from_maps(specs: Sequence[PairSpec], job_rows: Any, tokens_of: Any,
              keep: int = 0) -> Tuple[List[DecompositionRow], List[PairError], List[Dict[str, Any]]]:
    """Rows of every pair from an ``explain-dataset --text-maps`` job holding, for each pair's
    image, the rows of :func:`job_texts` (``map (h, w)``, ``score``, ``word_map (L,)``).

    Args:
        specs: the pairs, in order. job_rows: the job's rows (e.g. :func:`captum_gradeclip.scale.read_maps`).
        tokens_of: ``text -> its BPE tokens`` (``</w>`` kept) from the model that made the job.
        keep: how many of the first pairs' maps to return for the figure.

    Returns:
        ``(rows, errors, examples)``: a pair that cannot be analysed is an error, never skipped.
    """
    job = {(r["image"], r["text"]): r for r in job_rows}
    rows, errors, examples = [], [], []
    for spec in specs:
        try:
            row, ex = _one(spec, job, tokens_of)
        except ValueError as e:
            errors.append(PairError(spec.image, spec.caption, str(e)))
            continue
        rows.append(row)
        if len(examples) < keep:
            examples.append({"image_key": spec.image, **ex})
    return rows, errors, examples
