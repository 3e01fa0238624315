"""Where the electrolyte reference MD spends its time (OpenMM), and how fast each platform runs it.

For each run directory (finished or in progress) it rebuilds the production System exactly as
the run does (``identity.json`` settings: PME, 1 nm cutoff, x0.8 ionic charges, HBonds, the
run's hydrogen mass), starts from the run's last frame, and measures on ``--platform`` with
``--threads`` threads (:func:`cgsim.reference.platforms.select_platform`: mixed precision on
OpenCL / CUDA):

- the wall time of one force evaluation per force group (bonded terms; LJ with OPLS geometric
  mixing, a ``CustomNonbondedForce``; Coulomb with PME + 1-4 terms, a ``NonbondedForce``) and
  of all of them together;
- the same LJ in OpenMM's native ``NonbondedForce`` with its Lorentz-Berthelot rule (*not* the
  force field, whose combining rule is geometric: a speed reference only, to show what the
  exact rule costs);
- production steps per second with the run's integrator (Langevin 0.1/ps, its time step), and
  ns/day.

    .venv/bin/python bench/bench_electrolyte_md.py data/electrolyte/*/*/ --threads 1 [--platform OpenCL]

With ``--check-forces`` it also compares, on 5 frames spread over each run, the energies and
forces of ``--platform`` with those of the CPU platform (per force group: energy difference,
relative rms and largest force difference), the check behind using another platform for the
shipped data.

Prints a Markdown table (one row per run) and writes JSON with ``--output``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.unit as u

from cgsim.reference import electrolyte as el
from cgsim.reference.electrolyte_generate import ns_per_day
from cgsim.reference.electrolyte_validate import open_run, production_frames
from cgsim.reference.md_cost import openmm_context


def production_system(run_dir: Path) -> tuple[Any, Any, el.ElectrolyteSystem]:
    """A run's settings, its production frames and its System rebuilt as the run builds it."""
    run = open_run(run_dir)
    frames = production_frames(run)
    s = run.settings
    es = el.create_system(el.build_topology(s.composition, box_length=frames.box_length), **s.system_kwargs())
    return s, frames, es


def time_forces(ctx: openmm.Context, groups: int, repeats: int) -> float:
    """Mean wall seconds of one force evaluation of the force groups in the bit mask ``groups``."""
    ctx.getState(getForces=True, groups=groups)  # warm-up (neighbour list, kernels)
    t0 = time.perf_counter()
    for _ in range(repeats):
        ctx.getState(getForces=True, groups=groups)
    return (time.perf_counter() - t0) / repeats


def lorentz_berthelot_lj(es: el.ElectrolyteSystem, cutoff: float) -> openmm.System:
    """A System holding only the LJ terms, combined by OpenMM's native Lorentz-Berthelot rule."""
    system = openmm.System()
    for i in range(es.system.getNumParticles()):
        system.addParticle(es.system.getParticleMass(i))
    lj = next(f for f in es.system.getForces() if isinstance(f, openmm.CustomNonbondedForce))
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    nb.setCutoffDistance(cutoff)
    nb.setUseDispersionCorrection(True)
    for i in range(system.getNumParticles()):
        nb.addParticle(0.0, float(es.sigma[i]), float(es.epsilon[i]))
    for k in range(lj.getNumExclusions()):
        i, j = lj.getExclusionParticles(k)
        nb.addException(i, j, 0.0, 1.0, 0.0)
    system.addForce(nb)
    return system


def measure(run_dir: Path, platform: str, threads: int, repeats: int, seconds: float, seed: int = 0) -> dict[str, Any]:
    """Force-group costs and production speed of one run's System (see the module docstring)."""
    s, frames, es = production_system(run_dir)
    box, xyz = frames.box_length, frames.xyz[-1]
    integ = openmm.LangevinMiddleIntegrator(s.temperature * u.kelvin, s.production_friction / u.picosecond,
                                            s.timestep * u.picosecond)
    integ.setRandomNumberSeed(seed + 1)
    ctx = openmm_context(es.system, integ, platform, threads, box, xyz)
    ms = {name: 1e3 * time_forces(ctx, 1 << group, repeats) for name, group in
          (("bonded", el.GROUP_BONDED), ("lj_geometric", el.GROUP_LJ), ("coulomb_pme", el.GROUP_COULOMB))}
    ms["all"] = 1e3 * time_forces(ctx, -1, repeats)
    lb = lorentz_berthelot_lj(es, float(s.cutoff))
    ctx_lb = openmm_context(lb, openmm.VerletIntegrator(0.001), platform, threads, box, xyz)
    ms["lj_lorentz_berthelot_native"] = 1e3 * time_forces(ctx_lb, -1, repeats)
    del ctx_lb

    ctx.setVelocitiesToTemperature(s.temperature * u.kelvin, seed + 1)
    integ.step(100)  # warm-up
    steps, chunk = 0, 100
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        integ.step(chunk)
        steps += chunk
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    del ctx
    return {"run": str(run_dir), "atoms": es.system.getNumParticles(), "box_nm": box, "timestep_ps": s.timestep,
            "hydrogen_mass": s.hydrogen_mass, "platform": platform, "threads": threads,
            "force_ms": ms, "lj_share": ms["lj_geometric"] / ms["all"], "steps": steps, "wall_s": wall,
            "steps_per_s": steps / wall, "ns_per_day": ns_per_day(steps * s.timestep, wall),
            "ns_per_cpu_day": ns_per_day(steps * s.timestep, cpu)}


def force_agreement(run_dir: Path, platform: str, threads: int, n_frames: int = 5) -> list[dict[str, Any]]:
    """Energies and forces of ``platform`` against the CPU platform on frames of one run.

    Returns one dict per (frame, force group): ``frame``, ``group``, ``energy`` (CPU, kJ/mol),
    ``d_energy`` (platform - CPU, kJ/mol), ``rms_rel`` (rms force difference / rms force) and
    ``max_rel`` (largest per-atom force difference / mean per-atom force).
    """
    _, frames, es = production_system(run_dir)
    contexts = {name: openmm_context(es.system, openmm.VerletIntegrator(0.001), name, threads, frames.box_length,
                                     frames.xyz[0]) for name in ("CPU", platform)}
    groups = (("bonded", 1 << el.GROUP_BONDED), ("lj_geometric", 1 << el.GROUP_LJ),
              ("coulomb_pme", 1 << el.GROUP_COULOMB), ("all", -1))
    rows = []
    for k in np.linspace(0, len(frames.xyz) - 1, n_frames).astype(int):
        got = {}
        for name, ctx in contexts.items():
            ctx.setPositions(frames.xyz[k] * u.nanometer)
            for gname, mask in groups:
                st = ctx.getState(getForces=True, getEnergy=True, groups=mask)
                got[name, gname] = (st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole),
                                    st.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer))
        for gname, _ in groups:
            (e0, f0), (e1, f1) = got["CPU", gname], got[platform, gname]
            diff = np.linalg.norm(f1 - f0, axis=1)
            rows.append({"frame": int(k), "group": gname, "energy": float(e0), "d_energy": float(e1 - e0),
                         "rms_rel": float(np.sqrt((diff**2).mean() / (f0**2).sum(axis=1).mean())),
                         "max_rel": float(diff.max() / np.linalg.norm(f0, axis=1).mean())})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories of `cgsim generate system=electrolyte`")
    ap.add_argument("--platform", default="CPU", help="OpenMM platform (CPU, OpenCL, CUDA; cgsim.reference.platforms)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (CPU platform and pocl's CPU OpenCL)")
    ap.add_argument("--repeats", type=int, default=30, help="force evaluations per timing")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed production window per run")
    ap.add_argument("--check-forces", action="store_true", help="compare energies and forces with the CPU platform")
    ap.add_argument("--output", type=Path, help="JSON file for the results")
    args = ap.parse_args(argv)
    rows = []
    print(f"# {platform.processor() or platform.machine()}, OpenMM {openmm.__version__}, {args.platform}, {args.threads} thread(s)")
    print("| run | atoms | dt, fs | bonded, ms | LJ geometric (custom), ms | Coulomb PME, ms | all, ms "
          "| LJ share | LJ Lorentz-Berthelot (native), ms | steps/s | ns/day |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run_dir in args.runs:
        r = measure(run_dir, args.platform, args.threads, args.repeats, args.seconds)
        rows.append(r)
        f = r["force_ms"]
        print(f"| {run_dir.name} | {r['atoms']} | {1e3 * r['timestep_ps']:.0f} | {f['bonded']:.2f} | "
              f"{f['lj_geometric']:.2f} | {f['coulomb_pme']:.2f} | {f['all']:.2f} | {100 * r['lj_share']:.0f} % | "
              f"{f['lj_lorentz_berthelot_native']:.2f} | {r['steps_per_s']:.1f} | {r['ns_per_day']:.1f} |", flush=True)
        if args.check_forces and args.platform != "CPU":
            r["force_agreement"] = force_agreement(run_dir, args.platform, args.threads)
            for gname in ("bonded", "lj_geometric", "coulomb_pme", "all"):
                g = [a for a in r["force_agreement"] if a["group"] == gname]
                print(f"  {run_dir.name} {gname} vs CPU over {len(g)} frames: |dE| <= {max(abs(a['d_energy']) for a in g):.4f} "
                      f"kJ/mol, force rms rel <= {max(a['rms_rel'] for a in g):.1e}, max rel <= {max(a['max_rel'] for a in g):.1e}")
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
