"""Pair tables of the structural prior: fitting, Boltzmann inversion, interpolation, IBI updates.

The numerical pieces behind :mod:`cgsim.model.prior`: bead classes and pair lists of a bond
graph, :class:`PairTable` (a tabulated potential of mean force in kT with its extension beyond
the data), :func:`fit_table` (Boltzmann inversion of a distance sample), the tensor form
of many tables (:class:`StackedTables`) with its value and slope lookups, and the iterative
Boltzmann inversion update (:func:`ibi_update`) the calibration uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: stiffness of every table's wall below the smallest distance in the data, in units of its well's
LOWER_WALL = 25.0


def bead_classes(atom_type: torch.Tensor, atom_to_bead: torch.Tensor, n_beads: int,
                 atom_types: Sequence[str]) -> list[str]:
    """Class of every bead: its fine particle types with counts, e.g. ``"B1x2+S1x2"``.

    Parameters
    ----------
    atom_type : torch.Tensor
        Fine type index of each fine particle, shape (n_atoms,), int64.
    atom_to_bead : torch.Tensor
        Bead of each fine particle, shape (n_atoms,), int64.
    n_beads : int
        Number of beads.
    atom_types : sequence of str
        Names of the fine types (the model's vocabulary).
    """
    counts = np.zeros((n_beads, len(atom_types)), dtype=np.int64)
    np.add.at(counts, (atom_to_bead.cpu().numpy(), atom_type.cpu().numpy()), 1)
    names = []
    for row in counts:
        names.append("+".join(f"{atom_types[t]}x{row[t]}" for t in np.nonzero(row)[0]))
    return names


def pair_lists(bonds: torch.Tensor, n_beads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique bonded pairs and 1-3 pairs (two bonds apart, not bonded) of a bond graph.

    Parameters
    ----------
    bonds : torch.Tensor
        Bead bonds, shape (2, E), int64 (either or both directions).
    n_beads : int
        Number of beads N.

    Returns
    -------
    bonded, angle : torch.Tensor
        Shape (2, E1) and (2, E2), int64, each pair once with ``i < j``.
    """
    b = bonds.cpu().numpy().reshape(2, -1)
    b = np.unique(np.sort(b, axis=0), axis=1) if b.size else np.zeros((2, 0), dtype=np.int64)
    b = b[:, b[0] != b[1]]
    neighbours: list[list[int]] = [[] for _ in range(n_beads)]
    for i, j in b.T:
        neighbours[i].append(int(j))
        neighbours[j].append(int(i))
    bonded = {(int(i), int(j)) for i, j in b.T}
    angle = set()
    for centre in range(n_beads):
        nb = neighbours[centre]
        for a in range(len(nb)):
            for c in range(a + 1, len(nb)):
                i, j = min(nb[a], nb[c]), max(nb[a], nb[c])
                if (i, j) not in bonded:
                    angle.add((i, j))
    ang = np.array(sorted(angle), dtype=np.int64).T.reshape(2, -1)
    return torch.from_numpy(b.astype(np.int64)), torch.from_numpy(ang)


def _pair_key(a: str, b: str) -> str:
    return "|".join(sorted((a, b)))


@dataclass
class PairTable:
    """A tabulated pair potential in kT on a uniform grid, with its extension beyond the data.

    Attributes
    ----------
    r0, dr : float
        First grid point and spacing, nm.
    u : numpy.ndarray
        Potential on the grid, shape (G,), kT.
    lo, hi : float
        Data support, nm: outside ``[lo, hi]`` the table is extended by its edge slope plus a
        harmonic wall of stiffness ``k``.
    k : float
        Wall stiffness and curvature scale of the well, kT / nm^2.
    n_samples : int
        Distances the table was fitted to.
    upper_wall : bool
        Whether the table rises beyond its grid (bonded terms); a non-bonded core is flat there.
    """

    r0: float
    dr: float
    u: np.ndarray
    lo: float
    hi: float
    k: float
    n_samples: int
    upper_wall: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (lists) for checkpoints and JSON."""
        return {"r0": self.r0, "dr": self.dr, "u": [float(v) for v in self.u], "lo": self.lo, "hi": self.hi,
                "k": self.k, "n_samples": self.n_samples, "upper_wall": self.upper_wall}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairTable:
        """Inverse of :meth:`to_dict`."""
        return cls(r0=float(d["r0"]), dr=float(d["dr"]), u=np.asarray(d["u"], dtype=np.float64), lo=float(d["lo"]),
                   hi=float(d["hi"]), k=float(d["k"]), n_samples=int(d["n_samples"]),
                   upper_wall=bool(d.get("upper_wall", True)))


def _smooth(y: np.ndarray, width: float) -> np.ndarray:
    """Gaussian smoothing of ``y`` with a kernel of ``width`` bins (std)."""
    if width <= 0:
        return y
    half = int(math.ceil(3 * width))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / width) ** 2)
    k /= k.sum()
    return np.convolve(np.pad(y, half, mode="edge"), k, mode="valid")


def fit_table(distances: np.ndarray, kind: str, dr: float, r_max: float, smooth_bins: float = 2.0,
              tail: float = 5e-4, core_only: bool = True) -> PairTable:
    """Boltzmann-invert a distance sample into a :class:`PairTable`.

    Parameters
    ----------
    distances : numpy.ndarray
        Pair distances, shape (n,), nm (every frame, every pair of the class).
    kind : {"bond", "angle", "nb"}
        ``bond``/``angle``: the whole well ``-ln(P(r)/r^2)``; ``nb``: only the repulsive core below
        the first peak of ``P(r)/r^2``, zero beyond.
    dr : float
        Grid spacing, nm.
    r_max : float
        Grid end, nm.
    smooth_bins : float
        Std of the Gaussian smoothing of the histogram, in bins.
    tail : float
        Fraction of the sample left out at each end when the support ``[lo, hi]`` is placed
        (so one outlier does not widen it).
    core_only : bool
        ``nb`` only: keep just the repulsive core (default); ``False`` keeps the whole
        ``-ln g(r)`` (shells included), relative to its mean over the last tenth of the grid and
        switched smoothly to 0 there.
    """
    d = np.asarray(distances, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 10:
        raise ValueError(f"need at least 10 distances to fit a {kind} table, got {d.size}")
    edges = np.arange(0.0, r_max + dr, dr)
    centres = 0.5 * (edges[1:] + edges[:-1])
    hist, _ = np.histogram(d, bins=edges)
    dens = _smooth(hist.astype(np.float64), smooth_bins) / np.maximum(centres, dr) ** 2
    lo = float(np.quantile(d, tail))
    hi = float(np.quantile(d, 1.0 - tail)) if kind != "nb" else float(r_max)
    inside = (centres >= lo) & (centres <= hi) & (dens > 0)
    if not inside.any():
        raise ValueError(f"no populated bins between {lo:.3f} and {hi:.3f} nm")
    u = np.full_like(centres, np.nan)
    u[inside] = -np.log(dens[inside])
    spread = float(np.std(d[(d >= lo) & (d <= hi)])) if kind != "nb" else 0.0
    if kind == "nb" and not core_only:
        idx = np.nonzero(inside)[0]
        r_sw = 0.9 * r_max
        tail_u = u[inside & (centres >= r_sw)]
        u = u - (float(np.mean(tail_u)) if tail_u.size else 0.0)
        x = np.clip((centres - r_sw) / (r_max - r_sw), 0.0, 1.0)
        u = u * (1.0 - x * x * (3.0 - 2.0 * x))  # smoothstep to 0 at the grid's end
        hi = r_sw
        spread = max(float(np.std(d[d <= centres[idx[0]] + 0.1])), dr) if idx.size else dr
    elif kind == "nb":
        # the core only: up to the first maximum of the g-like density (after smoothing)
        idx = np.nonzero(inside)[0]
        peak = idx[int(np.argmin(u[idx]))]
        for j in range(idx[0] + 1, idx[-1]):
            if inside[j] and u[j] <= u[j - 1] and u[j] <= u[j + 1] and u[j] < u[idx[0]] - 2.0:
                peak = j
                break
        u = u - u[peak]
        u[peak:] = 0.0
        hi = float(centres[peak])
        core = max(hi - lo, 2 * dr)
        spread = core / 3.0
    else:
        u = u - np.nanmin(u)
    k = 1.0 / max(spread, dr) ** 2
    # fill the grid outside the support by the extension rule (edge slope + wall)
    first, last = np.nonzero(np.isfinite(u))[0][[0, -1]]
    u_lo, u_hi = u[first], u[last]
    s_lo = min((u[first + 1] - u[first]) / dr, 0.0) if last > first else 0.0
    s_hi = max((u[last] - u[last - 1]) / dr, 0.0) if last > first else 0.0
    r_lo, r_hi = centres[first], centres[last]
    below = centres < r_lo
    above = centres > r_hi
    # below the data: a hard core, LOWER_WALL times stiffer than the well (MD never brings them closer)
    u[below] = u_lo + (-s_lo) * (r_lo - centres[below]) + 0.5 * LOWER_WALL * k * (r_lo - centres[below]) ** 2
    u[above] = u_hi + s_hi * (centres[above] - r_hi) + 0.5 * k * (centres[above] - r_hi) ** 2 if kind != "nb" else u_hi
    u = np.nan_to_num(u, nan=0.0)
    return PairTable(r0=float(centres[0]), dr=float(dr), u=u, lo=float(r_lo), hi=float(hi if kind == "nb" else r_hi),
                     k=float(k), n_samples=int(d.size), upper_wall=kind != "nb")


@dataclass
class StackedTables:
    """Pair tables on one grid as tensors (T tables, G points)."""

    r0: torch.Tensor   # (T,)
    dr: torch.Tensor   # (T,)
    u: torch.Tensor    # (T, G)
    du: torch.Tensor   # (T, G) derivative on the grid, kT/nm
    lo: torch.Tensor   # (T,)
    hi: torch.Tensor   # (T,)
    k: torch.Tensor    # (T,)
    k_hi: torch.Tensor  # (T,) stiffness beyond the grid's end (0 = flat)


def _stack(tabs: Sequence[PairTable], device: torch.device, dtype: torch.dtype) -> StackedTables | None:
    if not tabs:
        return None
    g = max(t.u.size for t in tabs)
    u = np.stack([np.pad(t.u, (0, g - t.u.size), mode="edge") for t in tabs])
    du = np.gradient(u, axis=1) / np.array([t.dr for t in tabs])[:, None]

    def tens(a: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)

    return StackedTables(r0=tens([t.r0 for t in tabs]), dr=tens([t.dr for t in tabs]), u=tens(u), du=tens(du),
                         lo=tens([t.lo for t in tabs]), hi=tens([t.hi for t in tabs]), k=tens([t.k for t in tabs]),
                         k_hi=tens([t.k if t.upper_wall else 0.0 for t in tabs]))


def _lookup(tab: StackedTables, idx: torch.Tensor, r: torch.Tensor, field_: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``field_`` (T, G) of table ``idx`` (E,) at ``r`` (E,), clamped to the grid."""
    g = field_.shape[1]
    r = torch.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)
    s = ((r - tab.r0[idx]) / tab.dr[idx]).clamp(0.0, g - 1.000001)
    j = s.floor().long()
    w = s - j
    return field_[idx, j] * (1 - w) + field_[idx, (j + 1).clamp_max(g - 1)] * w


def _table_slope(tab: StackedTables, idx: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """du/dr (E,), kT/nm, with the analytic extension beyond the grid."""
    slope = _lookup(tab, idx, r, tab.du)
    g = tab.u.shape[1]
    r_first, r_last = tab.r0[idx], tab.r0[idx] + (g - 1) * tab.dr[idx]
    k = tab.k[idx]
    slope = torch.where(r < r_first, tab.du[idx, 0] - LOWER_WALL * k * (r_first - r), slope)
    return torch.where(r > r_last, tab.du[idx, -1] + tab.k_hi[idx] * (r - r_last), slope)


def _table_value(tab: StackedTables, idx: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """u(r) (E,), kT, with the analytic extension beyond the grid."""
    u = _lookup(tab, idx, r, tab.u)
    g = tab.u.shape[1]
    r_first, r_last = tab.r0[idx], tab.r0[idx] + (g - 1) * tab.dr[idx]
    k = tab.k[idx]
    d_lo, d_hi = (r_first - r).clamp_min(0), (r - r_last).clamp_min(0)
    return u - tab.du[idx, 0] * d_lo + 0.5 * LOWER_WALL * k * d_lo**2 + tab.du[idx, -1] * d_hi + 0.5 * tab.k_hi[idx] * d_hi**2


# -- calibration: iterative Boltzmann inversion of the one-step sampler ----------------------------
def histogram_on_table(table: PairTable, r: np.ndarray, smooth_bins: float = 2.0) -> np.ndarray:
    """Counts of ``r`` (nm) in the bins of ``table``'s grid, Gaussian-smoothed, shape (G,)."""
    g = table.u.size
    edges = table.r0 - 0.5 * table.dr + table.dr * np.arange(g + 1)
    h, _ = np.histogram(np.asarray(r, dtype=np.float64), bins=edges)
    return _smooth(h.astype(np.float64), smooth_bins)


def taper_change(table: PairTable, old: PairTable, fraction: float = 0.25) -> PairTable:
    """``table`` whose change from ``old`` is switched smoothly (smoothstep) to 0 over the last
    ``fraction`` of the grid, so the energy ends where a pair search ends."""
    grid = np.arange(table.u.size, dtype=np.float64)
    start = (1.0 - fraction) * (table.u.size - 1)
    x = np.clip((grid - start) / max((table.u.size - 1) - start, 1.0), 0.0, 1.0)
    switch = 1.0 - x * x * (3.0 - 2.0 * x)
    return PairTable(r0=table.r0, dr=table.dr, u=old.u + (table.u - old.u) * switch, lo=table.lo, hi=table.hi,
                     k=table.k, n_samples=table.n_samples, upper_wall=table.upper_wall)


def ibi_update(table: PairTable, sampled: np.ndarray, target: np.ndarray, n_sampled: int, n_target: int,
               damping: float = 0.5, min_count: float = 5.0, max_change: float = 2.0,
               upto: float | None = None, smooth_nm: float = 0.04) -> tuple[PairTable, float]:
    """One iterative-Boltzmann-inversion update of ``table`` (Reith, Puetz & Mueller-Plathe 2003).

    ``u <- u + damping * ln(P_sampled(r) / P_target(r))`` on every bin where both histograms hold
    at least ``min_count``; where only the sampler visits (a distance the targets never show) the
    table rises by ``damping * max_change``. Histograms are normalised per window (``n_sampled``,
    ``n_target``), so a sampler that makes too many close pairs is pushed back, not only one
    whose shape is off. Each bin changes by at most ``max_change`` kT; with ``upto`` (nm) only
    bins below it change (the non-bonded core stays zero beyond its peak). Both histograms are
    taken on bins of ``smooth_nm`` (at least the table's spacing) and the correction is
    interpolated onto the table's grid.

    Returns
    -------
    table : PairTable
        The updated table (a new object).
    error : float
        The mean |ln(P_sampled / P_target)| over the compared bins (0 = converged).
    """
    grid = table.r0 + table.dr * np.arange(table.u.size)
    width = max(smooth_nm, table.dr)
    edges = np.arange(grid[0] - 0.5 * table.dr, grid[-1] + 0.5 * table.dr + width, width)
    centres = 0.5 * (edges[1:] + edges[:-1])
    cs = np.histogram(np.asarray(sampled, dtype=np.float64), bins=edges)[0].astype(np.float64)
    ct = np.histogram(np.asarray(target, dtype=np.float64), bins=edges)[0].astype(np.float64)
    hs, ht = cs / max(n_sampled, 1), ct / max(n_target, 1)
    both = (cs >= min_count) & (ct >= min_count)
    only_sampled = (cs >= min_count) & (ct == 0)
    if upto is not None:
        both &= centres <= upto
        only_sampled &= centres <= upto
    delta_c = np.zeros_like(centres)
    delta_c[both] = np.log(hs[both] / ht[both])
    delta_c[only_sampled] = max_change
    delta_c = np.clip(delta_c, -max_change, max_change)
    # spread the coarse correction onto the table's grid (zero outside the compared bins)
    touched = both | only_sampled
    delta = np.zeros_like(table.u)
    if touched.any():
        delta = np.interp(grid, centres, delta_c, left=0.0, right=0.0)
        delta[(grid < centres[touched][0] - width) | (grid > centres[touched][-1] + width)] = 0.0
        if upto is not None:
            delta[grid > upto] = 0.0
    u = table.u + damping * delta
    err = float(np.abs(np.log(hs[both] / ht[both])).mean()) if both.any() else 0.0
    return PairTable(r0=table.r0, dr=table.dr, u=u, lo=table.lo, hi=table.hi, k=table.k,
                     n_samples=table.n_samples, upper_wall=table.upper_wall), err
