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

The settings live in :mod:`cgsim.report.settings`, the summaries and error measures in
:mod:`cgsim.report.compare`; their names are importable from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm import tqdm

from cgsim.errors import CgsimInputError
from cgsim.observables.bonds import (
    angle_triplets,
    bond_angle_distributions,
    bond_length_distributions,
)
from cgsim.observables.conductivity import ConductivityResult, ionic_conductivity
from cgsim.observables.correlation import ACFResult, combine_acfs, rg2_autocorrelation
from cgsim.observables.diffusion import DiffusionResult, diffusion_from_msds
from cgsim.observables.distributions import Distribution, combine_distributions
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
from cgsim.report.compare import compare, summarise  # noqa: F401 - re-exported
from cgsim.report.loading import BeadTrajectory
from cgsim.report.settings import (  # noqa: F401 - re-exported
    DYNAMIC,
    OBSERVABLES,
    Settings,
    _chain_particles,
    _describe_stop,
    _describe_unfinished,
    choose_preset,
    dynamical_set,
    make_settings,
    noise_settings,
    stopped_early,
    unfinished,
    unfinished_info,
)


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


def formal_charges(q: np.ndarray, molecule_ids: np.ndarray) -> np.ndarray:
    """Integer ion charges: each molecule's net charge rounded away from zero to a whole number of e
    (0.8 e -> 1 e, -1.6 e -> -2 e; below 0.25 e, the rounding of partial charges: neutral), shared
    among its beads in proportion to their charges.

    Force fields often scale ion charges (0.8 here, for the missing electronic polarisation);
    high-throughput screening data sets report conductivities with the formal charges.
    """
    net = np.bincount(molecule_ids, weights=q)
    formal = np.sign(net) * np.ceil(np.abs(net) - 0.25)
    scale = np.divide(formal, net, out=np.zeros_like(net), where=np.abs(net) >= 0.25)
    return q * scale[molecule_ids]


def _charge_source(t: BeadTrajectory, s: Settings) -> tuple[np.ndarray, str]:
    """Charge per particle (e) for the conductivity, and where it came from."""
    if s.charges:  # the config's charges per bead type win over the sidecar's
        if not set(s.charges) & set(t.types.tolist()):
            raise CgsimInputError("conductivity.charges", f"none of the bead types {sorted(s.charges)} occurs in {t.path}")
        return np.array([s.charges.get(x, 0.0) for x in t.types]), "conductivity.charges"
    if t.charges is None:
        raise CgsimInputError("conductivity.charges", f"empty, and {t.path.with_suffix('.json')} has no "
                                                      "extra.particle_charges: give the charge (e) of each ionic "
                                                      "bead type, e.g. conductivity.charges={Li: 1.0, TFSI: -1.0}")
    if s.charges_formal:
        return formal_charges(t.charges, t.molecule_ids), "formal (integer) ion charges (conductivity.charges=formal)"
    return t.charges, ("the trajectories' bead charges (sidecar or mapping: the force field's, ion charges scaled as it "
                       "scales them); conductivity.charges=formal uses integer ion charges")


def _conductivity(trajs: list[BeadTrajectory], s: Settings, suite: Suite) -> None:
    used: dict[str, float] = {}
    source = ""
    for t in trajs:
        _wrapped(t)
        q, source = _charge_source(t, s)
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
        res = suite.conductivity[-1]
        used.update({str(sp): round(float(c), 6) for sp, c in zip(res.species, res.charges, strict=True) if c})
    shown = ", ".join(f"{sp} {c:+g} e" for sp, c in sorted(used.items()))
    suite.notes.append(f"conductivity: charges used per ion ({shown}) are {source}")


_COMPUTE: dict[str, Callable[[list[BeadTrajectory], Settings, Suite], None]] = {
    "rdf": _rdf, "bond_lengths": _bonds, "bond_angles": _angles, "rg": _rg, "end_to_end": _end_to_end,
    "contact_map": _contacts, "msd": _msd, "diffusion": _diffusion, "rg_acf": _rg_acf, "conductivity": _conductivity,
}


def _exclusion_notes(trajs: list[BeadTrajectory], label: str, dynamic: tuple[str, ...],
                     include_unfinished: bool) -> list[str]:
    """What the report says about trajectories left out of (or unfinished within) the dynamics."""
    notes = []
    stopped = [t for t in trajs if t.stopped_early]
    if dynamic and stopped:
        shown = "; ".join(_describe_stop(t) for t in stopped[:3]) + ("; ..." if len(stopped) > 3 else "")
        notes.append(f"{label}: {len(stopped)} of {len(trajs)} trajectories excluded from the dynamical "
                     f"observables ({', '.join(dynamic)}): stopped early by the stability guard ({shown}); "
                     "they still count for the structural observables over the frames they have")
    open_ = [t for t in trajs if t.unfinished]
    if open_:
        shown = "; ".join(_describe_unfinished(t) for t in open_[:3]) + ("; ..." if len(open_) > 3 else "")
        if include_unfinished or not dynamic:
            what = "used for every observable as they are" + (" (include_unfinished=true)" if dynamic else "")
        elif len(open_) == len(trajs):
            what = (f"the dynamical observables ({', '.join(dynamic)}) are not computed for {label}; "
                    "include_unfinished=true uses their frames")
        else:
            what = (f"excluded from the dynamical observables ({', '.join(dynamic)}), kept for the structural ones; "
                    "include_unfinished=true uses them")
        notes.append(f"{label}: UNFINISHED: {len(open_)} of {len(trajs)} trajectories come from a rollout that did not "
                     f"finish ({shown}): their frames end at its last checkpoint; {what}")
    return notes


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
    # replicas stopped early by the stability guard, or of unfinished rollouts: structure yes,
    # dynamics no (see dynamical_set)
    moving = dynamical_set(trajs, label, dynamic, settings.include_unfinished) if dynamic else trajs
    suite.notes.extend(settings.notes)
    suite.notes.extend(_exclusion_notes(trajs, label, dynamic, settings.include_unfinished))
    bar = tqdm(settings.observables, desc=f"evaluate {label}", unit="observable", disable=not progress, leave=False)
    for name in bar:
        if name in DYNAMIC and not moving:
            continue  # every trajectory of the set is unfinished: said in the notes
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        try:
            _COMPUTE[name](moving if name in DYNAMIC else trajs, settings, suite)
        except CgsimInputError as exc:
            where = exc.where if exc.where.startswith(label) else f"{label}: {exc.where}"
            raise CgsimInputError(where, exc.message) from None
        suite.timings[name] = time.perf_counter() - t0
    return suite


def halves(trajs: list[BeadTrajectory]) -> tuple[list[BeadTrajectory], list[BeadTrajectory]] | None:
    """First and second half (in time) of every trajectory; None if a half would hold < 4 frames."""
    if any(t.n_frames < 8 for t in trajs):
        return None
    first = [t.frames(slice(0, t.n_frames // 2)) for t in trajs]
    second = [t.frames(slice(t.n_frames // 2, t.n_frames)) for t in trajs]
    return first, second
