"""Li+ coordination by PEO beads: its shell radius, its time series and the burn-in plateau.

Ions and polymer are told apart by the bead charges the mapping carries (from the MD sidecar):
a cation is a one-bead molecule of positive charge (Li+), an anion a molecule of negative net
charge (TFSI-), and the polymer the beads of neutral molecules of two or more beads (PEO). The
coordination of a Li+ is the number of PEO beads within the shell radius ``r_c``
(minimum image), by default the first minimum of the Li+ - PEO-bead g(r) of the model's
training systems (:func:`shell_radius`). Units: nm, ps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cgsim.errors import CgsimInputError
from cgsim.observables.shells import first_shell
from cgsim.report.loading import BeadTrajectory, load_set


@dataclass(frozen=True)
class Species:
    """Bead indices of each species of an electrolyte bead system."""

    cation: np.ndarray
    anion: np.ndarray
    polymer: np.ndarray

    def names(self, n: int) -> np.ndarray:
        """Species name per bead, shape (n,): ``Li+``, ``TFSI-``, ``PEO`` (else ``other``)."""
        out = np.full(n, "other", dtype=object)
        out[self.cation], out[self.anion], out[self.polymer] = "Li+", "TFSI-", "PEO"
        return out.astype(str)


def species(t: BeadTrajectory) -> Species:
    """The ions and polymer beads of ``t`` (module docstring); one line if it has none of one."""
    if t.charges is None:
        raise CgsimInputError(str(t.path), "has no bead charges (extra.particle_charges); the screening tells ions "
                                           "from polymer by them")
    ids = t.molecule_ids
    sizes = np.bincount(ids)
    net = np.bincount(ids, weights=t.charges)
    cation = np.flatnonzero((sizes[ids] == 1) & (net[ids] > 0.25))
    anion = np.flatnonzero(net[ids] < -0.25)
    polymer = np.flatnonzero((sizes[ids] >= 2) & (np.abs(net[ids]) <= 0.25))
    for name, idx in (("Li+", cation), ("TFSI-", anion), ("PEO", polymer)):
        if idx.size == 0:
            raise CgsimInputError(str(t.path), f"holds no {name} beads; expected a mapped PEO + LiTFSI system")
    return Species(cation, anion, polymer)


def shell_radius(mapped_systems: Sequence[str], frame_stride: int = 5) -> float:
    """First minimum of the Li+ - PEO-bead g(r) pooled over ``mapped_systems`` (the mean of
    theirs), nm."""
    radii = []
    for path in mapped_systems:
        for t in load_set(path, where="checkpoint"):
            sp = species(t)
            radii.append(first_shell(t.xyz[::frame_stride], float(t.box[0, 0, 0]), sp.cation, sp.polymer,
                                     names=("Li+", "PEO"))["min_r"])
    return float(np.mean(radii))


def coordination_series(t: BeadTrajectory, sp: Species, r_c: float) -> np.ndarray:
    """Mean number of PEO beads within ``r_c`` of a Li+, per frame, shape (n_frames,)."""
    x_li = t.xyz[:, sp.cation]
    x_p = t.xyz[:, sp.polymer]
    out = np.empty(t.n_frames)
    lengths = np.diagonal(t.box, axis1=1, axis2=2) if t.box is not None else None
    for f in range(t.n_frames):
        d = x_p[f][None, :, :] - x_li[f][:, None, :]
        if lengths is not None:
            d -= lengths[f] * np.round(d / lengths[f])
        out[f] = float(((d**2).sum(-1) < r_c**2).sum(1).mean())
    return out


def plateau(series: Sequence[np.ndarray], tolerance: float) -> dict[str, float | bool]:
    """Whether the mean coordination of the analysed run is flat: its two halves (pooled over
    replicas) differ by at most ``tolerance`` relative to their mean."""
    first = float(np.mean([s[: len(s) // 2].mean() for s in series]))
    second = float(np.mean([s[len(s) // 2:].mean() for s in series]))
    mean = 0.5 * (first + second)
    change = abs(second - first) / mean if mean > 0 else float("inf")
    return {"first_half": first, "second_half": second, "relative_change": change, "tolerance": float(tolerance),
            "plateaued": bool(change <= tolerance)}
