"""Minimise, compress and equilibrate an electrolyte box at constant pressure, resumably.

:class:`Equilibration` runs stages 2-5 of :mod:`cgsim.reference.electrolyte_generate` (minimise,
compress, NPT until the density settles, then the box of the mean volume of the last window)
under ``OUT/.run/equilibration/``: ``progress.json`` (stage, steps, one block per NPT block
with its mean density), the OpenMM state of the last block and, when done,
``equilibrated.npz``. A run killed at any moment resumes from the last committed block.
MD units (nm, ps, K, bar, kJ/mol); densities g/cm^3.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.unit as u
from tqdm.auto import tqdm

from cgsim.errors import CgsimInputError
from cgsim.io_utils import atomic_path, write_json_atomic
from cgsim.reference import electrolyte as el
from cgsim.reference.electrolyte_settings import ElectrolyteSettings
from cgsim.reference.platforms import minimize_energy, select_platform
from cgsim.reference.runner import RUN_DIR
from cgsim.units import BOLTZMANN

EQ_DIR = "equilibration"


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
