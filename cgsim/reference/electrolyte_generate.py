"""``cgsim generate system=electrolyte``: all-atom PEO + LiTFSI reference MD.

The run, every stage resumable after a kill at any moment:

1. **build**: PEO chains and ions from :mod:`cgsim.reference.electrolyte`, packed by packmol
   into a periodic cube at ``pack_density``;
2. **minimise** (L-BFGS, ``minimize_tolerance``);
3. **compress**: NPT (MonteCarloBarostat) at ``compress_pressure`` for ``compress_time``;
4. **NPT** at ``pressure`` in blocks of ``npt_block`` (one checkpoint and one mean density per
   block) until the mean densities of the last two ``npt_window`` windows agree within
   ``density_tolerance`` (and at least ``npt_min_time`` has passed), or ``npt_max_time``;
5. the box is set to the mean volume of the last window (or to ``nvt_density`` when given;
   molecule centres scaled, molecules rigid), then **NVT** with a weak Langevin thermostat: ``nvt_equilibration_time`` unrecorded,
   then ``production_time`` with a frame every ``save_interval``
   (:class:`cgsim.reference.runner.ChunkedRun`);
6. **finalize**: ``NAME.pdb`` (topology: one chain per molecule, residues PEH / PEO / PET, LI,
   TFS, all bonds, box), ``NAME.xtc`` (unwrapped positions, molecules whole, box per frame),
   ``NAME.json`` (sidecar: units, force field, charge scaling, per-particle charges,
   equilibration history, checks) and ``dataset.json``.

State on disk, in ``OUT/.run/``: the ChunkedRun files (``identity.json``, ``progress.json``,
``state_*.xml``, ``chunks/``) and ``equilibration/`` (``progress.json``, the state of the last
equilibration block, ``equilibrated.npz``). A directory holding a different run is refused.

The options are validated in :mod:`cgsim.reference.electrolyte_settings`, stages 2-5 run in
:mod:`cgsim.reference.electrolyte_equilibration`; their names are importable from here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
import openmm
import openmm.unit as u
from omegaconf import DictConfig, OmegaConf

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
from cgsim.reference.electrolyte_equilibration import (  # noqa: F401 - re-exported
    EQ_DIR,
    Equilibration,
    EquilibrationResult,
    density_converged,
    ns_per_day,
    scale_box,
)
from cgsim.reference.electrolyte_settings import (  # noqa: F401 - re-exported
    ElectrolyteSettings,
    settings_from_config,
)
from cgsim.reference.runner import (
    RUN_DIR,
    ChunkedRun,
    Molecule,
    RunPlan,
    check_identity,
    read_chunks,
    remove_chunks,
)
from cgsim.units import units_block


def _identity(sc: DictConfig, s: ElectrolyteSettings) -> dict[str, Any]:
    system_cfg = OmegaConf.to_container(sc, resolve=True)
    system_cfg["n_salt"] = s.composition.n_salt
    system_cfg.pop("packmol", None)  # where the binary lives does not change the run
    if system_cfg.get("nvt_density") is None:  # added later: runs that leave it unset keep their identity
        system_cfg.pop("nvt_density", None)
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
    for f in list(eq_dir.glob("state_*.xml")) + list(eq_dir.glob("state_*.chk")) + [eq_dir / "equilibrated.npz"]:
        f.unlink(missing_ok=True)
    return summary
