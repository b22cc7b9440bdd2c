"""The statistics the analyses report, in plain torch (no scipy): percentile bootstrap intervals
of a mean and of correlations (Pearson, Spearman, partial), resampling single values or whole
clusters (a caption's words, an image's captions), at O(n log n) and vectorised over resamples.

Every function takes 1-D sequences or tensors of equal length ``n`` (computed in float64) and
raises :class:`~captum_gradeclip.errors.InputError` (a ``ValueError``) on empty input, NaN, or
mismatched lengths, so that a missing value is never averaged away silently.

How it stays fast. A resample is a vector of weights, how many times each value was drawn
(``(B, n)``, ``B`` resamples at a time, bounded by :data:`CHUNK`): a cluster bootstrap draws ``m`` clusters
with replacement and gives each value its cluster's count. A weighted mean is then a product,
and Spearman's ranks *within a resample* need no sort: the values are sorted once, their tie
groups found once (:func:`ranks`), and a resample's average rank of a group is the weight of the
groups below it plus ``(its own weight + 1) / 2`` (a cumulative sum over groups). So 1,000
resamples of 250,000 values cost a few passes over ``(B, n)`` each, no ``n x distinct`` loop
(``python benchmarks/analysis_stats.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..errors import InputError

Values = Union[Sequence[float], Tensor]
Clusters = Optional[Union[Sequence[object], Tensor]]

__all__ = ["CHUNK", "Interval", "bootstrap_ci", "bootstrap_stat", "correlation_intervals", "partial_correlation",
           "pearson", "ranks", "resample_weights", "spearman"]

#: Values times resamples computed together (bounds memory: a few ``(B, n)`` float64 tensors of at
#: most this many elements, 32 MB each; ``B = CHUNK // n`` resamples, at least 16, at most all).
CHUNK = 1 << 22


@dataclass(frozen=True)
class Interval:
    """A statistic (``mean``: its value on the data) and its confidence interval ``[low, high]``."""

    mean: float
    low: float
    high: float


def _vector(values: Values, name: str = "values") -> Tensor:
    """``values`` as a float64 vector ``(n,)``; raises ``InputError`` if empty, not 1-D or NaN."""
    v = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    if v.dim() != 1:
        raise InputError(f"{name} must be 1-D, got shape {tuple(v.shape)}")
    if v.numel() == 0:
        raise InputError(f"{name} is empty: no value to summarise")
    if torch.isnan(v).any():
        raise InputError(f"{name} holds {int(torch.isnan(v).sum())} NaN of {v.numel()}: drop or fix them first")
    return v


def _pair(x: Values, y: Values) -> Tuple[Tensor, Tensor]:
    a, b = _vector(x, "x"), _vector(y, "y")
    if a.numel() != b.numel():
        raise InputError(f"x and y must have the same length, got {a.numel()} and {b.numel()}")
    return a, b


def _check(n_boot: int, level: float) -> None:
    if n_boot < 1 or not 0 < level < 1:
        raise InputError(f"need n_boot >= 1 and 0 < level < 1, got n_boot={n_boot}, level={level}")


def _cluster_ids(clusters: Clusters, n: int) -> Tuple[Tensor, int]:
    """Cluster labels ``(n,)`` (any hashable, or an integer tensor) -> ids ``0..m-1`` ``(n,)`` and ``m``;
    ``None``: every value its own cluster."""
    if clusters is None:
        return torch.arange(n), n
    if isinstance(clusters, Tensor):
        if clusters.numel() != n:
            raise InputError(f"{clusters.numel()} cluster labels for {n} values")
        _, ids = torch.unique(clusters.reshape(-1), return_inverse=True)
        return ids, int(ids.max()) + 1
    labels = list(clusters)
    if len(labels) != n:
        raise InputError(f"{len(labels)} cluster labels for {n} values")
    index: Dict[object, int] = {}
    ids = torch.tensor([index.setdefault(c, len(index)) for c in labels], dtype=torch.long)
    return ids, len(index)


def resample_weights(clusters: Clusters, n: int, *, n_boot: int, seed: int = 0,
                     chunk: Optional[int] = None) -> Iterator[Tensor]:
    """Bootstrap resamples as weights: chunks ``(B, n)`` float64 (``B <= chunk``, default
    ``max(16, CHUNK // n)``; ``n_boot`` rows in all), row ``b`` holding how often each value is in
    resample ``b``. With ``clusters`` (``n``
    labels), ``m`` clusters are drawn with replacement and a value gets its cluster's count;
    without, ``n`` single values are (the ordinary bootstrap). Seeded: the same every run."""
    ids, m = _cluster_ids(clusters, n)
    chunk = chunk or max(16, CHUNK // max(n, 1))
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        draws = torch.randint(0, m, (b, m), generator=g)
        counts = torch.zeros(b, m, dtype=torch.float64).scatter_add_(1, draws, torch.ones(b, m, dtype=torch.float64))
        yield counts[:, ids]


def _quantiles(values: Tensor, level: float) -> Tuple[float, float]:
    values = values[~torch.isnan(values)]
    if values.numel() == 0:
        return math.nan, math.nan
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(values, q).tolist()
    return float(low), float(high)


def bootstrap_ci(values: Values, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                 clusters: Clusters = None) -> Interval:
    """The mean of ``values (n,)`` with a percentile bootstrap interval: ``n_boot`` resamples
    (:func:`resample_weights`: single values, or whole ``clusters`` with replacement, the mean of
    a resample being its weighted mean), and the ``(1 - level) / 2`` and ``(1 + level) / 2``
    quantiles of their means (linear interpolation). One value, or one cluster, gives the
    degenerate interval ``[v, v]``.

    Raises:
        InputError: empty input, NaN, ``n_boot < 1``, ``level`` outside ``(0, 1)``, or as many
            cluster labels as values not given.
    """
    v = _vector(values)
    _check(n_boot, level)
    means = torch.cat([(w @ v) / w.sum(1) for w in resample_weights(clusters, v.numel(), n_boot=n_boot, seed=seed)])
    low, high = _quantiles(means, level)
    return Interval(float(v.mean()), low, high)


def bootstrap_stat(fn: Callable[..., float], *columns: Values, n_boot: int = 1000, level: float = 0.95,
                   seed: int = 0, clusters: Clusters = None) -> Interval:
    """Any statistic of paired samples with a percentile bootstrap interval: ``fn(*columns)`` on the
    data (the interval's ``mean`` field), and the quantiles of ``fn`` over ``n_boot`` resamples of
    the rows (all columns resampled together; single rows, or whole ``clusters``). Resamples where
    ``fn`` is NaN are left out; if all are, the interval is NaN. This calls ``fn`` once per
    resample: for correlations use the vectorised :func:`correlation_intervals`.

    Args:
        fn: e.g. :func:`spearman`. columns: 1-D, each ``(n,)``.

    Raises:
        InputError: no column, empty input, NaN, different lengths, or a bad ``n_boot`` / ``level``.
    """
    if not columns:
        raise InputError("give at least one column")
    cols = [_vector(c, f"column {i}") for i, c in enumerate(columns)]
    if len({c.numel() for c in cols}) != 1:
        raise InputError(f"columns must have the same length, got {[c.numel() for c in cols]}")
    _check(n_boot, level)
    values: List[float] = []
    rows = torch.arange(cols[0].numel())
    for w in resample_weights(clusters, cols[0].numel(), n_boot=n_boot, seed=seed):
        for wb in w.long():
            idx = rows.repeat_interleave(wb)
            values.append(fn(*(c[idx] for c in cols)))
    low, high = _quantiles(torch.tensor(values, dtype=torch.float64), level)
    return Interval(float(fn(*cols)), low, high)


def pearson(x: Values, y: Values) -> float:
    """Pearson's r of ``x (n,)`` and ``y (n,)``; NaN when either is constant (r is undefined).

    Raises:
        InputError: empty, NaN, or different lengths.
    """
    a, b = _pair(x, y)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else math.nan


@dataclass(frozen=True)
class _Ties:
    """The tie groups of a vector ``(n,)``: ``group (n,)`` each value's group, groups numbered in
    increasing value, ``G`` of them."""

    group: Tensor
    G: int

    @staticmethod
    def of(v: Tensor) -> "_Ties":
        order = torch.argsort(v, stable=True)
        s = v[order]
        new = torch.ones_like(s, dtype=torch.bool)
        new[1:] = s[1:] != s[:-1]
        group = torch.empty_like(order)
        group[order] = torch.cumsum(new.long(), 0) - 1
        return _Ties(group, int(new.sum()))

    def ranks(self, w: Tensor, centred: bool = False) -> Tensor:
        """Average ranks ``(B, n)`` within resamples given by weights ``w (B, n)``: a group's rank
        is the weight below it plus ``(its weight + 1) / 2``. ``centred``: ``(rank - (W + 1) / 2) / W``
        for a resample of total weight ``W`` (its weighted mean is then 0: nothing cancels)."""
        tot = torch.zeros(w.shape[0], self.G, dtype=w.dtype).index_add_(1, self.group, w)
        r = torch.cumsum(tot, 1).sub_(tot, alpha=0.5).add_(0.5)
        if centred:
            W = tot.sum(1, keepdim=True)
            r.sub_((W + 1) / 2).div_(W)
        return torch.index_select(r, 1, self.group)


def ranks(values: Values) -> Tensor:
    """Ranks ``(n,)`` from 1, ties given their average rank (``[10, 20, 20] -> [1, 2.5, 2.5]``):
    one sort and its tie groups, O(n log n) (equal to ``scipy.stats.rankdata(method="average")``)."""
    v = _vector(values)
    return _Ties.of(v).ranks(torch.ones(1, v.numel(), dtype=torch.float64))[0]


def spearman(x: Values, y: Values) -> float:
    """Spearman's rho of ``x (n,)`` and ``y (n,)``: Pearson's r of their average ranks; NaN
    when either is constant.

    Raises:
        InputError: empty, NaN, or different lengths.
    """
    a, b = _pair(x, y)
    return pearson(ranks(a), ranks(b))


def _covariates(z: Union[Values, Sequence[Values]], n: int) -> List[Tensor]:
    """Covariates as vectors: one ``(n,)``, a list of ``(n,)``, or an ``(n, k)`` tensor."""
    if isinstance(z, Tensor):
        cols = [z] if z.dim() == 1 else list(z.T)
    elif isinstance(z, (list, tuple)) and z and isinstance(z[0], (list, tuple, Tensor)):
        cols = list(z)
    else:
        cols = [z]
    out = [_vector(c, f"covariate {i}") for i, c in enumerate(cols)]
    if any(c.numel() != n for c in out):
        raise InputError(f"covariates must have the length of x ({n}), got {[c.numel() for c in out]}")
    return out


def _corr_of_moments(W: Tensor, m: Tensor, S: Tensor) -> Tensor:
    """Correlation matrices ``(B, k, k)`` from total weights ``W (B,)``, weighted sums ``m (B, k)``
    and weighted sums of products ``S (B, k, k)``; NaN where a variable is constant."""
    mean = m / W[:, None]
    cov = S / W[:, None, None] - mean[:, :, None] * mean[:, None, :]
    sd = cov.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()
    den = sd[:, :, None] * sd[:, None, :]
    ok = den > 1e-12 * den.amax(dim=(1, 2), keepdim=True).clamp_min(1e-300)
    return torch.where(ok, cov / den.clamp_min(1e-300), torch.full_like(cov, math.nan))


class _Fixed:
    """Fixed variables ``V (n, k)``, centred and scaled once, with the products of their columns,
    so that their correlation matrices under many weights are two matrix products."""

    def __init__(self, V: Tensor) -> None:
        V = V - V.mean(0, keepdim=True)
        self.V = V / V.abs().amax(0, keepdim=True).clamp_min(1e-300)
        self.k = V.shape[1]
        self.Q = (self.V[:, :, None] * self.V[:, None, :]).reshape(V.shape[0], self.k * self.k)

    def corr(self, w: Tensor) -> Tensor:
        """Correlation matrices ``(B, k, k)`` under weights ``w (B, n)``."""
        return _corr_of_moments(w.sum(1), w @ self.V, (w @ self.Q).reshape(-1, self.k, self.k))


def _rank_corr(w: Tensor, ties: List["_Ties"]) -> Tensor:
    """Correlation matrices ``(B, k, k)`` of the variables' ranks within each resample ``w (B, n)``
    (centred ranks: their weighted sums are 0)."""
    R = torch.empty(w.shape[0], len(ties), w.shape[1], dtype=w.dtype)
    for j, t in enumerate(ties):
        R[:, j] = t.ranks(w, centred=True)
    wR = R * w[:, None, :]
    zero = torch.zeros(w.shape[0], len(ties), dtype=w.dtype)
    return _corr_of_moments(w.sum(1), zero, torch.bmm(wR, R.transpose(1, 2)))


def _partial(R: Tensor) -> Tensor:
    """The partial correlation of variables 0 and 1 given the others, from correlation matrices
    ``(B, k, k)``: ``-P01 / sqrt(P00 P11)`` of the inverse ``P``; NaN where singular or undefined."""
    if R.shape[-1] == 2:
        return R[:, 0, 1]
    bad = torch.isnan(R).flatten(1).any(1)
    P, info = torch.linalg.inv_ex(torch.where(torch.isnan(R), torch.eye(R.shape[-1], dtype=R.dtype), R))
    den = (P[:, 0, 0] * P[:, 1, 1]).clamp_min(0).sqrt()
    r = -P[:, 0, 1] / den
    return torch.where(bad | (info != 0) | ~(den > 0) | (r.abs() > 1 + 1e-9), torch.full_like(r, math.nan),
                       r.clamp(-1, 1))


def partial_correlation(x: Values, y: Values, z: Union[Values, Sequence[Values]], *, method: str = "pearson") -> float:
    """The correlation of ``x (n,)`` and ``y (n,)`` controlling for ``z``: one covariate ``(n,)``
    or several (a list of ``(n,)``, or ``(n, k)``), with Pearson's r (``method="pearson"``) or on
    average ranks (``"spearman"``). With one covariate it is ``(r_xy - r_xz r_yz) /
    sqrt((1 - r_xz^2)(1 - r_yz^2))``; in general ``-P_xy / sqrt(P_xx P_yy)`` of the inverse
    correlation matrix. NaN when undefined (a constant input, collinear covariates).

    Raises:
        InputError: empty, NaN, different lengths, or an unknown ``method``.
    """
    if method not in ("pearson", "spearman"):
        raise InputError(f"method must be 'pearson' or 'spearman', got {method!r}")
    a, b = _pair(x, y)
    cols = [a, b, *_covariates(z, a.numel())]
    if method == "spearman":
        cols = [ranks(c) for c in cols]
    R = _Fixed(torch.stack(cols, 1)).corr(torch.ones(1, a.numel(), dtype=torch.float64))
    return float(_partial(R)[0])


def _stats_of(w: Tensor, fixed: _Fixed, ties: List[_Ties], n_cov: int) -> Dict[str, Tensor]:
    """Pearson, Spearman and, for ``k = 1 .. n_cov``, their partials given the first ``k``
    covariates (the variables after the first two) under resample weights ``w (B, n)``."""
    raw, rk = fixed.corr(w), _rank_corr(w, ties)
    out = {"pearson": raw[:, 0, 1], "spearman": rk[:, 0, 1]}
    for k in range(1, n_cov + 1):
        out[f"partial_pearson_given_{k}"] = _partial(raw[:, :2 + k, :2 + k])
        out[f"partial_spearman_given_{k}"] = _partial(rk[:, :2 + k, :2 + k])
    if n_cov:
        out["partial_pearson"], out["partial_spearman"] = out[f"partial_pearson_given_{n_cov}"], \
            out[f"partial_spearman_given_{n_cov}"]
    return out


def correlation_intervals(x: Values, y: Values, *, covariates: Sequence[Values] = (), clusters: Clusters = None,
                          n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Dict[str, Interval]:
    """Pearson's and Spearman's r of ``x (n,)`` and ``y (n,)`` and, given ``covariates`` (each
    ``(n,)``), both partial correlations, each with a percentile bootstrap interval over the same
    ``n_boot`` resamples (single rows, or whole ``clusters``; ranks recomputed within every
    resample, vectorised: see the module). A resample where a statistic is undefined is left out.

    Returns:
        ``{"pearson", "spearman"}`` and, with covariates, ``"partial_pearson"``,
        ``"partial_spearman"`` (given all of them) and ``"partial_{pearson,spearman}_given_{k}"``
        (given the first ``k``), each an :class:`Interval`.

    Raises:
        InputError: empty input, NaN, different lengths, or a bad ``n_boot`` / ``level``.
    """
    a, b = _pair(x, y)
    _check(n_boot, level)
    cols = [a, b, *_covariates(list(covariates), a.numel())] if covariates else [a, b]
    ties = [_Ties.of(c) for c in cols]
    V = _Fixed(torch.stack(cols, 1))
    one = _stats_of(torch.ones(1, a.numel(), dtype=torch.float64), V, ties, len(cols) - 2)
    boots: Dict[str, List[Tensor]] = {k: [] for k in one}
    for w in resample_weights(clusters, a.numel(), n_boot=n_boot, seed=seed):
        for k, v in _stats_of(w, V, ties, len(cols) - 2).items():
            boots[k].append(v)
    return {k: Interval(float(one[k][0]), *_quantiles(torch.cat(boots[k]), level)) for k in one}
