"""Minimise, compress and equilibrate an electrolyte box at constant pressure, resumably.

:class:`Equilibration` runs stages 2-5 of :mod:`cgsim.reference.electrolyte_generate` (minimise,
compress, NPT until the density settles, then the box of the mean volume of the last window)
under ``OUT/.run/equilibration/``: ``progress.json`` (stage, steps, one block per NPT block
with its mean density), the OpenMM state of the last block (portable XML, plus the OpenMM
checkpoint that carries the integrator's and the barostat's random state) and, when done,
``equilibrated.npz``. A run killed at any moment resumes from the last committed block: bitwise
from the checkpoint on the platform it was written on, statistically from the XML state elsewhere
(:func:`cgsim.reference.runner.restore_state`).
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
from cgsim.reference.runner import (
    RUN_DIR,
    commit_checkpoint,
    nonzero_seed,
    platform_signature,
    restore_state,
)
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
        self.signature = platform
        self.context: openmm.Context | None = None
        self.resumed = "fresh"

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
        """Write the state (if any: the running context's present state) and its checkpoint, then the
        record that points to them; drop the old ones. The running context is then reinitialised
        from its own checkpoint, as a resumed run starts (so both continue bitwise alike)."""
        old, old_chk = progress.get("state"), progress.get("checkpoint")
        if state is not None:
            name = f"state_{len(progress['blocks']):06d}_{progress['stage']}.xml"
            with atomic_path(self.dir / name) as tmp:
                tmp.write_text(openmm.XmlSerializer.serialize(state))
            progress["state"] = name
            commit_checkpoint(self.dir, name, self.context, self.signature, progress)
        write_json_atomic(self.dir / "progress.json", progress)
        for f in (old, old_chk):
            if f and f not in (progress.get("state"), progress.get("checkpoint")):
                (self.dir / f).unlink(missing_ok=True)
        if state is not None and self.context is not None:
            self.context.reinitialize(preserveState=True)

    def _cleanup(self, progress: dict[str, Any]) -> None:
        for f in list(self.dir.glob("state_*.xml")) + list(self.dir.glob("state_*.chk")):
            if f.name not in (progress.get("state"), progress.get("checkpoint")):
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
        context, integrator, system, baro_index = self._open(progress, initial)
        self._clock = (time.perf_counter(), time.process_time(), float(progress["wall_seconds"]),
                       float(progress.get("cpu_seconds", 0.0)))
        if progress["stage"] == "minimize":
            self._minimize(context, progress)
        bar = tqdm(total=s.compress_steps + s.npt_max_steps, initial=progress["steps"]["compress"] + progress["steps"]["npt"],
                   unit="step", disable=not self.show_progress, desc=f"equilibrate {s.file_name}", dynamic_ncols=True,
                   mininterval=2.0)
        steps_session = 0
        try:
            while progress["stage"] in ("compress", "npt"):
                block = self._block(context, integrator, system.getForce(baro_index), progress)
                steps_session += s.block_steps
                bar.update(s.block_steps)
                rate = ns_per_day(steps_session * s.timestep, time.perf_counter() - self._clock[0])
                bar.set_postfix_str(f"{block['stage']} {block['density']:.4f} g/cm3, {rate:.3g} ns/day")
        finally:
            bar.close()
        return self._finish(context, progress, steps_session)

    def _stamp(self, progress: dict[str, Any]) -> None:
        """Wall and CPU seconds of the run so far, into ``progress``."""
        t_start, c_start, base_wall, base_cpu = self._clock
        progress["wall_seconds"] = base_wall + time.perf_counter() - t_start
        progress["cpu_seconds"] = base_cpu + time.process_time() - c_start

    def _open(self, progress: dict[str, Any], initial: Callable[[], tuple[np.ndarray, float]]
              ) -> tuple[openmm.Context, openmm.Integrator, openmm.System, int]:
        """The running context (System + barostat): the committed state restored, or the packed start."""
        s = self.s
        system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(self.es.system))
        baro = openmm.MonteCarloBarostat(s.pressure * u.bar, s.temperature * u.kelvin, s.barostat_interval)
        baro.setRandomNumberSeed(nonzero_seed(s.seed * 7919 + len(progress["blocks"])))
        baro_index = system.addForce(baro)
        integrator = openmm.LangevinMiddleIntegrator(s.temperature * u.kelvin, s.friction / u.picosecond,
                                                     s.timestep * u.picosecond)
        integrator.setRandomNumberSeed(nonzero_seed(s.seed * 100_003 + 13 * len(progress["blocks"]) + 1))
        platform, props, self.platform_used = select_platform(self.platform_name, self.threads)
        self.signature = platform_signature(self.platform_used, props)
        context = openmm.Context(system, integrator, platform, props)
        self.context = context
        if progress["state"]:
            self.resumed = restore_state(context, self.dir, progress, self.signature, f"{self.out} equilibration")
        else:
            positions, box = initial()
            context.setPeriodicBoxVectors(*(np.eye(3) * box))
            context.setPositions(positions * u.nanometer)
        return context, integrator, system, baro_index

    def _minimize(self, context: openmm.Context, progress: dict[str, Any]) -> None:
        """Minimise the packed start, draw velocities, commit; the next stage is compress (or NPT)."""
        s = self.s
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
        self._stamp(progress)
        self._commit(progress, context.getState(getPositions=True, getVelocities=True))

    def _block(self, context: openmm.Context, integrator: openmm.Integrator, barostat: openmm.MonteCarloBarostat,
               progress: dict[str, Any]) -> dict[str, Any]:
        """One compress or NPT block: integrate, log its mean density, move on a stage when due, commit."""
        s = self.s
        stage = progress["stage"]
        pressure = s.compress_pressure if stage == "compress" else s.pressure
        context.setParameter(openmm.MonteCarloBarostat.Pressure(), pressure)
        interval = s.compress_barostat_interval if stage == "compress" else s.barostat_interval
        if barostat.getFrequency() != interval:
            barostat.setFrequency(interval)
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
        self._stamp(progress)
        self._commit(progress, state)
        return block

    def _finish(self, context: openmm.Context, progress: dict[str, Any], steps_session: int) -> EquilibrationResult:
        """The final box: the mean volume of the last window, molecules rigidly moved; stage ``done``."""
        s = self.s
        state = context.getState(getPositions=True)
        positions = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer)
        npt_blocks = [b for b in progress["blocks"] if b["stage"] == "npt"]  # >= 1: npt_max_time > 0
        length = float(np.mean([b["volume"] for b in npt_blocks[-s.window_blocks:]])) ** (1.0 / 3.0)
        if s.nvt_density is not None:  # a density given from elsewhere (cgsim screen: the training runs')
            progress["npt_density"] = float(el.density_g_cm3(self.total_mass, length**3))
            length = el.box_length_for_density(self.total_mass, s.nvt_density)
        positions = scale_box(positions, self.molecules, self.masses, length / float(box[0, 0]))
        if s.nvt_density is not None:
            # a box set to a density from elsewhere may be squeezed beyond what the (brief) NPT relaxed:
            # rigidly moved molecules then overlap, and NVT at 4 fs blows up (seen in CI on a tiny box).
            # A local minimisation in the new box removes the overlaps; the NVT equilibration re-thermalises.
            positions = self._relax_in_box(context, positions, length)
        with atomic_path(self.dir / "equilibrated.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, positions=positions, box_length=length)
        progress["stage"] = "done"
        progress["box_length"] = length
        progress["density"] = float(el.density_g_cm3(self.total_mass, length**3))
        progress["npt_time"] = progress["steps"]["npt"] * s.timestep
        self._stamp(progress)
        wall, cpu = time.perf_counter() - self._clock[0], time.process_time() - self._clock[1]
        progress["last_session"] = {"steps": steps_session, "wall_seconds": wall,
                                    "ns_per_day": ns_per_day(steps_session * s.timestep, wall),
                                    "ns_per_cpu_day": ns_per_day(steps_session * s.timestep, cpu)}
        old_state, progress["state"] = progress["state"], None
        old_chk, progress["checkpoint"] = progress.get("checkpoint"), None
        write_json_atomic(self.dir / "progress.json", progress)
        for f in (old_state, old_chk):
            if f:
                (self.dir / f).unlink(missing_ok=True)
        self.context = None
        return EquilibrationResult(positions, length, progress)

    def _relax_in_box(self, context: openmm.Context, positions: np.ndarray, length: float) -> np.ndarray:
        """Positions after a local energy minimisation in a cubic box of ``length`` nm (barostat idle)."""
        s = self.s
        context.setPeriodicBoxVectors(*(np.eye(3) * length))
        context.setPositions(positions * u.nanometer)
        try:
            minimize_energy(context, s.minimize_tolerance, s.minimize_max_iterations, self.threads)
        except openmm.OpenMMException as exc:
            raise self._failure("rescale", 0.0, exc) from None
        out = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
        if not np.isfinite(out).all():
            raise CgsimInputError("equilibration.rescale", f"minimisation at system.nvt_density={s.nvt_density:g} "
                                  "g/cm3 gave NaN positions; the density is too high for this composition")
        return np.asarray(out, dtype=float)

    def _failure(self, stage: str, t: float, exc: Exception | None) -> CgsimInputError:
        detail = f"OpenMM: {str(exc).splitlines()[0]}" if exc is not None else "the energy is NaN"
        return CgsimInputError(f"equilibration.{stage}", f"the simulation blew up after {t:.1f} ps ({detail}); "
                               "try a smaller system.timestep, a lower system.pack_density or a larger system")
