"""``cgsim generate system=chain``: reference MD of many independent graft copolymer chains.

Writes, for each chain ``NAME`` (``seq_000``, ...), into the output directory:

- ``NAME.pdb``   topology (one residue per monomer, bead names = bead types, bonds)
- ``NAME.xtc``   unwrapped frames every ``save_interval`` over ``dense_time``
- ``NAME.json``  metadata sidecar (units, sequence, provenance, bond length, Rg, T)
- ``NAME_long.xtc`` + ``NAME_long.json`` when ``sparse_interval`` is set

and ``dataset.json`` indexing all chains. Lengths in files are nm with sigma = 1 nm by
default, so numbers read in nm are numbers in sigma.
"""

from __future__ import annotations

import math
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
from cgsim.reference.chain import (
    ChainModel,
    ChainTopology,
    build_system,
    chain_topology,
    initial_conformation,
    mdtraj_topology,
    place_chains,
)
from cgsim.reference.platforms import minimize_energy
from cgsim.reference.runner import ChunkedRun, Molecule, RunPlan, read_chunks, remove_chunks
from cgsim.reference.sequence import draw_sequences
from cgsim.units import LJUnits, units_block


def _positive(cfg: DictConfig, key: str, allow_none: bool = False) -> float | None:
    value = cfg.get(key)
    if value is None and allow_none:
        return None
    if value is None or not math.isfinite(float(value)) or float(value) <= 0:
        raise CgsimInputError(f"system.{key}", f"expected a positive number, got {value!r}")
    return float(value)


def _steps(interval: float, dt: float, key: str) -> int:
    n = interval / dt
    if abs(n - round(n)) > 1e-6 * max(1.0, n) or round(n) < 1:
        raise CgsimInputError(f"system.{key}", f"{interval} is not a positive whole number of time steps of {dt}")
    return int(round(n))


def chain_model(cfg: DictConfig) -> ChainModel:
    """The :class:`ChainModel` described by a ``system=chain`` config."""
    return ChainModel(
        monomers={k: tuple(v) for k, v in cfg.monomers.items()},
        epsilon=dict(cfg.epsilon),
        mass=dict(cfg.mass),
        nonbonded=cfg.nonbonded,
        lj_cutoff=float(cfg.lj_cutoff),
        fene_k=float(cfg.fene_k),
        fene_r0=float(cfg.fene_r0),
    )


def chain_sequences(cfg: DictConfig, model: ChainModel) -> list[str]:
    """The sequences to simulate: the given ones, or ``n_chains`` drawn from ``seed``."""
    if cfg.sequences is not None:
        seqs = list(cfg.sequences)
        if not seqs:
            raise CgsimInputError("system.sequences", "expected at least one sequence (or null to draw them)")
        return seqs
    if int(cfg.n_chains) <= 0:
        raise CgsimInputError("system.n_chains", f"expected a positive number of chains, got {cfg.n_chains}")
    lo, hi = (int(x) for x in cfg.n_monomers)
    if lo <= 0 or hi < lo:
        raise CgsimInputError("system.n_monomers", f"expected [min, max] with 0 < min <= max, got [{lo}, {hi}]")
    rng = np.random.default_rng([int(cfg.seed), 1])
    return draw_sequences(int(cfg.n_chains), (lo, hi), sorted(model.monomers), rng)


def run_plan(cfg: DictConfig, frames_per_chunk: int) -> tuple[RunPlan, dict[str, int]]:
    """Steps and recorded frames from the time options (reduced units).

    Returns the plan and the step intervals ``{"dense": k, "dense_end": s, "sparse": m}``.
    """
    dt = _positive(cfg, "timestep")
    _positive(cfg, "temperature")
    _positive(cfg, "friction")
    prod = _positive(cfg, "production_time")
    eq = float(cfg.equilibration_time)
    if eq < 0:
        raise CgsimInputError("system.equilibration_time", f"expected a number >= 0, got {eq}")
    save = _positive(cfg, "save_interval")
    dense_time = _positive(cfg, "dense_time", allow_none=True) or prod
    if dense_time > prod:
        raise CgsimInputError("system.dense_time", f"{dense_time} exceeds production_time {prod}")
    if save > dense_time:
        raise CgsimInputError("system.save_interval", f"{save} exceeds production_time {prod} (or dense_time): no frame "
                              "after the first would be saved; expected save_interval <= production_time")
    dense = _steps(save, dt, "save_interval")
    dense_end = _steps(dense_time, dt, "dense_time")
    prod_steps = _steps(prod, dt, "production_time")
    frames = set(range(0, dense_end + 1, dense))
    sparse = 0
    if cfg.sparse_interval is not None:
        sparse = _steps(_positive(cfg, "sparse_interval"), dt, "sparse_interval")
        if sparse % dense:
            raise CgsimInputError("system.sparse_interval", f"expected a multiple of save_interval {save}")
        frames |= set(range(0, prod_steps + 1, sparse))
    if frames_per_chunk <= 0:
        raise CgsimInputError("frames_per_chunk", f"expected a positive number, got {frames_per_chunk}")
    plan = RunPlan(timestep=dt, equilibration_steps=int(round(eq / dt)),
                   frame_steps=np.array(sorted(frames), dtype=np.int64), frames_per_chunk=frames_per_chunk)
    return plan, {"dense": dense, "dense_end": dense_end, "sparse": sparse}


def radius_of_gyration(xyz: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Mass-weighted radius of gyration of each frame.

    Parameters
    ----------
    xyz : numpy.ndarray
        Positions, shape (n_frames, n_particles, 3).
    masses : numpy.ndarray
        Masses, shape (n_particles,).

    Returns
    -------
    numpy.ndarray
        Rg, shape (n_frames,), in the unit of ``xyz``.
    """
    w = masses / masses.sum()
    com = np.einsum("j,ijk->ik", w, xyz)
    return np.sqrt(np.einsum("j,ij->i", w, ((xyz - com[:, None, :]) ** 2).sum(-1)))


def _summary(xyz: np.ndarray, chain: ChainTopology, masses: np.ndarray, temps: np.ndarray, t_unit: float) -> dict[str, Any]:
    bonds = np.linalg.norm(xyz[:, chain.bonds[:, 0]] - xyz[:, chain.bonds[:, 1]], axis=-1)
    rg = radius_of_gyration(xyz.astype(np.float64), masses)
    return {
        "mean_bond_length": float(bonds.mean()),
        "std_bond_length": float(bonds.std()),
        "max_bond_length": float(bonds.max()),
        "mean_rg": float(rg.mean()),
        "std_rg": float(rg.std()),
        "mean_temperature": float(temps.mean() / t_unit),
        "units": "sigma, T*",
    }


def generate_chains(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) the chain reference MD described by ``cfg``; finalize the files.

    Parameters
    ----------
    cfg : DictConfig
        Root ``generate`` config with ``system=chain``.

    Returns
    -------
    dict
        Summary: output dir, number of chains, frames, wall time, speed figures.
    """
    sc = cfg.system
    model = chain_model(sc)
    seqs = chain_sequences(sc, model)
    chains = [chain_topology(s, model, where=f"system.sequences[{i}]") for i, s in enumerate(seqs)]
    plan, steps = run_plan(sc, int(cfg.frames_per_chunk))
    try:
        lj = LJUnits(**{k: float(v) for k, v in sc.lj_units.items()})
    except (TypeError, ValueError) as exc:
        raise CgsimInputError("system.lj_units", str(exc)) from None
    out = Path(cfg.output)

    system_cfg = OmegaConf.to_container(sc, resolve=True)
    system_cfg["sequences"] = seqs
    identity = {"system": system_cfg, "plan": {"equilibration_steps": plan.equilibration_steps,
                                               "n_frames": plan.n_frames, **steps}}

    rng = np.random.default_rng([int(sc.seed), 2])
    positions = place_chains([initial_conformation(c, rng) for c in chains], float(sc.spacing)) * lj.sigma
    system = build_system(chains, model, lj)
    temperature_K = lj.to_md(float(sc.temperature), "temperature")
    friction = float(sc.friction) / lj.tau
    dt_ps = plan.timestep * lj.tau
    plan_md = RunPlan(timestep=dt_ps, equilibration_steps=plan.equilibration_steps,
                      frame_steps=plan.frame_steps, frames_per_chunk=plan.frames_per_chunk)

    molecules: list[Molecule] = []
    offset = 0
    for i, chain in enumerate(chains):
        molecules.append(Molecule(name=f"{sc.name_prefix}_{i:03d}", atoms=np.arange(offset, offset + chain.n_beads),
                                  topology=mdtraj_topology(chain), extra={"sequence": chain.sequence}))
        offset += chain.n_beads

    def make_integrator(seed: int) -> openmm.Integrator:
        integ = openmm.LangevinMiddleIntegrator(temperature_K * u.kelvin, friction / u.picosecond, dt_ps * u.picosecond)
        integ.setRandomNumberSeed(int(seed) % 2**31)
        return integ

    def prepare(context: openmm.Context) -> None:
        minimize_energy(context, 1e-3, 2000, int(cfg.threads))

    t0 = time.perf_counter()
    runner = ChunkedRun(out, system, make_integrator, positions, molecules, plan_md, identity, seed=int(sc.seed),
                        platform=str(cfg.platform), threads=int(cfg.threads), progress=bool(cfg.progress),
                        time_unit=("tau", lj.tau), prepare=prepare)
    progress = runner.run()
    if not (out / "dataset.json").is_file():
        _finalize(out, cfg, progress, molecules, chains, model, lj, plan_md, steps, runner.platform_used)
    elapsed = time.perf_counter() - t0
    sps = runner.session["steps_per_second"]
    summary = {
        "output": str(out),
        "n_chains": len(chains),
        "n_beads": int(sum(c.n_beads for c in chains)),
        "frames": plan.n_frames,
        "wall_seconds": elapsed,
        "steps_per_second": sps,
        "chain_steps_per_second": sps * len(chains),
        "tau_per_second": sps * plan.timestep,
    }
    if runner.session["already_complete"]:
        print(f"generate chain: {out} already holds this run ({len(chains)} chains x {plan.n_frames} frames); nothing recomputed")
    else:
        print(f"generate chain: {len(chains)} chains x {plan.n_frames} frames -> {out} in {elapsed:.1f} s "
              f"({summary['chain_steps_per_second']:.3g} chain-steps/s, {summary['tau_per_second']:.3g} tau/s)")
    return summary



def _finalize(out: Path, cfg: DictConfig, progress: dict[str, Any], molecules: list[Molecule],
              chains: list[ChainTopology], model: ChainModel, lj: LJUnits, plan: RunPlan,
              steps: dict[str, int], platform: str) -> None:
    """Split the recorded chunks into per-chain PDB + XTC + sidecar files; write dataset.json."""
    sc = cfg.system
    xyz, times, temps = read_chunks(out, progress["chunks_done"])
    step_of = np.asarray(plan.frame_steps)
    dense_mask = (step_of % steps["dense"] == 0) & (step_of <= steps["dense_end"])
    sparse_mask = (step_of % steps["sparse"] == 0) if steps["sparse"] else None
    provenance = {
        "command": command_line("generate", "cgsim.reference.generate.run"),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "engine": "OpenMM",
        "platform": platform,
        "integrator": "LangevinMiddleIntegrator",
        "software": software_versions(),
        "created": now_iso(),
        "wall_seconds": progress.get("wall_seconds"),
    }
    index = []
    for k, (mol, chain) in enumerate(zip(molecules, chains, strict=True)):
        masses = np.array([model.mass[t] for t in chain.types])
        info = SystemInfo(name="chain", units=units_block("lj", lj), temperature=float(sc.temperature),
                          md_timestep=float(sc.timestep), periodic=False, particle_types=list(chain.types),
                          particle_masses=(masses * lj.mass).tolist(), box=None)
        mxyz = xyz[:, mol.atoms] / lj.sigma
        traj0 = md.Trajectory(xyz[:1, mol.atoms], mol.topology)
        with atomic_path(out / f"{mol.name}.pdb") as tmp:
            traj0.save_pdb(str(tmp))
        files = []
        for suffix, mask, interval in (("", dense_mask, steps["dense"]), ("_long", sparse_mask, steps["sparse"])):
            if mask is None:
                continue
            name = f"{mol.name}{suffix}"
            with atomic_path(out / f"{name}.xtc") as tmp:
                with md.formats.XTCTrajectoryFile(str(tmp), "w") as fh:
                    fh.write(xyz[mask][:, mol.atoms], time=times[mask].astype(np.float32))
            meta = TrajectoryMetadata(
                kind="reference_md", trajectory=f"{name}.xtc", topology=f"{mol.name}.pdb", system=info,
                save_interval=interval * float(sc.timestep), n_frames=int(mask.sum()), start_time=0.0,
                coordinates="unwrapped", provenance=provenance,
                summary=_summary(mxyz[mask], chain, masses, temps[mask, k], lj.temperature),
                extra={"sequence": chain.sequence, "n_monomers": len(chain.sequence),
                       "equilibration_time": float(sc.equilibration_time), "lj_units": lj.to_dict(),
                       "model": {"monomers": {a: list(b) for a, b in model.monomers.items()},
                                 "epsilon": model.epsilon, "nonbonded": model.nonbonded,
                                 "lj_cutoff": model.lj_cutoff, "fene_k": model.fene_k, "fene_r0": model.fene_r0}},
            )
            write_sidecar(meta, out / f"{name}.xtc")
            files.append({"trajectory": f"{name}.xtc", "n_frames": meta.n_frames, "save_interval": meta.save_interval})
        index.append({"name": mol.name, "topology": f"{mol.name}.pdb", "sequence": chain.sequence,
                      "n_beads": chain.n_beads, "files": files,
                      "summary": _summary(mxyz, chain, masses, temps[:, k], lj.temperature)})
    write_json_atomic(out / "dataset.json", {"format": "cgsim-dataset", "system": "chain", "units": units_block("lj", lj),
                                             "provenance": provenance, "molecules": index})
    remove_chunks(out)
