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

ShapesCLIP's scenes for this study: seeds :data:`DECOMPOSITION_SEED_START` ... (the range
``analysis-decomposition`` of :mod:`captum_gradeclip.shapes.seeds`, disjoint from every other
range the package uses; 2-4 objects, the caption naming all of them, the phrases the objects'
prompts).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..errors import InputError
from ..shapes.seeds import SEEDS
from .stats import bootstrap_ci, pearson, spearman
from .words import find_phrase, locate_phrases, merge_words, word_values, words_in

__all__ = ["DECOMPOSITION_SEED_START", "DecompositionRow", "PairError", "PairSpec", "from_maps", "TOP_FRACTION",
           "check_phrases", "decompose", "delete_span", "deleted", "deletions", "job_texts", "phrase_weights",
           "summarize", "top_iou"]

#: First ShapesCLIP scene seed of this study (see the module docstring).
DECOMPOSITION_SEED_START = SEEDS["analysis-decomposition"].start
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
        repeated: the phrases that occur more than once in the caption (flagged: each took the
            leftmost occurrence no earlier phrase took, the same span for its weight and its deletion).
        cluster: the resampling unit of the summary's intervals (the image: its captions resampled together).
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
    repeated: Tuple[str, ...] = ()
    cluster: str = ""


@dataclass(frozen=True)
class PairSpec:
    """What one pair asks: ``image`` (its key in the job), ``caption``, ``phrases``, the
    phrases' true ``masks`` ``(P, H, W)`` bool where known (ShapesCLIP, COCO instances; or a
    function computing them when the pair is read), else ``None``, and ``cluster`` (the unit resampled together; default the image)."""

    image: str
    caption: str
    phrases: Tuple[str, ...]
    masks: Optional[Union[Tensor, Callable[[], Optional[Tensor]]]] = None
    cluster: str = ""


@dataclass(frozen=True)
class PairError:
    """A pair that could not be analysed, and why (a line of ``errors.jsonl``)."""

    image: str
    text: str
    error: str


def delete_span(caption: str, start: int, end: int) -> str:
    """``caption`` without characters ``start:end``, the spaces collapsed, no space left before
    punctuation and a comma left before other punctuation dropped (``"a dog, a cat." - "a cat"
    -> "a dog."``).

    Raises:
        InputError: nothing (no letter or digit) is left.
    """
    rest = " ".join((caption[:start] + " " + caption[end:]).split())
    rest = re.sub(r" ([,.;:!?])", r"\1", rest)
    rest = re.sub(r"[,;:]+([,.;:!?])", r"\1", rest).strip(" ,;:")
    if not re.search(r"[^\W_]", rest):
        raise InputError(f"deleting {caption[start:end]!r} leaves nothing of the caption {caption!r}: "
                         "give phrases that are parts of it")
    return rest


def deleted(caption: str, phrase: str) -> str:
    """``caption`` with the first whole-word occurrence of ``phrase`` (:func:`~.words.find_phrase`:
    case-insensitive, punctuation-aware) removed: ``("a red circle and a blue ring", "a red
    circle") -> "and a blue ring"``; ``("a catamaran next to a cat", "a cat") -> "a catamaran
    next to"``.

    Raises:
        InputError: the phrase is not in the caption as whole words, or nothing is left.
    """
    return delete_span(caption, *find_phrase(caption, phrase))


def check_phrases(caption: str, phrases: Any) -> List[str]:
    """The phrases, checked: a list of at least one string, each a run of the caption's whole
    words that leaves words when deleted, all disjoint (:func:`~.words.locate_phrases`: a repeated
    phrase takes its leftmost occurrence not taken by an earlier phrase). Raises
    :class:`~captum_gradeclip.errors.InputError` naming the problem."""
    if isinstance(phrases, str):
        raise InputError(f"\"phrases\" must be a list of strings, got the string {phrases!r}: "
                         f"write \"phrases\": [{json.dumps(phrases)}]")
    if not phrases:
        raise InputError(f"the caption {caption!r} has no phrases: give \"phrases\": [...] (spans of the caption)")
    if not isinstance(phrases, (list, tuple)):
        raise InputError(f"\"phrases\" must be a list of strings, got {type(phrases).__name__}")
    for p in phrases:
        if not isinstance(p, str) or not p.strip():
            raise InputError(f"phrases must be non-empty strings, got {p!r}")
    out = [p.strip() for p in phrases]
    for span in locate_phrases(caption, out):
        delete_span(caption, span.start, span.end)
    return out


def job_texts(caption: str, phrases: Sequence[str]) -> List[str]:
    """The texts a pair needs explained: the caption, its phrases, and the caption without each
    phrase (its span from :func:`~.words.locate_phrases`, for the similarity drops), each once."""
    return list(dict.fromkeys([caption, *phrases, *deletions(caption, phrases)]))


def deletions(caption: str, phrases: Sequence[str]) -> List[str]:
    """The caption without each phrase's span (:func:`~.words.locate_phrases`), in phrase order."""
    return [delete_span(caption, sp.start, sp.end) for sp in locate_phrases(caption, phrases)]


def phrase_weights(caption: str, caption_tokens: Sequence[str], word_map: Tensor, phrases: Sequence[str], *,
                   scheme: Optional[str] = None) -> Tensor:
    """``w_p``: the caption's word map ``(L,)`` (over its sub-word tokens between start and end)
    merged into words (:func:`~.words.merge_words` by ``scheme``), normalised to sum 1 over the
    words, summed over the words inside each phrase's span (:func:`~.words.locate_phrases`, the
    same span the deletion removes; the words placed on the caption by :func:`~.words.align_words`).
    Returns ``(P,)``.

    Raises:
        InputError: a phrase not in the caption or overlapping another, the lengths differ, a
            phrase past the tokenizer's truncation, or the map zero on every word.
    """
    if len(caption_tokens) != word_map.numel():
        raise InputError(f"{len(caption_tokens)} caption tokens but a word map of {word_map.numel()} values")
    spans = merge_words(caption_tokens, scheme)
    values = word_values(word_map.double(), spans)
    total = float(values.sum()) if spans else 0.0
    if not total > 0:
        raise InputError(f"the caption's word map sums to {total:.3g} over its words: nothing to normalise")
    share = values / total
    out = [float(share[words_in(caption, spans, sp.start, sp.end)].sum()) for sp in locate_phrases(caption, phrases)]
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
              score: float, deletion_scores: Sequence[float], masks: Optional[Tensor] = None,
              repeated: Tuple[str, ...] = (), cluster: str = "") -> DecompositionRow:
    """One pair's numbers.

    Args:
        M: ``(h, w)`` the caption's map. Mp: ``(P, h, w)`` the phrases' maps. weights: ``(P,)``
            ``w_p``. score: the caption's cosine. deletion_scores: ``P`` cosines of the caption
            without each phrase. masks: ``(P, H, W)`` bool, each phrase's object (or ``None``; an
            all-False mask: a phrase naming no annotated object). repeated: the phrases that occur
            more than once in the caption. cluster: the unit the summary resamples (default: ``image``).
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
        spearman_drop_weight=rho, pointing=pointing, pointing_rate=rate, energy_in_objects=energy, object_area=area,
        repeated=tuple(repeated), cluster=cluster or image)


#: The per-pair numbers :func:`summarize` averages.
SUMMARY_FIELDS = ("r_weighted", "r_mean", "iou_weighted", "iou_mean", "spearman_drop_weight", "pointing_rate",
                  "energy_in_objects", "object_area")


def summarize(rows: Sequence[DecompositionRow], *, n_boot: int = 1000) -> Dict[str, Any]:
    """Means over pairs with 95% percentile bootstrap intervals of every :data:`SUMMARY_FIELDS`
    number (over the pairs where it is defined; ``n`` says how many, ``undefined`` how many
    not), and the paired difference ``r_weighted - r_mean``. The bootstrap resamples whole
    images (a cluster bootstrap: an image's captions, e.g. COCO's five, are not independent);
    ``clusters`` says how many there were."""
    out: Dict[str, Any] = {"pairs": len(rows), "n_boot": n_boot, "top_fraction": TOP_FRACTION,
                           "clusters": len({r.cluster or r.image for r in rows}), "resampled": "images",
                           "repeated_phrases": sum(bool(r.repeated) for r in rows)}
    for name in SUMMARY_FIELDS:
        ok = [r for r in rows if not math.isnan(getattr(r, name))]
        vs, cl = [getattr(r, name) for r in ok], [r.cluster or r.image for r in ok]
        out[name] = {"n": len(vs), "undefined": len(rows) - len(vs),
                     "mean": bootstrap_ci(vs, n_boot=n_boot, clusters=cl) if vs else None}
    ok = [r for r in rows if not math.isnan(r.r_weighted - r.r_mean)]
    diff = [r.r_weighted - r.r_mean for r in ok]
    out["r_weighted_minus_r_mean"] = {"n": len(diff), "mean": bootstrap_ci(diff, n_boot=n_boot,
                                                                          clusters=[r.cluster or r.image for r in ok])
                                      if diff else None}
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


def _one(spec: PairSpec, job: Dict[Tuple[str, str], Dict[str, Any]], tokens_of: Any,
         scheme: Optional[str]) -> Tuple[DecompositionRow, Dict[str, Any]]:
    """The row of one pair from the job's rows, and what the figure needs (raises ``ValueError``)."""
    texts = job_texts(spec.caption, spec.phrases)
    missing = [t for t in texts if (spec.image, t) not in job]
    if missing:
        raise InputError(f"the maps have no row for {missing[0]!r} (run explain-dataset --text-maps on job_pairs.jsonl)")
    cap = job[spec.image, spec.caption]
    if cap.get("word_map") is None:
        raise InputError("the maps have no word maps: run explain-dataset with --text-maps")
    weights = phrase_weights(spec.caption, tokens_of(spec.caption), cap["word_map"], spec.phrases, scheme=scheme)
    M = cap["map"].double()
    Mp = torch.stack([job[spec.image, p]["map"].double() for p in spec.phrases])
    dels = [job[spec.image, d]["score"] for d in deletions(spec.caption, spec.phrases)]
    repeated = tuple(sp.phrase for sp in locate_phrases(spec.caption, spec.phrases) if sp.occurrences > 1)
    masks = spec.masks() if callable(spec.masks) else spec.masks
    row = decompose(image=spec.image, caption=spec.caption, phrases=spec.phrases, M=M, Mp=Mp, weights=weights,
                    score=cap["score"], deletion_scores=dels, masks=masks, repeated=repeated,
                    cluster=spec.cluster)
    return row, {"caption": spec.caption, "phrases": spec.phrases, "M": M, "Mp": Mp, "weights": weights,
                 "r": row.r_weighted}


def from_maps(specs: Sequence[PairSpec], job_rows: Any, tokens_of: Any,
              keep: int = 0, *, scheme: Optional[str] = None) -> Tuple[List[DecompositionRow], List[PairError], List[Dict[str, Any]]]:
    """Rows of every pair from an ``explain-dataset --text-maps`` job holding, for each pair's
    image, the rows of :func:`job_texts` (``map (h, w)``, ``score``, ``word_map (L,)``).

    Args:
        specs: the pairs, in order. job_rows: the job's rows (e.g. :func:`captum_gradeclip.scale.read_maps`).
        tokens_of: ``text -> its sub-word tokens`` (markers kept) from the model that made the job.
        scheme: the tokenizer's word scheme (:func:`~.words.word_scheme`; ``None``: from the tokens).
        keep: how many of the first pairs' maps to return for the figure.

    Returns:
        ``(rows, errors, examples)``: a pair that cannot be analysed is an error, never skipped.
    """
    job = {(r["image"], r["text"]): r for r in job_rows}
    rows, errors, examples = [], [], []
    for spec in specs:
        try:
            row, ex = _one(spec, job, tokens_of, scheme)
        except ValueError as e:
            errors.append(PairError(spec.image, spec.caption, str(e)))
            continue
        rows.append(row)
        if len(examples) < keep:
            examples.append({"image_key": spec.image, **ex})
    return rows, errors, examples
