"""Mean-square displacement over all time origins, by FFT.

For one particle with positions r_0 .. r_{N-1} (equally spaced frames)::

    MSD(m) = 1/(N-m) sum_{k=0}^{N-1-m} |r_{k+m} - r_k|^2 = S1(m) - 2 S2(m)
    S1(m)  = 1/(N-m) sum_{k=0}^{N-1-m} (|r_k|^2 + |r_{k+m}|^2)
    S2(m)  = 1/(N-m) sum_{k=0}^{N-1-m} r_k . r_{k+m}

S2 is an autocorrelation, computed with a zero-padded FFT (Wiener-Khinchin) in
O(N log N); S1 from cumulative sums (Calandrini, Pellegrini, Calligari, Hinsen & Kneller,
"nMoldyn - interfacing spectroscopic experiments, molecular dynamics simulations and models
for time correlation functions", Collection SFN 12, 201-232 (2011)).

Positions must be *unwrapped*: a particle crossing a periodic boundary in wrapped
coordinates jumps by a box length and its MSD plateaus at ~L^2/4 (MDAnalysis issue #3179).
When a box is given, :func:`msd` refuses frame-to-frame moves of more than half a box length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cgsim.errors import CgsimInputError
from cgsim.observables import _checks


@dataclass(frozen=True, eq=False)
class MSDResult:
    """Mean-square displacement per group of particles.

    Attributes
    ----------
    lag_times : numpy.ndarray
        Lag times, shape (n_lags,), ps; ``lag_times[0] = 0``.
    msd : numpy.ndarray
        MSD per group, shape (n_groups, n_lags), nm^2, averaged over particles of the group
        and all time origins.
    groups : list of str
        Group (species) names, sorted.
    n_particles : numpy.ndarray
        Particles per group, shape (n_groups,), int (summed over pooled trajectories).
    com_drift_removed : bool
        Whether the system's centre-of-mass motion was subtracted first.
    units : dict
        ``{"lag_times": "ps", "msd": "nm^2"}``.
    """

    lag_times: np.ndarray
    msd: np.ndarray
    groups: list[str]
    n_particles: np.ndarray
    com_drift_removed: bool
    units: dict[str, str]

    def of(self, group: str) -> np.ndarray:
        """MSD of one group, shape (n_lags,), nm^2."""
        if group not in self.groups:
            raise CgsimInputError("MSDResult.of", f"no group {group!r}; expected one of {self.groups}")
        return self.msd[self.groups.index(group)]


_UNITS = {"lag_times": "ps", "msd": "nm^2"}


def _msd_fft(x: np.ndarray, chunk_elements: int = 2**24) -> np.ndarray:
    """MSD of each series for all lags.

    Parameters
    ----------
    x : numpy.ndarray
        Positions, shape (n_frames, n_series, dim).
    chunk_elements : int
        Series are processed in chunks of about this many padded elements.

    Returns
    -------
    numpy.ndarray
        MSD, shape (n_frames, n_series), for lags 0 .. n_frames - 1, in x's unit squared.
    """
    n, n_series, dim = x.shape
    out = np.empty((n, n_series))
    per_chunk = max(1, chunk_elements // max(2 * n * dim, 1))
    counts = np.arange(n, 0, -1, dtype=np.float64)  # N - m
    nfft = 2 * n
    for s in range(0, n_series, per_chunk):
        r = x[:, s:s + per_chunk] - x[:1, s:s + per_chunk]  # translation-invariant; keeps numbers small
        sq = (r * r).sum(-1)  # (n, c)
        cum = np.concatenate([np.zeros((1, sq.shape[1])), np.cumsum(sq, axis=0)])  # cum[j] = sum_{k<j}
        m = np.arange(n)
        s1 = (cum[n - m] + (cum[n] - cum[m])) / counts[:, None]
        f = np.fft.rfft(r, n=nfft, axis=0)
        s2 = np.fft.irfft((f * f.conj()).real, n=nfft, axis=0)[:n].sum(-1) / counts[:, None]
        out[:, s:s + per_chunk] = s1 - 2.0 * s2
    out[0] = 0.0
    return np.maximum(out, 0.0)


def check_unwrapped(xyz: np.ndarray, box: Any, where: str = "msd.xyz") -> None:
    """Refuse wrapped coordinates: any move of more than half a box length between frames.

    Parameters
    ----------
    xyz : numpy.ndarray
        Positions, shape (n_frames, n_particles, 3), nm.
    box : array-like
        Orthorhombic box (lengths (3,), (n_frames, 3) or vectors), nm.
    where : str
        Name used in the error.

    Raises
    ------
    CgsimInputError
        Naming the first frame and particle that jumped.
    """
    arr = np.asarray(xyz, dtype=np.float64)
    if arr.shape[0] < 2:
        return
    lengths = _checks.box_lengths(box, arr.shape[0], where.rsplit(".", 1)[0] + ".box")
    jump = np.abs(np.diff(arr, axis=0)) > 0.5 * lengths[1:, None, :]
    if jump.any():
        f, p, k = (int(v[0]) for v in np.nonzero(jump))
        step = float(arr[f + 1, p, k] - arr[f, p, k])
        raise CgsimInputError(where, f"particle {p} moves {step:+.3g} nm along {'xyz'[k]} between frames {f} and "
                                     f"{f + 1} (box {lengths[f + 1, k]:.3g} nm): coordinates look wrapped; "
                                     "expected unwrapped positions with whole molecules")


def remove_com_drift(xyz: np.ndarray, masses: np.ndarray | None = None) -> np.ndarray:
    """Positions relative to the system's centre of mass in each frame.

    Parameters
    ----------
    xyz : numpy.ndarray
        Positions, shape (n_frames, n_particles, 3), nm.
    masses : numpy.ndarray, optional
        Masses, shape (n_particles,), amu; None = equal.

    Returns
    -------
    numpy.ndarray
        ``xyz - R_com(t)``, same shape, nm.
    """
    arr = _checks.positions(xyz, "remove_com_drift.xyz")
    m = _checks.weights(masses, arr.shape[1], "remove_com_drift.masses")
    com = np.einsum("p,fpk->fk", m / m.sum(), arr)
    return arr - com[:, None, :]


def msd(xyz: np.ndarray, dt: float, *, groups: Sequence[str] | None = None, box: Any = None,
        masses: np.ndarray | None = None, remove_drift: bool = False, max_lag: int | None = None) -> MSDResult:
    """Mean-square displacement per group (species), averaged over all time origins.

    Parameters
    ----------
    xyz : numpy.ndarray
        Unwrapped positions, shape (n_frames, n_particles, 3), nm, equally spaced in time.
    dt : float
        Time between frames, ps.
    groups : sequence of str, optional
        Group name (e.g. bead type) of each particle, length n_particles; None = one group
        ``"all"``.
    box : array-like, optional
        Orthorhombic box, nm. When given, wrapped input is detected and refused. None =
        non-periodic system (no check possible).
    masses : numpy.ndarray, optional
        Masses (n_particles,), amu, for the centre of mass; None = equal.
    remove_drift : bool
        Subtract the centre of mass of *all* particles in each frame first (removes a
        thermostat's or integrator's net drift; never use it on a system of one molecule).
    max_lag : int, optional
        Largest lag in frames; default ``n_frames - 1``.

    Returns
    -------
    MSDResult
    """
    arr = _checks.positions(xyz, "msd.xyz", min_frames=2)
    dt = _checks.time_step(dt, "msd.dt")
    names, lab = _checks.labels(groups, arr.shape[1], "msd.groups")
    if box is not None:
        check_unwrapped(arr, box, "msd.xyz")
    if remove_drift:
        arr = remove_com_drift(arr, masses)
    n_lags = arr.shape[0] if max_lag is None else int(max_lag) + 1
    if not 2 <= n_lags <= arr.shape[0]:
        raise CgsimInputError("msd.max_lag", f"expected 1 <= max_lag <= {arr.shape[0] - 1} frames, got {max_lag}")
    per = _msd_fft(arr)[:n_lags]  # (n_lags, n_particles)
    n_of = np.bincount(lab, minlength=len(names))
    sums = (per @ np.eye(len(names))[lab]).T  # (n_groups, n_lags): sum over each group's particles
    return MSDResult(lag_times=np.arange(n_lags) * dt, msd=sums / n_of[:, None], groups=names,
                     n_particles=n_of.astype(np.int64), com_drift_removed=bool(remove_drift), units=dict(_UNITS))


def combine_msds(results: Sequence[MSDResult]) -> MSDResult:
    """Pool MSDs of several trajectories: particle-weighted mean per group over common lags.

    All results must have the same frame interval; lags are cut to the shortest result.
    """
    lag = _checks.common_lags(results, "MSDs", "combine_msds.results")
    n_lags = lag.size
    names = sorted({g for r in results for g in r.groups})
    tot = np.zeros((len(names), n_lags))
    cnt = np.zeros(len(names), dtype=np.int64)
    for r in results:
        for gi, g in enumerate(r.groups):
            k = names.index(g)
            tot[k] += r.msd[gi, :n_lags] * r.n_particles[gi]
            cnt[k] += r.n_particles[gi]
    return MSDResult(lag_times=lag, msd=tot / cnt[:, None], groups=names, n_particles=cnt,
                     com_drift_removed=all(r.com_drift_removed for r in results), units=dict(_UNITS))


def block_slices(n_frames: int, n_blocks: int, where: str = "n_blocks") -> list[slice]:
    """``n_blocks`` contiguous, equal, non-overlapping frame ranges (a remainder is dropped)."""
    if int(n_blocks) != n_blocks or n_blocks < 1:
        raise CgsimInputError(where, f"expected a positive whole number of blocks, got {n_blocks!r}")
    size = n_frames // int(n_blocks)
    if size < 2:
        raise CgsimInputError(where, f"{n_blocks} blocks of {n_frames} frames leave fewer than 2 frames per block")
    return [slice(b * size, (b + 1) * size) for b in range(int(n_blocks))]
