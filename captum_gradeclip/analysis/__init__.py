"""The paper's analyses of CLIP, measured with its own explanations (one module per study).

- :mod:`.decomposition`: how a caption's image map is composed of its phrases' maps and word
  weights (``captum-gradeclip analyze decomposition``);
- :mod:`.attributes`: what CLIP localises by category, and where it binds wrongly
  (``analyze attributes``);
- :mod:`.concreteness`: a word's concreteness against how much CLIP uses it
  (``analyze concreteness``).

Shared: :mod:`.stats` (bootstrap intervals, correlations, plain torch), :mod:`.words` (sub-word
tokens merged into words), :mod:`.common` (flags, pairs files, writing rows and summaries).
"""

from .common import PairLine, add_model_args, load_clip, read_pairs, write_rows, write_summary
from .stats import Interval, bootstrap_ci, partial_correlation, pearson, spearman

__all__ = [
    "Interval",
    "PairLine",
    "add_model_args",
    "bootstrap_ci",
    "load_clip",
    "partial_correlation",
    "pearson",
    "read_pairs",
    "spearman",
    "write_rows",
    "write_summary",
]
