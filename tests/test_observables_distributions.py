"""Histograms and their distances: scipy's Jensen-Shannon, limits, pooling, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from cgsim.errors import CgsimInputError
from cgsim.observables.distributions import (
    combine_distributions,
    histogram,
    js_divergence,
    relative_error,
)


def test_jsd_matches_scipy():
    rng = np.random.default_rng(0)
    p, q = rng.uniform(size=12), rng.uniform(size=12)
    # scipy returns the Jensen-Shannon *distance*, the square root of the divergence
    assert js_divergence(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2, rel=1e-10)


def test_jsd_limits_and_overflow():
    edges = np.linspace(0, 1, 11)
    a = histogram(np.full(50, 0.25), edges, "nm")
    b = histogram(np.full(50, 0.75), edges, "nm")
    assert js_divergence(a, a) == 0.0
    assert js_divergence(a, b) == pytest.approx(1.0)
    # samples that left the range still count: a histogram with everything above it differs fully
    c = histogram(np.full(50, 5.0), edges, "nm")
    assert c.counts.sum() == 0 and c.n_above == 50
    assert js_divergence(a, c) == pytest.approx(1.0)
    assert np.allclose(histogram(np.r_[0.25, np.nan], edges, "nm").probabilities()[-1], 0.5)


def test_combine_adds_counts():
    rng = np.random.default_rng(1)
    v = rng.normal(size=300)
    edges = np.linspace(-2, 2, 9)
    whole = histogram(v, edges, "nm")
    pooled = combine_distributions([histogram(v[:100], edges, "nm"), histogram(v[100:], edges, "nm")])
    assert np.array_equal(pooled.counts, whole.counts)
    assert pooled.mean == pytest.approx(whole.mean) and pooled.std == pytest.approx(whole.std)


def test_relative_error():
    assert relative_error(1.1, 1.0) == pytest.approx(0.1)
    assert relative_error(0.0, 0.0) == 0.0
    assert relative_error(1.0, 0.0) == float("inf")


def test_bad_input():
    edges = np.linspace(0, 1, 5)
    with pytest.raises(CgsimInputError, match="strictly increasing"):
        histogram([0.5], [1.0, 0.0], "nm")
    with pytest.raises(CgsimInputError, match="identical edges"):
        js_divergence(histogram([0.5], edges, "nm"), histogram([0.5], np.linspace(0, 2, 5), "nm"))
    with pytest.raises(CgsimInputError, match="equal length"):
        js_divergence(np.ones(3), np.ones(4))
    with pytest.raises(CgsimInputError, match="non-negative"):
        js_divergence(np.array([1.0, -1.0]), np.ones(2))
    with pytest.raises(CgsimInputError, match="identical edges and units"):
        combine_distributions([histogram([0.5], edges, "nm"), histogram([0.5], edges, "rad")])
    with pytest.raises(CgsimInputError, match="empty selection"):
        combine_distributions([])
