"""The cost of a system's reference MD, measured now: OpenMM's rate on the same system.

A learned step is only worth something against what it replaces, so its speed is stated as a
ratio to the reference MD of the **same** system on the **same** machine, timed in the same
process (``bench/bench_speed.py`` for the benchmarks, ``cgsim demo`` for its one-line speed-up).
This module rebuilds the reference system with the project's own generator code and times its
production integrator:

- :func:`openmm_chains`: coarse chains as ``cgsim generate system=chain`` simulated them
  (:func:`load_fine_chain` reads one from its trajectory and sidecar), all in one System;
- :func:`openmm_electrolyte`: the all-atom PEO + LiTFSI box of an electrolyte run directory with
  its production integrator (optionally another hydrogen mass / time step);
- :func:`time_openmm`: the timed window both use (warm-up, then whole chunks of steps).

Rates are simulated time per wall second (and per CPU second of this process) in the
system's own time unit: tau for chains, ps for the electrolyte.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
import openmm
import openmm.unit as u
from omegaconf import OmegaConf

from cgsim.errors import CgsimInputError
from cgsim.metadata import read_sidecar
from cgsim.reference.platforms import select_platform


def openmm_context(system: openmm.System, integrator: openmm.Integrator, platform: str = "CPU", threads: int = 1,
                   box: float | None = None, xyz: np.ndarray | None = None) -> openmm.Context:
    """An OpenMM Context for ``system`` on ``platform`` with ``threads`` threads.

    ``box`` (cubic edge, nm) and ``xyz`` (positions, shape (n_particles, 3), nm) are set when given.
    """
    plat, props, _ = select_platform(platform, threads)
    ctx = openmm.Context(system, integrator, plat, props)
    if box is not None:
        ctx.setPeriodicBoxVectors(*(np.eye(3) * box))
    if xyz is not None:
        ctx.setPositions(xyz * u.nanometer)
    return ctx


def time_openmm(integrator: openmm.Integrator, dt: float, warmup_s: float, seconds: float) -> dict[str, float]:
    """Steps of ``integrator`` in a timed window after a warm-up.

    Parameters
    ----------
    integrator : openmm.Integrator
        Bound to a Context already (positions and velocities set).
    dt : float
        Time step in the unit the rates are wanted in (tau or ps).
    warmup_s, seconds : float
        Wall seconds of the warm-up and of the timed window. Steps go in chunks sized to
        ~0.1 s, so the loop's overhead is negligible.

    Returns
    -------
    dict
        ``steps``, ``wall_s``, ``cpu_s`` (this process), ``steps_per_s``, ``sim_per_s``
        (simulated time per wall second) and ``sim_per_cpu_s``.
    """
    chunk, t0 = 10, time.perf_counter()
    while True:  # warm-up, growing the chunk until one takes ~0.1 s
        t1 = time.perf_counter()
        integrator.step(chunk)
        took = time.perf_counter() - t1
        if took < 0.05:
            chunk *= 2
        if time.perf_counter() - t0 >= warmup_s:
            break
    steps, w0, c0 = 0, time.perf_counter(), time.process_time()
    while steps == 0 or time.perf_counter() - w0 < seconds:
        integrator.step(chunk)
        steps += chunk
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"steps": steps, "wall_s": wall, "cpu_s": cpu, "steps_per_s": steps / wall,
            "sim_per_s": steps * dt / wall, "sim_per_cpu_s": steps * dt / max(cpu, 1e-9)}


@dataclass
class FineChain:
    """A reference chain as ``cgsim generate system=chain`` simulated it."""

    name: str
    n_beads: int
    config: Any  # the run's system config (provenance)
    sequence: str
    last_frame: np.ndarray  # (n_beads, 3), nm


def load_fine_chain(xtc: Path) -> FineChain:
    """Sequence, run config and last frame of a chain trajectory written by ``cgsim generate``.

    Raises
    ------
    CgsimInputError
        If the trajectory or its topology is missing, or its sidecar was not written by
        ``cgsim generate system=chain``.
    """
    xtc = Path(xtc)
    if not xtc.is_file() or not xtc.with_suffix(".pdb").is_file():
        raise CgsimInputError(str(xtc), "expected a chain trajectory of `cgsim generate system=chain` with its .pdb")
    meta = read_sidecar(xtc)
    try:
        cfg = OmegaConf.create(meta.provenance["config"]["system"])
        sequence = str(meta.extra["sequence"])
    except (KeyError, TypeError):
        raise CgsimInputError(f"{xtc} sidecar", "provenance.config.system and extra.sequence: expected the "
                              "record of a `cgsim generate system=chain` run") from None
    traj = md.load(str(xtc), top=str(xtc.with_suffix(".pdb")))
    return FineChain(name=xtc.stem, n_beads=traj.n_atoms, config=cfg, sequence=sequence,
                     last_frame=np.asarray(traj.xyz[-1], dtype=np.float64))


def openmm_chains(chains: list[FineChain], threads: int, warmup_s: float, seconds: float, seed: int = 0,
                  platform: str = "CPU") -> dict[str, Any]:
    """Time the chains as one OpenMM System (one chain: alone), built as ``cgsim generate`` builds it.

    Returns :func:`time_openmm`'s rates in tau plus ``n_chains``, ``beads``, ``dt`` (tau) and
    ``aggregate_sim_per_s`` / ``aggregate_sim_per_cpu_s`` (chain-tau: times the chain count).
    """
    from cgsim.reference.chain import build_system, chain_topology, place_chains
    from cgsim.reference.chain_generate import chain_model
    from cgsim.units import LJUnits

    if not chains:
        raise CgsimInputError("chains", "expected at least one chain to time")
    sc = chains[0].config
    for c in chains[1:]:
        if OmegaConf.to_container(c.config) != OmegaConf.to_container(sc):
            raise CgsimInputError(c.name, f"made by another `cgsim generate` run than {chains[0].name}; time them apart")
    model = chain_model(sc)
    lj = LJUnits(**{k: float(v) for k, v in sc.lj_units.items()})
    tops = [chain_topology(c.sequence, model) for c in chains]
    system = build_system(tops, model, lj)
    pos = place_chains([c.last_frame - c.last_frame.mean(axis=0) for c in chains], float(sc.spacing) * lj.sigma)
    dt_ps = float(sc.timestep) * lj.tau
    integ = openmm.LangevinMiddleIntegrator(lj.to_md(float(sc.temperature), "temperature") * u.kelvin,
                                            float(sc.friction) / lj.tau / u.picosecond, dt_ps * u.picosecond)
    integ.setRandomNumberSeed(seed + 1)
    ctx = openmm_context(system, integ, platform, threads, xyz=pos)
    ctx.setVelocitiesToTemperature(lj.to_md(float(sc.temperature), "temperature") * u.kelvin, seed + 1)
    res = time_openmm(integ, float(sc.timestep), warmup_s, seconds)  # rates in tau
    res.update(n_chains=len(chains), beads=system.getNumParticles(), dt=float(sc.timestep),
               aggregate_sim_per_s=res["sim_per_s"] * len(chains), aggregate_sim_per_cpu_s=res["sim_per_cpu_s"] * len(chains))
    del ctx
    return res


def openmm_electrolyte(run_dir: Path, threads: int, warmup_s: float, seconds: float, hydrogen_mass: float | None = None,
                       timestep: float | None = None, seed: int = 0, platform: str = "CPU") -> dict[str, Any]:
    """Time an electrolyte run's all-atom box with its production integrator.

    Parameters
    ----------
    run_dir : Path
        A ``cgsim generate system=electrolyte`` output directory with production frames.
    hydrogen_mass, timestep : float, optional
        Override the run's hydrogen mass (amu) and time step (ps); None keeps the run's.

    Returns
    -------
    dict
        :func:`time_openmm`'s rates in ps plus ``atoms``, ``dt_ps``, ``hydrogen_mass``,
        ``ns_per_day`` (wall), ``ns_per_cpu_day`` and the start frame, box, temperature, friction.
    """
    from cgsim.reference import electrolyte as el
    from cgsim.reference.electrolyte_generate import ns_per_day
    from cgsim.reference.electrolyte_validate import open_run, production_frames

    run = open_run(Path(run_dir))
    s = run.settings
    frames = production_frames(run)
    top = el.build_topology(s.composition, box_length=frames.box_length)
    kwargs = s.system_kwargs()
    if hydrogen_mass is not None:
        kwargs["hydrogen_mass"] = hydrogen_mass
    dt = float(timestep if timestep is not None else s.timestep)
    es = el.create_system(top, **kwargs)
    integ = openmm.LangevinMiddleIntegrator(s.temperature * u.kelvin, s.production_friction / u.picosecond,
                                            dt * u.picosecond)
    integ.setRandomNumberSeed(seed + 1)
    ctx = openmm_context(es.system, integ, platform, threads, box=frames.box_length, xyz=frames.xyz[-1])
    ctx.setVelocitiesToTemperature(s.temperature * u.kelvin, seed + 1)
    res = time_openmm(integ, dt, warmup_s, seconds)  # rates in ps
    res.update(atoms=es.system.getNumParticles(), dt_ps=dt, hydrogen_mass=kwargs["hydrogen_mass"],
               ns_per_day=ns_per_day(res["steps"] * dt, res["wall_s"]),
               ns_per_cpu_day=ns_per_day(res["steps"] * dt, res["cpu_s"]), start=f"{frames.source}, last frame",
               box_nm=frames.box_length, temperature_K=s.temperature, friction_per_ps=s.production_friction)
    del ctx
    return res
