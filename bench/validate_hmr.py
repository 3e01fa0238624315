"""Does hydrogen mass repartitioning (HMR) with a 4 fs step reproduce the 2 fs electrolyte production?

Starts two runs from the same equilibrated state of an electrolyte run directory (read only:
``.run/equilibration/equilibrated.npz`` positions and box, ``.run/identity.json`` settings),
velocities drawn at the run temperature with one fixed seed, and integrates each with the
production protocol of ``cgsim generate system=electrolyte`` (NVT, LangevinMiddleIntegrator,
the run's production friction, PME, HBonds constraints, the shipped force field through
:func:`cgsim.reference.electrolyte.create_system`):

- **ref**: natural masses, 2 fs;
- **hmr**: ``hydrogen_mass`` 3 amu (OpenMM's ``createSystem(hydrogenMass=...)`` takes the added
  mass from the heavy atom each hydrogen is bonded to, so molecular masses are unchanged), 4 fs.

The two runs are advanced alternately, one frame interval at a time, in one process (so on a
shared machine both see the same load and their speeds compare). Each discards ``--equil``
ps, then records ``--time`` ps: frames (and the energy of each term: bonds, angles, torsions,
LJ, Coulomb) every ``--frame-interval`` ps, potential energy and velocities every
``--sample-interval`` ps. Errors are standard errors of the mean, the larger of a block and an
autocorrelation estimate (:func:`series_stats`); z = (hmr - ref) / combined error. Compared:

- configurational averages, which must agree because masses do not enter the Boltzmann
  distribution of configurations: mean and std of the potential energy and its terms, the
  mean energy of the harmonic bond and angle terms of each species read as a temperature
  (``2 <E> / (N k_B)``), the Li-O(ether) first peak (:func:`cgsim.reference.
  electrolyte_validate.first_shell`) and coordination number within the reference run's
  first minimum, and the mean PEO end-to-end distance (terminal methyl carbons; it relaxes
  over ns, so two short runs from one start cannot sample it: reported only);
- kinetic temperature of PEO, Li+ and TFSI- (constrained degrees of freedom removed; the
  integrator's half-step velocities);
- dynamics, expected to differ since they depend on the masses (reported, not a criterion):
  MSD of Li+ and of the TFSI- centres of mass at a 10 ps lag (system centre of mass removed;
  error = standard error over ions);
- speed: ns/day of the stepping alone;
- energy drift of ``--nve-time`` ps of NVE (VerletIntegrator, same System and step) from the
  final state of each run (:func:`cgsim.reference.electrolyte_validate.run_nve`).

The last line says whether every criterion of :func:`compare` holds *in this run*. At the weak
production friction the mean temperature and total energy wander over ~10 ps, so one 60 ps
run's own errors understate their uncertainty: judge over several runs (``--friction 1.0``
resolves them better), as BENCHMARKS.md does.

    OMP_NUM_THREADS=1 .venv/bin/python bench/validate_hmr.py --threads 1 --json outputs/bench/hmr.json
    OMP_NUM_THREADS=1 .venv/bin/python bench/validate_hmr.py --threads 1 --friction 1.0 --nve-time 0
    .venv/bin/python bench/validate_hmr.py --time 5 --equil 1 --nve-time 1   # a quick timing run

Background: HMR with 4 fs steps, Hopkins, Le Grand, Walker & Roitberg, J. Chem. Theory
Comput. 11, 1864 (2015); LangevinMiddleIntegrator = the LFMiddle scheme of Zhang, Liu & Zhang,
J. Phys. Chem. A 123, 6056 (2019), whose half-step velocities sample the kinetic temperature
accurately (OpenMM API docs); NVE integrator check: the fluctuation of the conserved energy of
a symplectic integrator grows as dt^2 (GROMACS developer manual, "Physical validation";
Merz & Shirts, PLoS ONE 13, e0202764 (2018)).
"""

from __future__ import annotations

import argparse
import math
import os
import platform as pyplatform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.unit as u

from cgsim.errors import CgsimInputError
from cgsim.io_utils import json_finite, write_json_atomic
from cgsim.observables.correlation import autocorrelation
from cgsim.observables.msd import msd as msd_fn
from cgsim.observables.polymer import end_to_end_distance, molecule_centres
from cgsim.reference import electrolyte as el
from cgsim.reference.electrolyte_generate import EQ_DIR, ElectrolyteSettings, ns_per_day
from cgsim.reference.electrolyte_validate import (
    ETHER_O_TYPE,
    LI_TYPE,
    first_shell,
    open_run,
    run_nve,
)
from cgsim.reference.runner import RUN_DIR
from cgsim.units import BOLTZMANN

DEFAULT_RUN = Path("data/electrolyte/train/peo8x20_eoli16")
#: Agreement threshold for configurational averages, |difference| / combined standard error.
Z_AGREE = 2.0
#: NVE acceptance: |drift| per degree of freedom below this, kT/ns.
DRIFT_LIMIT_KT_PER_DOF_NS = 0.01
#: MSD lag reported, ps.
MSD_LAG = 10.0


@dataclass(frozen=True)
class Arm:
    """One of the compared set-ups.

    Attributes
    ----------
    label : str
        Short name (``"ref"``, ``"hmr"``).
    hydrogen_mass : float or None
        Hydrogen mass, amu (None: natural masses).
    timestep : float
        ps.
    """

    label: str
    hydrogen_mass: float | None
    timestep: float


@dataclass
class ArmRun:
    """What one Langevin run recorded.

    Attributes
    ----------
    arm : Arm
        The set-up.
    es : ElectrolyteSystem
        Its System (masses repartitioned for HMR).
    masses : numpy.ndarray
        Particle masses of that System, amu, shape (n_atoms,).
    xyz : numpy.ndarray
        Unwrapped frames, nm, shape (n_frames, n_atoms, 3).
    frame_dt : float
        ps between frames.
    potential : numpy.ndarray
        Potential energy samples, kJ/mol, shape (n_samples,).
    group_energy : dict[str, numpy.ndarray]
        Energy of each term (``bonds``, ``angles``, ``torsions``, ``lj``, ``coulomb`` with the
        1-4 pairs) at each frame, kJ/mol, shape (n_frames,).
    temperature : dict[str, numpy.ndarray]
        Kinetic temperature samples per species and ``"total"``, K.
    final_positions, final_velocities : numpy.ndarray
        Last state, nm and nm/ps, shape (n_atoms, 3).
    step_seconds : float
        Wall time spent in ``integrator.step`` (equilibration + production), s.
    wall_seconds : float
        Wall time of the whole run including sampling, s.
    steps : int
        Steps taken.
    """

    arm: Arm
    es: el.ElectrolyteSystem
    masses: np.ndarray
    xyz: np.ndarray
    frame_dt: float
    potential: np.ndarray
    group_energy: dict[str, np.ndarray]
    temperature: dict[str, np.ndarray]
    final_positions: np.ndarray
    final_velocities: np.ndarray
    step_seconds: float
    wall_seconds: float
    steps: int


# ------------------------------------------------------------------------------------------
# start state and runs
# ------------------------------------------------------------------------------------------
def load_start(run_dir: Path) -> tuple[ElectrolyteSettings, np.ndarray, float]:
    """Settings, equilibrated positions (nm, (n_atoms, 3)) and cubic box edge (nm) of a run directory (read only)."""
    run = open_run(run_dir)
    npz = Path(run_dir) / RUN_DIR / EQ_DIR / "equilibrated.npz"
    if not npz.is_file():
        raise CgsimInputError(str(npz), "missing: the run has not finished its equilibration (or has finished "
                                        "production and dropped it)")
    with np.load(npz) as z:
        pos, box = np.asarray(z["positions"], dtype=float), float(z["box_length"])
    if pos.shape != (run.settings.composition.n_atoms, 3):
        raise CgsimInputError(str(npz), f"holds {pos.shape[0]} atoms, the run {run.settings.composition.n_atoms}")
    return run.settings, pos, box


def _steps(time_ps: float, dt: float, what: str) -> int:
    n = time_ps / dt
    if abs(n - round(n)) > 1e-6 * max(1.0, n) or round(n) < 1:
        raise CgsimInputError(what, f"{time_ps} ps is not a positive whole number of {dt} ps steps")
    return int(round(n))


def constrained_dof(es: el.ElectrolyteSystem, atoms: np.ndarray) -> float:
    """Degrees of freedom of a set of atoms: 3 per atom minus its share of the constraints.

    A constraint removes one degree of freedom, half charged to each of its two atoms, so a
    set holding whole molecules loses exactly its own constraints.
    """
    per_atom = np.zeros(es.system.getNumParticles())
    for k in range(es.system.getNumConstraints()):
        i, j, _d = es.system.getConstraintParameters(k)
        per_atom[i] += 0.5
        per_atom[j] += 0.5
    return 3.0 * len(atoms) - float(per_atom[atoms].sum())


class ArmSimulation:
    """One set-up integrated with the production protocol, advanced frame by frame.

    Two of them are advanced alternately (:func:`run_interleaved`) so that both see the same
    load of a shared machine and their speeds compare.

    Parameters
    ----------
    settings : ElectrolyteSettings
        The run's settings (temperature, production friction, System options); ``hydrogen_mass``
        and ``timestep`` are taken from ``arm`` instead.
    positions : numpy.ndarray
        Start positions, nm, shape (n_atoms, 3).
    box : float
        Cubic box edge, nm.
    arm : Arm
        Masses and time step.
    frame_ps, sample_ps : float
        ps between frames and between energy / velocity samples; whole numbers of steps,
        ``frame_ps`` a whole multiple of ``sample_ps``.
    seed : int
        Seed of the initial velocities and of the thermostat.
    friction : float, optional
        Langevin friction, 1/ps; default the run's production friction.
    platform, threads : str, int
        OpenMM platform and CPU threads.
    """

    #: Energy terms recorded per frame and their force groups; the bonded terms get groups of
    #: their own here (groups only select what an energy evaluation sums; dynamics are unchanged).
    GROUPS = {"bonds": 10, "angles": 11, "torsions": 12, "lj": el.GROUP_LJ, "coulomb": el.GROUP_COULOMB}
    _BONDED = {"HarmonicBondForce": "bonds", "HarmonicAngleForce": "angles", "PeriodicTorsionForce": "torsions"}

    def __init__(self, settings: ElectrolyteSettings, positions: np.ndarray, box: float, arm: Arm, *,
                 frame_ps: float, sample_ps: float, seed: int, friction: float | None = None, platform: str = "CPU",
                 threads: int = 1) -> None:
        self.arm = arm
        self.frame_ps = float(frame_ps)
        dt = arm.timestep
        self.n_sample = _steps(sample_ps, dt, "--sample-interval")
        self.n_frame = _steps(frame_ps, dt, "--frame-interval")
        if self.n_frame % self.n_sample:
            raise CgsimInputError("--frame-interval", "expected a whole multiple of --sample-interval")
        top = el.build_topology(settings.composition, box_length=box)
        kwargs = settings.system_kwargs()
        kwargs["hydrogen_mass"] = arm.hydrogen_mass
        self.es = el.create_system(top, **kwargs)
        system = self.es.system
        for force in system.getForces():
            name = self._BONDED.get(type(force).__name__)
            if name is not None:
                force.setForceGroup(self.GROUPS[name])
        self.masses = np.array([system.getParticleMass(i).value_in_unit(u.dalton)
                                for i in range(system.getNumParticles())])
        self.species = el.species_indices(top)
        self.dof = {k: constrained_dof(self.es, idx) for k, idx in self.species.items()}
        self.dof_total = 3.0 * len(self.masses) - system.getNumConstraints() - 3.0  # CMMotionRemover
        self.friction = float(settings.production_friction if friction is None else friction)
        self.integrator = openmm.LangevinMiddleIntegrator(settings.temperature * u.kelvin, self.friction / u.picosecond,
                                                          dt * u.picosecond)
        self.integrator.setRandomNumberSeed(int(seed))
        props = {"Threads": str(int(threads))} if platform == "CPU" else {}
        self.context = openmm.Context(system, self.integrator, openmm.Platform.getPlatformByName(platform), props)
        self.context.setPeriodicBoxVectors(*(np.eye(3) * box))
        self.context.setPositions(positions * u.nanometer)
        self.context.setVelocitiesToTemperature(settings.temperature * u.kelvin, int(seed))
        self.steps = 0
        self.step_seconds = 0.0
        self.t_start = time.perf_counter()
        self.potential: list[float] = []
        self.temperature: dict[str, list[float]] = {k: [] for k in [*self.species, "total"]}
        self.group_energy: dict[str, list[float]] = {k: [] for k in self.GROUPS}
        self.frames: list[np.ndarray] = []

    def step(self, n: int) -> None:
        """Take ``n`` steps (timed)."""
        t0 = time.perf_counter()
        self.integrator.step(int(n))
        self.step_seconds += time.perf_counter() - t0
        self.steps += int(n)

    def equilibrate(self, time_ps: float) -> None:
        """Advance ``time_ps`` without recording (whole steps)."""
        self.step(_steps(time_ps, self.arm.timestep, "--equil"))

    def record(self, with_frame: bool) -> None:
        """Sample potential energy and species temperatures; with a frame also positions and group energies."""
        st = self.context.getState(getEnergy=True, getVelocities=True, getPositions=with_frame)
        e = st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
        if not math.isfinite(e):
            raise CgsimInputError(f"run {self.arm.label}", f"the potential energy became NaN (dt {self.arm.timestep} ps)")
        self.potential.append(e)
        v = st.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond)
        ke = 0.5 * self.masses * (v * v).sum(axis=1)  # kJ/mol per atom
        for k, idx in self.species.items():
            self.temperature[k].append(2.0 * ke[idx].sum() / (self.dof[k] * BOLTZMANN))
        self.temperature["total"].append(2.0 * ke.sum() / (self.dof_total * BOLTZMANN))
        if with_frame:
            self.frames.append(st.getPositions(asNumpy=True).value_in_unit(u.nanometer))
            for k, g in self.GROUPS.items():
                gst = self.context.getState(getEnergy=True, groups={g})
                self.group_energy[k].append(gst.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole))

    def advance_frame(self) -> None:
        """One frame interval, sampling every ``sample_ps`` and recording the frame at its end."""
        per_frame = self.n_frame // self.n_sample
        for s in range(per_frame):
            self.step(self.n_sample)
            self.record(s == per_frame - 1)

    def result(self) -> ArmRun:
        """What was recorded, with the current state as the final one."""
        final = self.context.getState(getPositions=True, getVelocities=True)
        return ArmRun(arm=self.arm, es=self.es, masses=self.masses, xyz=np.asarray(self.frames), frame_dt=self.frame_ps,
                      potential=np.asarray(self.potential),
                      group_energy={k: np.asarray(v) for k, v in self.group_energy.items()},
                      temperature={k: np.asarray(v) for k, v in self.temperature.items()},
                      final_positions=final.getPositions(asNumpy=True).value_in_unit(u.nanometer),
                      final_velocities=final.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond),
                      step_seconds=self.step_seconds, wall_seconds=time.perf_counter() - self.t_start, steps=self.steps)


def run_interleaved(sims: list[ArmSimulation], *, time_ps: float, equil_ps: float,
                    progress: bool = True) -> dict[str, ArmRun]:
    """Equilibrate and record several set-ups, alternating between them one frame interval at a time.

    Parameters
    ----------
    sims : list of ArmSimulation
        The set-ups (same frame interval).
    time_ps, equil_ps : float
        Recorded and discarded lengths, ps; whole multiples of the frame interval.
    progress : bool
        A line on stderr per 10 % of the run.

    Returns
    -------
    dict[str, ArmRun]
        By arm label.
    """
    frame_ps = sims[0].frame_ps
    n_eq, n_frames = (_steps(t, frame_ps, what) if t > 0 else 0
                      for t, what in ((equil_ps, "--equil"), (time_ps, "--time")))
    if n_frames < 1:
        raise CgsimInputError("--time", "expected at least one frame interval")
    for _ in range(n_eq):
        for sim in sims:
            sim.equilibrate(frame_ps)
    for sim in sims:
        sim.record(True)
    t0 = time.perf_counter()
    next_report = 0.1
    for f in range(n_frames):
        for sim in sims:
            sim.advance_frame()
        if progress and (f + 1) / n_frames >= next_report - 1e-9:
            rates = ", ".join(f"{s.arm.label} {ns_per_day(s.steps * s.arm.timestep, s.step_seconds):.3g}" for s in sims)
            print(f"  {(f + 1) * frame_ps:g}/{time_ps:g} ps recorded, ns/day: {rates}; {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
            next_report += 0.1
    return {sim.arm.label: sim.result() for sim in sims}


# ------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------
def block_values(x: np.ndarray, n_blocks: int, fn: Any = np.mean) -> np.ndarray:
    """``fn`` of each of ``n_blocks`` contiguous, equal blocks of a series (a remainder at the end is dropped)."""
    x = np.asarray(x)
    size = len(x) // n_blocks
    if size < 1:
        raise CgsimInputError("--blocks", f"{len(x)} samples cannot make {n_blocks} blocks")
    return np.array([fn(x[k * size:(k + 1) * size]) for k in range(n_blocks)])


def mean_sem(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean of (block) values."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")


def series_stats(x: np.ndarray, dt: float, n_blocks: int) -> dict[str, Any]:
    """Mean of a time series with two standard errors and the larger one as ``sem``.

    - ``sem_blocks``: standard error of ``n_blocks`` contiguous block means (Flyvbjerg &
      Petersen, J. Chem. Phys. 91, 461 (1989)); too small when the correlation time is not
      much shorter than a block;
    - ``sem_acf``: ``std * sqrt(g / N)`` with the statistical inefficiency ``g = 2 tau / dt``
      (at least 1) from the integrated autocorrelation time ``tau``
      (:func:`cgsim.observables.correlation.autocorrelation`, integral to the first zero of the
      ACF); a lower bound when the ACF does not reach zero within the series
      (``acf_converged`` False) or ``tau`` is a sizeable fraction of it.

    Parameters
    ----------
    x : numpy.ndarray
        Series, shape (n,), equally spaced.
    dt : float
        Spacing, ps.
    n_blocks : int
        Blocks for ``sem_blocks``.

    Returns
    -------
    dict
        ``mean``, ``sem`` (max of the two), ``sem_blocks``, ``sem_acf``, ``tau_ps``,
        ``acf_converged``, ``n_effective`` (N / g), ``std``.
    """
    x = np.asarray(x, dtype=float)
    mean, sem_b = mean_sem(block_values(x, n_blocks))
    std = float(x.std(ddof=1))
    if std > 0:
        acf = autocorrelation(x, dt, method="integral")
        tau, converged = float(acf.tau), bool(acf.converged)
    else:
        tau, converged = 0.0, True
    g = max(1.0, 2.0 * tau / dt)
    sem_a = std * math.sqrt(g / x.size)
    return {"mean": mean, "sem": float(np.nanmax([sem_b, sem_a])), "sem_blocks": sem_b, "sem_acf": sem_a,
            "tau_ps": tau, "acf_converged": converged, "n_effective": x.size / g, "std": std}


def z_score(a: tuple[float, float], b: tuple[float, float]) -> float:
    """(a - b) / sqrt(sem_a^2 + sem_b^2) of two (mean, sem) pairs."""
    err = math.hypot(a[1], b[1])
    return (a[0] - b[0]) / err if err > 0 else float("nan")


def _pm(v: tuple[float, float]) -> dict[str, float]:
    return {"mean": v[0], "sem": v[1]}


def coordination_series(xyz: np.ndarray, box: float, centres: np.ndarray, neighbours: np.ndarray,
                        r_cut: float) -> np.ndarray:
    """Mean number of ``neighbours`` within ``r_cut`` of a centre (minimum image), per frame.

    Parameters
    ----------
    xyz : numpy.ndarray
        Positions, nm, shape (n_frames, n_atoms, 3).
    box : float
        Cubic box edge, nm.
    centres, neighbours : numpy.ndarray
        Atom indices (disjoint sets).
    r_cut : float
        nm.

    Returns
    -------
    numpy.ndarray
        Shape (n_frames,).
    """
    d = xyz[:, centres, None, :] - xyz[:, None, neighbours, :]
    d -= box * np.round(d / box)
    return ((d * d).sum(-1) < r_cut * r_cut).sum(-1).mean(-1).astype(float)


def harmonic_energies(xyz: np.ndarray, system: openmm.System, species: dict[str, np.ndarray]
                      ) -> dict[str, dict[str, Any]]:
    """Energy of the harmonic bond and angle terms of each species, per frame, from the positions.

    Parameters
    ----------
    xyz : numpy.ndarray
        Unwrapped positions (molecules whole), nm, shape (n_frames, n_atoms, 3).
    system : openmm.System
        Holds the HarmonicBondForce and HarmonicAngleForce (constrained bonds carry no term).
    species : dict[str, numpy.ndarray]
        Atom indices per species; a term belongs to the species of its first atom.

    Returns
    -------
    dict
        ``{"bonds" | "angles": {species: {"n_terms": int, "energy": (n_frames,) kJ/mol}}}``.
    """
    owner = np.empty(system.getNumParticles(), dtype=object)
    for k, idx in species.items():
        owner[idx] = k
    out: dict[str, dict[str, Any]] = {"bonds": {}, "angles": {}}
    for f in system.getForces():
        if isinstance(f, openmm.HarmonicBondForce) and f.getNumBonds():
            rows = [f.getBondParameters(i) for i in range(f.getNumBonds())]
            i = np.array([r[0] for r in rows])
            j = np.array([r[1] for r in rows])
            r0 = np.array([r[2].value_in_unit(u.nanometer) for r in rows])
            kk = np.array([r[3].value_in_unit(u.kilojoule_per_mole / u.nanometer**2) for r in rows])
            r = np.linalg.norm(xyz[:, j] - xyz[:, i], axis=-1)
            e, kind = 0.5 * kk * (r - r0) ** 2, "bonds"
        elif isinstance(f, openmm.HarmonicAngleForce) and f.getNumAngles():
            rows = [f.getAngleParameters(n) for n in range(f.getNumAngles())]
            i = np.array([r[0] for r in rows])
            j = np.array([r[1] for r in rows])
            m = np.array([r[2] for r in rows])
            t0 = np.array([r[3].value_in_unit(u.radian) for r in rows])
            kk = np.array([r[4].value_in_unit(u.kilojoule_per_mole / u.radian**2) for r in rows])
            a, b = xyz[:, i] - xyz[:, j], xyz[:, m] - xyz[:, j]
            cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
            e, kind = 0.5 * kk * (np.arccos(np.clip(cos, -1.0, 1.0)) - t0) ** 2, "angles"
        else:
            continue
        for sp in species:
            sel = owner[i] == sp
            if sel.any():
                prev = out[kind].get(sp, {"n_terms": 0, "energy": 0.0})
                out[kind][sp] = {"n_terms": prev["n_terms"] + int(sel.sum()), "energy": prev["energy"] + e[:, sel].sum(-1)}
    return out


def analyse(run: ArmRun, n_blocks: int, cn_cutoff: float | None = None) -> dict[str, Any]:
    """Observables of one run with block standard errors (see the module docstring).

    ``cn_cutoff`` (nm) is the Li-O(ether) distance of the coordination-number time series
    whose block error is reported; default: this run's own first minimum. Pass the
    reference run's so that both runs count within the same sphere.
    """
    top = run.es.topology
    types = np.array(run.es.atom_types)
    li = np.flatnonzero(types == LI_TYPE)
    o_eth = np.flatnonzero(types == ETHER_O_TYPE)
    box = float(top.getPeriodicBoxVectors()[0][0].value_in_unit(u.nanometer))
    out: dict[str, Any] = {"label": run.arm.label, "hydrogen_mass": run.arm.hydrogen_mass, "timestep": run.arm.timestep,
                           "n_frames": int(len(run.xyz)), "n_samples": int(len(run.potential))}
    pe = run.potential
    sample_dt = run.frame_dt * (len(run.xyz) - 1) / max(1, len(pe) - 1)
    out["potential_mean"] = series_stats(pe, sample_dt, n_blocks)
    out["potential_std"] = _pm(mean_sem(block_values(pe, n_blocks, np.std)))
    out["potential_std_whole"] = float(pe.std())
    out["temperature"] = {k: series_stats(v, sample_dt, n_blocks) for k, v in run.temperature.items()}
    out["group_energy"] = {k: series_stats(v, run.frame_dt, n_blocks) for k, v in run.group_energy.items()}
    # harmonic terms hold k_B T / 2 each on average (equipartition; exact for independent harmonic
    # terms, close for stiff bonds and angles): their mean energy read as a temperature
    # (per species, from the frames; keys like "bonds_peo")
    out["equipartition_temperature"] = {}
    for kind, per in harmonic_energies(run.xyz, run.es.system, el.species_indices(top)).items():
        for sp, v in per.items():
            st = series_stats(v["energy"], run.frame_dt, n_blocks)
            scale = 2.0 / (v["n_terms"] * BOLTZMANN)
            out["equipartition_temperature"][f"{kind}_{sp}"] = {"n_terms": v["n_terms"], "mean": st["mean"] * scale,
                                                                "sem": st["sem"] * scale}

    shell = first_shell(run.xyz, box, li, o_eth, names=("Li+", "O(ether)"))
    r_cut = float(cn_cutoff) if cn_cutoff is not None else shell["min_r"]
    cn_t = coordination_series(run.xyz, box, li, o_eth, r_cut)
    out["li_o_ether"] = {"peak_r": shell["peak_r"], "peak_g": shell["peak_g"], "min_r": shell["min_r"],
                         "cn": shell["cn"], "cn_cutoff": r_cut, "cn_series": series_stats(cn_t, run.frame_dt, n_blocks),
                         "r": shell["r"], "g": shell["g"]}

    peo = set(el.species_indices(top)["peo"].tolist())
    chains = [m for m in el.molecule_indices(top) if int(m[0]) in peo]
    ends = np.array([[m[0], m[-4]] for m in chains])  # C of PEH ... C of PET (its three H follow)
    ree = end_to_end_distance(run.xyz, ends).values.mean(axis=1)
    out["end_to_end"] = series_stats(ree, run.frame_dt, n_blocks)
    out["series"] = {"sample_dt_ps": sample_dt, "frame_dt_ps": run.frame_dt,
                     "potential": np.round(pe, 2).tolist(),
                     "temperature": {k: np.round(v, 2).tolist() for k, v in run.temperature.items()},
                     "group_energy": {k: np.round(v, 2).tolist() for k, v in run.group_energy.items()},
                     "li_o_ether_cn": np.round(cn_t, 4).tolist(), "end_to_end": np.round(ree, 4).tolist()}

    out["msd_10ps"] = ion_msd(run, li, MSD_LAG)
    out["speed_ns_per_day"] = ns_per_day(run.steps * run.arm.timestep, run.step_seconds)
    out["step_seconds"] = run.step_seconds
    out["wall_seconds"] = run.wall_seconds
    out["steps"] = run.steps
    return out


def ion_msd(run: ArmRun, li: np.ndarray, lag: float) -> dict[str, Any]:
    """MSD of Li+ and of the TFSI- centres of mass at ``lag`` ps, mean and standard error over ions, nm^2."""
    xyz = run.xyz
    m = run.masses
    com = np.einsum("p,fpk->fk", m / m.sum(), xyz)
    arr = xyz - com[:, None, :]
    species = el.species_indices(run.es.topology)
    tfsi = set(species.get("tfsi", np.array([], dtype=np.int64)).tolist())
    mols = [mol for mol in el.molecule_indices(run.es.topology) if int(mol[0]) in tfsi]
    ids = np.full(arr.shape[1], -1, dtype=np.int64)
    for k, idx in enumerate(mols):
        ids[idx] = k
    tf_atoms = np.flatnonzero(ids >= 0)
    centres = molecule_centres(arr[:, tf_atoms], m[tf_atoms], ids[tf_atoms])
    k_lag = int(round(lag / run.frame_dt))
    if k_lag >= len(xyz):
        return {"available": False, "reason": f"the run is shorter than the {lag:g} ps lag"}
    out: dict[str, Any] = {"lag_ps": k_lag * run.frame_dt, "units": "nm^2"}
    for key, pts in (("li", arr[:, li]), ("tfsi", centres)):
        res = msd_fn(pts, run.frame_dt, groups=[f"{i:04d}" for i in range(pts.shape[1])], max_lag=k_lag)
        out[key] = _pm(mean_sem(res.msd[:, k_lag]))
    return out


def nve(run: ArmRun, time_ps: float, temperature: float, platform: str, threads: int) -> dict[str, Any]:
    """NVE drift from the final state of a Langevin run (same System, VerletIntegrator, same step)."""
    box = float(run.es.topology.getPeriodicBoxVectors()[0][0].value_in_unit(u.nanometer))
    res = run_nve(run.es.system, run.final_positions, box, run.arm.timestep, time_ps, velocities=run.final_velocities,
                  temperature=temperature, platform=platform, threads=threads, progress=False,
                  desc=f"NVE {run.arm.label}")
    for key in ("t", "e_total", "e_kinetic"):
        res.pop(key)
    res["drift_stderr_kT_per_dof_ns"] = res["drift_stderr_kj_mol_ns"] / res["dof"] / (BOLTZMANN * temperature)
    res["speed_ns_per_day"] = ns_per_day(res["time_ps"], res["wall_seconds"])
    return res


# ------------------------------------------------------------------------------------------
# comparison and report
# ------------------------------------------------------------------------------------------
def compare(ref: dict[str, Any], hmr: dict[str, Any], nve_res: dict[str, dict[str, Any]] | None, bin_width: float,
            friction: float, temperature: float) -> dict[str, Any]:
    """Differences, z scores and the verdict.

    Criteria: configurational averages (potential energy mean and std, Li-O(ether) CN) agree
    when ``|z| <`` :data:`Z_AGREE` with the conservative errors of :func:`series_stats`, the
    Li-O(ether) peak when it lies in the same or the next bin; species temperatures the same
    way; the NVE drift at the long step is acceptable when below
    :data:`DRIFT_LIMIT_KT_PER_DOF_NS` per DOF or within 3 standard errors of the reference
    step's. ``friction`` (1/ps) and ``temperature`` (K) convert a drift into the steady
    temperature offset it would cause under the thermostat.
    """
    def z_of(get: Any) -> float:
        a, b = get(ref), get(hmr)
        return z_score((b["mean"], b["sem"]), (a["mean"], a["sem"]))  # hmr - ref

    z = {"potential_mean": z_of(lambda r: r["potential_mean"]),
         "potential_std": z_of(lambda r: r["potential_std"]),
         "li_o_ether_cn": z_of(lambda r: r["li_o_ether"]["cn_series"]),
         "end_to_end": z_of(lambda r: r["end_to_end"])}
    for k in ref["group_energy"]:
        z[f"energy_{k}"] = z_of(lambda r, k=k: r["group_energy"][k])
    for k in ref["equipartition_temperature"]:
        z[f"equipartition_{k}"] = z_of(lambda r, k=k: r["equipartition_temperature"][k])
    for k in ref["temperature"]:
        z[f"temperature_{k}"] = z_of(lambda r, k=k: r["temperature"][k])
    peak_shift = hmr["li_o_ether"]["peak_r"] - ref["li_o_ether"]["peak_r"]
    checks: dict[str, bool] = {f"{k}_agrees": bool(abs(v) < Z_AGREE) for k, v in z.items() if math.isfinite(v)}
    checks["li_o_ether_peak_same_within_one_bin"] = bool(abs(peak_shift) <= bin_width + 1e-9)
    # the end-to-end distance relaxes over ns: two 60 ps runs from one start cannot sample it (reported only)
    config_keys = ["potential_mean_agrees", "potential_std_agrees", "li_o_ether_cn_agrees",
                   "li_o_ether_peak_same_within_one_bin"]
    out: dict[str, Any] = {"z": z, "li_o_ether_peak_shift_nm": peak_shift, "checks": checks,
                           "configurational_agree": all(checks.get(k, False) for k in config_keys),
                           "temperatures_agree": all(v for k, v in checks.items() if k.startswith("temperature_")),
                           "speedup": hmr["speed_ns_per_day"] / ref["speed_ns_per_day"]}
    msd = {}
    for key in ("li", "tfsi"):
        if ref["msd_10ps"].get("available", True) and hmr["msd_10ps"].get("available", True):
            a, b = ref["msd_10ps"][key], hmr["msd_10ps"][key]
            msd[key] = {"ratio_hmr_to_ref": b["mean"] / a["mean"] if a["mean"] > 0 else float("nan"),
                        "z": z_score((b["mean"], b["sem"]), (a["mean"], a["sem"]))}
    out["msd_10ps"] = msd
    if nve_res:
        d = {k: v["drift_kT_per_dof_ns"] for k, v in nve_res.items()}
        e = {k: v["drift_stderr_kT_per_dof_ns"] for k, v in nve_res.items()}
        below = bool(abs(d["hmr"]) < DRIFT_LIMIT_KT_PER_DOF_NS)
        like_ref = bool(abs(d["hmr"] - d["ref"]) < 3.0 * math.hypot(e["hmr"], e["ref"]))
        out["nve"] = {
            "limit_kT_per_dof_ns": DRIFT_LIMIT_KT_PER_DOF_NS,
            "hmr_drift_below_limit": below,
            "ref_drift_below_limit": bool(abs(d["ref"]) < DRIFT_LIMIT_KT_PER_DOF_NS),
            "hmr_minus_ref_kT_per_dof_ns": d["hmr"] - d["ref"],
            "hmr_drift_within_3_sigma_of_ref": like_ref,
            # a drift r (energy per DOF per time) against a Langevin bath of friction gamma settles
            # at an offset of about r / (2 gamma) per DOF, i.e. a temperature offset of that / k_B
            "thermostatted_offset_K": {k: abs(v) * 1e-3 / (2.0 * friction) * temperature for k, v in d.items()},
            "fluctuation_ratio_hmr_to_ref": nve_res["hmr"]["relative_fluctuation"] / nve_res["ref"]["relative_fluctuation"],
        }
        out["nve_ok"] = bool(below or like_ref)
    else:
        out["nve_ok"] = None
    out["all_criteria_met"] = bool(out["configurational_agree"] and out["temperatures_agree"] and out["nve_ok"] is not False)
    return out


def _f(x: float | None, spec: str) -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def format_table(res: dict[str, Any]) -> str:
    """Markdown table of a result."""
    r, h, c = res["arms"]["ref"], res["arms"]["hmr"], res["comparison"]

    def pm(v: dict[str, float], spec: str) -> str:
        return f"{_f(v['mean'], spec)} +- {_f(v['sem'], spec)}"

    rows = [(f"quantity (friction {res['settings']['friction_per_ps']:g}/ps, {res['settings']['time_ps']:g} ps each)",
             f"ref: natural masses, {r['timestep'] * 1000:g} fs",
             f"hmr: H {h['hydrogen_mass']:g} amu, {h['timestep'] * 1000:g} fs", "hmr - ref (z)")]
    rows.append(("potential energy mean, kJ/mol", pm(r["potential_mean"], ".1f"), pm(h["potential_mean"], ".1f"),
                 f"{h['potential_mean']['mean'] - r['potential_mean']['mean']:+.1f} ({c['z']['potential_mean']:+.2f})"))
    rows.append(("potential energy std, kJ/mol", pm(r["potential_std"], ".1f"), pm(h["potential_std"], ".1f"),
                 f"{h['potential_std']['mean'] - r['potential_std']['mean']:+.1f} ({c['z']['potential_std']:+.2f})"))
    rows.append(("  its autocorrelation time, ps (N_eff)",
                 f"{r['potential_mean']['tau_ps']:.2f} ({r['potential_mean']['n_effective']:.0f})",
                 f"{h['potential_mean']['tau_ps']:.2f} ({h['potential_mean']['n_effective']:.0f})", ""))
    for k, label in (("bonds", "bonds"), ("angles", "angles"), ("torsions", "torsions"), ("lj", "Lennard-Jones"),
                     ("coulomb", "Coulomb (PME, + 1-4)")):
        a, b = r["group_energy"][k], h["group_energy"][k]
        rows.append((f"  of which {label}, kJ/mol", pm(a, ".1f"), pm(b, ".1f"),
                     f"{b['mean'] - a['mean']:+.1f} ({c['z'][f'energy_{k}']:+.2f})"))
    for k in r.get("equipartition_temperature", {}):
        a, b = r["equipartition_temperature"][k], h["equipartition_temperature"][k]
        kind, sp = k.split("_", 1)
        rows.append((f"2<E>/(N k_B) of {sp.upper()} {kind}, K ({a['n_terms']} terms)", pm(a, ".1f"), pm(b, ".1f"),
                     f"{b['mean'] - a['mean']:+.1f} ({c['z'][f'equipartition_{k}']:+.2f})"))
    for k, label in (("peo", "PEO"), ("li", "Li+"), ("tfsi", "TFSI-"), ("total", "all")):
        if k in r["temperature"]:
            a, b = r["temperature"][k], h["temperature"][k]
            rows.append((f"T kinetic {label}, K", pm(a, ".1f"), pm(b, ".1f"),
                         f"{b['mean'] - a['mean']:+.1f} ({c['z'][f'temperature_{k}']:+.2f})"))
    lr, lh = r["li_o_ether"], h["li_o_ether"]
    rows.append(("Li-O(ether) first peak, nm", f"{lr['peak_r']:.4f}", f"{lh['peak_r']:.4f}",
                 f"{c['li_o_ether_peak_shift_nm']:+.4f} (bin {res['settings']['rdf_bin_width']:g})"))
    rows.append((f"Li-O(ether) CN within {lr['cn_cutoff']:.4f} nm", pm(lr["cn_series"], ".3f"), pm(lh["cn_series"], ".3f"),
                 f"{lh['cn_series']['mean'] - lr['cn_series']['mean']:+.3f} ({c['z']['li_o_ether_cn']:+.2f})"))
    rows.append(("Li-O(ether) first min / CN (RDF)", f"{lr['min_r']:.4f} / {lr['cn']:.3f}", f"{lh['min_r']:.4f} / {lh['cn']:.3f}",
                 ""))
    rows.append(("PEO end-to-end distance, nm (slow: reported only)", pm(r["end_to_end"], ".3f"), pm(h["end_to_end"], ".3f"),
                 f"{h['end_to_end']['mean'] - r['end_to_end']['mean']:+.3f} ({c['z']['end_to_end']:+.2f})"))
    for k, label in (("li", "Li+"), ("tfsi", "TFSI- COM")):
        if k in c["msd_10ps"]:
            rows.append((f"MSD {label} at {MSD_LAG:g} ps, nm^2 (dynamics: reported only)", pm(r["msd_10ps"][k], ".4f"), pm(h["msd_10ps"][k], ".4f"),
                         f"x{c['msd_10ps'][k]['ratio_hmr_to_ref']:.2f} ({c['msd_10ps'][k]['z']:+.2f})"))
    rows.append(("speed (stepping), ns/day", f"{r['speed_ns_per_day']:.3g}", f"{h['speed_ns_per_day']:.3g}",
                 f"x{c['speedup']:.2f}"))
    nv = res.get("nve")
    if nv:
        a, b = nv["ref"], nv["hmr"]
        rows.append((f"NVE drift ({a['time_ps']:g} ps), kJ/mol/ns", f"{a['drift_kj_mol_ns']:+.0f} +- {a['drift_stderr_kj_mol_ns']:.0f}",
                     f"{b['drift_kj_mol_ns']:+.0f} +- {b['drift_stderr_kj_mol_ns']:.0f}", ""))
        rows.append(("NVE drift per DOF, kT/ns", f"{a['drift_kT_per_dof_ns']:+.5f} +- {a['drift_stderr_kT_per_dof_ns']:.5f}",
                     f"{b['drift_kT_per_dof_ns']:+.5f} +- {b['drift_stderr_kT_per_dof_ns']:.5f}",
                     f"limit {DRIFT_LIMIT_KT_PER_DOF_NS:g}"))
        off = c["nve"]["thermostatted_offset_K"]
        rows.append((f"T offset this drift would cause at friction {res['settings']['friction_per_ps']:g}/ps, K",
                     f"{off['ref']:.3f}", f"{off['hmr']:.3f}", ""))
        rows.append(("NVE std(E_tot)/std(E_kin)", f"{a['relative_fluctuation']:.4f}", f"{b['relative_fluctuation']:.4f}",
                     f"x{c['nve']['fluctuation_ratio_hmr_to_ref']:.2f}"))
    lines = ["| " + " | ".join(rows[0]) + " |", "|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    lines.append("")
    lines.append(f"configurational averages agree (|z| < {Z_AGREE:g}, peak within one bin): {c['configurational_agree']}; "
                 f"species temperatures agree: {c['temperatures_agree']}; NVE drift at the long step below "
                 f"{DRIFT_LIMIT_KT_PER_DOF_NS:g} kT/ns per DOF or within 3 sigma of the short step's: {c['nve_ok']} "
                 f"-> all criteria met in this run: {c['all_criteria_met']} (in-run errors; slow quantities need "
                 "several runs, see BENCHMARKS.md)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, default=DEFAULT_RUN, help="electrolyte run directory (read only)")
    ap.add_argument("--time", type=float, default=60.0, help="recorded ps per run (default 60)")
    ap.add_argument("--equil", type=float, default=10.0, help="discarded ps at the start of each run (default 10)")
    ap.add_argument("--frame-interval", type=float, default=1.0, help="ps between frames (default 1)")
    ap.add_argument("--sample-interval", type=float, default=0.2, help="ps between energy samples (default 0.2)")
    ap.add_argument("--hydrogen-mass", type=float, default=3.0, help="amu, HMR run (default 3.0)")
    ap.add_argument("--timestep-ref", type=float, default=0.002, help="ps, natural masses (default 0.002)")
    ap.add_argument("--timestep-hmr", type=float, default=0.004, help="ps, HMR (default 0.004)")
    ap.add_argument("--nve-time", type=float, default=10.0, help="ps of NVE per set-up (0 = skip; default 10)")
    ap.add_argument("--friction", type=float, default=None,
                    help="Langevin friction, 1/ps (default: the run's production friction)")
    ap.add_argument("--blocks", type=int, default=5, help="time blocks for the standard errors (default 5)")
    ap.add_argument("--seed", type=int, default=2026, help="velocities and thermostat (default 2026)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--platform", default="CPU")
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        settings, pos, box = load_start(args.run_dir)
        arms = [Arm("ref", None, args.timestep_ref), Arm("hmr", args.hydrogen_mass, args.timestep_hmr)]
        sims = [ArmSimulation(settings, pos, box, arm, frame_ps=args.frame_interval, sample_ps=args.sample_interval,
                              seed=args.seed, friction=args.friction, platform=args.platform, threads=args.threads)
                for arm in arms]
        sims_friction = sims[0].friction
        runs = run_interleaved(sims, time_ps=args.time, equil_ps=args.equil, progress=not args.quiet)
        del sims  # free the two Contexts before the NVE runs
        analysed = {"ref": analyse(runs["ref"], args.blocks)}
        analysed["hmr"] = analyse(runs["hmr"], args.blocks, cn_cutoff=analysed["ref"]["li_o_ether"]["min_r"])
        nve_res = None
        if args.nve_time > 0:
            nve_res = {k: nve(v, args.nve_time, settings.temperature, args.platform, args.threads)
                       for k, v in runs.items()}
    except CgsimInputError as exc:
        print(f"validate_hmr: error: {exc}", file=sys.stderr)
        return 2
    res: dict[str, Any] = {
        "format": "cgsim-hmr-validation",
        "run_dir": str(args.run_dir),
        "start": f"{RUN_DIR}/{EQ_DIR}/equilibrated.npz, box {box:.4f} nm, velocities drawn at {settings.temperature:g} K "
                 f"(seed {args.seed})",
        "settings": {"time_ps": args.time, "equil_ps": args.equil, "frame_interval_ps": args.frame_interval,
                     "sample_interval_ps": args.sample_interval, "blocks": args.blocks, "seed": args.seed,
                     "temperature": settings.temperature, "friction_per_ps": sims_friction,
                     "constraints": settings.constraints, "cutoff": settings.cutoff,
                     "n_atoms": settings.composition.n_atoms, "rdf_bin_width": 0.005,
                     "platform": args.platform, "threads": args.threads,
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "machine": {"python": sys.version.split()[0], "openmm": openmm.__version__, "cpu": pyplatform.machine(),
                    "cores": os.cpu_count(), "load_average": list(os.getloadavg())},
        "arms": analysed,
    }
    if nve_res:
        res["nve"] = nve_res
    res["comparison"] = compare(analysed["ref"], analysed["hmr"], nve_res, 0.005, sims_friction, settings.temperature)
    res["wall_seconds"] = time.perf_counter() - t0
    table = format_table(res)
    res["table"] = table
    print(table)
    print(f"total wall time {res['wall_seconds']:.0f} s")
    if args.json is not None:
        write_json_atomic(args.json, json_finite(res))
        print(f"-> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
