"""What every set compared shares: the observables asked for, their bins, ranges and windows.

:func:`make_settings` fixes them from the *reference* (and the config of ``cgsim evaluate``)
before anything is computed, so that every set (reference, rollout, the reference's halves) is
measured on the same bins; :func:`dynamical_set` says which trajectories the dynamical
observables use. :mod:`cgsim.report.suite` computes with them. Lengths nm, times ps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from cgsim.errors import CgsimInputError
from cgsim.observables.bonds import bond_lengths
from cgsim.observables.polymer import chain_ends, end_to_end_distance, radius_of_gyration
from cgsim.report.loading import BeadTrajectory

#: every observable :func:`compute_suite` knows, in report order
OBSERVABLES = ("rdf", "bond_lengths", "bond_angles", "rg", "end_to_end", "contact_map", "msd", "diffusion",
               "rg_acf", "conductivity")
DYNAMIC = ("msd", "diffusion", "rg_acf", "conductivity")


@dataclass(frozen=True, eq=False)
class Settings:
    """Bins, ranges and windows shared by every set compared (fixed from the reference).

    Lengths nm, times ps, angles rad, temperatures K, charges e.
    """

    observables: tuple[str, ...]
    rdf_edges: np.ndarray
    rdf_periodic: bool
    rdf_max_frames: int | None
    rdf_workers: int
    rdf_method: str
    bond_edges: np.ndarray
    angle_edges: np.ndarray
    rg_edges: np.ndarray
    ree_edges: np.ndarray
    end_types: list[str] | None
    contact_cutoff: float
    fit_window: tuple[float, float]
    n_blocks: int
    remove_drift: bool
    acf_method: str
    charges: dict[str, float]
    temperature: float | None
    match_topology: bool



def _chain_particles(t: BeadTrajectory) -> np.ndarray:
    """Particles belonging to molecules of two or more beads."""
    sizes = np.bincount(t.molecule_ids)
    return np.flatnonzero(sizes[t.molecule_ids] >= 2)


def _padded_range(values: list[np.ndarray], pad: float, floor: float | None = 0.0) -> tuple[float, float]:
    v = np.concatenate([np.ravel(x) for x in values]) if values else np.zeros(1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    span = max(hi - lo, 1e-3 * max(abs(hi), 1.0))
    lo, hi = lo - pad * span, hi + pad * span
    if floor is not None:
        lo = max(lo, floor)
    return lo, hi


def _describe_stop(t: BeadTrajectory) -> str:
    reason = t.stop_reason or "stopped by the stability guard"
    return f"{t.name} replica {t.replica}: {reason}" + ("" if "step" in reason else f" (step {t.stop_step})")


def dynamical_set(trajs: list[BeadTrajectory], label: str, observables: tuple[str, ...] | list[str] = DYNAMIC
                  ) -> list[BeadTrajectory]:
    """The trajectories of a set that the dynamical observables use: all but replicas stopped early.

    MSD, D, the Rg^2 ACF and the conductivity are curves in lag time, pooled over trajectories
    only up to the shortest one's longest lag (:func:`~cgsim.observables.msd.combine_msds`,
    :func:`~cgsim.observables.correlation.combine_acfs`), and the default fit window is a
    fraction of the shortest trajectory: one rollout replica that the stability guard stopped
    after a few steps would shrink the window and the lags of the whole set until the fit
    fails, and its frames end exactly where the model went unstable. So such replicas are
    left out of the dynamics (:func:`compute_suite` notes it). The structural observables
    (RDF, bond and angle distributions, Rg, end-to-end distance, contact maps) keep them, as
    they always did: those are per-frame histograms with no time window, the stopped
    replica's frames all passed the guard, they weigh by their (few) frames, and dropping them
    would hide the structure a failing replica drifted into (a survivor bias).

    Parameters
    ----------
    trajs : list of BeadTrajectory
        The set.
    label : str
        Name of the set in the error (``"reference"``, ``"rollout"``).
    observables : sequence of str
        The dynamical observables asked for (named in the error).

    Raises
    ------
    CgsimInputError
        If every trajectory of the set was stopped early (one line naming the first reason).
    """
    kept = [t for t in trajs if not t.stopped_early]
    if trajs and not kept:
        raise CgsimInputError(label, f"no replica left for the dynamical observables ({', '.join(observables)}): all "
                                     f"{len(trajs)} trajectories were stopped early by the stability guard (first: "
                                     f"{_describe_stop(trajs[0])}); evaluate structure alone (e.g. observables=[rdf,rg]) "
                                     "or roll out again with a more stable model or schedule")
    return kept


def stopped_early(trajs: list[BeadTrajectory]) -> list[dict[str, Any]]:
    """JSON entries (name, replica, stop step and reason, frames) of the replicas the guard stopped early."""
    return [{"name": t.name, "replica": t.replica, "stop_step": t.stop_step, "stop_reason": t.stop_reason,
             "n_frames": t.n_frames, "path": str(t.path)} for t in trajs if t.stopped_early]


def make_settings(reference: list[BeadTrajectory], cfg: Any, observables: tuple[str, ...],
                  others: list[BeadTrajectory] | None = None, other_label: str = "rollout") -> Settings:
    """Bins and windows for every set, from the reference trajectories and the config.

    Bins come from the reference; the default fit window (``dynamics.fit_window_fraction``)
    from the shortest trajectory of the reference and ``others`` together, so that one window
    fits every set compared. When dynamical observables are asked for, rollout replicas that
    the stability guard stopped early do not count (they are left out of the dynamics, see
    :func:`dynamical_set`).

    Parameters
    ----------
    reference : list of BeadTrajectory
        The reference set.
    cfg : DictConfig
        The ``evaluate`` config (``rdf``, ``distributions``, ``polymer``, ``dynamics``,
        ``conductivity`` sections).
    observables : tuple of str
        The observables to compute.
    others : list of BeadTrajectory, optional
        The other set(s) compared (e.g. the rollout).
    other_label : str
        Name of ``others`` in errors.

    Returns
    -------
    Settings

    Raises
    ------
    CgsimInputError
        Bad options; or dynamical observables asked for a set whose every trajectory was
        stopped early (before anything is computed).
    """
    periodic = cfg.rdf.periodic
    if periodic is None:
        periodic = all(t.periodic for t in reference)
    periodic = bool(periodic)
    if cfg.rdf.r_max is not None:
        r_max = float(cfg.rdf.r_max)
    elif periodic:
        lengths = [np.linalg.norm(t.box, axis=-1).min() for t in reference if t.box is not None]
        if not lengths:
            raise CgsimInputError("rdf.periodic", f"{reference[0].path}: trajectory has no box; a periodic RDF needs one "
                                                  "(or set rdf.periodic=false)")
        r_max = 0.5 * float(min(lengths))
    else:
        r_max = float(cfg.rdf.nonperiodic_r_max)
    if not (math.isfinite(r_max) and r_max > 0):
        raise CgsimInputError("rdf.r_max", f"expected a positive number of nm, got {r_max!r}")
    n_bins = int(cfg.rdf.n_bins)
    if n_bins < 1:
        raise CgsimInputError("rdf.n_bins", f"expected a positive number of bins, got {n_bins}")
    nb = int(cfg.distributions.n_bins)
    if nb < 1:
        raise CgsimInputError("distributions.n_bins", f"expected a positive number of bins, got {nb}")

    bl, rg, ree = [], [], []
    for t in reference:
        sample = t.xyz[:: max(1, t.n_frames // 50)]
        if t.bonds.size:
            bl.append(bond_lengths(sample, t.bonds))
        chain = _chain_particles(t)
        if chain.size:
            rg.append(radius_of_gyration(sample[:, chain], t.masses[chain], t.molecule_ids[chain]).values)
            ends = chain_ends(t.molecule_ids[chain], t.types[chain], cfg.polymer.end_types)
            ree.append(end_to_end_distance(sample[:, chain], ends).values)
    pad = float(cfg.distributions.pad)
    bond_edges = np.linspace(*_padded_range(bl, pad), nb + 1)
    rg_edges = np.linspace(*_padded_range(rg, 2 * pad), nb + 1)
    ree_edges = np.linspace(*_padded_range(ree, 2 * pad), nb + 1)
    angle_edges = np.linspace(0.0, math.pi * (1 + 1e-12), int(cfg.distributions.angle_bins) + 1)

    dyn = cfg.dynamics
    dynamic = tuple(o for o in observables if o in DYNAMIC)
    # the window must fit the trajectories the dynamics use, not a replica stopped early; with no
    # dynamical observable it is unused, so only the reference (never stopped) sets it
    timed = list(reference)
    if dynamic:
        timed = [*dynamical_set(reference, "reference", dynamic), *dynamical_set(others or [], other_label, dynamic)]
    shortest = min(t.duration for t in timed)
    if dyn.fit_window is not None:
        window = tuple(float(x) for x in dyn.fit_window)
    else:
        f0, f1 = (float(x) for x in dyn.fit_window_fraction)
        if not 0 <= f0 < f1 <= 1:
            raise CgsimInputError("dynamics.fit_window_fraction", f"expected 0 <= start < end <= 1, got [{f0}, {f1}]")
        window = (f0 * shortest, f1 * shortest)
    if dynamic and (len(window) != 2 or not (0 <= window[0] < window[1])):
        raise CgsimInputError("dynamics.fit_window", f"expected [t_start, t_end] in ps with 0 <= t_start < t_end, got {list(window)}")
    if int(dyn.n_blocks) < 1:
        raise CgsimInputError("dynamics.n_blocks", f"expected a positive number of blocks, got {dyn.n_blocks}")
    if dyn.acf_method not in ("integral", "exponential"):
        raise CgsimInputError("dynamics.acf_method", f"got {dyn.acf_method!r}, expected 'integral' or 'exponential'")
    if cfg.rdf.max_frames is not None and int(cfg.rdf.max_frames) < 1:
        raise CgsimInputError("rdf.max_frames", f"expected a positive number of frames or null, got {cfg.rdf.max_frames}")
    contact = float(cfg.polymer.contact_cutoff)
    if not (math.isfinite(contact) and contact > 0):
        raise CgsimInputError("polymer.contact_cutoff", f"expected a positive number of nm, got {contact!r}")
    return Settings(
        observables=observables, rdf_edges=np.linspace(0.0, r_max, n_bins + 1), rdf_periodic=periodic,
        rdf_max_frames=None if cfg.rdf.max_frames is None else int(cfg.rdf.max_frames),
        rdf_workers=int(cfg.rdf.workers), rdf_method=_rdf_method(cfg.rdf.method),
        bond_edges=bond_edges, angle_edges=angle_edges, rg_edges=rg_edges, ree_edges=ree_edges,
        end_types=None if cfg.polymer.end_types is None else [str(x) for x in cfg.polymer.end_types],
        contact_cutoff=contact, fit_window=(float(window[0]), float(window[1])), n_blocks=int(dyn.n_blocks),
        remove_drift=bool(dyn.remove_com_drift), acf_method=str(dyn.acf_method),
        charges=_charges(cfg.conductivity.charges),
        temperature=None if cfg.conductivity.temperature is None else float(cfg.conductivity.temperature),
        match_topology=bool(cfg.match_topology))


def _rdf_method(value: Any) -> str:
    from cgsim.observables.rdf import METHODS

    if str(value) not in METHODS:
        raise CgsimInputError("rdf.method", f"got {value!r}, expected one of {list(METHODS)}")
    return str(value)


def _charges(value: Any) -> dict[str, float]:
    """``conductivity.charges`` as ``{bead type: charge in e}``."""
    if value is None:
        return {}
    try:
        items = dict(value).items()
        out = {str(k): float(v) for k, v in items}
    except (TypeError, ValueError):
        raise CgsimInputError("conductivity.charges", f"expected a mapping of bead type to charge in e, e.g. "
                                                      f"{{Li: 1.0, TFSI: -1.0}}, got {value!r}") from None
    if not all(math.isfinite(v) for v in out.values()):
        raise CgsimInputError("conductivity.charges", "expected finite charges (e)")
    return out


def noise_settings(settings: Settings) -> Settings:
    """Settings for the half-trajectory noise floor: no block errors (halves are short)."""
    return replace(settings, n_blocks=1)
