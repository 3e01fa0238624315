"""The ranges training systems span: what a model card records as the data it has seen.

:func:`training_ranges` measures them from loaded trajectories (``cgsim train`` stores them in
every checkpoint under ``data.ranges``): the bond lengths per pair of bead classes (min/max
over every frame), the bead number density of periodic systems and, where a system's sidecar
names its bead types, its composition. :func:`with_training_ranges` fills them in for a
checkpoint written before they were recorded, from the training systems it lists
(``data.train_systems``), when every one of those directories can still be found (relative
paths are taken from the working directory, as ``cgsim train`` recorded them); otherwise the
card keeps ``ranges = None``. :func:`beyond_training_ranges` tells whether a system a model is
asked to start from lies far outside them (coordinates in Angstrom read as nm: 10x bonds,
1/1000 the density), which ``cgsim rollout`` refuses unless ``allow_extrapolation=true``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cgsim.data.load import TRAJECTORY_NAMES, load_systems
from cgsim.data.windows import BeadTrajectory
from cgsim.errors import CgsimInputError
from cgsim.metadata import read_sidecar
from cgsim.model.card import ModelCard, TrainingRanges
from cgsim.model.prior import bead_classes


def _composition(traj: BeadTrajectory) -> dict[str, int] | None:
    """Bead-type counts from the sidecar of the system directory ``traj.name`` (None: unknown)."""
    d = Path(traj.name)
    path = next((d / n for n in TRAJECTORY_NAMES if (d / n).is_file()), None)
    if path is None:
        return None
    try:
        types = read_sidecar(path).system.particle_types
    except CgsimInputError:
        return None
    if not types or len(types) != traj.graph.n_beads:
        return None
    return dict(sorted(Counter(str(t) for t in types).items()))


def training_ranges(trajectories: Sequence[BeadTrajectory], atom_types: Sequence[str],
                    source: str = "training") -> TrainingRanges:
    """Measure the ranges of ``trajectories`` (:class:`cgsim.model.card.TrainingRanges`).

    Parameters
    ----------
    trajectories : sequence of BeadTrajectory
        The training systems (positions unwrapped, nm).
    atom_types : sequence of str
        The fine-type vocabulary their graphs index (bead classes are written in it).
    source : str
        Recorded as :attr:`TrainingRanges.source`.
    """
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    classes_seen: set[str] = set()
    densities: list[float] = []
    compositions: dict[str, dict[str, int]] = {}
    for traj in trajectories:
        g = traj.graph
        classes = bead_classes(g.atom_type, g.atom_to_bead, g.n_beads, list(atom_types))
        classes_seen.update(classes)
        bonds = g.bead_bonds.numpy()
        bonds = np.unique(np.sort(bonds, axis=0), axis=1) if bonds.size else bonds.reshape(2, 0)
        bonds = bonds[:, bonds[0] != bonds[1]]
        if bonds.shape[1]:
            x = traj.positions
            length = np.linalg.norm(x[:, bonds[0]] - x[:, bonds[1]], axis=-1)  # (F, E), unwrapped: whole molecules
            keys = np.array(["|".join(sorted((classes[i], classes[j]))) for i, j in bonds.T])
            for key in np.unique(keys):
                sel = length[:, keys == key]
                lo[key] = min(lo.get(key, np.inf), float(sel.min()))
                hi[key] = max(hi.get(key, -np.inf), float(sel.max()))
        if g.box is not None:
            densities.append(g.n_beads / float(np.prod(g.box.numpy().astype(np.float64))))
        comp = _composition(traj)
        if comp is not None:
            compositions[traj.name] = comp
    return TrainingRanges(bond_lengths={k: (lo[k], hi[k]) for k in sorted(lo)}, bead_classes=tuple(sorted(classes_seen)),
                          density=(min(densities), max(densities)) if densities else None,
                          compositions=compositions, source=source)


def with_training_ranges(card: ModelCard) -> ModelCard:
    """``card`` with its :attr:`~ModelCard.ranges` filled in from its listed training systems.

    A card that has ranges is returned as it is; so is one whose training systems are not
    listed or not all found (its ranges stay None).
    """
    if card.ranges is not None or not card.train_systems:
        return card
    if not all(Path(p).is_dir() for p in card.train_systems):
        return card
    systems = load_systems(list(card.train_systems), "data.train_systems", atom_types=list(card.atom_types))
    return dataclasses.replace(card, ranges=training_ranges(systems.trajectories, card.atom_types, "train_systems"))


#: a system whose bond lengths or bead density lie beyond this factor of the training range (above
#: factor x its largest value, or below its smallest / factor) is far outside what the model has seen
EXTRAPOLATION_FACTOR = 2.0


def beyond_training_ranges(trained: TrainingRanges, trajectories: Sequence[BeadTrajectory], atom_types: Sequence[str],
                           factor: float = EXTRAPOLATION_FACTOR, scan_frames: int = 50) -> str | None:
    """The first way ``trajectories`` lie beyond ``factor`` x the ranges a model was trained on, or None.

    Bond lengths are compared per pair of bead classes (pairs the training never saw are not
    compared), over at most ``scan_frames`` evenly spaced frames of each trajectory; the bead
    density of periodic systems when the training recorded one. The answer is one sentence that
    starts with the system's name.
    """
    for traj in trajectories:
        idx = np.unique(np.linspace(0, traj.n_frames - 1, max(1, min(scan_frames, traj.n_frames))).round().astype(int))
        seen = training_ranges([dataclasses.replace(traj, positions=traj.positions[idx])], atom_types, "initial")
        for key, (lo, hi) in seen.bond_lengths.items():
            if key not in trained.bond_lengths:
                continue
            t_lo, t_hi = trained.bond_lengths[key]
            if hi > factor * t_hi or lo < t_lo / factor:
                return (f"{traj.name}: bonds between bead classes {key} span {lo:.4g}-{hi:.4g} nm, beyond {factor:g}x the "
                        f"model's training range {t_lo:.4g}-{t_hi:.4g} nm ({_LARGE if hi > factor * t_hi else _SMALL})")
        if seen.density is not None and trained.density is not None:
            d, (t_lo, t_hi) = seen.density[0], trained.density
            if d > factor * t_hi or d < t_lo / factor:
                return (f"{traj.name}: bead density {d:.4g} /nm^3 lies beyond {factor:g}x the model's training range "
                        f"{t_lo:.4g}-{t_hi:.4g} /nm^3 ({_LARGE if d < t_lo / factor else _SMALL})")
    return None


_LARGE = "coordinates in Angstrom instead of nm?"
_SMALL = "coordinates in a unit larger than nm, or nm written where Angstrom was expected?"
