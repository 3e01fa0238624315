"""Time autocorrelation functions and relaxation times (e.g. of a chain's Rg^2).

Estimator, for a series x_0 .. x_{N-1} with mean removed (dx = x - <x>), over all origins::

    C(m) = 1/(N-m) sum_{k=0}^{N-1-m} dx_k dx_{k+m},      ACF(m) = C(m) / C(0)

computed by zero-padded FFT (Wiener-Khinchin). Several series (chains) are averaged after
normalising each, so every chain weighs the same.

Relaxation time, two stated methods:

- ``"integral"``: ``tau = integral_0^{t0} ACF(t) dt`` (trapezoid rule), where t0 is the first
  lag at which the ACF reaches zero (the noisy tail after it is left out); if it never does,
  the integral runs over all lags and ``converged`` is False.
- ``"exponential"``: a least-squares fit of ``ln ACF(t) = -t / tau`` (line through the origin)
  over the lags before the ACF first drops below e^-2, i.e. a single exponential fitted
  where the signal is well above noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cgsim.errors import CgsimInputError
from cgsim.observables import _checks
from cgsim.observables.polymer import _radius_of_gyration

METHODS = ("integral", "exponential")


@dataclass(frozen=True, eq=False)
class ACFResult:
    """A normalised autocorrelation function and its relaxation time.

    Attributes
    ----------
    lag_times : numpy.ndarray
        Lag times, shape (n_lags,), ps.
    acf : numpy.ndarray
        Normalised ACF averaged over series, shape (n_lags,), dimensionless, acf[0] = 1.
    tau : float
        Relaxation time, ps (see ``method``).
    method : str
        ``"integral"`` or ``"exponential"`` (module docstring).
    converged : bool
        ``"integral"``: whether the ACF reached zero within the lags; ``"exponential"``:
        whether it dropped below e^-2.
    n_series : int
        Series averaged (e.g. chains).
    quantity : str
        What was correlated (e.g. ``"rg^2"``).
    units : dict
        ``{"lag_times": "ps", "acf": "1", "tau": "ps"}``.
    """

    lag_times: np.ndarray
    acf: np.ndarray
    tau: float
    method: str
    converged: bool
    n_series: int
    quantity: str
    units: dict[str, str]


def _autocovariance(x: np.ndarray) -> np.ndarray:
    """C(m) of each column, shape (n_frames, n_series), for lags 0 .. n_frames - 1."""
    n = x.shape[0]
    dx = x - x.mean(axis=0, keepdims=True)
    f = np.fft.rfft(dx, n=2 * n, axis=0)
    c = np.fft.irfft((f * f.conj()).real, n=2 * n, axis=0)[:n]
    return c / np.arange(n, 0, -1, dtype=np.float64)[:, None]


def relaxation_time(lag_times: np.ndarray, acf: np.ndarray, method: str = "integral") -> tuple[float, bool]:
    """Relaxation time of a normalised ACF.

    Parameters
    ----------
    lag_times : numpy.ndarray
        Lag times, shape (n_lags,), ps, starting at 0.
    acf : numpy.ndarray
        Normalised ACF, shape (n_lags,), acf[0] = 1.
    method : {"integral", "exponential"}
        See the module docstring.

    Returns
    -------
    tau : float
        ps.
    converged : bool
        See :class:`ACFResult`.
    """
    t = np.asarray(lag_times, dtype=np.float64)
    c = np.asarray(acf, dtype=np.float64)
    if t.shape != c.shape or t.ndim != 1 or t.size < 2:
        raise CgsimInputError("relaxation_time.acf", f"expected lag_times and acf of equal length >= 2, got "
                                                     f"{t.shape} and {c.shape}")
    if method not in METHODS:
        raise CgsimInputError("relaxation_time.method", f"got {method!r}, expected one of {list(METHODS)}")
    if method == "integral":
        below = np.flatnonzero(c <= 0)
        end = int(below[0]) + 1 if below.size else c.size
        seg_t, seg_c = t[:end], c[:end]
        return float(np.sum(0.5 * (seg_c[1:] + seg_c[:-1]) * np.diff(seg_t))), bool(below.size)
    below = np.flatnonzero(c < np.exp(-2.0))
    end = int(below[0]) if below.size else c.size
    tt, cc = t[1:end], c[1:end]
    if tt.size < 1 or (cc <= 0).any():
        raise CgsimInputError("relaxation_time.acf", "ACF decays within one lag; no points for an exponential fit "
                                                     "(use shorter frame spacing or method='integral')")
    return float(-(tt @ tt) / (tt @ np.log(cc))), bool(below.size)


def autocorrelation(x: np.ndarray, dt: float, method: str = "integral", quantity: str = "x") -> ACFResult:
    """Normalised autocorrelation of one or several series, and its relaxation time.

    Parameters
    ----------
    x : numpy.ndarray
        Series, shape (n_frames,) or (n_frames, n_series), equally spaced in time.
    dt : float
        Time between frames, ps.
    method : {"integral", "exponential"}
        Relaxation-time method (module docstring).
    quantity : str
        Name of the correlated quantity, kept in the result.

    Returns
    -------
    ACFResult
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] < 3 or arr.shape[1] < 1:
        raise CgsimInputError("autocorrelation.x", f"expected a series of shape (n_frames >= 3, n_series >= 1), got {np.shape(x)}")
    if not np.isfinite(arr).all():
        raise CgsimInputError("autocorrelation.x", "series contains NaN or infinite values")
    dt = _checks.time_step(dt, "autocorrelation.dt")
    c = _autocovariance(arr)
    var = c[0]
    if (var <= 0).any():
        raise CgsimInputError("autocorrelation.x", "a series is constant; its autocorrelation is undefined")
    acf = (c / var).mean(axis=1)
    lags = np.arange(arr.shape[0]) * dt
    tau, converged = relaxation_time(lags, acf, method)
    return ACFResult(lag_times=lags, acf=acf, tau=tau, method=method, converged=converged, n_series=arr.shape[1],
                     quantity=quantity, units={"lag_times": "ps", "acf": "1", "tau": "ps"})


def rg2_autocorrelation(xyz: np.ndarray, dt: float, masses: np.ndarray | None = None, chain_ids: Any = None,
                        method: str = "integral") -> ACFResult:
    """Autocorrelation of each chain's squared radius of gyration, averaged over chains.

    Parameters
    ----------
    xyz : numpy.ndarray
        Unwrapped positions, shape (n_frames, n_particles, 3), nm.
    dt : float
        Time between frames, ps.
    masses : numpy.ndarray, optional
        Masses, shape (n_particles,), amu; None = equal.
    chain_ids : array-like, optional
        Chain id per particle; None = one chain.
    method : {"integral", "exponential"}
        Relaxation-time method.

    Returns
    -------
    ACFResult
        ``quantity = "rg^2"``.
    """
    arr = _checks.positions(xyz, "rg2_autocorrelation.xyz", min_frames=3)
    m = _checks.weights(masses, arr.shape[1], "rg2_autocorrelation.masses")
    ids, n = _checks.molecule_ids(chain_ids, arr.shape[1], "rg2_autocorrelation.chain_ids")
    rg = _radius_of_gyration(arr, m, ids, n)
    return autocorrelation(rg**2, dt, method=method, quantity="rg^2")


def combine_acfs(results: list[ACFResult], method: str | None = None) -> ACFResult:
    """Average ACFs of several trajectories (weighted by their series) over common lags.

    The relaxation time is recomputed from the averaged ACF with ``method`` (default: the
    first result's).
    """
    lags = _checks.common_lags(results, "ACFs", "combine_acfs.results")
    n = lags.size
    w = np.array([r.n_series for r in results], dtype=np.float64)
    acf = sum(wi * r.acf[:n] for wi, r in zip(w, results, strict=True)) / w.sum()
    method = method or results[0].method
    tau, converged = relaxation_time(lags, acf, method)
    return ACFResult(lag_times=lags, acf=acf, tau=tau, method=method, converged=converged, n_series=int(w.sum()),
                     quantity=results[0].quantity, units=dict(results[0].units))
