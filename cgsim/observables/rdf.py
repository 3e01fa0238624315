"""Radial distribution functions and coordination numbers.

Periodic systems (orthorhombic box, minimum-image distances, ``r_max <= L_min / 2``)::

    g_AB(r) = <h_AB(r)> / (n_pairs * 4 pi r^2 dr * <1/V>)

with ``h_AB`` the number of ordered pairs (i in A, j in B, i != j) in the shell, ``n_pairs =
N_A N_B - N_{A and B}`` the number of ordered pairs, and ``<1/V>`` the mean inverse volume
over frames, so an ideal gas gives g(r) = 1 at every r (Allen & Tildesley, *Computer
Simulation of Liquids*, 2nd ed., 2017; the same normalisation as ``mdtraj.compute_rdf``).

Non-periodic systems (an isolated chain, a droplet) have no volume to normalise by. cgsim
then reports the *local density* ``n_AB(r) = <h_AB(r)> / (N_A 4 pi r^2 dr)`` (nm^-3, number of
B per volume at distance r from an A) and ``g(r) = n_AB(r) / n_bar``, where ``n_bar`` is the
mean of that density over the whole range ``[r_min, r_max)``. This ``g`` is dimensionless and
equals 1 everywhere if B is spread uniformly within ``r_max`` around each A; it depends on
``r_max`` and is meant for comparing two trajectories on the same bins, not for thermodynamics.

Coordination numbers come from the raw pair counts, ``N_AB(r_c) = sum_{r < r_c} h_AB / N_A``,
in both cases.

Pair counting, two methods giving the same counts up to float32 rounding at bin edges:

- ``"dense"`` (:func:`cgsim.observables._rdf_kernels._dense_histograms`): every pair of every frame, in blocks of several
  frames x rows x columns that numpy processes in cache. Coordinates become 32-bit fixed-point
  integers (2^32 units per box length), so the minimum image of a periodic difference is the
  exact wrap-around of an int32 subtraction; squared distances are summed in float32
  (relative error ~1e-7, like mdtraj's float32 distances) and the bin index plus a label-pair
  offset is histogrammed with ``torch.bincount``. About 3 ns per pair and frame on one core
  whatever ``r_max`` is: the choice when many pairs lie within ``r_max`` (``r_max = L/2``
  holds 52 % of them) or when there are few particles.
- ``"tree"`` (:func:`cgsim.observables._rdf_kernels._tree_histograms`): one k-d tree per frame (``scipy.spatial.cKDTree``,
  periodic via ``boxsize``), float64 distances, only pairs within ``r_max`` visited, but at
  ~150 ns per such pair: the choice for many particles and a short ``r_max``.

``method="auto"`` (the default) picks the one a cost model built from those two figures
expects to be faster. ``bench/bench_observables.py`` times both.
"""


from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cgsim.errors import CgsimInputError
from cgsim.observables import _checks
from cgsim.observables._rdf_kernels import (  # noqa: F401 - METHODS and _choose_method re-exported
    METHODS,
    _choose_method,
    _pair_histograms,
    _shell_volumes,
)


@dataclass(frozen=True, eq=False)
class RDFResult:
    """A radial distribution function between two selections.

    Attributes
    ----------
    pair : tuple of str
        Names of the two selections (bead types for :func:`rdf_by_type`).
    edges : numpy.ndarray
        Bin edges, shape (n_bins + 1,), nm.
    g : numpy.ndarray
        g(r), shape (n_bins,), dimensionless (see the module docstring for the
        non-periodic normalisation).
    local_density : numpy.ndarray
        Number density of B at distance r from an A, shape (n_bins,), nm^-3.
    counts : numpy.ndarray
        Ordered pairs per bin summed over frames, shape (n_bins,).
    norm : numpy.ndarray
        ``n_pairs * shell volume * sum_frames(1/V)`` per bin (periodic) so that ``g = counts /
        norm``; zeros when non-periodic.
    local_norm : numpy.ndarray
        ``N_A * n_frames * shell volume`` per bin, nm^3, so that ``local_density = counts /
        local_norm``.
    n_a : int
        Particles in selection A (summed over pooled trajectories).
    n_frames : int
        Frames averaged (summed over pooled trajectories).
    periodic : bool
        Minimum-image distances and volume normalisation.
    units : dict
        ``{"r": "nm", "g": "1", "local_density": "nm^-3"}``.
    """

    pair: tuple[str, str]
    edges: np.ndarray
    g: np.ndarray
    local_density: np.ndarray
    counts: np.ndarray
    norm: np.ndarray
    local_norm: np.ndarray
    n_a: int
    n_frames: int
    periodic: bool
    units: dict[str, str]

    @property
    def r(self) -> np.ndarray:
        """Bin centres, shape (n_bins,), nm."""
        return 0.5 * (self.edges[1:] + self.edges[:-1])


_UNITS = {"r": "nm", "g": "1", "local_density": "nm^-3"}



def _prepare(xyz: Any, box: Any, r_max: float, r_min: float, n_bins: int, periodic: bool,
             where: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    arr = _checks.positions(xyz, f"{where}.xyz")
    r_max = _checks.positive(r_max, f"{where}.r_max")
    if not (np.isfinite(r_min) and 0 <= r_min < r_max):
        raise CgsimInputError(f"{where}.r_min", f"expected 0 <= r_min < r_max = {r_max}, got {r_min}")
    if int(n_bins) != n_bins or n_bins < 1:
        raise CgsimInputError(f"{where}.n_bins", f"expected a positive whole number of bins, got {n_bins!r}")
    lengths = None
    if periodic:
        lengths = _checks.box_lengths(box, arr.shape[0], f"{where}.box")
        half = 0.5 * float(lengths.min())
        if r_max > half * (1 + 1e-12):
            raise CgsimInputError(f"{where}.r_max", f"{r_max:g} nm exceeds half the smallest box length ({half:g} nm); "
                                                    "expected r_max <= L/2 for minimum-image distances")
    edges = np.linspace(float(r_min), r_max, int(n_bins) + 1)
    return arr, lengths, edges


def _normalise(pair: tuple[str, str], edges: np.ndarray, counts: np.ndarray, n_a: int, n_pairs: int,
               inv_volume_sum: float, n_frames: int, periodic: bool) -> RDFResult:
    shell = _shell_volumes(edges)
    local_norm = n_a * n_frames * shell
    if periodic:
        norm = n_pairs * shell * inv_volume_sum
    else:
        norm = np.zeros_like(shell)
    return _from_sums(pair, edges, counts, norm, local_norm, n_a, n_frames, periodic)


def _from_sums(pair: tuple[str, str], edges: np.ndarray, counts: np.ndarray, norm: np.ndarray,
               local_norm: np.ndarray, n_a: int, n_frames: int, periodic: bool) -> RDFResult:
    local = np.divide(counts, local_norm, out=np.zeros_like(counts), where=local_norm > 0)
    if periodic:
        g = np.divide(counts, norm, out=np.zeros_like(counts), where=norm > 0)
    else:
        mean_density = counts.sum() / local_norm.sum() if local_norm.sum() > 0 else 0.0
        g = local / mean_density if mean_density > 0 else np.zeros_like(local)
    return RDFResult(pair=pair, edges=edges, g=g, local_density=local, counts=counts, norm=norm,
                     local_norm=local_norm, n_a=int(n_a), n_frames=int(n_frames), periodic=periodic,
                     units=dict(_UNITS))


def rdf(xyz: np.ndarray, box: np.ndarray | None = None, *, selection_a: Any = None, selection_b: Any = None,
        r_max: float = 1.5, r_min: float = 0.0, n_bins: int = 150, periodic: bool = True,
        names: tuple[str, str] = ("A", "B"), workers: int = 1, method: str = "auto") -> RDFResult:
    """Radial distribution function g_AB(r) between two selections.

    Parameters
    ----------
    xyz : numpy.ndarray
        Positions, shape (n_frames, n_particles, 3), nm.
    box : numpy.ndarray, optional
        Orthorhombic box: lengths (3,) or (n_frames, 3), or vectors (n_frames, 3, 3), nm.
        Required when ``periodic``.
    selection_a, selection_b : array-like, optional
        Particle indices or boolean masks (n_particles,); None = all particles. They may
        overlap; a particle is never paired with itself.
    r_max, r_min : float
        Range of distances, nm; periodic: ``r_max <= L_min / 2``.
    n_bins : int
        Number of equal-width bins.
    periodic : bool
        Minimum-image distances and volume normalisation (True), or the non-periodic
        local-density normalisation of the module docstring (False).
    names : tuple of str
        Names of the two selections, kept in the result.
    workers : int
        Threads over frames (results are identical for any number).
    method : {"auto", "dense", "tree"}
        How pairs are found (module docstring): every pair in float32 blocks, a k-d tree per
        frame in float64, or whichever is expected to be faster.

    Returns
    -------
    RDFResult
    """
    arr, lengths, edges = _prepare(xyz, box, r_max, r_min, n_bins, periodic, "rdf")
    n = arr.shape[1]
    a = _checks.selection(selection_a, n, "rdf.selection_a")
    b = _checks.selection(selection_b, n, "rdf.selection_b")
    la = np.full(n, -1, dtype=np.int64)
    lb = np.full(n, -1, dtype=np.int64)
    la[a] = 0
    lb[b] = 0
    counts = _pair_histograms(arr, lengths, la, lb, 1, 1, edges, _checks.workers(workers, "rdf.workers"),
                              method)[0, 0]
    n_pairs = a.size * b.size - np.intersect1d(a, b).size
    if n_pairs == 0:
        raise CgsimInputError("rdf.selection_b", "empty selection: no pairs of distinct particles")
    inv_v = float((1.0 / lengths.prod(-1)).sum()) if lengths is not None else 0.0
    return _normalise(tuple(names), edges, counts, a.size, n_pairs, inv_v, arr.shape[0], periodic)


def rdf_by_type(xyz: np.ndarray, types: Sequence[str], box: np.ndarray | None = None, *,
                r_max: float = 1.5, r_min: float = 0.0, n_bins: int = 150, periodic: bool = True,
                pairs: Sequence[tuple[str, str]] | None = None, workers: int = 1,
                method: str = "auto") -> dict[tuple[str, str], RDFResult]:
    """g(r) for every pair of bead types, from one pass over the frames.

    Parameters
    ----------
    xyz : numpy.ndarray
        Positions, shape (n_frames, n_particles, 3), nm.
    types : sequence of str
        Bead type of each particle, length n_particles.
    box : numpy.ndarray, optional
        As in :func:`rdf`.
    r_max, r_min, n_bins, periodic, workers, method
        As in :func:`rdf`.
    pairs : sequence of (str, str), optional
        Type pairs to return; None = every unordered pair ``(A, B)`` with ``A <= B``.
        Pairs with fewer than one pair of distinct particles are left out when ``pairs``
        is None and refused when asked for.

    Returns
    -------
    dict
        ``{(type_a, type_b): RDFResult}``.
    """
    arr, lengths, edges = _prepare(xyz, box, r_max, r_min, n_bins, periodic, "rdf_by_type")
    names, lab = _checks.labels(types, arr.shape[1], "rdf_by_type.types")
    n_of = np.bincount(lab, minlength=len(names))
    if pairs is None:
        wanted = [(a, b) for ia, a in enumerate(names) for b in names[ia:] if (a != b or n_of[ia] > 1)]
    else:
        wanted = [(str(a), str(b)) for a, b in pairs]
        for a, b in wanted:
            for t in (a, b):
                if t not in names:
                    raise CgsimInputError("rdf_by_type.pairs", f"type {t!r} not present; expected one of {names}")
            if a == b and n_of[names.index(a)] < 2:
                raise CgsimInputError("rdf_by_type.pairs", f"empty selection: type {a!r} has a single particle")
    if not wanted:
        raise CgsimInputError("rdf_by_type.types", "empty selection: no pair of distinct particles")
    counts = _pair_histograms(arr, lengths, lab, lab, len(names), len(names), edges,
                              _checks.workers(workers, "rdf_by_type.workers"), method)
    inv_v = float((1.0 / lengths.prod(-1)).sum()) if lengths is not None else 0.0
    out: dict[tuple[str, str], RDFResult] = {}
    for a, b in wanted:
        ia, ib = names.index(a), names.index(b)
        n_pairs = int(n_of[ia] * n_of[ib] - (n_of[ia] if ia == ib else 0))
        out[(a, b)] = _normalise((a, b), edges, counts[ia, ib], int(n_of[ia]), n_pairs, inv_v, arr.shape[0], periodic)
    return out


def combine_rdfs(results: Sequence[RDFResult]) -> RDFResult:
    """Pool RDFs of several trajectories (same bins) by adding counts and normalisations.

    Periodic: ``g = sum(counts) / sum(norm)``; non-periodic: as in the module docstring over
    the pooled counts. All results must share edges and periodicity.
    """
    if not results:
        raise CgsimInputError("combine_rdfs.results", "empty selection: no RDFs to combine")
    first = results[0]
    for r in results[1:]:
        if r.edges.shape != first.edges.shape or not np.allclose(r.edges, first.edges) or r.periodic != first.periodic:
            raise CgsimInputError("combine_rdfs.results", "expected RDFs with identical bins and periodicity")
    return _from_sums(first.pair, first.edges, sum(r.counts for r in results), sum(r.norm for r in results),
                      sum(r.local_norm for r in results), sum(r.n_a for r in results),
                      sum(r.n_frames for r in results), first.periodic)


def coordination_number(result: RDFResult, r_cut: float) -> float:
    """Mean number of B particles within ``r_cut`` of an A particle.

    ``N_AB(r_cut) = sum of pair counts below r_cut / (N_A n_frames)``; inside the bin that
    holds ``r_cut`` the cumulative count is interpolated linearly in r^3 (uniform density
    within a bin).

    Parameters
    ----------
    result : RDFResult
        From :func:`rdf` or :func:`rdf_by_type`.
    r_cut : float
        Cut-off, nm, within the RDF's range.

    Returns
    -------
    float
        Coordination number (dimensionless).
    """
    edges = result.edges
    if not (np.isfinite(r_cut) and edges[0] <= r_cut <= edges[-1]):
        raise CgsimInputError("coordination_number.r_cut", f"expected a cut-off within the RDF range "
                                                            f"[{edges[0]:g}, {edges[-1]:g}] nm, got {r_cut!r}")
    # sum over pooled trajectories of N_A * n_frames (local_norm = N_A n_frames shell volume)
    weight = float(result.local_norm.sum() / _shell_volumes(edges).sum())
    per_a = result.counts / weight
    cumulative = np.concatenate([[0.0], np.cumsum(per_a)])
    cubes = edges**3
    return float(np.interp(r_cut**3, cubes, cumulative))
