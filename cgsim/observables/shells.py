"""Coordination shells: a g(r) between two selections, its first peak and first minimum, and the
coordination number within that minimum.

:func:`first_shell` computes the RDF of a cubic periodic box (:func:`cgsim.observables.rdf.rdf`)
and locates the shell on it (:func:`first_peak_and_minimum`); the coordination number is
``N(r_min)``, the mean number of B within the first minimum of one A, from the raw pair counts
(:func:`cgsim.observables.rdf.coordination_number`). The reference validation uses it for the
Li+ - O shells of the electrolyte (:mod:`cgsim.reference.electrolyte_validate`). Lengths nm.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cgsim.errors import CgsimInputError
from cgsim.observables.rdf import coordination_number, rdf

#: First-peak search: the peak is the largest g(r) below this distance, nm.
PEAK_SEARCH_MAX = 0.35
#: The first minimum is searched between the peak and the peak plus this width, nm.
MINIMUM_SEARCH_WIDTH = 0.2


def _smooth(g: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return g
    kernel = np.ones(int(width)) / int(width)
    padded = np.pad(g, (width // 2, width - 1 - width // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def first_peak_and_minimum(r: np.ndarray, g: np.ndarray, *, peak_max: float = PEAK_SEARCH_MAX,
                           min_width: float = MINIMUM_SEARCH_WIDTH, smooth: int = 3) -> tuple[int, int]:
    """Bins of the first peak and the first minimum of a g(r).

    The peak is found as the largest g below ``peak_max`` on g smoothed by a ``smooth``-bin
    running mean (so a single noisy bin does not decide), then moved to the largest raw g
    within ``smooth // 2`` bins of it (smoothing must not shift a sharp peak). The minimum is
    found the same way as the smallest g in ``(r_peak, r_peak + min_width]`` (the first such
    bin: for a first shell followed by a gap of zeros it is the start of the gap, which leaves
    the coordination number unchanged).

    Parameters
    ----------
    r : numpy.ndarray
        Bin centres, shape (n_bins,), nm, increasing.
    g : numpy.ndarray
        g(r), shape (n_bins,).
    peak_max : float
        Upper end of the peak search, nm.
    min_width : float
        Width of the minimum search after the peak, nm.
    smooth : int
        Running-mean width in bins (1 = none).

    Returns
    -------
    (int, int)
        Bin index of the peak and of the minimum.

    Raises
    ------
    CgsimInputError
        If g is zero everywhere below ``peak_max`` or nothing lies after the peak.
    """
    r = np.asarray(r, dtype=float)
    g = np.asarray(g, dtype=float)
    if r.shape != g.shape or r.ndim != 1:
        raise CgsimInputError("first_peak.g", f"expected r and g of the same 1-d shape, got {r.shape} and {g.shape}")
    gs = _smooth(g, int(smooth))
    search = np.flatnonzero(r <= peak_max)
    if search.size == 0 or not np.any(gs[search] > 0):
        raise CgsimInputError("first_peak.g", f"g(r) is zero below {peak_max:g} nm: no first shell")
    half = max(0, int(smooth) // 2)
    i_peak = int(search[np.argmax(gs[search])])
    near = np.intersect1d(search, np.arange(i_peak - half, i_peak + half + 1))
    i_peak = int(near[np.argmax(g[near])])  # the raw maximum next to the smoothed one
    after = np.flatnonzero((r > r[i_peak]) & (r <= r[i_peak] + min_width))
    if after.size == 0:
        raise CgsimInputError("first_peak.g", f"no bins after the peak at {r[i_peak]:g} nm to find the first minimum")
    i_min = int(after[np.argmin(gs[after])])
    near = np.intersect1d(after, np.arange(i_min - half, i_min + half + 1))
    i_min = int(near[np.argmin(g[near])])
    return i_peak, i_min


def first_shell(xyz: np.ndarray, box_length: float, selection_a: np.ndarray, selection_b: np.ndarray, *,
                names: tuple[str, str] = ("A", "B"), r_max: float = 1.0, bin_width: float = 0.005,
                peak_max: float = PEAK_SEARCH_MAX, min_width: float = MINIMUM_SEARCH_WIDTH,
                smooth: int = 3) -> dict[str, Any]:
    """g(r) between two selections, its first peak, first minimum and coordination number.

    Parameters
    ----------
    xyz : numpy.ndarray
        Positions (wrapped or not), shape (n_frames, n_atoms, 3), nm.
    box_length : float
        Cubic box edge, nm.
    selection_a, selection_b : numpy.ndarray
        Atom indices of the centres (e.g. Li+) and of the neighbours (e.g. ether O).
    names : tuple of str
        Names of the two selections, kept in the result.
    r_max : float
        Range of the RDF, nm; cut to half the box.
    bin_width : float
        Bin width, nm.
    peak_max, min_width, smooth
        As in :func:`first_peak_and_minimum`.

    Returns
    -------
    dict
        ``peak_r`` (nm, bin centre), ``peak_g``, ``min_r`` (nm), ``min_g``, ``cn`` (mean number
        of B within ``min_r`` of an A), ``r_max``, ``bin_width``, ``n_frames``, ``n_a``,
        ``n_b``, and ``r`` / ``g`` up to 0.8 nm for plotting.
    """
    if not (np.isfinite(bin_width) and bin_width > 0):
        raise CgsimInputError("first_shell.bin_width", f"expected a positive width, got {bin_width!r}")
    r_max = min(float(r_max), 0.5 * float(box_length))
    n_bins = int(math.floor(r_max / bin_width + 1e-9))
    if n_bins < 2:
        raise CgsimInputError("first_shell.bin_width", f"{bin_width:g} nm leaves fewer than 2 bins below {r_max:g} nm")
    res = rdf(xyz, np.full(3, float(box_length)), selection_a=selection_a, selection_b=selection_b,
              r_max=min(n_bins * bin_width, r_max), n_bins=n_bins, names=names)
    r = res.r
    i_peak, i_min = first_peak_and_minimum(r, res.g, peak_max=peak_max, min_width=min_width, smooth=smooth)
    cn = coordination_number(res, float(r[i_min]))
    keep = r <= 0.8
    return {"pair": list(names), "peak_r": float(r[i_peak]), "peak_g": float(res.g[i_peak]),
            "min_r": float(r[i_min]), "min_g": float(res.g[i_min]), "cn": float(cn),
            "r_max": float(res.edges[-1]), "bin_width": float(res.edges[1] - res.edges[0]),
            "n_frames": int(res.n_frames), "n_a": int(np.size(selection_a)), "n_b": int(np.size(selection_b)),
            "r": r[keep].round(5).tolist(), "g": res.g[keep].round(4).tolist(), "units": "nm"}
