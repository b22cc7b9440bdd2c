"""The paper's analyses of CLIP, measured with its own explanations (one module per study).

- :mod:`.decomposition`: how a caption's image map is composed of its phrases' maps and word
  weights (``captum-gradeclip analyze decomposition``);
- :mod:`.attributes`: what CLIP localises by category, and where it binds wrongly
  (``analyze attributes``);
- :mod:`.concreteness`: a word's concreteness against how much CLIP uses it
  (``analyze concreteness``).

Shared: :mod:`.stats` (bootstrap intervals, cluster bootstrap, correlations, plain torch),
:mod:`.words` (whole-word phrase spans; sub-word tokens of BPE, WordPiece and SentencePiece merged
into words), :mod:`.common` (flags, pairs files, writing rows and summaries).
"""

from .common import AnalysisError, PairLine, add_model_args, load_clip, read_pairs, write_rows, write_summary
from .concreteness import WordRow, WordStat, caption_rows, load_ratings, word_stats
from .decomposition import DecompositionRow, PairSpec, decompose, phrase_weights
from .stats import Interval, bootstrap_ci, bootstrap_stat, correlation_intervals, partial_correlation, pearson, spearman
from .words import PhraseSpan, WordSpan, bpe_tokens, find_phrase, locate_phrases, merge_words, word_scheme, word_values

__all__ = [
    "AnalysisError",
    "DecompositionRow",
    "Interval",
    "PairLine",
    "PairSpec",
    "PhraseSpan",
    "WordRow",
    "WordSpan",
    "WordStat",
    "add_model_args",
    "bootstrap_ci",
    "bootstrap_stat",
    "bpe_tokens",
    "caption_rows",
    "correlation_intervals",
    "decompose",
    "find_phrase",
    "load_clip",
    "load_ratings",
    "locate_phrases",
    "merge_words",
    "partial_correlation",
    "pearson",
    "phrase_weights",
    "read_pairs",
    "spearman",
    "word_scheme",
    "word_stats",
    "word_values",
    "write_rows",
    "write_summary",
]
