"""Bond-length and bond-angle distributions per bond type.

A bond's type is its two bead types in sorted order (``"B1-S1"``); an angle ``i-j-k`` (j the
centre) has type ``"Ti-Tj-Tk"`` with the two ends sorted, so ``S1-B1-B2`` and ``B2-B1-S1``
are one type. Angles are computed as ``atan2(|u x v|, u . v)`` with ``u = r_i - r_j`` and
``v = r_k - r_j``, accurate near 0 and pi.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cgsim.observables import _checks
from cgsim.observables.distributions import Distribution, histogram


def _bond_vectors(xyz: np.ndarray, i: np.ndarray, j: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    d = xyz[:, j] - xyz[:, i]
    if box is not None:
        d -= box[:, None, :] * np.round(d / box[:, None, :])
    return d


def _bond_lengths(xyz: np.ndarray, bonds: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    d = _bond_vectors(xyz, bonds[:, 0], bonds[:, 1], box)
    return np.sqrt((d * d).sum(-1))


def _bond_angles(xyz: np.ndarray, angles: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    u = _bond_vectors(xyz, angles[:, 1], angles[:, 0], box)
    v = _bond_vectors(xyz, angles[:, 1], angles[:, 2], box)
    cross = np.linalg.norm(np.cross(u, v), axis=-1)
    return np.arctan2(cross, (u * v).sum(-1))


def bond_lengths(xyz: np.ndarray, bonds: Any, box: np.ndarray | None = None) -> np.ndarray:
    """Length of every bond in every frame.

    Parameters
    ----------
    xyz : numpy.ndarray
        Positions, shape (n_frames, n_particles, 3), nm.
    bonds : array-like
        Bonded index pairs, shape (n_bonds, 2), int.
    box : numpy.ndarray, optional
        Orthorhombic box (see :func:`cgsim.observables.rdf.rdf`); when given, bond vectors
        use the minimum image (for wrapped input). None = positions are whole molecules.

    Returns
    -------
    numpy.ndarray
        Bond lengths, shape (n_frames, n_bonds), float64, nm.
    """
    arr = _checks.positions(xyz, "bond_lengths.xyz")
    b = _checks.index_pairs(bonds, arr.shape[1], 2, "bond_lengths.bonds")
    lengths = None if box is None else _checks.box_lengths(box, arr.shape[0], "bond_lengths.box")
    return _bond_lengths(arr, b, lengths)


def angle_triplets(bonds: Any, n_particles: int) -> np.ndarray:
    """Every bonded angle ``(i, j, k)`` (j bonded to i and k, i < k) from a bond list.

    Parameters
    ----------
    bonds : array-like
        Bonded index pairs, shape (n_bonds, 2), int.
    n_particles : int
        Number of particles.

    Returns
    -------
    numpy.ndarray
        Angles, shape (n_angles, 3), int64, sorted by centre then ends.
    """
    b = _checks.index_pairs(bonds, n_particles, 2, "angle_triplets.bonds")
    b = np.unique(np.sort(b, axis=1), axis=0)
    b = b[b[:, 0] != b[:, 1]]
    both = np.concatenate([b, b[:, ::-1]])  # (centre, neighbour)
    order = np.lexsort((both[:, 1], both[:, 0]))
    both = both[order]
    out = []
    starts = np.flatnonzero(np.r_[True, both[1:, 0] != both[:-1, 0]])
    ends = np.r_[starts[1:], both.shape[0]]
    for s, e in zip(starts, ends, strict=True):
        nb = both[s:e, 1]
        if nb.size < 2:
            continue
        ii, kk = np.triu_indices(nb.size, k=1)
        out.append(np.stack([nb[ii], np.full(ii.size, both[s, 0]), nb[kk]], axis=1))
    if not out:
        return np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(out).astype(np.int64)


def bond_angles(xyz: np.ndarray, angles: Any, box: np.ndarray | None = None) -> np.ndarray:
    """Angle of every triplet in every frame.

    Parameters
    ----------
    xyz : numpy.ndarray
        Positions, shape (n_frames, n_particles, 3), nm.
    angles : array-like
        Triplets ``(i, j, k)`` with centre j, shape (n_angles, 3), int.
    box : numpy.ndarray, optional
        As in :func:`bond_lengths`.

    Returns
    -------
    numpy.ndarray
        Angles, shape (n_frames, n_angles), float64, rad in [0, pi].
    """
    arr = _checks.positions(xyz, "bond_angles.xyz")
    a = _checks.index_pairs(angles, arr.shape[1], 3, "bond_angles.angles")
    lengths = None if box is None else _checks.box_lengths(box, arr.shape[0], "bond_angles.box")
    return _bond_angles(arr, a, lengths)


def bond_type_names(bonds: np.ndarray, types: Sequence[str]) -> list[str]:
    """Type name ``"A-B"`` (sorted) of each bond."""
    t = np.asarray(types).astype(str)
    return ["-".join(sorted((t[i], t[j]))) for i, j in np.asarray(bonds)]


def angle_type_names(angles: np.ndarray, types: Sequence[str]) -> list[str]:
    """Type name ``"A-C-B"`` (centre in the middle, ends sorted) of each angle."""
    t = np.asarray(types).astype(str)
    out = []
    for i, j, k in np.asarray(angles):
        a, b = sorted((t[i], t[k]))
        out.append(f"{a}-{t[j]}-{b}")
    return out


def _by_type(values: np.ndarray, names: list[str], edges: np.ndarray, units: str) -> dict[str, Distribution]:
    name_arr = np.asarray(names)
    return {str(n): histogram(values[:, name_arr == n], edges, units) for n in sorted(set(names))}


def bond_length_distributions(xyz: np.ndarray, bonds: Any, types: Sequence[str], edges: np.ndarray,
                              box: np.ndarray | None = None) -> dict[str, Distribution]:
    """Histogram of bond lengths per bond type over all frames.

    Parameters
    ----------
    xyz : numpy.ndarray
        Positions, shape (n_frames, n_particles, 3), nm.
    bonds : array-like
        Bonded index pairs, shape (n_bonds, 2), int.
    types : sequence of str
        Bead type per particle, length n_particles.
    edges : numpy.ndarray
        Bin edges, nm, shape (n_bins + 1,), shared by all bond types.
    box : numpy.ndarray, optional
        As in :func:`bond_lengths`.

    Returns
    -------
    dict
        ``{"A-B": Distribution}`` in nm.
    """
    arr = _checks.positions(xyz, "bond_length_distributions.xyz")
    b = _checks.index_pairs(bonds, arr.shape[1], 2, "bond_length_distributions.bonds")
    _checks.labels(types, arr.shape[1], "bond_length_distributions.types")
    lengths = None if box is None else _checks.box_lengths(box, arr.shape[0], "bond_length_distributions.box")
    return _by_type(_bond_lengths(arr, b, lengths), bond_type_names(b, types), np.asarray(edges, float), "nm")


def bond_angle_distributions(xyz: np.ndarray, angles: Any, types: Sequence[str], edges: np.ndarray | None = None,
                             box: np.ndarray | None = None) -> dict[str, Distribution]:
    """Histogram of bond angles per angle type over all frames.

    Parameters
    ----------
    xyz : numpy.ndarray
        Positions, shape (n_frames, n_particles, 3), nm.
    angles : array-like
        Triplets ``(i, j, k)``, shape (n_angles, 3), e.g. from :func:`angle_triplets`.
    types : sequence of str
        Bead type per particle, length n_particles.
    edges : numpy.ndarray, optional
        Bin edges in rad; default 90 bins over [0, pi] (2 degrees each).
    box : numpy.ndarray, optional
        As in :func:`bond_lengths`.

    Returns
    -------
    dict
        ``{"A-C-B": Distribution}`` in rad.
    """
    arr = _checks.positions(xyz, "bond_angle_distributions.xyz")
    a = _checks.index_pairs(angles, arr.shape[1], 3, "bond_angle_distributions.angles")
    _checks.labels(types, arr.shape[1], "bond_angle_distributions.types")
    if edges is None:
        edges = np.linspace(0.0, np.pi * (1 + 1e-12), 91)
    lengths = None if box is None else _checks.box_lengths(box, arr.shape[0], "bond_angle_distributions.box")
    return _by_type(_bond_angles(arr, a, lengths), angle_type_names(a, types), np.asarray(edges, float), "rad")
