"""``cgsim generate system=electrolyte``: all-atom PEO + LiTFSI reference MD.

The run, every stage resumable after a kill at any moment:

1. **build**: PEO chains and ions from :mod:`cgsim.reference.electrolyte`, packed by packmol
   into a periodic cube at ``pack_density``;
2. **minimise** (L-BFGS, ``minimize_tolerance``);
3. **compress**: NPT (MonteCarloBarostat) at ``compress_pressure`` for ``compress_time``;
4. **NPT** at ``pressure`` in blocks of ``npt_block`` (one checkpoint and one mean density per
   block) until the mean densities of the last two ``npt_window`` windows agree within
   ``density_tolerance`` (and at least ``npt_min_time`` has passed), or ``npt_max_time``;
5. the box is set to the mean volume of the last window (molecule centres scaled, molecules
   rigid), then **NVT** with a weak Langevin thermostat: ``nvt_equilibration_time`` unrecorded,
   then ``production_time`` with a frame every ``save_interval``
   (:class:`cgsim.reference.runner.ChunkedRun`);
6. **finalize**: ``NAME.pdb`` (topology: one chain per molecule, residues PEH / PEO / PET, LI,
   TFS, all bonds, box), ``NAME.xtc`` (unwrapped positions, molecules whole, box per frame),
   ``NAME.json`` (sidecar: units, force field, charge scaling, per-particle charges,
   equilibration history, checks) and ``dataset.json``.

State on disk, in ``OUT/.run/``: the ChunkedRun files (``identity.json``, ``progress.json``,
``state_*.xml``, ``chunks/``) and ``equilibration/`` (``progress.json``, the state of the last
equilibration block, ``equilibrated.npz``). A directory holding a different run is refused.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
import openmm
import openmm.unit as u
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from cgsim.errors import CgsimInputError
from cgsim.io_utils import atomic_path, write_json_atomic
from cgsim.metadata import (
    SystemInfo,
    TrajectoryMetadata,
    command_line,
    now_iso,
    software_versions,
    write_sidecar,
)
from cgsim.reference import electrolyte as el
from cgsim.reference.platforms import minimize_energy, select_platform
from cgsim.reference.runner import (
    RUN_DIR,
    ChunkedRun,
    Molecule,
    RunPlan,
    check_identity,
    read_chunks,
    remove_chunks,
)
from cgsim.units import BOLTZMANN, units_block

EQ_DIR = "equilibration"
#: Densities at which a box must still hold twice the cutoff (g/cm^3; above any PEO/LiTFSI).
_MAX_EXPECTED_DENSITY = 1.35


@dataclass(frozen=True)
class ElectrolyteSettings:
    """Validated options of a ``system=electrolyte`` run (MD units; times as step counts).

    Attributes
    ----------
    composition : Composition
        What is in the box.
    temperature, pressure : float
        K and bar.
    seed : int
        Seed of packing, velocities and thermostats.
    forcefield : pathlib.Path
        ForceField XML.
    timestep : float
        ps.
    compress_steps, block_steps, sample_steps, npt_min_steps, npt_max_steps, nvt_steps,
    production_steps, save_steps : int
        Step counts of the stages (see the module docstring).
    window_blocks : int
        NPT blocks per density window.
    file_name : str
        Stem of the output files.
    """

    composition: el.Composition
    temperature: float
    pressure: float
    seed: int
    charge_scale: float
    forcefield: Path
    cutoff: float
    ewald_tolerance: float
    dispersion_correction: bool
    constraints: str | None
    hydrogen_mass: float | None
    timestep: float
    friction: float
    production_friction: float
    pack_density: float
    pack_tolerance: float
    packmol: str | None
    minimize_tolerance: float
    minimize_max_iterations: int
    compress_pressure: float
    compress_steps: int
    compress_barostat_interval: int
    barostat_interval: int
    block_steps: int
    sample_steps: int
    window_blocks: int
    npt_min_steps: int
    npt_max_steps: int
    density_tolerance: float
    nvt_steps: int
    production_steps: int
    save_steps: int
    file_name: str
    packmol_nloop: int | None = None

    def system_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`cgsim.reference.electrolyte.create_system`."""
        return {"forcefield_file": self.forcefield, "cutoff": self.cutoff, "charge_scale": self.charge_scale,
                "constraints": self.constraints, "hydrogen_mass": self.hydrogen_mass,
                "ewald_tolerance": self.ewald_tolerance, "dispersion_correction": self.dispersion_correction}


def _number(sc: DictConfig, key: str, lo: float = 0.0, strict: bool = True, hi: float | None = None,
            allow_none: bool = False) -> float | None:
    value = sc.get(key)
    if value is None and allow_none:
        return None
    ok = value is not None and not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    ok = ok and (value > lo if strict else value >= lo) and (hi is None or value <= hi)
    if not ok:
        rng = f"{'>' if strict else '>='} {lo:g}" + (f" and <= {hi:g}" if hi is not None else "")
        raise CgsimInputError(f"system.{key}", f"expected a number {rng}, got {value!r}")
    return float(value)


def _steps(time_ps: float, dt: float, key: str, allow_zero: bool = False) -> int:
    n = time_ps / dt
    if abs(n - round(n)) > 1e-6 * max(1.0, n) or round(n) < (0 if allow_zero else 1):
        raise CgsimInputError(f"system.{key}", f"{time_ps} ps is not a {'' if allow_zero else 'positive '}"
                              f"whole number of time steps of {dt} ps")
    return int(round(n))


def _multiple(a: int, b: int, key: str, of: str) -> int:
    if a % b:
        raise CgsimInputError(f"system.{key}", f"expected a whole multiple of system.{of}")
    return a // b


def settings_from_config(sc: DictConfig) -> ElectrolyteSettings:
    """Validate a ``system=electrolyte`` config; every bad value raises a one-line error.

    Raises
    ------
    CgsimInputError
        Naming the option and what was expected.
    """
    if sc.get("n_salt") is not None:
        comp = el.Composition(sc.n_chains, sc.chain_length, sc.n_salt)
    elif sc.get("eo_li_ratio") is not None:
        comp = el.Composition.from_ratio(sc.n_chains, sc.chain_length, sc.eo_li_ratio)
    else:
        raise CgsimInputError("system.n_salt", "set n_salt (LiTFSI pairs) or eo_li_ratio; both are null")
    temperature = _number(sc, "temperature")
    pressure = _number(sc, "pressure")
    charge_scale = _number(sc, "charge_scale", hi=1.0)
    cutoff = _number(sc, "cutoff")
    ewald = _number(sc, "ewald_tolerance", hi=0.1)
    hmass = _number(sc, "hydrogen_mass", allow_none=True)
    dt = _number(sc, "timestep", hi=0.01)
    friction = _number(sc, "friction")
    prod_friction = _number(sc, "production_friction")
    pack_density = _number(sc, "pack_density", hi=1.2)
    pack_tol = _number(sc, "pack_tolerance", hi=0.5)
    min_tol = _number(sc, "minimize_tolerance")
    compress_p = _number(sc, "compress_pressure")
    dens_tol = _number(sc, "density_tolerance", hi=0.5)
    for key in ("compress_time", "npt_min_time", "nvt_equilibration_time"):
        _number(sc, key, strict=False)
    for key in ("npt_block", "npt_sample", "npt_window", "npt_max_time", "production_time", "save_interval"):
        _number(sc, key)
    for key, lo in (("barostat_interval", 1), ("compress_barostat_interval", 1), ("minimize_max_iterations", 0),
                    ("seed", 0)):
        value = sc.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise CgsimInputError(f"system.{key}", f"expected an integer >= {lo}, got {value!r}")
    if sc.get("constraints") not in ("HBonds", None):
        raise CgsimInputError("system.constraints", f"expected HBonds or null, got {sc.get('constraints')!r}")
    block = _steps(sc.npt_block, dt, "npt_block")
    sample = _steps(sc.npt_sample, dt, "npt_sample")
    _multiple(block, sample, "npt_block", "npt_sample")
    window = _multiple(_steps(sc.npt_window, dt, "npt_window"), block, "npt_window", "npt_block")
    npt_min = _steps(sc.npt_min_time, dt, "npt_min_time", allow_zero=True)
    npt_max = _steps(sc.npt_max_time, dt, "npt_max_time")
    compress = _steps(sc.compress_time, dt, "compress_time", allow_zero=True)
    for key, n in (("compress_time", compress), ("npt_min_time", npt_min), ("npt_max_time", npt_max)):
        _multiple(n, block, key, "npt_block")
    if npt_max < npt_min:
        raise CgsimInputError("system.npt_max_time", f"{sc.npt_max_time} ps is shorter than npt_min_time {sc.npt_min_time} ps")
    prod = _steps(sc.production_time, dt, "production_time")
    save = _steps(sc.save_interval, dt, "save_interval")
    _multiple(prod, save, "production_time", "save_interval")
    name = sc.get("file_name") or comp.label
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)):
        raise CgsimInputError("system.file_name", f"expected letters, digits, '_', '.', '-', got {name!r}")
    ff = el.forcefield_path(sc.get("forcefield"))
    settings = ElectrolyteSettings(
        composition=comp, temperature=temperature, pressure=pressure, seed=int(sc.seed), charge_scale=charge_scale,
        forcefield=ff, cutoff=cutoff, ewald_tolerance=ewald, dispersion_correction=bool(sc.dispersion_correction),
        constraints=sc.get("constraints"), hydrogen_mass=hmass, timestep=dt, friction=friction,
        production_friction=prod_friction, pack_density=pack_density, pack_tolerance=pack_tol,
        packmol=sc.get("packmol"), minimize_tolerance=min_tol, minimize_max_iterations=int(sc.minimize_max_iterations),
        compress_pressure=compress_p, compress_steps=compress,
        compress_barostat_interval=int(sc.compress_barostat_interval),
        barostat_interval=int(sc.barostat_interval), block_steps=block, sample_steps=sample, window_blocks=window,
        npt_min_steps=npt_min, npt_max_steps=npt_max, density_tolerance=dens_tol,
        nvt_steps=_steps(sc.nvt_equilibration_time, dt, "nvt_equilibration_time", allow_zero=True),
        production_steps=prod, save_steps=save, file_name=str(name),
    )
    # the box must hold twice the cutoff even at the highest density it can reach
    top = el.build_topology(comp)
    mass = float(el.masses(top).sum())
    dense_box = el.box_length_for_density(mass, _MAX_EXPECTED_DENSITY)
    if dense_box < 2.0 * cutoff:
        raise CgsimInputError("system.cutoff", f"the box ({comp.n_atoms} atoms) shrinks to ~{dense_box:.2f} nm, less than "
                              f"twice the cutoff {cutoff} nm; add molecules or lower the cutoff")
    return settings


def density_converged(densities: Sequence[float], window: int, tolerance: float) -> bool:
    """Whether the means of the last two ``window`` densities agree within ``tolerance`` (relative).

    Parameters
    ----------
    densities : sequence of float
        Block-mean densities in time order.
    window : int
        Blocks per window.
    tolerance : float
        Largest allowed ``|mean(last) - mean(previous)| / mean(last)``.
    """
    if window < 1 or len(densities) < 2 * window:
        return False
    d = np.asarray(densities, dtype=float)
    prev, last = d[-2 * window:-window].mean(), d[-window:].mean()
    return bool(abs(last - prev) <= tolerance * last)


def ns_per_day(simulated_ps: float, wall_seconds: float) -> float:
    """Simulation speed in ns/day."""
    return simulated_ps * 1.0e-3 * 86400.0 / max(wall_seconds, 1e-9)


def scale_box(positions: np.ndarray, molecules: Sequence[np.ndarray], masses: np.ndarray, factor: float) -> np.ndarray:
    """Scale molecule centres of mass by ``factor``, keeping each molecule rigid.

    Parameters
    ----------
    positions : numpy.ndarray
        Unwrapped positions, shape (n_atoms, 3), nm.
    molecules : sequence of numpy.ndarray
        Atom indices of each molecule.
    masses : numpy.ndarray
        Atom masses, shape (n_atoms,), amu.
    factor : float
        New box edge / old box edge.

    Returns
    -------
    numpy.ndarray
        New positions, shape (n_atoms, 3), nm.
    """
    out = np.array(positions, dtype=float, copy=True)
    for idx in molecules:
        w = masses[idx] / masses[idx].sum()
        com = w @ out[idx]
        out[idx] += (factor - 1.0) * com
    return out


@dataclass
class EquilibrationResult:
    """The equilibrated box handed to production.

    Attributes
    ----------
    positions : numpy.ndarray
        Unwrapped positions in the final box, shape (n_atoms, 3), nm.
    box_length : float
        Cubic box edge, nm.
    progress : dict
        The equilibration record (stage, blocks with time/density/energy/temperature, converged).
    """

    positions: np.ndarray
    box_length: float
    progress: dict[str, Any] = field(default_factory=dict)


class Equilibration:
    """Minimise, compress and equilibrate at constant pressure, resumably, under ``out/.run/equilibration``.

    Parameters
    ----------
    out : pathlib.Path
        Output directory of the run.
    es : ElectrolyteSystem
        The System (without barostat; one is added here) and its topology.
    settings : ElectrolyteSettings
        Run options.
    platform, threads, progress
        As in :class:`cgsim.reference.runner.ChunkedRun`.
    """

    def __init__(self, out: Path, es: el.ElectrolyteSystem, settings: ElectrolyteSettings, platform: str = "auto",
                 threads: int = 1, progress: bool = True) -> None:
        self.out = Path(out)
        self.dir = self.out / RUN_DIR / EQ_DIR
        self.es = es
        self.s = settings
        self.platform_name = platform
        self.threads = threads
        self.show_progress = progress
        self.masses = el.masses(es.topology)
        self.total_mass = float(self.masses.sum())
        self.molecules = el.molecule_indices(es.topology)
        n = es.system.getNumParticles()
        self.dof = 3 * n - es.n_constraints - 3
        self.platform_used = platform

    # -- on-disk state ----------------------------------------------------------------------
    def read_progress(self) -> dict[str, Any]:
        """The equilibration record (a fresh one if none is on disk)."""
        path = self.dir / "progress.json"
        if path.is_file():
            return json.loads(path.read_text())
        return {"stage": "minimize", "steps": {"compress": 0, "npt": 0}, "blocks": [], "state": None,
                "wall_seconds": 0.0, "minimized_energy": None, "converged": None, "box_length": None,
                "density": None}

    def _commit(self, progress: dict[str, Any], state: openmm.State | None) -> None:
        """Write the state (if any), then the record that points to it; drop the old state."""
        old = progress.get("state")
        if state is not None:
            name = f"state_{len(progress['blocks']):06d}_{progress['stage']}.xml"
            with atomic_path(self.dir / name) as tmp:
                tmp.write_text(openmm.XmlSerializer.serialize(state))
            progress["state"] = name
        write_json_atomic(self.dir / "progress.json", progress)
        if old and old != progress.get("state"):
            (self.dir / old).unlink(missing_ok=True)

    def _cleanup(self, progress: dict[str, Any]) -> None:
        for f in self.dir.glob("state_*.xml"):
            if f.name != progress.get("state"):
                f.unlink()
        for f in self.dir.glob(".*"):
            f.unlink()

    # -- the run ----------------------------------------------------------------------------
    def run(self, initial: Callable[[], tuple[np.ndarray, float]]) -> EquilibrationResult:
        """Run (or resume) until the density is stable; return the box for production.

        Parameters
        ----------
        initial : callable
            ``initial() -> (positions (n_atoms, 3) nm, box_length nm)``: the packed start,
            called only on a fresh start.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        progress = self.read_progress()
        self._cleanup(progress)
        if progress["stage"] == "done":
            with np.load(self.dir / "equilibrated.npz") as z:
                return EquilibrationResult(z["positions"], float(z["box_length"]), progress)
        s = self.s
        system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(self.es.system))
        baro = openmm.MonteCarloBarostat(s.pressure * u.bar, s.temperature * u.kelvin, s.barostat_interval)
        baro.setRandomNumberSeed((s.seed * 7919 + len(progress["blocks"])) % 2**31)
        baro_index = system.addForce(baro)
        integrator = openmm.LangevinMiddleIntegrator(s.temperature * u.kelvin, s.friction / u.picosecond,
                                                     s.timestep * u.picosecond)
        integrator.setRandomNumberSeed((s.seed * 100_003 + 13 * len(progress["blocks"]) + 1) % 2**31)
        platform, props, self.platform_used = select_platform(self.platform_name, self.threads)
        context = openmm.Context(system, integrator, platform, props)
        t_start, c_start = time.perf_counter(), time.process_time()
        base_wall, base_cpu = float(progress["wall_seconds"]), float(progress.get("cpu_seconds", 0.0))
        if progress["state"]:
            context.setState(openmm.XmlSerializer.deserialize((self.dir / progress["state"]).read_text()))
        else:
            positions, box = initial()
            context.setPeriodicBoxVectors(*(np.eye(3) * box))
            context.setPositions(positions * u.nanometer)

        if progress["stage"] == "minimize":
            try:
                minimize_energy(context, s.minimize_tolerance, s.minimize_max_iterations, self.threads)
            except openmm.OpenMMException as exc:
                raise self._failure("minimize", 0.0, exc) from None
            energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
            if not math.isfinite(energy):
                raise CgsimInputError("equilibration.minimize", "energy is NaN after minimisation; the packed "
                                      "structure overlaps (lower system.pack_density or raise system.pack_tolerance)")
            context.setVelocitiesToTemperature(s.temperature * u.kelvin, s.seed % 2**31)
            progress["minimized_energy"] = energy
            progress["stage"] = "compress" if s.compress_steps > 0 else "npt"
            progress["wall_seconds"] = base_wall + time.perf_counter() - t_start
            progress["cpu_seconds"] = base_cpu + time.process_time() - c_start
            self._commit(progress, context.getState(getPositions=True, getVelocities=True))

        total = s.compress_steps + s.npt_max_steps
        done = progress["steps"]["compress"] + progress["steps"]["npt"]
        bar = tqdm(total=total, initial=done, unit="step", disable=not self.show_progress,
                   desc=f"equilibrate {s.file_name}", dynamic_ncols=True, mininterval=2.0)
        steps_session = 0
        try:
            while progress["stage"] in ("compress", "npt"):
                stage = progress["stage"]
                pressure = s.compress_pressure if stage == "compress" else s.pressure
                context.setParameter(openmm.MonteCarloBarostat.Pressure(), pressure)
                interval = s.compress_barostat_interval if stage == "compress" else s.barostat_interval
                if system.getForce(baro_index).getFrequency() != interval:
                    system.getForce(baro_index).setFrequency(interval)
                    context.reinitialize(preserveState=True)
                t_stage = progress["steps"][stage] * s.timestep
                volumes = []
                try:
                    for _ in range(s.block_steps // s.sample_steps):
                        integrator.step(s.sample_steps)
                        box = context.getState().getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer)
                        volumes.append(float(np.linalg.det(box)))
                except openmm.OpenMMException as exc:
                    raise self._failure(stage, t_stage, exc) from None
                state = context.getState(getPositions=True, getVelocities=True, getEnergy=True)
                energy = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
                if not math.isfinite(energy):
                    raise self._failure(stage, t_stage, None)
                steps_session += s.block_steps
                progress["steps"][stage] += s.block_steps
                kinetic = state.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
                vol = float(np.mean(volumes))
                block = {"stage": stage, "time": progress["steps"][stage] * s.timestep, "pressure": pressure,
                         "volume": vol, "density": float(el.density_g_cm3(self.total_mass, vol)),
                         "potential_energy": energy, "temperature": 2.0 * kinetic / (self.dof * BOLTZMANN)}
                progress["blocks"].append(block)
                if stage == "compress" and progress["steps"]["compress"] >= s.compress_steps:
                    progress["stage"] = "npt"
                elif stage == "npt":
                    dens = [b["density"] for b in progress["blocks"] if b["stage"] == "npt"]
                    stable = density_converged(dens, s.window_blocks, s.density_tolerance)
                    if (progress["steps"]["npt"] >= s.npt_min_steps and stable) or progress["steps"]["npt"] >= s.npt_max_steps:
                        progress["converged"] = stable
                        progress["stage"] = "final"
                progress["wall_seconds"] = base_wall + time.perf_counter() - t_start
                progress["cpu_seconds"] = base_cpu + time.process_time() - c_start
                self._commit(progress, state)
                bar.update(s.block_steps)
                rate = ns_per_day(steps_session * s.timestep, time.perf_counter() - t_start)
                bar.set_postfix_str(f"{stage} {block['density']:.4f} g/cm3, {rate:.3g} ns/day")
        finally:
            bar.close()

        # final box: the mean volume of the last window, molecules rigidly moved
        state = context.getState(getPositions=True)
        positions = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer)
        npt_blocks = [b for b in progress["blocks"] if b["stage"] == "npt"]  # >= 1: npt_max_time > 0
        length = float(np.mean([b["volume"] for b in npt_blocks[-s.window_blocks:]])) ** (1.0 / 3.0)
        positions = scale_box(positions, self.molecules, self.masses, length / float(box[0, 0]))
        with atomic_path(self.dir / "equilibrated.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, positions=positions, box_length=length)
        progress["stage"] = "done"
        progress["box_length"] = length
        progress["density"] = float(el.density_g_cm3(self.total_mass, length**3))
        progress["npt_time"] = progress["steps"]["npt"] * s.timestep
        progress["wall_seconds"] = base_wall + time.perf_counter() - t_start
        progress["cpu_seconds"] = base_cpu + time.process_time() - c_start
        progress["last_session"] = {"steps": steps_session, "wall_seconds": time.perf_counter() - t_start,
                                    "ns_per_day": ns_per_day(steps_session * s.timestep, time.perf_counter() - t_start),
                                    "ns_per_cpu_day": ns_per_day(steps_session * s.timestep, time.process_time() - c_start)}
        old_state, progress["state"] = progress["state"], None
        write_json_atomic(self.dir / "progress.json", progress)
        (self.dir / old_state).unlink(missing_ok=True)
        return EquilibrationResult(positions, length, progress)

    def _failure(self, stage: str, t: float, exc: Exception | None) -> CgsimInputError:
        detail = f"OpenMM: {str(exc).splitlines()[0]}" if exc is not None else "the energy is NaN"
        return CgsimInputError(f"equilibration.{stage}", f"the simulation blew up after {t:.1f} ps ({detail}); "
                               "try a smaller system.timestep, a lower system.pack_density or a larger system")


def _identity(sc: DictConfig, s: ElectrolyteSettings) -> dict[str, Any]:
    system_cfg = OmegaConf.to_container(sc, resolve=True)
    system_cfg["n_salt"] = s.composition.n_salt
    system_cfg.pop("packmol", None)  # where the binary lives does not change the run
    system_cfg["forcefield"] = {"file": s.forcefield.name, "sha256": el.file_sha256(s.forcefield)}
    return {"system": system_cfg, "plan": {
        "compress_steps": s.compress_steps, "block_steps": s.block_steps, "npt_min_steps": s.npt_min_steps,
        "npt_max_steps": s.npt_max_steps, "nvt_steps": s.nvt_steps, "production_steps": s.production_steps,
        "save_steps": s.save_steps}}



def generate_electrolyte(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) the PEO + LiTFSI reference MD described by ``cfg``; finalize the files.

    Parameters
    ----------
    cfg : DictConfig
        Root ``generate`` config with ``system=electrolyte``.

    Returns
    -------
    dict
        Summary: output dir, composition, density, frames, wall time, ns/day.
    """
    sc = cfg.system
    s = settings_from_config(sc)
    if int(cfg.frames_per_chunk) <= 0:
        raise CgsimInputError("frames_per_chunk", f"expected a positive number, got {cfg.frames_per_chunk}")
    out = Path(cfg.output)
    identity = _identity(sc, s)
    comp = s.composition
    t0 = time.perf_counter()
    if (out / "dataset.json").is_file():
        check_identity(out, identity)
        entry = json.loads((out / "dataset.json").read_text())["molecules"][0]
        print(f"generate electrolyte: {out} already holds this finished run ({entry['name']})")
        return {"output": str(out), "name": entry["name"], "n_atoms": comp.n_atoms, "frames": entry["files"][0]["n_frames"],
                "density": entry["summary"]["density"], "wall_seconds": 0.0, "ns_per_day": float("nan")}
    if not check_identity(out, identity):
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / RUN_DIR / "identity.json", identity)

    top = el.build_topology(comp)
    total_mass = float(el.masses(top).sum())
    pack_box = el.box_length_for_density(total_mass, s.pack_density)
    top.setPeriodicBoxVectors(np.eye(3) * pack_box * u.nanometer)
    es_npt = el.create_system(top, **s.system_kwargs())

    def initial() -> tuple[np.ndarray, float]:
        rng = np.random.default_rng([s.seed, 3])
        packmol = el.find_packmol(s.packmol)
        return el.initial_positions(comp, pack_box, rng, packmol, tolerance=s.pack_tolerance,
                                    nloop=s.packmol_nloop), pack_box

    eq = Equilibration(out, es_npt, s, platform=str(cfg.platform), threads=int(cfg.threads), progress=bool(cfg.progress))
    if cfg.get("export_partial", False) and eq.read_progress()["stage"] != "done":
        raise CgsimInputError(str(out), "export_partial=true: equilibration is not finished, there are no production frames yet")
    result = eq.run(initial)
    if result.progress.get("converged") is False:
        print(f"generate electrolyte: warning: density not stable within {s.density_tolerance:g} after "
              f"{result.progress['npt_time']:.0f} ps of NPT (recorded in the metadata)", file=sys.stderr)

    # production: NVT in the equilibrated box
    top_nvt = el.build_topology(comp, box_length=result.box_length)
    es = el.create_system(top_nvt, **s.system_kwargs())
    mdtop = el.mdtraj_topology(top_nvt)
    species = el.species_indices(top_nvt)
    molecules = [Molecule(name=k, atoms=v, topology=mdtop.subset(v)) for k, v in species.items()]
    plan = RunPlan(timestep=s.timestep, equilibration_steps=s.nvt_steps,
                   frame_steps=np.arange(0, s.production_steps + 1, s.save_steps, dtype=np.int64),
                   frames_per_chunk=int(cfg.frames_per_chunk))

    def make_integrator(seed: int) -> openmm.Integrator:
        integ = openmm.LangevinMiddleIntegrator(s.temperature * u.kelvin, s.production_friction / u.picosecond,
                                                s.timestep * u.picosecond)
        integ.setRandomNumberSeed(int(seed) % 2**31)
        return integ

    runner = ChunkedRun(out, es.system, make_integrator, result.positions, molecules, plan, identity, seed=s.seed,
                        platform=str(cfg.platform), threads=int(cfg.threads), progress=bool(cfg.progress),
                        rate_format=lambda ps, sec: f"{ns_per_day(ps, sec):.3g} ns/day")
    if cfg.get("export_partial", False):
        return _export_partial(out, cfg, s, es, mdtop, species, result, runner)
    c0 = time.process_time()
    try:
        progress = runner.run()
    except openmm.OpenMMException as exc:
        raise CgsimInputError("production", f"the simulation blew up (OpenMM: {str(exc).splitlines()[0]}); "
                              "try a smaller system.timestep") from None
    cpu = time.process_time() - c0
    summary_extra = _finalize(out, cfg, s, es, mdtop, species, result, progress, runner.platform_used)
    elapsed = time.perf_counter() - t0
    rate = runner.session["steps_per_second"] * s.timestep * 86.4
    cpu_rate = ns_per_day(runner.session["steps"] * s.timestep, cpu) if runner.session["steps"] else float("nan")
    summary = {"output": str(out), "name": s.file_name, "n_atoms": comp.n_atoms, "frames": plan.n_frames,
               "density": summary_extra["density"], "wall_seconds": elapsed, "ns_per_day": rate,
               "ns_per_cpu_day": cpu_rate}
    print(f"generate electrolyte: {s.file_name} ({comp.n_atoms} atoms, {comp.n_chains} x PEO{comp.chain_length} + "
          f"{comp.n_salt} LiTFSI) -> {out} in {elapsed:.1f} s: density {summary['density']:.4f} g/cm3, "
          f"{plan.n_frames} frames; production {rate:.3g} ns/day ({cpu_rate:.3g} ns per CPU-day) this session")
    return summary


def _export_partial(out: Path, cfg: DictConfig, s: ElectrolyteSettings, es: el.ElectrolyteSystem, mdtop: md.Topology,
                    species: dict[str, np.ndarray], eq: EquilibrationResult, runner: ChunkedRun) -> dict[str, Any]:
    """Write NAME.pdb/.xtc/.json from the production chunks committed so far; keep the run resumable."""
    progress = runner.read_progress()
    if progress["chunks_done"] == 0:
        raise CgsimInputError(str(out), "export_partial=true: no production chunk has been committed yet")
    summary = _finalize(out, cfg, s, es, mdtop, species, eq, progress, runner.platform_used, complete=False)
    frames = progress["frames_done"]
    print(f"generate electrolyte: exported {frames} of {runner.plan.n_frames} production frames "
          f"({(frames - 1) * s.save_steps * s.timestep:g} ps) to {out / (s.file_name + '.xtc')}; the run stays resumable")
    return {"output": str(out), "name": s.file_name, "n_atoms": s.composition.n_atoms, "frames": frames,
            "density": summary["density"], "complete": False}


def _finalize(out: Path, cfg: DictConfig, s: ElectrolyteSettings, es: el.ElectrolyteSystem, mdtop: md.Topology,
              species: dict[str, np.ndarray], eq: EquilibrationResult, progress: dict[str, Any],
              platform: str, complete: bool = True) -> dict[str, Any]:
    """Write NAME.pdb + NAME.xtc + NAME.json (and, when ``complete``, dataset.json) from the chunks.

    A complete run then drops its run state; a partial export (``complete=False``) leaves the
    run state alone and marks the sidecar ``complete: false`` with the production time so far.
    """
    comp = s.composition
    name = s.file_name
    length = eq.box_length
    xyz, times, temps = read_chunks(out, progress["chunks_done"])
    n_frames = len(xyz)
    cell = np.array([[length] * 3])
    with atomic_path(out / f"{name}.pdb") as tmp:
        md.Trajectory(xyz[:1], mdtop, unitcell_lengths=cell, unitcell_angles=np.array([[90.0] * 3])).save_pdb(str(tmp))
    with atomic_path(out / f"{name}.xtc") as tmp:
        with md.formats.XTCTrajectoryFile(str(tmp), "w") as fh:
            fh.write(xyz, time=times.astype(np.float32), box=np.tile(np.eye(3, dtype=np.float32) * length, (n_frames, 1, 1)))

    # per-species kinetic temperature with the constrained degrees of freedom removed
    cons_atoms = np.zeros(es.system.getNumParticles(), dtype=np.int64)
    for k in range(es.system.getNumConstraints()):
        i, j, _d = es.system.getConstraintParameters(k)
        cons_atoms[i] += 1
        cons_atoms[j] += 1
    temperature = {}
    for k, (key, idx) in enumerate(species.items()):
        dof = 3 * len(idx) - 0.5 * cons_atoms[idx].sum()
        temperature[key] = float(temps[:, k].mean() * 3 * len(idx) / dof)
    mass = el.masses(es.topology)
    wall = float(progress.get("wall_seconds", 0.0)) + float(eq.progress.get("wall_seconds", 0.0))
    steps_total = progress["equilibration_steps_done"] + int(s.production_steps)
    eq_steps = eq.progress["steps"]["compress"] + eq.progress["steps"]["npt"]
    summary = {
        "density": float(el.density_g_cm3(float(mass.sum()), length**3)),
        "box_length": length,
        "temperature": temperature,
        "total_charge": float(es.charges.sum()),
        "npt_density_converged": eq.progress.get("converged"),
        "npt_time": eq.progress["steps"]["npt"] * s.timestep,
        "ns_per_day": ns_per_day((steps_total + eq_steps) * s.timestep, wall) if wall > 0 else None,
        "units": "g/cm^3, nm, K, e, ps",
        "complete": bool(complete),
        "production_time": float(times[-1] - times[0]) if n_frames else 0.0,
    }
    provenance = {
        "command": command_line("generate", "cgsim.reference.generate.run"),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "engine": "OpenMM",
        "platform": platform,
        "integrator": "LangevinMiddleIntegrator",
        "software": software_versions(),
        "created": now_iso(),
        "wall_seconds": wall,
    }
    ranges = {key: [int(idx[0]), int(idx[-1]) + 1] for key, idx in species.items()}
    extra = {
        "composition": {"n_chains": comp.n_chains, "chain_length": comp.chain_length, "n_salt": comp.n_salt,
                        "eo_li_ratio": comp.eo_li_ratio if comp.n_salt else None, "n_atoms": comp.n_atoms,
                        "species_atom_ranges": ranges},
        "forcefield": {
            "file": s.forcefield.name, "sha256": el.file_sha256(s.forcefield),
            "description": "OPLS-AA PEO (Jorgensen 1996) + CL&P TFSI- (Canongia Lopes & Padua 2004) + Li+ (Aqvist 1990)",
            "lj_mixing": "geometric (sigma and epsilon)", "scale_14": {"coulomb": el.COULOMB_14_SCALE, "lj": el.LJ_14_SCALE},
            "charge_scale": s.charge_scale,
            "charge_scale_note": f"Li+ and TFSI- charges multiplied by {s.charge_scale:g} (mean-field correction for "
                                 "missing electronic polarisation); PEO charges unscaled",
            "electrostatics": "PME", "ewald_tolerance": s.ewald_tolerance, "cutoff": s.cutoff,
            "dispersion_correction": s.dispersion_correction, "constraints": s.constraints,
            "hydrogen_mass": s.hydrogen_mass,
        },
        "particle_charges": es.charges.tolist(),
        "thermostat": {"integrator": "LangevinMiddleIntegrator", "friction": s.production_friction,
                       "equilibration_friction": s.friction},
        "equilibration": {
            "pack_density": s.pack_density, "minimized_energy": eq.progress.get("minimized_energy"),
            "compress_pressure": s.compress_pressure, "compress_time": eq.progress["steps"]["compress"] * s.timestep,
            "pressure": s.pressure, "barostat": "MonteCarloBarostat", "npt_time": eq.progress["steps"]["npt"] * s.timestep,
            "density_converged": eq.progress.get("converged"), "density_tolerance": s.density_tolerance,
            "final_density": summary["density"],
            "blocks": [{k: b[k] for k in ("stage", "time", "density", "potential_energy", "temperature")}
                       for b in eq.progress["blocks"]],
            "nvt_equilibration_time": s.nvt_steps * s.timestep,
        },
    }
    info = SystemInfo(name="electrolyte", units=units_block("md"), temperature=s.temperature, md_timestep=s.timestep,
                      periodic=True, particle_types=list(es.atom_types), particle_masses=mass.tolist(),
                      box=[length, length, length, 90.0, 90.0, 90.0])
    meta = TrajectoryMetadata(kind="reference_md", trajectory=f"{name}.xtc", topology=f"{name}.pdb", system=info,
                              save_interval=s.save_steps * s.timestep, n_frames=n_frames, start_time=0.0,
                              coordinates="unwrapped", provenance=provenance, summary=summary, extra=extra)
    write_sidecar(meta, out / f"{name}.xtc")
    if not complete:
        return summary
    index = {"format": "cgsim-dataset", "system": "electrolyte", "units": units_block("md"), "provenance": provenance,
             "molecules": [{"name": name, "topology": f"{name}.pdb", "n_atoms": comp.n_atoms,
                            "composition": extra["composition"],
                            "files": [{"trajectory": f"{name}.xtc", "n_frames": n_frames,
                                       "save_interval": meta.save_interval}],
                            "summary": summary}]}
    write_json_atomic(out / "dataset.json", index)
    remove_chunks(out)
    eq_dir = out / RUN_DIR / EQ_DIR
    for f in list(eq_dir.glob("state_*.xml")) + [eq_dir / "equilibrated.npz"]:
        f.unlink(missing_ok=True)
    return summary
