"""Guard and exclusion limits of a rollout, scanned from the frames it starts from.

The stability guard (:class:`cgsim.rollout.hooks.StabilityGuard`) stops a member whose bond
stretches beyond a factor of the longest bond, or whose beads come closer than a fraction of the
closest approach, seen in evenly spaced frames of its initial trajectory; the pair exclusion
(:mod:`cgsim.rollout.exclusion`) keeps each pair of bead types apart by a fraction of that
pair's closest approach. :func:`system_limits` gives one system's limits for ``cgsim rollout``;
the scans it is made of (:func:`longest_bond`, :func:`closest_by_type_pair`,
:func:`closest_in_frames`, :func:`guard_limits`) are what the bench scripts use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cgsim.data.windows import BeadTrajectory
from cgsim.errors import CgsimInputError
from cgsim.geometry import radius_graph
from cgsim.rollout.engine import DivergenceLimits
from cgsim.rollout.exclusion import exclusion_table

#: a bond or molecule this many times the largest of the initial frames means a member diverged
DIVERGENCE_FACTOR = 3.0

#: a (bead type index per bead (N,) int64, symmetric (T, T) distances nm) pair
TypeTable = tuple[torch.Tensor, torch.Tensor]


def scanned_frames(traj: BeadTrajectory, scan_frames: int) -> np.ndarray:
    """Positions of at most ``scan_frames`` evenly spaced frames of ``traj``, (F, N, 3) nm."""
    idx = np.unique(np.linspace(0, traj.n_frames - 1, max(1, min(scan_frames, traj.n_frames))).round().astype(int))
    return traj.positions[idx]


def longest_bond(traj: BeadTrajectory, scan_frames: int) -> float:
    """Longest bead bond (nm) over evenly spaced frames of ``traj`` (``inf`` without bonds)."""
    x = scanned_frames(traj, scan_frames)
    bonds = traj.graph.bead_bonds.numpy()
    bonds = bonds[:, bonds[0] < bonds[1]]
    return float(np.linalg.norm(x[:, bonds[0]] - x[:, bonds[1]], axis=-1).max()) if bonds.shape[1] else math.inf


def largest_molecule_size(traj: BeadTrajectory, scan_frames: int) -> float:
    """Largest distance (nm) of a bead from its molecule's centre over evenly spaced frames of ``traj``
    (molecules of two beads or more; ``inf`` when there are none)."""
    from cgsim.model.graph import molecule_index

    mol = molecule_index(traj.graph.n_beads, traj.graph.bead_bonds.numpy())
    sizes = np.bincount(mol)
    if not (sizes > 1).any():
        return math.inf
    x = scanned_frames(traj, scan_frames).astype(np.float64)  # (F, N, 3)
    centre = np.zeros((x.shape[0], sizes.size, 3))
    np.add.at(centre, (slice(None), mol), x)
    centre /= sizes[None, :, None]
    radius = np.linalg.norm(x - centre[:, mol], axis=-1)  # (F, N)
    return float(radius[:, sizes[mol] > 1].max())


def divergence_limits(traj: BeadTrajectory, scan_frames: int, factor: float = DIVERGENCE_FACTOR) -> DivergenceLimits:
    """When a member started from ``traj`` has diverged: a bond or a molecule ``factor`` x the
    largest in its scanned initial frames (:class:`cgsim.rollout.engine.DivergenceLimits`)."""
    bond, size = longest_bond(traj, scan_frames), largest_molecule_size(traj, scan_frames)
    return DivergenceLimits(max_bond=factor * bond if bond > 0 else math.inf,
                            max_size=factor * size if size > 0 else math.inf, factor=float(factor))


def guard_limits(traj: BeadTrajectory, cutoff: float, scan_frames: int) -> tuple[float, float]:
    """Longest bond and closest bead approach (nm) over evenly spaced frames of ``traj``.

    The closest approach is searched within ``cutoff`` (0.0 when no pair is that close).
    """
    _, _, closest = closest_by_type_pair(traj, ["all"] * traj.graph.n_beads, cutoff, scan_frames)
    return longest_bond(traj, scan_frames), overall_closest(closest)


def overall_closest(closest: np.ndarray) -> float:
    """Closest approach of any pair from a per-type-pair table (0.0 when none came within the cutoff)."""
    return float(closest.min()) if np.isfinite(closest).any() else 0.0


def closest_by_type_pair(traj: BeadTrajectory, types: Sequence[str], cutoff: float,
                         scan_frames: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Closest approach (nm) of each pair of bead types over evenly spaced frames of ``traj``.

    Parameters
    ----------
    traj : BeadTrajectory
        Mapped trajectory, ``n_beads`` beads.
    types : sequence of str
        Bead type of each bead, length ``n_beads``.
    cutoff : float
        Search radius, nm: pairs never closer than this get ``inf``.
    scan_frames : int
        At most this many frames, evenly spaced over the trajectory.

    Returns
    -------
    names : list of str
        The distinct types, sorted (T of them).
    index : numpy.ndarray
        Type index of each bead, shape (n_beads,), int64.
    closest : numpy.ndarray
        Symmetric (T, T) closest approaches, nm (``inf`` where no pair came within ``cutoff``).
    """
    if len(types) != traj.graph.n_beads:
        raise CgsimInputError("particle_types", f"{traj.name}: expected one type per bead ({traj.graph.n_beads}), "
                                                f"got {len(types)}")
    names = sorted(set(types))
    index = np.array([names.index(t) for t in types], dtype=np.int64)
    return names, index, closest_in_frames(scanned_frames(traj, scan_frames), index, len(names),
                                           traj.graph.box, cutoff)


def closest_in_frames(frames: np.ndarray, index: np.ndarray, n_types: int, box: torch.Tensor | None,
                      cutoff: float) -> np.ndarray:
    """Closest approach of each pair of types over all ``frames``, symmetric (T, T) nm.

    Parameters
    ----------
    frames : numpy.ndarray
        Positions, shape (F, N, 3), nm.
    index : numpy.ndarray
        Type index of each bead, shape (N,), values 0..T-1.
    n_types : int
        T.
    box : torch.Tensor or None
        Box lengths (3,), nm; ``None``: not periodic.
    cutoff : float
        Search radius, nm: pairs never closer than this get ``inf``.
    """
    closest = np.full((n_types, n_types), np.inf)
    for frame in frames:
        g = radius_graph(torch.from_numpy(np.ascontiguousarray(frame)), cutoff, box)
        if g.n_edges:
            a, b = index[g.edge_index[0].numpy()], index[g.edge_index[1].numpy()]
            np.minimum.at(closest, (a, b), g.dist.numpy())
    return np.minimum(closest, closest.T)


@dataclass
class SystemLimits:
    """One system's guard and exclusion limits (shared by its replicas).

    Attributes
    ----------
    max_bond : float
        Longest allowed bond, nm (``guard.max_bond_factor`` x the longest scanned bond).
    min_distance : float
        Closest allowed approach, nm (with per type pair limits: the largest of them).
    pair_min_distance : TypeTable or None
        Per type pair overlap limits (``guard.by_type_pair``).
    exclusion : TypeTable or None
        Per type pair exclusion distances (``exclusion.enabled``).
    divergence : DivergenceLimits
        When a member has diverged, whatever the guard says (:func:`divergence_limits`).
    """

    max_bond: float
    min_distance: float
    pair_min_distance: TypeTable | None
    exclusion: TypeTable | None
    divergence: DivergenceLimits = DivergenceLimits()


def check_limit_options(guard: Any, exclusion: Any) -> None:
    """Refuse guard/exclusion options that cannot give limits, naming the option.

    ``guard`` and ``exclusion`` are the ``guard`` / ``exclusion`` sections of a rollout config
    (:class:`cgsim.rollout.config.GuardConfig`, :class:`~cgsim.rollout.config.ExclusionConfig`).
    """
    if exclusion.enabled and not 0.0 < float(exclusion.factor) <= 1.0:
        raise CgsimInputError("exclusion.factor", f"expected a fraction of the closest approach in (0, 1], got {exclusion.factor}")
    if exclusion.enabled and int(exclusion.iterations) < 1:
        raise CgsimInputError("exclusion.iterations", f"expected an integer >= 1, got {exclusion.iterations}")
    if guard.enabled and guard.by_type_pair and guard.min_distance is not None:
        raise CgsimInputError("guard.by_type_pair", "per type pair limits come from guard.min_distance_factor; "
                                                    "leave guard.min_distance null")
    if guard.enabled and int(guard.redraws) < 0:
        raise CgsimInputError("guard.redraws", f"expected an integer >= 0, got {guard.redraws}")
    if int(guard.scan_frames) < 1:
        raise CgsimInputError("guard.scan_frames", f"expected an integer >= 1 (initial frames scanned for the limits), "
                                                   f"got {guard.scan_frames}")
    if guard.enabled and not float(guard.max_bond_factor) > 1:
        raise CgsimInputError("guard.max_bond_factor", f"expected a factor > 1 of the longest initial bond (at or below 1 "
                                                       f"the initial state itself breaks it), got {guard.max_bond_factor}")
    if guard.enabled and guard.min_distance is not None and not float(guard.min_distance) >= 0:
        raise CgsimInputError("guard.min_distance", f"expected a distance >= 0 nm or null, got {guard.min_distance}")
    if guard.enabled and not 0 <= float(guard.min_distance_factor) <= 1:
        raise CgsimInputError("guard.min_distance_factor", f"expected a fraction in [0, 1] of the closest initial approach, "
                                                           f"got {guard.min_distance_factor}")


def system_limits(traj: BeadTrajectory, particle_types: Sequence[str] | None, cutoff: float, guard: Any,
                  exclusion: Any, divergence_factor: float = DIVERGENCE_FACTOR) -> SystemLimits:
    """The guard and exclusion limits of one system from one scan of its initial frames.

    Parameters
    ----------
    traj : BeadTrajectory
        The initial system (its frames are scanned, ``guard.scan_frames`` of them).
    particle_types : sequence of str or None
        Bead type of each bead (its sidecar's ``system.particle_types``); ``guard.by_type_pair``
        needs them (a one-line error without), the exclusion uses them when given and treats all
        beads as one type otherwise.
    cutoff : float
        Search radius of the closest approaches (the model's cutoff), nm.
    guard, exclusion
        The ``guard`` / ``exclusion`` sections of the rollout config.
    divergence_factor : float
        The rollout's ``divergence_factor`` (:func:`divergence_limits`).
    """
    scan = int(guard.scan_frames)
    longest = longest_bond(traj, scan)
    # one scan of the initial frames gives the closest approach per pair of types (all beads
    # one type unless the limits are per type pair) and overall
    one_type = ["all"] * traj.graph.n_beads
    if guard.by_type_pair:
        types = list(particle_types or [])
    elif exclusion.enabled:
        types = list(particle_types or []) or one_type
    else:
        types = one_type
    _, type_index, pair_closest = closest_by_type_pair(traj, types, cutoff, scan)
    excluded = None
    if exclusion.enabled:
        excluded = (torch.from_numpy(type_index), torch.from_numpy(exclusion_table(pair_closest, float(exclusion.factor))))
    closest = overall_closest(pair_closest)
    limit = float(guard.min_distance) if guard.min_distance is not None else float(guard.min_distance_factor) * closest
    pair_limits = None
    if guard.by_type_pair:
        # pairs never seen within the cutoff keep the overall limit
        table = np.where(np.isfinite(pair_closest), float(guard.min_distance_factor) * pair_closest, limit)
        pair_limits = (torch.from_numpy(type_index), torch.from_numpy(table))
        limit = float(table.max())
    return SystemLimits(max_bond=float(guard.max_bond_factor) * longest, min_distance=limit,
                        pair_min_distance=pair_limits, exclusion=excluded,
                        divergence=divergence_limits(traj, scan, divergence_factor))
