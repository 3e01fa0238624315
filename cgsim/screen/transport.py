"""Transport of one screened composition from its rollout replicas, with error bars across them.

Each replica's frames after the burn-in are one independent estimate (the replicas share the
starting frames only): D(Li+) and D(TFSI-) (ion centres of mass), Nernst-Einstein and
Einstein-Helfand conductivity and the Li+ transference numbers from
:func:`cgsim.observables.conductivity.ionic_conductivity` (with the bead charges of the mapping,
ion charges scaled as in the training MD), the PEO segment D (every PEO bead) from
:func:`cgsim.observables.diffusion.self_diffusion`, and the mean Li+ coordination. A value is the
mean over the replicas, its error the standard error of that mean (NaN with one replica).
Replicas the rollout stopped or that diverged are left out and counted. Units: D in cm^2/s,
conductivity in S/cm, times in ps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cgsim.errors import CgsimInputError
from cgsim.observables.conductivity import ionic_conductivity
from cgsim.observables.diffusion import self_diffusion
from cgsim.observables.msd import msd, remove_com_drift
from cgsim.report.loading import BeadTrajectory
from cgsim.screen.coordination import Species, coordination_series
from cgsim.units import NM2_PER_PS_TO_CM2_PER_S

#: the quantities measured per replica, and their units
QUANTITIES = {"D_li": "cm^2/s", "D_tfsi": "cm^2/s", "D_peo": "cm^2/s", "sigma_ne": "S/cm", "sigma_eh": "S/cm",
              "t_li_ne": "1", "t_li_eh": "1", "coordination": "PEO beads per Li+"}


@dataclass
class ReplicaTransport:
    """One replica's measurements (:data:`QUANTITIES`), its coordination series and its MSDs.

    Attributes
    ----------
    values : dict
        ``{quantity: value}`` in the units of :data:`QUANTITIES`.
    coordination : numpy.ndarray
        Mean Li+ coordination per analysed frame, shape (n_frames,).
    lag_times : numpy.ndarray
        MSD lag times, shape (n_lags,), ps.
    msd : dict
        ``{"Li+" | "TFSI-" | "PEO": MSD, shape (n_lags,), nm^2}``.
    """

    values: dict[str, float]
    coordination: np.ndarray
    lag_times: np.ndarray
    msd: dict[str, np.ndarray] = field(default_factory=dict)


def default_window(duration: float, window: Sequence[float] | None) -> tuple[float, float]:
    """The fit window, ps: as given, or 10 % - 50 % of the analysed ``duration``."""
    if window is not None:
        lo, hi = (float(w) for w in window)
        if not (0 <= lo < hi <= duration):
            raise CgsimInputError("fit_window", f"expected [start, end] ps with 0 <= start < end <= {duration:g} ps "
                                                f"(the analysed run), got {list(window)}")
        return lo, hi
    return 0.1 * duration, 0.5 * duration


def replica_transport(t: BeadTrajectory, sp: Species, temperature: float, window: tuple[float, float],
                      r_c: float) -> ReplicaTransport:
    """Measure one replica's analysed frames (module docstring)."""
    names = sp.names(t.n_particles)
    xyz = remove_com_drift(t.xyz, t.masses)
    cond = ionic_conductivity(xyz, t.dt, t.charges, t.box, temperature, window, species=names,
                              molecule_ids=t.molecule_ids, masses=t.masses, n_blocks=1)
    li, tf = cond.species.index("Li+"), cond.species.index("TFSI-")
    peo = self_diffusion(xyz[:, sp.polymer], t.dt, window, box=t.box, n_blocks=1)
    coord = coordination_series(t, sp, r_c)
    m = msd(xyz, t.dt, groups=names, box=t.box)
    values = {"D_li": float(cond.diffusion[li]) * NM2_PER_PS_TO_CM2_PER_S,
              "D_tfsi": float(cond.diffusion[tf]) * NM2_PER_PS_TO_CM2_PER_S,
              "D_peo": float(peo.D[0]) * NM2_PER_PS_TO_CM2_PER_S, "sigma_ne": cond.sigma_ne,
              "sigma_eh": cond.sigma_eh, "t_li_ne": float(cond.transference_ne[li]),
              "t_li_eh": float(cond.transference_eh[li]), "coordination": float(coord.mean())}
    curves = {g: m.of(g) for g in ("Li+", "TFSI-", "PEO") if g in m.groups}
    return ReplicaTransport(values=values, coordination=coord, lag_times=np.asarray(m.lag_times), msd=curves)


def mean_and_error(replicas: Sequence[ReplicaTransport]) -> dict[str, dict[str, Any]]:
    """Per quantity: ``mean``, ``error`` (standard error over replicas), ``per_replica``, ``unit``."""
    out: dict[str, dict[str, Any]] = {}
    for q, unit in QUANTITIES.items():
        v = np.array([r.values[q] for r in replicas], dtype=float)
        ok = v[np.isfinite(v)]
        err = float(ok.std(ddof=1) / np.sqrt(ok.size)) if ok.size > 1 else float("nan")
        out[q] = {"mean": float(ok.mean()) if ok.size else float("nan"), "error": err,
                  "per_replica": v.tolist(), "unit": unit}
    return out
