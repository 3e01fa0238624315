"""Autocorrelation and relaxation time: exponentials, AR(1), brute-force origins, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from cgsim.errors import CgsimInputError
from cgsim.observables.correlation import (
    autocorrelation,
    combine_acfs,
    relaxation_time,
    rg2_autocorrelation,
)
from cgsim.observables.polymer import radius_of_gyration


def _brute_acf(x: np.ndarray) -> np.ndarray:
    dx = x - x.mean()
    n = x.size
    c = np.array([np.mean([dx[k] * dx[k + m] for k in range(n - m)]) for m in range(n)])
    return c / c[0]


def test_exponential_relaxation_times():
    t = np.arange(400) * 0.05
    acf = np.exp(-t / 1.7)
    tau_fit, ok_fit = relaxation_time(t, acf, "exponential")
    assert tau_fit == pytest.approx(1.7, rel=1e-10) and ok_fit
    tau_int, ok_int = relaxation_time(t, acf, "integral")
    # trapezoid error ~ h^2/12 * tau^-1 and the tail beyond t=20 is e^-11.8: both tiny
    assert tau_int == pytest.approx(1.7, rel=1e-3) and not ok_int


def test_integral_stops_at_first_zero():
    t = np.arange(5.0)
    acf = np.array([1.0, 0.5, 0.0, -0.3, 0.4])
    tau, converged = relaxation_time(t, acf, "integral")
    assert tau == pytest.approx(0.75 + 0.25) and converged


def test_fft_matches_loops_over_origins():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)).cumsum(0)
    res = autocorrelation(x, 2.0)
    brute = np.mean([_brute_acf(x[:, s]) for s in range(3)], axis=0)
    assert np.allclose(res.acf, brute)
    assert np.allclose(res.lag_times, np.arange(60) * 2.0)
    assert res.n_series == 3 and res.units["tau"] == "ps"


def test_ar1_process():
    rng = np.random.default_rng(1)
    phi, n, n_series = 0.8, 4000, 16
    x = np.zeros((n, n_series))
    e = rng.normal(size=(n, n_series))
    for k in range(1, n):
        x[k] = phi * x[k - 1] + e[k]
    res = autocorrelation(x, 1.0)
    assert np.allclose(res.acf[:6], phi ** np.arange(6), atol=0.03)
    # integral of the discrete ACF by trapezoid: sum_m phi^m - 1/2 = 1/(1-phi) - 1/2
    assert res.tau == pytest.approx(1 / (1 - phi) - 0.5, rel=0.1)
    fit = autocorrelation(x, 1.0, method="exponential")
    assert fit.tau == pytest.approx(-1 / np.log(phi), rel=0.1) and fit.method == "exponential"


def test_rg2_acf_equals_acf_of_rg_squared():
    rng = np.random.default_rng(2)
    xyz = rng.normal(size=(50, 12, 3)).cumsum(0) * 0.1 + rng.normal(size=(1, 12, 3))
    ids = np.repeat([0, 1], 6)
    res = rg2_autocorrelation(xyz, 0.5, chain_ids=ids)
    rg2 = radius_of_gyration(xyz, chain_ids=ids).values ** 2
    brute = (_brute_acf(rg2[:, 0]) + _brute_acf(rg2[:, 1])) / 2
    assert np.allclose(res.acf, brute) and res.quantity == "rg^2" and res.n_series == 2


def test_combine_weights_by_series():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3)).cumsum(0)
    a, b = autocorrelation(x[:, :1], 1.0), autocorrelation(x[:30, 1:], 1.0)
    both = combine_acfs([a, b])
    assert both.lag_times.size == 30 and both.n_series == 3
    assert np.allclose(both.acf, (a.acf[:30] + 2 * b.acf) / 3)


def test_bad_input():
    with pytest.raises(CgsimInputError, match="constant"):
        autocorrelation(np.ones(10), 1.0)
    with pytest.raises(CgsimInputError, match="expected one of"):
        autocorrelation(np.arange(10.0), 1.0, method="fourier")
    with pytest.raises(CgsimInputError, match="n_frames >= 3"):
        autocorrelation(np.arange(2.0), 1.0)
    with pytest.raises(CgsimInputError, match="NaN"):
        autocorrelation(np.array([1.0, np.nan, 2.0, 3.0]), 1.0)
    with pytest.raises(CgsimInputError, match="decays within one lag"):
        relaxation_time(np.arange(4.0), np.array([1.0, 0.01, 0.0, 0.0]), "exponential")
    with pytest.raises(CgsimInputError, match="equal length"):
        relaxation_time(np.arange(4.0), np.ones(3), "integral")
