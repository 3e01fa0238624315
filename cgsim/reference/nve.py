"""Energy drift of a short NVE run: the integration check of a reference run.

:func:`run_nve` integrates an OpenMM System in NVE (velocity Verlet) and records its energies;
:func:`energy_drift_fit` fits their drift and fluctuation; :func:`nve_energy_drift` does both
from the latest saved state of an electrolyte run directory (nothing written). Units kJ/mol,
ps (drift per ns), K.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.unit as u
from tqdm.auto import tqdm

from cgsim.errors import CgsimInputError
from cgsim.reference import electrolyte as el
from cgsim.reference.electrolyte_run import latest_state, open_run
from cgsim.reference.platforms import select_platform
from cgsim.units import BOLTZMANN


def energy_drift_fit(times: np.ndarray, total: np.ndarray, kinetic: np.ndarray, n_atoms: int, dof: int,
                     temperature: float) -> dict[str, Any]:
    """Linear drift and fluctuation of the total energy of an NVE run.

    Parameters
    ----------
    times : numpy.ndarray
        Sample times, shape (n,), ps.
    total, kinetic : numpy.ndarray
        Total and kinetic energy, shape (n,), kJ/mol.
    n_atoms : int
        Atoms in the system.
    dof : int
        Degrees of freedom (3 n_atoms - constraints - 3 with the centre-of-mass motion removed).
    temperature : float
        Reference temperature for the kT-scaled drift, K.

    Returns
    -------
    dict
        ``drift_kj_mol_ns`` (slope of a least-squares line, whole system), ``drift_stderr_kj_mol_ns``
        (its ordinary least-squares standard error; samples are correlated, so a lower bound), ``drift_per_atom``
        and ``drift_per_dof`` (kJ/mol/ns), ``drift_kT_per_dof_ns`` (per degree of freedom in
        units of kT), ``total_energy_std`` (kJ/mol, about the line), ``kinetic_energy_std``,
        ``relative_fluctuation`` = std(E_total about the line) / std(E_kinetic) (dimensionless;
        << 1 for a well-integrated run), ``mean_temperature`` (K).
    """
    t = np.asarray(times, dtype=float)
    e = np.asarray(total, dtype=float)
    k = np.asarray(kinetic, dtype=float)
    if t.size < 3 or not (e.shape == k.shape == t.shape):
        raise CgsimInputError("nve.samples", f"expected >= 3 energy samples of equal length, got {t.size}")
    slope, intercept = np.polyfit(t, e, 1)
    resid = e - (slope * t + intercept)
    drift = float(slope) * 1000.0  # kJ/mol/ps -> kJ/mol/ns
    tc = t - t.mean()
    stderr = float(np.sqrt(resid.var(ddof=2) / (tc @ tc))) * 1000.0
    k_std = float(k.std())
    return {"drift_kj_mol_ns": drift, "drift_stderr_kj_mol_ns": stderr,
            "drift_per_atom": drift / n_atoms, "drift_per_dof": drift / dof,
            "drift_kT_per_dof_ns": drift / dof / (BOLTZMANN * temperature),
            "total_energy_std": float(resid.std()), "kinetic_energy_std": k_std,
            "relative_fluctuation": float(resid.std()) / k_std if k_std > 0 else float("nan"),
            "energy_change": float(e[-1] - e[0]), "mean_temperature": float(2.0 * k.mean() / (dof * BOLTZMANN)),
            "units": "kJ/mol/ns, kJ/mol, K"}


def run_nve(system: openmm.System, positions: np.ndarray, box_length: float, timestep: float, time_ps: float, *,
            velocities: np.ndarray | None = None, temperature: float = 400.0, sample_steps: int = 10,
            platform: str = "CPU", threads: int = 1, seed: int = 0, progress: bool = True,
            desc: str = "NVE") -> dict[str, Any]:
    """Integrate a System in NVE (velocity Verlet) and record its energies.

    Parameters
    ----------
    system : openmm.System
        The System, without thermostat or barostat forces.
    positions : numpy.ndarray
        Start positions, shape (n_atoms, 3), nm.
    box_length : float
        Cubic box edge, nm.
    timestep : float
        Step, ps.
    time_ps : float
        Length of the run, ps (> 0).
    velocities : numpy.ndarray, optional
        Start velocities, shape (n_atoms, 3), nm/ps; drawn at ``temperature`` if None.
    temperature : float
        K, for drawn velocities and the kT-scaled drift.
    sample_steps : int
        Steps between energy samples.
    platform : str
        OpenMM platform name (``"CPU"``, ``"CUDA"``, ...).
    threads : int
        CPU threads (CPU platform).
    seed : int
        Seed of drawn velocities.
    progress : bool
        Show a progress bar.
    desc : str
        Label of the progress bar.

    Returns
    -------
    dict
        :func:`energy_drift_fit` plus ``time_ps``, ``timestep``, ``steps``, ``n_atoms``, ``dof``,
        ``n_constraints``, ``constraint_tolerance``, ``integrator``, ``platform``, ``threads``,
        ``velocities`` (``"from state"`` / ``"drawn at T"``), ``wall_seconds`` and the sampled
        series ``t`` / ``e_total`` / ``e_kinetic``.
    """
    if not (isinstance(time_ps, int | float) and math.isfinite(time_ps) and time_ps > 0):
        raise CgsimInputError("nve.time", f"expected a positive time in ps, got {time_ps!r}")
    n_steps = int(round(time_ps / timestep))
    sample_steps = max(1, min(int(sample_steps), max(1, n_steps // 3)))
    n_samples = n_steps // sample_steps
    if n_samples < 3:
        raise CgsimInputError("nve.time", f"{time_ps} ps is fewer than 3 samples of {sample_steps} steps; run longer")
    platform_obj, props, platform = select_platform(platform, threads)
    integrator = openmm.VerletIntegrator(timestep * u.picosecond)
    context = openmm.Context(system, integrator, platform_obj, props)
    context.setPeriodicBoxVectors(*(np.eye(3) * float(box_length)))
    context.setPositions(np.asarray(positions) * u.nanometer)
    context.applyConstraints(integrator.getConstraintTolerance())
    if velocities is None:
        context.setVelocitiesToTemperature(temperature * u.kelvin, int(seed))
        vel_source = "drawn at T"
    else:
        context.setVelocities(np.asarray(velocities) * u.nanometer / u.picosecond)
        vel_source = "from state"
    context.applyVelocityConstraints(integrator.getConstraintTolerance())
    n_atoms = system.getNumParticles()
    has_cmm = any(isinstance(f, openmm.CMMotionRemover) for f in system.getForces())
    dof = 3 * n_atoms - system.getNumConstraints() - (3 if has_cmm else 0)
    t, e_tot, e_kin = [], [], []

    def sample(step: int) -> None:
        st = context.getState(getEnergy=True)
        k = st.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
        p = st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
        if not (math.isfinite(k) and math.isfinite(p)):
            raise CgsimInputError("nve", f"energy became NaN after {step * timestep:g} ps of NVE")
        t.append(step * timestep)
        e_tot.append(k + p)
        e_kin.append(k)

    t_start = time.perf_counter()
    sample(0)
    bar = tqdm(total=n_samples * sample_steps, unit="step", disable=not progress, desc=desc, dynamic_ncols=True,
               mininterval=2.0)
    try:
        for s in range(1, n_samples + 1):
            integrator.step(sample_steps)
            sample(s * sample_steps)
            bar.update(sample_steps)
            if s % 50 == 0 and len(t) >= 3:
                slope = np.polyfit(t, e_tot, 1)[0] * 1000.0
                bar.set_postfix_str(f"drift {slope / n_atoms:+.3g} kJ/mol/ns/atom")
    finally:
        bar.close()
    out = energy_drift_fit(np.array(t), np.array(e_tot), np.array(e_kin), n_atoms, dof, temperature)
    out.update({"time_ps": float(n_samples * sample_steps * timestep), "timestep": float(timestep),
                "steps": int(n_samples * sample_steps), "sample_steps": int(sample_steps), "n_atoms": int(n_atoms),
                "dof": int(dof), "n_constraints": int(system.getNumConstraints()),
                "constraint_tolerance": float(integrator.getConstraintTolerance()), "integrator": "VerletIntegrator",
                "platform": platform, "precision": props.get("Precision"),
                "threads": int(threads) if platform in ("CPU", "OpenCL") else None,
                "velocities": vel_source, "wall_seconds": time.perf_counter() - t_start,
                "t": np.round(t, 4).tolist(), "e_total": np.round(e_tot, 3).tolist(),
                "e_kinetic": np.round(e_kin, 3).tolist()})
    return out


def nve_energy_drift(directory: str | Path, time_ps: float = 10.0, *, platform: str = "CPU", threads: int = 1,
                     sample_steps: int = 10, seed: int = 0, progress: bool = True,
                     forcefield: str | Path | None = None) -> dict[str, Any]:
    """Energy drift of a short NVE run from a run's latest saved state.

    The System is rebuilt exactly as the run builds it (:func:`cgsim.reference.electrolyte.
    create_system` with the settings of its ``identity.json``: PME, cutoff, charge scale,
    HBonds constraints, hydrogen mass), the box is that of the state, and it is integrated
    with a :class:`openmm.VerletIntegrator` at the run's time step (2 fs by default).
    Nothing is written.

    Parameters
    ----------
    directory : path-like
        The run directory (finished or in progress).
    time_ps : float
        NVE length, ps.
    platform, threads, sample_steps, seed, progress
        As in :func:`run_nve`.
    forcefield : path-like, optional
        As in :func:`open_run`.

    Returns
    -------
    dict
        :func:`run_nve`'s result plus ``state`` (where the start came from).
    """
    run = open_run(directory, forcefield)
    pos, vel, box, source = latest_state(run)
    s = run.settings
    top = el.build_topology(s.composition, box_length=box)
    es = el.create_system(top, **s.system_kwargs())
    out = run_nve(es.system, pos, box, s.timestep, time_ps, velocities=vel, temperature=s.temperature,
                  sample_steps=sample_steps, platform=platform, threads=threads, seed=seed, progress=progress,
                  desc=f"NVE {run.path.name}")
    out["state"] = source
    out["box_length"] = box
    return out
