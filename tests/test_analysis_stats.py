"""analysis.stats at scale: ranks by sort and tie groups against scipy's rankdata, the vectorised
correlation intervals against the generic bootstrap on the same resamples, the cluster bootstrap
(resamples whole clusters; wider than the plain one when a cluster's values move together), and
partial correlations given several covariates against residuals of a least-squares fit. scipy is
used here only, as the independent reference (the package never imports it)."""

from __future__ import annotations

import math

import pytest
import torch

from captum_gradeclip.analysis.stats import (
    Interval,
    bootstrap_ci,
    bootstrap_stat,
    correlation_intervals,
    partial_correlation,
    pearson,
    ranks,
    resample_weights,
    spearman,
)
from captum_gradeclip.errors import InputError


@pytest.mark.parametrize("n, distinct", [(1, 1), (7, 3), (1000, 17), (5000, 5000)])
def test_ranks_equal_scipys_average_ranks(n, distinct):
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(n)
    v = torch.randint(0, distinct, (n,), generator=g).double() if distinct < n else torch.rand(n, generator=g).double()
    assert torch.allclose(ranks(v), torch.as_tensor(stats.rankdata(v.numpy(), method="average")), atol=1e-9)
    x, y = v, v + torch.randn(n, generator=g, dtype=torch.float64)
    if n > 2:
        assert spearman(x, y) == pytest.approx(float(stats.spearmanr(x.numpy(), y.numpy())[0]), abs=1e-12)


def test_resample_weights():
    clusters = ["a", "a", "b", "c", "c", "c"]
    chunks = list(resample_weights(clusters, 6, n_boot=40, seed=1, chunk=16))
    assert [c.shape for c in chunks] == [(16, 6), (16, 6), (8, 6)]
    w = torch.cat(chunks)
    # a cluster's values are drawn together: equal weights within a cluster; 3 clusters drawn per resample
    assert torch.equal(w[:, 0], w[:, 1]) and torch.equal(w[:, 3], w[:, 5])
    assert torch.equal(w[:, [0, 2, 3]].sum(1), torch.full((40,), 3.0, dtype=torch.float64))
    plain = torch.cat(list(resample_weights(None, 6, n_boot=40, seed=1)))
    assert torch.equal(plain.sum(1), torch.full((40,), 6.0, dtype=torch.float64))
    # the chunking does not change the resamples
    assert torch.equal(torch.cat(list(resample_weights(clusters, 6, n_boot=40, seed=1, chunk=40))), w)


def test_vectorised_intervals_equal_the_generic_bootstrap():
    g = torch.Generator().manual_seed(0)
    n = 120
    x = torch.randint(0, 6, (n,), generator=g).double()  # ties, as ratings have
    z1 = torch.randint(0, 8, (n,), generator=g).double()
    z2 = (torch.arange(n) % 5).double()
    y = x + 0.3 * z1 + torch.randn(n, generator=g, dtype=torch.float64)
    cl = (torch.arange(n) // 4).tolist()
    got = correlation_intervals(x, y, covariates=[z1, z2], clusters=cl, n_boot=60, seed=5)
    ref = {
        "pearson": bootstrap_stat(pearson, x, y, n_boot=60, seed=5, clusters=cl),
        "spearman": bootstrap_stat(spearman, x, y, n_boot=60, seed=5, clusters=cl),
        "partial_pearson": bootstrap_stat(lambda a, b, c, d: partial_correlation(a, b, [c, d]), x, y, z1, z2,
                                          n_boot=60, seed=5, clusters=cl),
        "partial_spearman_given_1": bootstrap_stat(lambda a, b, c: partial_correlation(a, b, c, method="spearman"),
                                                   x, y, z1, n_boot=60, seed=5, clusters=cl),
    }
    for k, iv in ref.items():
        assert (got[k].mean, got[k].low, got[k].high) == pytest.approx((iv.mean, iv.low, iv.high), abs=1e-9), k
    assert got["partial_spearman"].mean == pytest.approx(partial_correlation(x, y, [z1, z2], method="spearman"))


def test_cluster_bootstrap_is_wider_when_a_clusters_values_move_together():
    g = torch.Generator().manual_seed(2)
    shared = torch.randn(100, generator=g, dtype=torch.float64).repeat_interleave(10)  # 100 clusters of 10
    v = shared + 0.1 * torch.randn(1000, generator=g, dtype=torch.float64)
    cl = torch.arange(1000) // 10
    plain, clustered = bootstrap_ci(v, n_boot=400), bootstrap_ci(v, n_boot=400, clusters=cl)
    assert plain.mean == clustered.mean
    # independent draws would understate the spread by about sqrt(10)
    assert (clustered.high - clustered.low) > 2.5 * (plain.high - plain.low)
    assert bootstrap_ci([1.0, 2.0, 3.0], clusters=["one"] * 3) == Interval(2.0, 2.0, 2.0)  # one cluster: no spread
    with pytest.raises(InputError, match="2 cluster labels for 3 values"):
        bootstrap_ci([1.0, 2.0, 3.0], clusters=["a", "b"])


def test_partial_correlation_given_two_covariates_is_the_correlation_of_residuals():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(200, 2, generator=g, dtype=torch.float64)
    x = z @ torch.tensor([1.0, -2.0], dtype=torch.float64) + torch.randn(200, generator=g, dtype=torch.float64)
    y = z @ torch.tensor([0.5, 1.0], dtype=torch.float64) + 0.5 * x + torch.randn(200, generator=g, dtype=torch.float64)
    A = torch.cat([torch.ones(200, 1, dtype=torch.float64), z], 1)
    res = lambda t: t - A @ torch.linalg.lstsq(A, t[:, None]).solution[:, 0]  # noqa: E731
    assert partial_correlation(x, y, z) == pytest.approx(pearson(res(x), res(y)), abs=1e-10)
    assert partial_correlation(x, y, [z[:, 0], z[:, 1]]) == pytest.approx(pearson(res(x), res(y)), abs=1e-10)
    assert math.isnan(partial_correlation(x, y, [z[:, 0], 2 * z[:, 0]]))  # collinear covariates: undefined
