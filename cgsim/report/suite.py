"""The observables of one trajectory set, pooled over its trajectories, and their comparison.

:func:`make_settings` fixes everything that must be identical between the sets being compared
(bins, ranges, fit window) from the *reference*; :func:`compute_suite` evaluates the chosen
observables on a set with those settings; :func:`summarise` turns a suite into JSON numbers and
:func:`compare` gives the error measures between two suites:

==============  ======================================================================
observable      error measure
==============  ======================================================================
rdf             max |dg| and mean |dg| over bins, per bead-type pair
bond_lengths    Jensen-Shannon divergence (base 2) and relative error of the mean, per type
bond_angles     same, per angle type
rg              relative error of <Rg>, JSD of the Rg distribution
end_to_end      relative error of the rms end-to-end distance, JSD of its distribution
contact_map     max and mean |d frequency| (matched topologies only)
msd             mean relative deviation over common lags, per group
diffusion       relative error of D, per group
rg_acf          relative error of the relaxation time, mean |d ACF| over common lags
conductivity    relative errors of sigma_NE, sigma_EH and the transference numbers
==============  ======================================================================
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from tqdm import tqdm

from cgsim.errors import CgsimInputError
from cgsim.observables.bonds import (
    angle_triplets,
    bond_angle_distributions,
    bond_length_distributions,
    bond_lengths,
)
from cgsim.observables.conductivity import ConductivityResult, ionic_conductivity
from cgsim.observables.correlation import ACFResult, combine_acfs, rg2_autocorrelation
from cgsim.observables.diffusion import DiffusionResult, diffusion_from_msds
from cgsim.observables.distributions import (
    Distribution,
    combine_distributions,
    js_divergence,
    relative_error,
)
from cgsim.observables.msd import MSDResult, block_slices, combine_msds, msd
from cgsim.observables.polymer import (
    ContactMap,
    chain_ends,
    contact_map,
    end_to_end_distance,
    molecule_centres,
    radius_of_gyration,
)
from cgsim.observables.rdf import RDFResult, combine_rdfs, rdf_by_type
from cgsim.report.loading import BeadTrajectory
from cgsim.units import NM2_PER_PS_TO_CM2_PER_S

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


@dataclass
class Suite:
    """Pooled observables of one trajectory set (only those requested are filled)."""

    label: str
    n_trajectories: int
    n_frames: int
    dt: float
    rdf: dict[str, RDFResult] = field(default_factory=dict)
    bond_lengths: dict[str, Distribution] = field(default_factory=dict)
    bond_angles: dict[str, Distribution] = field(default_factory=dict)
    rg: Distribution | None = None
    rg_chain_means: dict[str, float] = field(default_factory=dict)
    end_to_end: Distribution | None = None
    contact_maps: dict[str, ContactMap] = field(default_factory=dict)
    msd: MSDResult | None = None
    diffusion: DiffusionResult | None = None
    rg_acf: ACFResult | None = None
    conductivity: list[ConductivityResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- settings ---------------------------------------------------------------------------

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


# --- computing ----------------------------------------------------------------------------

def _pair_label(pair: tuple[str, str]) -> str:
    return f"{pair[0]}-{pair[1]}"


def _frames_for_rdf(t: BeadTrajectory, max_frames: int | None) -> np.ndarray:
    if max_frames is None or t.n_frames <= max_frames:
        return np.arange(t.n_frames)
    return np.unique(np.linspace(0, t.n_frames - 1, max_frames).round().astype(int))


def _rdf(trajs: list[BeadTrajectory], s: Settings, suite: Suite) -> None:
    per_pair: dict[str, list[RDFResult]] = {}
    for t in trajs:
        if s.rdf_periodic and t.box is None:
            raise CgsimInputError(str(t.path), "trajectory has no box; a periodic RDF needs one (or set rdf.periodic=false)")
        f = _frames_for_rdf(t, s.rdf_max_frames)
        res = rdf_by_type(t.xyz[f], t.types, None if t.box is None or not s.rdf_periodic else t.box[f],
                          r_max=float(s.rdf_edges[-1]), n_bins=s.rdf_edges.size - 1, periodic=s.rdf_periodic,
                          workers=s.rdf_workers, method=s.rdf_method)
        for pair, r in res.items():
            per_pair.setdefault(_pair_label(pair), []).append(r)
    suite.rdf = {k: combine_rdfs(v) for k, v in sorted(per_pair.items())}


def _bonds(trajs: list[BeadTrajectory], s: Settings, suite: Suite) -> None:
    per: dict[str, list[Distribution]] = {}
    for t in trajs:
        if not t.bonds.size:
            continue
        for k, d in bond_length_distributions(t.xyz, t.bonds, t.types, s.bond_edges).items():
            per.setdefault(k, []).append(d)
    if not per:
        suite.notes.append("bond_lengths: no bonds in the topology")
    suite.bond_lengths = {k: combine_distributions(v) for k, v in sorted(per.items())}


def _angles(trajs: list[BeadTrajectory], s: Settings, suite: Suite) -> None:
    per: dict[str, list[Distribution]] = {}
    for t in trajs:
        if not t.bonds.size:
            continue
        ang = angle_triplets(t.bonds, t.n_particles)
        if not ang.size:
            continue
        for k, d in bond_angle_distributions(t.xyz, ang, t.types, s.angle_edges).items():
            per.setdefault(k, []).append(d)
    if not per:
        suite.notes.append("bond_angles: no bonded angles in the topology")
    suite.bond_angles = {k: combine_distributions(v) for k, v in sorted(per.items())}


def _rg(trajs: list[BeadTrajectory], s: Settings, suite: Suite) -> None:
    dists = []
    sums: dict[str, list[float]] = {}
    for t in trajs:
        chain = _chain_particles(t)
        if not chain.size:
            continue
        series = radius_of_gyration(t.xyz[:, chain], t.masses[chain], t.molecule_ids[chain])
        dists.append(series.distribution(s.rg_edges))
        for c, m in enumerate(series.chain_means()):  # replicas of a system: mean of their means
            sums.setdefault(f"{t.name}/{c}", []).append(float(m))
    if not dists:
        raise CgsimInputError("observables", "empty selection: rg needs molecules of two or more beads")
    suite.rg = combine_distributions(dists)
    suite.rg_chain_means = {k: float(np.mean(v)) for k, v in sums.items()}


def _end_to_end(trajs: list[BeadTrajectory], s: Settings, suite: Suite) -> None:
    dists = []
    for t in trajs:
        chain = _chain_particles(t)
        if not chain.size:
            continue
        ends = chain_ends(t.molecule_ids[chain], t.types[chain], s.end_types)
        dists.append(end_to_end_distance(t.xyz[:, chain], ends).distribution(s.ree_edges))
    if not dists:
        raise CgsimInputError("observables", "empty selection: end_to_end needs molecules of two or more beads")
    suite.end_to_end = combine_distributions(dists)


def _contacts(trajs: list[BeadTrajectory], s: Settings, suite: Suite) -> None:
    if not s.match_topology:
        suite.notes.append("contact_map: skipped (needs match_topology=true: maps compare bead by bead)")
        return
    maps: dict[str, list[ContactMap]] = {}
    for t in trajs:
        box = t.box if (t.periodic and t.box is not None) else None
        maps.setdefault(t.name, []).append(contact_map(t.xyz, s.contact_cutoff, box=box))
    for name, cms in maps.items():  # replicas of a system: frame-weighted mean frequency
        n = sum(c.n_frames for c in cms)
        suite.contact_maps[name] = replace(cms[0], frequency=sum(c.frequency * c.n_frames for c in cms) / n, n_frames=n)


def _msd_groups(t: BeadTrajectory) -> tuple[np.ndarray, np.ndarray]:
    """Positions and group names: every bead by type, plus the centre of every multi-bead molecule."""
    sizes = np.bincount(t.molecule_ids)
    multi = np.flatnonzero(sizes >= 2)
    xyz, groups = t.xyz, t.types
    if multi.size:
        centres = molecule_centres(t.xyz, t.masses, t.molecule_ids)[:, multi]
        xyz = np.concatenate([xyz, centres], axis=1)
        groups = np.concatenate([groups, np.array([f"com:{t.molecule_kinds[m]}" for m in multi])])
    return xyz, groups


def _check_dt(trajs: list[BeadTrajectory], label: str) -> float:
    dts = {round(t.dt, 9) for t in trajs}
    if len(dts) > 1:
        raise CgsimInputError(label, f"trajectories have different frame intervals {sorted(dts)} ps; expected one")
    return trajs[0].dt


def _box_for_msd(t: BeadTrajectory) -> np.ndarray | None:
    return t.box if (t.periodic and t.box is not None) else None


def _wrapped(t: BeadTrajectory) -> None:
    if t.coordinates != "unwrapped":
        raise CgsimInputError(str(t.path.with_suffix(".json")), f"field 'coordinates' is {t.coordinates!r}; "
                                                                "dynamics need unwrapped positions")


def _msd(trajs: list[BeadTrajectory], s: Settings, suite: Suite) -> None:
    dt = _check_dt(trajs, suite.label)
    res = []
    for t in trajs:
        _wrapped(t)
        xyz, groups = _msd_groups(t)
        res.append(_msd_drift(t, xyz, groups, dt, s))
    suite.msd = combine_msds(res)


def _msd_drift(t: BeadTrajectory, xyz: np.ndarray, groups: np.ndarray, dt: float, s: Settings,
               sl: slice = slice(None)) -> MSDResult:
    """MSD of beads and molecule centres; drift removal uses the beads' centre of mass."""
    x = xyz[sl]
    if s.remove_drift:
        com = np.einsum("p,fpk->fk", t.masses / t.masses.sum(), t.xyz[sl])
        x = x - com[:, None, :]
    box = _box_for_msd(t)
    return msd(x, dt, groups=groups, box=None if box is None else box[sl])


def replica_groups(trajs: list[BeadTrajectory]) -> list[list[BeadTrajectory]] | None:
    """The set split by replica index when it holds >= 2 replicas of every system, else None."""
    by_replica: dict[int, list[BeadTrajectory]] = {}
    for t in trajs:
        by_replica.setdefault(t.replica, []).append(t)
    if len(by_replica) < 2:
        return None
    names = [sorted(x.name for x in v) for v in by_replica.values()]
    if any(n != names[0] for n in names):
        return None
    return [by_replica[r] for r in sorted(by_replica)]


def _diffusion(trajs: list[BeadTrajectory], s: Settings, suite: Suite) -> None:
    dt = _check_dt(trajs, suite.label)
    replicas = replica_groups(trajs)
    fulls: list[MSDResult] = []  # per trajectory, when needed
    blocks: list[list[MSDResult]] = []  # per trajectory: its blocks
    for t in trajs:
        _wrapped(t)
        xyz, groups = _msd_groups(t)
        if suite.msd is None or replicas is not None:
            fulls.append(_msd_drift(t, xyz, groups, dt, s))
        if replicas is None and s.n_blocks > 1:
            blocks.append([_msd_drift(t, xyz, groups, dt, s, sl)
                           for sl in block_slices(t.n_frames, s.n_blocks, "dynamics.n_blocks")])
    full = suite.msd if suite.msd is not None else combine_msds(fulls)
    if replicas is not None:  # independent estimates: one per replica (pooled over its systems)
        position = {id(t): k for k, t in enumerate(trajs)}
        estimates = [combine_msds([fulls[position[id(t)]] for t in group]) for group in replicas]
        suite.notes.append(f"diffusion: errors from the spread of {len(replicas)} replicas (not from blocks)")
    else:
        estimates = [combine_msds([b[k] for b in blocks]) for k in range(s.n_blocks)] if blocks else []
    suite.diffusion = diffusion_from_msds(full, estimates, s.fit_window)
    if suite.msd is None:
        suite.msd = full


def _rg_acf(trajs: list[BeadTrajectory], s: Settings, suite: Suite) -> None:
    dt = _check_dt(trajs, suite.label)
    res = []
    for t in trajs:
        chain = _chain_particles(t)
        if chain.size:
            res.append(rg2_autocorrelation(t.xyz[:, chain], dt, t.masses[chain], t.molecule_ids[chain], s.acf_method))
    if not res:
        raise CgsimInputError("observables", "empty selection: rg_acf needs molecules of two or more beads")
    suite.rg_acf = combine_acfs(res, s.acf_method)


def _conductivity(trajs: list[BeadTrajectory], s: Settings, suite: Suite) -> None:
    for t in trajs:
        _wrapped(t)
        if s.charges:  # the config's charges per bead type win over the sidecar's
            if not set(s.charges) & set(t.types.tolist()):
                raise CgsimInputError("conductivity.charges", f"none of the bead types {sorted(s.charges)} occurs in {t.path}")
            q = np.array([s.charges.get(x, 0.0) for x in t.types])
        elif t.charges is not None:
            q = t.charges
        else:
            raise CgsimInputError("conductivity.charges", f"empty, and {t.path.with_suffix('.json')} has no "
                                                          "extra.particle_charges: give the charge (e) of each ionic "
                                                          "bead type, e.g. conductivity.charges={Li: 1.0, TFSI: -1.0}")
        if t.box is None:
            raise CgsimInputError(str(t.path), "trajectory has no box; conductivity needs the volume")
        sizes = np.bincount(t.molecule_ids)
        species = np.where(sizes[t.molecule_ids] >= 2, np.asarray(t.molecule_kinds)[t.molecule_ids], t.types)
        temperature = s.temperature if s.temperature is not None else t.temperature
        if temperature is None:
            raise CgsimInputError("conductivity.temperature", f"{t.path.with_suffix('.json')} states no temperature "
                                                              "(system.temperature is null: mapped without a cgsim sidecar); "
                                                              "the conductivity needs it: give conductivity.temperature=K "
                                                              "(or temperature=K to `cgsim map`), or leave conductivity "
                                                              "out of observables")
        suite.conductivity.append(ionic_conductivity(
            t.xyz, t.dt, q, t.box, temperature, s.fit_window, species=species, molecule_ids=t.molecule_ids,
            masses=t.masses, remove_drift=s.remove_drift, n_blocks=s.n_blocks))


_COMPUTE: dict[str, Callable[[list[BeadTrajectory], Settings, Suite], None]] = {
    "rdf": _rdf, "bond_lengths": _bonds, "bond_angles": _angles, "rg": _rg, "end_to_end": _end_to_end,
    "contact_map": _contacts, "msd": _msd, "diffusion": _diffusion, "rg_acf": _rg_acf, "conductivity": _conductivity,
}


def compute_suite(trajs: list[BeadTrajectory], settings: Settings, label: str, progress: bool = False) -> Suite:
    """Compute the settings' observables on a trajectory set.

    Parameters
    ----------
    trajs : list of BeadTrajectory
        The set (pooled).
    settings : Settings
        From :func:`make_settings`.
    label : str
        Name of the set in messages (``"reference"``, ``"rollout"``, ``"reference[first half]"``).
    progress : bool
        Show a progress bar over the observables (stderr).

    Returns
    -------
    Suite
        With the time each observable took in ``timings`` (s).
    """
    if not trajs:
        raise CgsimInputError(label, "empty selection: no trajectories")
    suite = Suite(label=label, n_trajectories=len(trajs), n_frames=int(sum(t.n_frames for t in trajs)),
                  dt=float(trajs[0].dt))
    dynamic = tuple(o for o in settings.observables if o in DYNAMIC)
    # replicas stopped early by the stability guard: structure yes, dynamics no (see dynamical_set)
    moving = dynamical_set(trajs, label, dynamic) if dynamic else trajs
    if len(moving) < len(trajs):
        stopped = [t for t in trajs if t.stopped_early]
        shown = "; ".join(_describe_stop(t) for t in stopped[:3]) + ("; ..." if len(stopped) > 3 else "")
        suite.notes.append(f"{label}: {len(stopped)} of {len(trajs)} trajectories excluded from the dynamical "
                           f"observables ({', '.join(dynamic)}): stopped early by the stability guard ({shown}); "
                           "they still count for the structural observables over the frames they have")
    bar = tqdm(settings.observables, desc=f"evaluate {label}", unit="observable", disable=not progress, leave=False)
    for name in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        try:
            _COMPUTE[name](moving if name in DYNAMIC else trajs, settings, suite)
        except CgsimInputError as exc:
            where = exc.where if exc.where.startswith(label) else f"{label}: {exc.where}"
            raise CgsimInputError(where, exc.message) from None
        suite.timings[name] = time.perf_counter() - t0
    return suite


# --- summaries and errors -----------------------------------------------------------------

def _f(x: Any) -> float | None:
    """A JSON-safe float (None for NaN/inf)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _dist_summary(d: Distribution, scale: float = 1.0, unit: str = "nm") -> dict[str, Any]:
    return {f"mean_{unit}": _f(d.mean * scale), f"std_{unit}": _f(d.std * scale), "n_samples": d.n_samples,
            "fraction_outside_range": _f((d.n_below + d.n_above) / max(d.n_samples, 1))}


def summarise(suite: Suite) -> dict[str, dict[str, Any]]:
    """JSON numbers describing each computed observable of a suite (units in the key names)."""
    out: dict[str, dict[str, Any]] = {}
    if suite.rdf:
        out["rdf"] = {}
        for k, r in suite.rdf.items():
            i = int(np.argmax(r.g))
            out["rdf"][k] = {"peak_r_nm": _f(r.r[i]), "peak_g": _f(r.g[i]), "n_frames": r.n_frames,
                             "periodic": r.periodic}
    if suite.bond_lengths:
        out["bond_lengths"] = {k: _dist_summary(d) for k, d in suite.bond_lengths.items()}
    if suite.bond_angles:
        out["bond_angles"] = {k: _dist_summary(d, 180 / math.pi, "deg") for k, d in suite.bond_angles.items()}
    if suite.rg is not None:
        out["rg"] = {"all": {**_dist_summary(suite.rg), "rms_nm": _f(math.sqrt(suite.rg.sum_sq / suite.rg.n_samples)),
                             "n_chains": len(suite.rg_chain_means)}}
    if suite.end_to_end is not None:
        d = suite.end_to_end
        out["end_to_end"] = {"all": {**_dist_summary(d), "rms_nm": _f(math.sqrt(d.sum_sq / d.n_samples))}}
    if suite.contact_maps:
        out["contact_map"] = {k: {"mean_frequency": _f(c.frequency.mean()), "n_beads": int(c.indices.size),
                                  "cutoff_nm": c.cutoff} for k, c in suite.contact_maps.items()}
    if suite.msd is not None:
        m = suite.msd
        out["msd"] = {g: {"max_lag_ps": _f(m.lag_times[-1]), "msd_at_max_lag_nm2": _f(m.msd[i, -1]),
                          "n_particles": int(m.n_particles[i])} for i, g in enumerate(m.groups)}
    if suite.diffusion is not None:
        d = suite.diffusion
        out["diffusion"] = {g: {"D_nm2_ps": _f(d.D[i]), "D_err_nm2_ps": _f(d.D_err[i]), "D_cm2_s": _f(d.D_cm2_s[i]),
                                "D_err_cm2_s": _f(d.D_err_cm2_s[i]), "fit_window_ps": list(d.window)}
                            for i, g in enumerate(d.groups)}
    if suite.rg_acf is not None:
        a = suite.rg_acf
        out["rg_acf"] = {"rg^2": {"tau_ps": _f(a.tau), "method": a.method, "converged": a.converged,
                                  "n_chains": a.n_series}}
    if suite.conductivity:
        out["conductivity"] = {"system": _conductivity_summary(suite.conductivity)}
    return out


def _mean_err(values: list[float], errors: list[float]) -> tuple[float, float]:
    """Mean over replicas; error = spread over replicas when several, else the block error."""
    v = np.asarray(values, dtype=float)
    if v.size > 1:
        return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))
    return float(v[0]), float(errors[0])


def _conductivity_summary(results: list[ConductivityResult]) -> dict[str, Any]:
    ne, ne_err = _mean_err([r.sigma_ne for r in results], [r.sigma_ne_err for r in results])
    eh, eh_err = _mean_err([r.sigma_eh for r in results], [r.sigma_eh_err for r in results])
    species = results[0].species
    out: dict[str, Any] = {"sigma_ne_S_cm": _f(ne), "sigma_ne_err_S_cm": _f(ne_err), "sigma_eh_S_cm": _f(eh),
                           "sigma_eh_err_S_cm": _f(eh_err), "n_replicas": len(results),
                           "temperature_K": results[0].temperature, "volume_nm3": _f(np.mean([r.volume for r in results])),
                           "fit_window_ps": list(results[0].window)}
    for k, sp in enumerate(species):
        if any(r.species != species for r in results):
            break
        out[f"transference_ne[{sp}]"] = _f(np.mean([r.transference_ne[k] for r in results]))
        out[f"transference_eh[{sp}]"] = _f(np.mean([r.transference_eh[k] for r in results]))
        out[f"D_cm2_s[{sp}]"] = _f(np.mean([r.diffusion[k] for r in results]) * NM2_PER_PS_TO_CM2_PER_S)
        out[f"charge_e[{sp}]"] = _f(results[0].charges[k])
        for j, sp2 in enumerate(species[k:], start=k):
            out[f"sigma_eh[{sp},{sp2}]_S_cm"] = _f(np.mean([r.sigma_matrix[k, j] for r in results]))
    return out


def _curve_deviation(t_ref: np.ndarray, y_ref: np.ndarray, t: np.ndarray, y: np.ndarray, relative: bool) -> float | None:
    """Mean deviation of curve (t, y) from (t_ref, y_ref) at the reference's lags > 0 in the common range."""
    hi = min(t_ref[-1], t[-1])
    sel = (t_ref > 0) & (t_ref <= hi + 1e-12)
    if not sel.any():
        return None
    yi = np.interp(t_ref[sel], t, y)
    d = np.abs(yi - y_ref[sel])
    if relative:
        ok = y_ref[sel] > 0
        if not ok.any():
            return None
        return _f((d[ok] / y_ref[sel][ok]).mean())
    return _f(d.mean())


def compare(ref: Suite, other: Suite) -> dict[str, dict[str, dict[str, Any]]]:
    """Error measures of ``other`` against ``ref`` for every observable both hold.

    Returns
    -------
    dict
        ``{observable: {key: {measure: value}}}``; a key present in only one suite gets
        ``{"missing_in": "rollout"}`` (or ``"reference"``).
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}

    def keyed(name: str, a: dict[str, Any], b: dict[str, Any], fn: Callable[[Any, Any], dict[str, Any]]) -> None:
        if not a and not b:
            return
        res: dict[str, dict[str, Any]] = {}
        for k in sorted(set(a) | set(b)):
            if k not in b:
                res[k] = {"missing_in": other.label}
            elif k not in a:
                res[k] = {"missing_in": ref.label}
            else:
                res[k] = fn(a[k], b[k])
        out[name] = res

    keyed("rdf", ref.rdf, other.rdf, lambda a, b: {"max_abs_dg": _f(np.abs(a.g - b.g).max()),
                                                   "mean_abs_dg": _f(np.abs(a.g - b.g).mean())})

    def dist_err(a: Distribution, b: Distribution) -> dict[str, Any]:
        return {"jsd": _f(js_divergence(a, b)), "relative_error_mean": _f(relative_error(b.mean, a.mean))}

    keyed("bond_lengths", ref.bond_lengths, other.bond_lengths, dist_err)
    keyed("bond_angles", ref.bond_angles, other.bond_angles, dist_err)
    if ref.rg is not None and other.rg is not None:
        e = dist_err(ref.rg, other.rg)
        common = sorted(set(ref.rg_chain_means) & set(other.rg_chain_means))
        if common and len(common) == len(ref.rg_chain_means):
            e["chain_mean_relative_error"] = _f(np.mean([relative_error(other.rg_chain_means[c], ref.rg_chain_means[c])
                                                         for c in common]))
        out["rg"] = {"all": e}
    if ref.end_to_end is not None and other.end_to_end is not None:
        a, b = ref.end_to_end, other.end_to_end
        out["end_to_end"] = {"all": {"jsd": _f(js_divergence(a, b)),
                                     "relative_error_rms": _f(relative_error(math.sqrt(b.sum_sq / b.n_samples),
                                                                             math.sqrt(a.sum_sq / a.n_samples)))}}
    keyed("contact_map", ref.contact_maps, other.contact_maps,
          lambda a, b: {"max_abs_dfreq": _f(np.abs(a.frequency - b.frequency).max()),
                        "mean_abs_dfreq": _f(np.abs(a.frequency - b.frequency).mean())}
          if a.frequency.shape == b.frequency.shape else {"shape_mismatch": True})
    if ref.msd is not None and other.msd is not None:
        ma, mb = ref.msd, other.msd
        keyed("msd", {g: ma.msd[i] for i, g in enumerate(ma.groups)}, {g: mb.msd[i] for i, g in enumerate(mb.groups)},
              lambda a, b: {"mean_relative_deviation": _curve_deviation(ma.lag_times, a, mb.lag_times, b, True)})
    if ref.diffusion is not None and other.diffusion is not None:
        da, db = ref.diffusion, other.diffusion
        keyed("diffusion", {g: da.D[i] for i, g in enumerate(da.groups)}, {g: db.D[i] for i, g in enumerate(db.groups)},
              lambda a, b: {"relative_error": _f(relative_error(b, a))})
    if ref.rg_acf is not None and other.rg_acf is not None:
        a, b = ref.rg_acf, other.rg_acf
        out["rg_acf"] = {"rg^2": {"relative_error_tau": _f(relative_error(b.tau, a.tau)),
                                  "mean_abs_dacf": _curve_deviation(a.lag_times, a.acf, b.lag_times, b.acf, False)}}
    if ref.conductivity and other.conductivity:
        sa, sb = _conductivity_summary(ref.conductivity), _conductivity_summary(other.conductivity)
        err = {}
        for key in sa:
            if (key.startswith(("sigma_ne_S", "sigma_eh_S", "transference")) and sa[key] is not None
                    and sb.get(key) is not None):
                err[f"relative_error[{key}]"] = _f(relative_error(sb[key], sa[key]))
        out["conductivity"] = {"system": err}
    return out


def halves(trajs: list[BeadTrajectory]) -> tuple[list[BeadTrajectory], list[BeadTrajectory]] | None:
    """First and second half (in time) of every trajectory; None if a half would hold < 4 frames."""
    if any(t.n_frames < 8 for t in trajs):
        return None
    first = [t.frames(slice(0, t.n_frames // 2)) for t in trajs]
    second = [t.frames(slice(t.n_frames // 2, t.n_frames)) for t in trajs]
    return first, second


def noise_settings(settings: Settings) -> Settings:
    """Settings for the half-trajectory noise floor: no block errors (halves are short)."""
    return replace(settings, n_blocks=1)
