"""The statistics the analyses report, in plain torch (no scipy): a percentile bootstrap interval
of a mean, Pearson's and Spearman's r, and a partial correlation.

Every function takes 1-D sequences or tensors of equal length ``n`` (computed in float64) and
raises ``ValueError`` on empty input, NaN, or mismatched lengths, so that a missing value is
never averaged away silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

Values = Union[Sequence[float], Tensor]

__all__ = ["Interval", "bootstrap_ci", "bootstrap_stat", "partial_correlation", "pearson", "ranks", "spearman"]


@dataclass(frozen=True)
class Interval:
    """A mean and its confidence interval ``[low, high]``."""

    mean: float
    low: float
    high: float


def _vector(values: Values, name: str = "values") -> Tensor:
    """``values`` as a float64 vector ``(n,)``; raises ``ValueError`` if empty, not 1-D or NaN."""
    v = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    if v.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(v.shape)}")
    if v.numel() == 0:
        raise ValueError(f"{name} is empty: no value to summarise")
    if torch.isnan(v).any():
        raise ValueError(f"{name} holds {int(torch.isnan(v).sum())} NaN of {v.numel()}: drop or fix them first")
    return v


def _pair(x: Values, y: Values) -> "tuple[Tensor, Tensor]":
    a, b = _vector(x, "x"), _vector(y, "y")
    if a.numel() != b.numel():
        raise ValueError(f"x and y must have the same length, got {a.numel()} and {b.numel()}")
    return a, b


def bootstrap_ci(values: Values, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """The mean of ``values (n,)`` with a percentile bootstrap interval: ``n_boot`` resamples of
    ``n`` values with replacement (a fixed ``seed``: the same interval every run), and the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of their means (linear interpolation).
    One value gives the degenerate interval ``[v, v]``.

    Raises:
        ValueError: empty input, NaN, ``n_boot < 1`` or ``level`` outside ``(0, 1)``.
    """
    v = _vector(values)
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got n_boot={n_boot}, level={level}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v.numel(), (n_boot, v.numel()), generator=g)
    means = v[idx].mean(1)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(means, q).tolist()
    return Interval(float(v.mean()), float(low), float(high))


def bootstrap_stat(fn: Callable[..., float], *columns: Values, n_boot: int = 1000, level: float = 0.95,
                   seed: int = 0) -> Interval:
    """A statistic of paired samples with a percentile bootstrap interval: ``fn(*columns)`` on the
    data (the interval's ``mean`` field), and the ``(1 - level) / 2``, ``(1 + level) / 2``
    quantiles of ``fn`` over ``n_boot`` resamples of the ``n`` rows (all columns resampled
    together, a fixed ``seed``). Resamples where ``fn`` is NaN (e.g. a correlation of a constant
    resample) are left out; if all are, the interval is NaN.

    Args:
        fn: e.g. :func:`spearman`. columns: 1-D, each ``(n,)``.

    Raises:
        ValueError: no column, empty input, NaN, different lengths, or a bad ``n_boot`` / ``level``.
    """
    if not columns:
        raise ValueError("give at least one column")
    cols = [_vector(c, f"column {i}") for i, c in enumerate(columns)]
    if len({c.numel() for c in cols}) != 1:
        raise ValueError(f"columns must have the same length, got {[c.numel() for c in cols]}")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got n_boot={n_boot}, level={level}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, cols[0].numel(), (n_boot, cols[0].numel()), generator=g)
    values = torch.tensor([fn(*(c[i] for c in cols)) for i in idx], dtype=torch.float64)
    values = values[~torch.isnan(values)]
    if values.numel() == 0:
        return Interval(float(fn(*cols)), math.nan, math.nan)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(values, q).tolist()
    return Interval(float(fn(*cols)), float(low), float(high))


def pearson(x: Values, y: Values) -> float:
    """Pearson's r of ``x (n,)`` and ``y (n,)``; NaN when either is constant (r is undefined).

    Raises:
        ValueError: empty, NaN, or different lengths.
    """
    a, b = _pair(x, y)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else math.nan


def ranks(values: Values) -> Tensor:
    """Ranks ``(n,)`` from 1, ties given their average rank (``[10, 20, 20] -> [1, 2.5, 2.5]``)."""
    v = _vector(values)
    order = torch.argsort(v, stable=True)
    r = torch.empty_like(v)
    r[order] = torch.arange(1, v.numel() + 1, dtype=torch.float64)
    for u in torch.unique(v):
        tie = v == u
        if int(tie.sum()) > 1:
            r[tie] = r[tie].mean()
    return r


def spearman(x: Values, y: Values) -> float:
    """Spearman's rho of ``x (n,)`` and ``y (n,)``: Pearson's r of their average ranks; NaN
    when either is constant.

    Raises:
        ValueError: empty, NaN, or different lengths.
    """
    a, b = _pair(x, y)
    return pearson(ranks(a), ranks(b))


def partial_correlation(x: Values, y: Values, z: Values, *, method: str = "pearson") -> float:
    """The correlation of ``x (n,)`` and ``y (n,)`` controlling for ``z (n,)``:
    ``(r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))``, with Pearson's r (``method="pearson"``)
    or Spearman's (``"spearman"``); NaN when undefined (a constant input, or ``|r_xz| = 1``).

    Raises:
        ValueError: empty, NaN, different lengths, or an unknown ``method``.
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    a, b = _pair(x, y)
    c, _ = _pair(z, x)
    r = spearman if method == "spearman" else pearson
    rxy, rxz, ryz = r(a, b), r(a, c), r(b, c)
    den = (1 - rxz * rxz) * (1 - ryz * ryz)
    return (rxy - rxz * ryz) / math.sqrt(den) if den > 0 else math.nan
