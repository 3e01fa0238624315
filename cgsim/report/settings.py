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
    #: integer ion charges (``conductivity.charges=formal``) instead of the sidecars' charges
    charges_formal: bool = False
    #: unfinished rollout replicas count for the dynamical observables too (``include_unfinished``)
    include_unfinished: bool = False
    #: what was adapted to the data (stated in the report's notes)
    notes: tuple[str, ...] = ()


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


def _describe_unfinished(t: BeadTrajectory) -> str:
    steps = "" if t.steps_done is None else f" after {t.steps_done} step(s)"
    return f"{t.name} replica {t.replica}: its rollout was not finished (killed or still running){steps}"


def dynamical_set(trajs: list[BeadTrajectory], label: str, observables: tuple[str, ...] | list[str] = DYNAMIC,
                  include_unfinished: bool = False) -> list[BeadTrajectory]:
    """The trajectories of a set that the dynamical observables use: all but replicas stopped early
    and, unless ``include_unfinished``, replicas of a rollout that was not finished.

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
    A rollout killed before the steps it was asked for (its replicas' sidecars still say
    ``"running"``) has frames that end wherever the kill struck and lags and a default fit
    window shorter than asked for; its replicas count for structure, and for the dynamics only
    with ``include_unfinished`` (an empty list when all of them are unfinished: the caller
    then leaves the set's dynamics out and says so).

    Parameters
    ----------
    trajs : list of BeadTrajectory
        The set.
    label : str
        Name of the set in the error (``"reference"``, ``"rollout"``).
    observables : sequence of str
        The dynamical observables asked for (named in the error).
    include_unfinished : bool
        Keep replicas of unfinished rollouts.

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
    return kept if include_unfinished else [t for t in kept if not t.unfinished]


def stopped_early(trajs: list[BeadTrajectory]) -> list[dict[str, Any]]:
    """JSON entries (name, replica, stop step and reason, frames) of the replicas the guard stopped early."""
    return [{"name": t.name, "replica": t.replica, "stop_step": t.stop_step, "stop_reason": t.stop_reason,
             "n_frames": t.n_frames, "path": str(t.path)} for t in trajs if t.stopped_early]


def unfinished(trajs: list[BeadTrajectory]) -> list[dict[str, Any]]:
    """JSON entries (name, replica, steps done, frames) of the replicas of rollouts that were not finished."""
    return [{"name": t.name, "replica": t.replica, "steps_done": t.steps_done, "n_frames": t.n_frames,
             "path": str(t.path)} for t in trajs if t.unfinished]


def unfinished_info(trajs: list[BeadTrajectory], include: bool) -> dict[str, Any]:
    """``unfinished`` block of a set's entry in ``metrics.json``: how many replicas, and what was done."""
    entries = unfinished(trajs)
    return {"n": len(entries), "of": len(trajs), "in_dynamics": bool(include),
            "note": ("replicas of a rollout that was not finished (killed or still running): frames up to its last "
                     "checkpoint; " + ("used for the dynamics too (include_unfinished=true)" if include else
                                       "left out of the dynamical observables, kept for the structural ones; "
                                       "include_unfinished=true uses them")) if entries else None,
            "trajectories": entries}


def choose_preset(reference: list[BeadTrajectory], presets: Any, requested: str | None) -> tuple[str, str | None]:
    """The observables preset for a reference: ``requested``, its system's name, or one its content implies.

    A trajectory mapped from outside data is named after its file (``system.name`` = the file
    stem), which names no preset; then charged beads choose ``electrolyte`` and a reference of
    one bonded molecule per trajectory ``chain``. Returns the preset and, when the content chose
    it, a note saying why (None otherwise).

    Raises
    ------
    CgsimInputError
        ``observables_preset`` names no preset, or the content decides none (one line saying
        which options to pass).
    """
    names = sorted(presets)
    if requested is not None:
        if requested not in presets:
            raise CgsimInputError("observables_preset", f"no preset for system {requested!r}; expected one of {names} "
                                                        "or an explicit observables list")
        return requested, None
    system = reference[0].system
    if system in presets:
        return system, None
    charged = [t for t in reference if t.charges is not None]
    single = all(t.molecule_ids.max() == 0 and t.bonds.size > 0 for t in reference)
    if charged and "electrolyte" in presets:
        return "electrolyte", (f"observables: preset 'electrolyte' chosen from the content (charged beads in "
                               f"{charged[0].path.name}; the reference's system {system!r} names no preset); "
                               "observables_preset= or observables= choose others")
    if single and "chain" in presets:
        return "chain", (f"observables: preset 'chain' chosen from the content (one bonded molecule per trajectory; "
                         f"the reference's system {system!r} names no preset); observables_preset= or observables= "
                         "choose others")
    n_mol = int(reference[0].molecule_ids.max()) + 1
    raise CgsimInputError("observables_preset", f"the reference's system {system!r} (a name taken from its file) has no "
                                                f"preset and its content implies none (no charged beads, {n_mol} "
                                                f"molecules): pass observables_preset= one of {names}, or "
                                                "observables=[rdf,msd,...]")


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
    include = bool(cfg.get("include_unfinished", False))
    if dynamic:
        timed = [*dynamical_set(reference, "reference", dynamic, include),
                 *dynamical_set(others or [], other_label, dynamic, include)]
        timed = timed or list(reference)
    if int(dyn.n_blocks) < 1:
        raise CgsimInputError("dynamics.n_blocks", f"expected a positive number of blocks, got {dyn.n_blocks}")
    window, n_blocks, notes = _fit_window(dyn, timed, bool(dynamic))
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
        contact_cutoff=contact, fit_window=(float(window[0]), float(window[1])), n_blocks=n_blocks,
        remove_drift=bool(dyn.remove_com_drift), acf_method=str(dyn.acf_method),
        charges={} if _formal(cfg.conductivity.charges) else _charges(cfg.conductivity.charges),
        temperature=None if cfg.conductivity.temperature is None else float(cfg.conductivity.temperature),
        match_topology=bool(cfg.match_topology), charges_formal=_formal(cfg.conductivity.charges),
        include_unfinished=include, notes=tuple(notes))


def _fit_window(dyn: Any, timed: list[BeadTrajectory], dynamic: bool) -> tuple[tuple[float, float], int, list[str]]:
    """The MSD fit window (ps) and block count; the defaults adapted to short runs, saying how.

    With ``dynamics.fit_window`` null the window is ``fit_window_fraction`` of the shortest
    trajectory the dynamics use; on a short run it is widened to hold two lags (the first two
    after its start) and ``dynamics.n_blocks`` is lowered until the window fits inside one
    block of that trajectory (the block error needs it). A window given explicitly is kept as
    it is, blocks and all: an impossible combination is then refused where it fails.
    """
    shortest = min(timed, key=lambda t: t.duration)
    n_blocks = int(dyn.n_blocks)
    if dyn.fit_window is not None:
        window = tuple(float(x) for x in dyn.fit_window)
        if dynamic and (len(window) != 2 or not (0 <= window[0] < window[1])):
            raise CgsimInputError("dynamics.fit_window", f"expected [t_start, t_end] in ps with 0 <= t_start < t_end, "
                                                         f"got {list(window)}")
        return (window[0], window[1]), n_blocks, []
    f0, f1 = (float(x) for x in dyn.fit_window_fraction)
    if not 0 <= f0 < f1 <= 1:
        raise CgsimInputError("dynamics.fit_window_fraction", f"expected 0 <= start < end <= 1, got [{f0}, {f1}]")
    t_total, dt, n = shortest.duration, shortest.dt, shortest.n_frames
    window = (f0 * t_total, f1 * t_total)
    notes: list[str] = []
    if not dynamic or dt <= 0:
        return window, n_blocks, notes
    first = max(1, math.ceil(window[0] / dt - 1e-9))
    if math.floor(window[1] / dt + 1e-9) - first < 1:  # fewer than two lags inside
        if (first + 1) * dt > t_total * (1 + 1e-9):
            raise CgsimInputError("dynamics.fit_window", f"{shortest.path}: {n} frames are too few for a diffusion fit "
                                                         "(it needs two lags); evaluate structure alone (e.g. "
                                                         "observables=[rdf,bond_lengths]) or use a longer trajectory")
        window = (first * dt, (first + 1) * dt)
        notes.append(f"dynamics: the default fit window ({f0:g}-{f1:g} of {t_total:g} ps, the shortest trajectory "
                     f"{shortest.name}) holds fewer than two lags; widened to [{window[0]:g}, {window[1]:g}] ps; "
                     "dynamics.fit_window=[T0,T1] sets it")
    blocks = n_blocks
    while blocks > 1 and (n // blocks < 2 or (n // blocks - 1) * dt < window[1] * (1 - 1e-9)):
        blocks -= 1
    if blocks < n_blocks:
        notes.append(f"dynamics: {n_blocks} blocks of the shortest trajectory ({shortest.name}, {n} frames) cannot hold "
                     f"the fit window [{window[0]:g}, {window[1]:g}] ps; block errors use {blocks} block(s)"
                     + (" (none: one block has no spread)" if blocks == 1 else "")
                     + "; dynamics.n_blocks and dynamics.fit_window set them")
    return window, blocks, notes


def _formal(value: Any) -> bool:
    """``conductivity.charges=formal``: integer ion charges."""
    return isinstance(value, str) and value.strip().lower() == "formal"


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
                                                      f"{{Li: 1.0, TFSI: -1.0}}, or formal (integer ion charges), "
                                                      f"got {value!r}") from None
    if not all(math.isfinite(v) for v in out.values()):
        raise CgsimInputError("conductivity.charges", "expected finite charges (e)")
    return out


def noise_settings(settings: Settings) -> Settings:
    """Settings for the half-trajectory noise floor: no block errors (halves are short)."""
    return replace(settings, n_blocks=1)
