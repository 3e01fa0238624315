"""Chain size and shape: radius of gyration, end-to-end distance, contact map.

- Radius of gyration of chain c (mass weighted)::

      Rg_c^2 = sum_{i in c} m_i |r_i - R_c|^2 / M_c,   R_c = sum_{i in c} m_i r_i / M_c

  A rigid rod of N equally spaced beads and length L has Rg^2 = L^2 (N + 1) / (12 (N - 1)),
  which tends to L^2 / 12 (Rubinstein & Colby, *Polymer Physics*, 2003, ch. 2).
- End-to-end distance ``|r_last - r_first|`` of each chain; a freely jointed chain of n bonds
  of length b has <R^2> = n b^2.
- Contact map: fraction of frames in which each pair of beads is closer than a cut-off.

Positions must hold whole molecules (unwrapped), as cgsim's bead trajectories do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from cgsim.errors import CgsimInputError
from cgsim.observables import _checks
from cgsim.observables.distributions import Distribution, histogram


@dataclass(frozen=True, eq=False)
class ChainSeries:
    """One scalar per chain and frame.

    Attributes
    ----------
    name : str
        ``"radius_of_gyration"`` or ``"end_to_end_distance"``.
    values : numpy.ndarray
        Shape (n_frames, n_chains), float64, in ``units``.
    units : str
        ``"nm"``.
    """

    name: str
    values: np.ndarray
    units: str

    def chain_means(self) -> np.ndarray:
        """Time average per chain, shape (n_chains,), in ``units``."""
        return self.values.mean(axis=0)

    def mean_square(self) -> float:
        """<x^2> over frames and chains, in ``units``^2."""
        return float((self.values**2).mean())

    def distribution(self, edges: np.ndarray) -> Distribution:
        """Histogram of all values (frames x chains) on ``edges``."""
        return histogram(self.values, edges, self.units)


def _segment_sum(values: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    """Sum of ``values`` (n_frames, n_particles, ...) over the particles of each id 0..n-1.

    Every id must occur (dense ids from :func:`cgsim.observables._checks.molecule_ids`).
    Cost O(n_frames n_particles) whatever the number of molecules.
    """
    order = np.argsort(ids, kind="stable")
    starts = np.searchsorted(ids[order], np.arange(n))
    return np.add.reduceat(values[:, order], starts, axis=1)


def _centres(xyz: np.ndarray, masses: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    """Mass-weighted centre of each molecule, shape (n_frames, n, 3)."""
    total = np.bincount(ids, weights=masses, minlength=n)
    return _segment_sum(xyz * masses[None, :, None], ids, n) / total[None, :, None]


def _radius_of_gyration(xyz: np.ndarray, masses: np.ndarray, chain_ids: np.ndarray, n_chains: int) -> np.ndarray:
    com = _centres(xyz, masses, chain_ids, n_chains)
    dr = xyz - com[:, chain_ids]
    total = np.bincount(chain_ids, weights=masses, minlength=n_chains)
    return np.sqrt(np.maximum(_segment_sum((dr * dr).sum(-1) * masses, chain_ids, n_chains) / total, 0.0))


def molecule_centres(xyz: np.ndarray, masses: np.ndarray | None = None, molecule_ids: Any = None) -> np.ndarray:
    """Mass-weighted centre of each molecule (chain).

    Parameters
    ----------
    xyz : numpy.ndarray
        Unwrapped positions, shape (n_frames, n_particles, 3), nm.
    masses : numpy.ndarray, optional
        Masses, shape (n_particles,), amu; None = equal.
    molecule_ids : array-like, optional
        Molecule id per particle, shape (n_particles,), int; None = one molecule. Ids are
        renumbered 0..n_molecules-1 in sorted order.

    Returns
    -------
    numpy.ndarray
        Centres, shape (n_frames, n_molecules, 3), nm.
    """
    arr = _checks.positions(xyz, "molecule_centres.xyz")
    m = _checks.weights(masses, arr.shape[1], "molecule_centres.masses")
    ids, n = _checks.molecule_ids(molecule_ids, arr.shape[1], "molecule_centres.molecule_ids")
    return _centres(arr, m, ids, n)


def radius_of_gyration(xyz: np.ndarray, masses: np.ndarray | None = None, chain_ids: Any = None) -> ChainSeries:
    """Mass-weighted radius of gyration of each chain in each frame.

    Parameters
    ----------
    xyz : numpy.ndarray
        Unwrapped positions, shape (n_frames, n_particles, 3), nm.
    masses : numpy.ndarray, optional
        Masses, shape (n_particles,), amu; None = equal masses.
    chain_ids : array-like, optional
        Chain id per particle, shape (n_particles,), int; None = one chain.

    Returns
    -------
    ChainSeries
        ``values`` of shape (n_frames, n_chains), nm.
    """
    arr = _checks.positions(xyz, "radius_of_gyration.xyz")
    m = _checks.weights(masses, arr.shape[1], "radius_of_gyration.masses")
    ids, n = _checks.molecule_ids(chain_ids, arr.shape[1], "radius_of_gyration.chain_ids")
    return ChainSeries("radius_of_gyration", _radius_of_gyration(arr, m, ids, n), "nm")


def end_to_end_distance(xyz: np.ndarray, ends: Any) -> ChainSeries:
    """Distance between the two end beads of each chain.

    Parameters
    ----------
    xyz : numpy.ndarray
        Unwrapped positions, shape (n_frames, n_particles, 3), nm.
    ends : array-like
        ``(first, last)`` bead index of each chain, shape (n_chains, 2), int.

    Returns
    -------
    ChainSeries
        ``values`` of shape (n_frames, n_chains), nm.
    """
    arr = _checks.positions(xyz, "end_to_end_distance.xyz")
    e = _checks.index_pairs(ends, arr.shape[1], 2, "end_to_end_distance.ends")
    d = arr[:, e[:, 1]] - arr[:, e[:, 0]]
    return ChainSeries("end_to_end_distance", np.sqrt((d * d).sum(-1)), "nm")


def chain_ends(chain_ids: Any, types: Any = None, end_types: Any = None) -> np.ndarray:
    """First and last bead of each chain, optionally among beads of some types.

    Parameters
    ----------
    chain_ids : array-like
        Chain id per particle, shape (n_particles,), int.
    types : array-like, optional
        Bead type per particle (needed with ``end_types``).
    end_types : collection of str, optional
        Only beads of these types count (e.g. the backbone types of a graft polymer).

    Returns
    -------
    numpy.ndarray
        ``(first, last)`` particle index per chain in sorted chain-id order, shape
        (n_chains, 2), int64.
    """
    ids = np.asarray(chain_ids)
    ids, n = _checks.molecule_ids(ids, ids.size, "chain_ends.chain_ids")
    keep = np.ones(ids.size, dtype=bool)
    if end_types is not None:
        if types is None:
            raise CgsimInputError("chain_ends.types", "expected bead types when end_types is given")
        keep = np.isin(np.asarray(types).astype(str), [str(t) for t in end_types])
    out = np.zeros((n, 2), dtype=np.int64)
    for c in range(n):
        idx = np.flatnonzero((ids == c) & keep)
        if idx.size < 2:
            raise CgsimInputError("chain_ends.end_types", f"empty selection: chain {c} has fewer than two beads "
                                                          f"of types {end_types}")
        out[c] = idx[0], idx[-1]
    return out


@dataclass(frozen=True, eq=False)
class ContactMap:
    """Contact frequencies between beads.

    Attributes
    ----------
    frequency : numpy.ndarray
        Fraction of frames with ``r_ij <= cutoff``, shape (n_selected, n_selected), float64,
        symmetric, zero diagonal.
    indices : numpy.ndarray
        Particle indices of the rows/columns, shape (n_selected,).
    cutoff : float
        Contact distance, nm.
    n_frames : int
        Frames averaged.
    units : dict
        ``{"cutoff": "nm", "frequency": "1"}``.
    """

    frequency: np.ndarray
    indices: np.ndarray
    cutoff: float
    n_frames: int
    units: dict[str, str]


def _contact_counts(xyz: np.ndarray, cutoff: float, box: np.ndarray | None) -> np.ndarray:
    """Frames with r_ij <= cutoff for every pair, shape (n, n), from a k-d tree per frame."""
    n = xyz.shape[1]
    flat = np.zeros(n * n, dtype=np.int64)
    keys: list[np.ndarray] = []
    pending = 0
    for f in range(xyz.shape[0]):
        p = xyz[f]
        if box is not None:
            p = p - box[f] * np.floor(p / box[f])
            p[(p >= box[f]) | (p < 0)] = 0.0
            tree = cKDTree(p, boxsize=box[f])
        else:
            tree = cKDTree(p)
        ij = tree.query_pairs(cutoff, output_type="ndarray")
        keys.append(ij[:, 0] * n + ij[:, 1])
        pending += ij.shape[0]
        if pending > 2**22 or f == xyz.shape[0] - 1:  # histogram in batches of frames
            flat += np.bincount(np.concatenate(keys), minlength=n * n)
            keys, pending = [], 0
    counts = flat.reshape(n, n)
    return counts + counts.T


def contact_map(xyz: np.ndarray, cutoff: float, box: np.ndarray | None = None, selection: Any = None) -> ContactMap:
    """Fraction of frames in which each pair of (selected) beads is in contact.

    Parameters
    ----------
    xyz : numpy.ndarray
        Positions, shape (n_frames, n_particles, 3), nm.
    cutoff : float
        Contact distance, nm (pairs with ``r <= cutoff`` are in contact).
    box : numpy.ndarray, optional
        Orthorhombic box for minimum-image distances; None = no periodicity.
    selection : array-like, optional
        Indices or boolean mask of the beads to include; None = all.

    Returns
    -------
    ContactMap
    """
    arr = _checks.positions(xyz, "contact_map.xyz")
    cutoff = _checks.positive(cutoff, "contact_map.cutoff")
    idx = _checks.selection(selection, arr.shape[1], "contact_map.selection")
    lengths = None if box is None else _checks.box_lengths(box, arr.shape[0], "contact_map.box")
    sub = arr[:, idx]
    counts = _contact_counts(sub, cutoff, lengths)
    return ContactMap(frequency=counts / arr.shape[0], indices=idx, cutoff=cutoff, n_frames=arr.shape[0],
                      units={"cutoff": "nm", "frequency": "1"})
