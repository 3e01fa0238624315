"""Learned rollout vs OpenMM reference MD of the same systems: speed ratios (issue 9).

Both sides run in this one process, one after the other, on the same machine: OpenMM on its
CPU platform with ``Threads=--threads`` and torch with ``torch.set_num_threads(--threads)``
(default 1 each). Every rate is the simulated time of a timed window after a warm-up divided
by its wall time; the process's CPU seconds in the same window are recorded too (on a shared
machine, CPU / wall shows how much of the window the process actually ran, and the ratio of
CPU-time rates is what a quiet machine would give if both sides ran alone).

1. **Chain.** OpenMM: the all-bead (fine) chains ``data/chain/test/seq_00?`` rebuilt with the
   project's own code from each trajectory's sidecar (``cgsim.reference.chain.build_system``
   with the model, sequence and LJ units of the ``cgsim generate system=chain`` run that made
   it; LangevinMiddleIntegrator at its temperature, friction and time step), started from the
   last stored frame: each chain alone, and all of them as one System, as ``cgsim generate``
   integrates them (non-interacting chains ``spacing`` apart). Learned: the mapped chains
   ``data/chain/mapped/test/seq_00?`` in :class:`cgsim.rollout.engine.RolloutEngine` (what
   ``cgsim rollout`` runs), each chain alone and all of them as one batch (one disjoint graph),
   in simulated tau per wall second (learned dt = the checkpoint's ``data.learned_dt``; the
   mapped frame interval x ``data.stride`` must agree).
2. **Electrolyte.** OpenMM: the all-atom box of ``data/electrolyte/train/peo8x20_eoli16``,
   rebuilt from its run directory (``.run/identity.json``, read with
   :func:`cgsim.reference.electrolyte_validate.open_run`; the System from
   :func:`cgsim.reference.electrolyte.create_system` with the run's settings: PME 1 nm, HBonds,
   charges x 0.8, dispersion correction) at its last production frame and box; the production
   integrator of ``cgsim generate`` (LangevinMiddle, 400 K, 0.1/ps) at the run's own protocol
   (2 fs, natural masses; ``data/README.md``) and, for comparison, at the HMR protocol of the
   newer runs (H 3 amu, 4 fs). Learned: the mapped box ``data/electrolyte/mapped/train/
   peo8x20_eoli16`` in the engine, in ns/day (learned dt = stride 10 x 2 ps = 20 ps).
3. **With and without refinement.** "with": the refiner's schedule as trained (the chain
   checkpoint's; the stand-in's ``model/refinement=score``), network calls per step from
   :attr:`cgsim.model.refinement.ScoreRefiner.calls_per_step`; "without": the same model with
   the schedule emptied as ``cgsim rollout refine.levels=0 refine.steps_per_level=0
   refine.final_denoise=false`` does it (0 refiner calls).
4. **Scaling.** Cost per learned step against the number of beads, 10^2..10^5: periodic boxes
   at the mapped electrolyte's bead density, made of whole molecules of the mapped box (tiled
   k x k x k, then the molecules whose centre lies in a cube of the wanted volume; positions of
   every history frame shifted with their molecule), one-step rollouts from the initial
   history (nothing moves: no refiner, temperature 0), least-squares lines t = a + b N over all
   sizes and over N >= ``--knee`` (above it a layer's tensors are far beyond the CPU caches),
   and the exponent of a power law over the same sizes (1 = linear).

The learned side runs the engine with the stability guard that ``cgsim rollout`` adds by default
(limits from the initial frames, factors from ``conf/rollout.yaml``) and without the trajectory
writer (file I/O is not part of the step). With a checkpoint the model runs at the ``cgsim
rollout`` default temperature (1.0); without one (``--no-checkpoint``, or none found) it is an
untrained one of the experiment's size (:func:`bench_common.untrained_model`: decoders' last
layers zeroed, temperature 0) so that the graph stays that of the physical system: speed
depends on the graph, not on the weights. A trained model with its refiner is timed in one
continuous rollout (members the guard stops leave the batch and stop counting), and so is a
trained one-call model that has no refiner (it runs that way). Every other case (the stand-in, whose refiner only adds noise; a trained model without the refiner it
needs, which breaks within a step or two) is timed as one-step rollouts that each restart from
the initial histories, so that every timed step sees the physical graph; the guard's verdicts
are then only counted ("would stop"). For the stand-in without refiner (nothing moves) both
ways are timed, to show what restarting costs.

The scaling table also splits the CPU time into user and system (kernel) time: with glibc's
default allocator every large tensor is a fresh ``mmap`` whose pages fault in on first touch,
which shows up as system time (``GLIBC_TUNABLES=glibc.malloc.mmap_max=0`` removes it).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_speed.py --json outputs/bench/speed.json   # ~8 min
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_speed.py --quick      # ~1 min, for development
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_speed.py --parts scaling --sizes 1000 10000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import torch
from bench_common import StepTimer, refinement, refiner_calls, untrained_model
from omegaconf import OmegaConf
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cgsim.data.load import load_systems
from cgsim.data.windows import BeadTrajectory
from cgsim.data.windows import history_positions as initial_history
from cgsim.geometry import radius_graph
from cgsim.model.batch import SystemGraph
from cgsim.model.simulator import MultiScaleDynamics
from cgsim.reference.md_cost import (  # noqa: F401 - FineChain, time_openmm re-exported for tests
    FineChain,
    load_fine_chain,
    openmm_chains,
    openmm_electrolyte,
    time_openmm,
)
from cgsim.rollout.engine import Member, RolloutEngine, member_seed
from cgsim.rollout.hooks import StabilityGuard
from cgsim.rollout.limits import guard_limits

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT / "runs" / "chain_refine2" / "checkpoints" / "best.pt"
PARTS = ("chain", "electrolyte", "scaling")
DEFAULT_SIZES = [130, 300, 1000, 3000, 10_000, 30_000, 100_000]


# ------------------------------------------------------------------------------------------
# OpenMM side: cgsim.reference.md_cost (time_openmm, load_fine_chain, openmm_chains,
# openmm_electrolyte), shared with `cgsim demo`
# ------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------
# learned side
# ------------------------------------------------------------------------------------------
@dataclass
class LearnedSystem:
    """What the engine needs for one member: topology, initial history, guard limits."""

    name: str
    graph: SystemGraph
    history: torch.Tensor  # (n_beads, H, 3), nm
    max_bond: float
    min_distance: float


def learned_system(traj: BeadTrajectory, model: MultiScaleDynamics, stride: int, guard: Any) -> LearnedSystem:
    """Initial history and guard limits of a mapped system, as ``cgsim rollout`` sets them up."""
    hist = initial_history(traj, model.history, stride)
    longest, closest = guard_limits(traj, model.cutoff, int(guard.scan_frames))
    min_d = float(guard.min_distance) if guard.min_distance is not None else float(guard.min_distance_factor) * closest
    return LearnedSystem(traj.name, traj.graph, hist, float(guard.max_bond_factor) * longest, min_d)


def time_engine(model: MultiScaleDynamics, systems: list[LearnedSystem], temperature: float, seconds: float,
                max_steps: int, restart: bool = False, warmup: int = 2, seed: int = 0, min_steps: int = 3,
                redraws: int = 0) -> dict[str, Any]:
    """Run the systems as one batch in the rollout engine (with the guard): warm-up, then a timed window.

    ``restart=False``: one continuous rollout; members the guard stops leave the batch and stop
    counting (``member_steps``). ``restart=True``: every timed step is a one-step rollout from
    the initial histories, so the graph is that of the physical system at every step even for
    a model that cannot hold it (an untrained stand-in with refiner noise, a model that breaks
    without its refiner); every step counts, and the steps the guard would have stopped are
    counted in ``n_stopped``. ``redraws``: the guard resamples a failing step up to this many
    times before stopping a member (``cgsim rollout guard.redraws``); the redrawn steps' cost is
    part of the timing and their number is returned (continuous rollouts only; restarted steps
    are never redrawn).

    Returns the learned steps timed, wall and CPU seconds, the median step, the member-steps
    made and the guard's stops (with the first reason).
    """
    members = [Member(system=k, replica=0, name=s.name, graph=s.graph, seed=member_seed(seed, k, 0))
               for k, s in enumerate(systems)]
    timer = StepTimer()
    guard = StabilityGuard([s.max_bond for s in systems], [s.min_distance for s in systems])
    # redraws only in a continuous rollout: a restarted step that fails is counted ("would stop"), not redrawn
    engine = RolloutEngine(model, members, temperature, [guard, timer], max_redraws=0 if restart else redraws)
    initial = [s.history for s in systems]
    n_redrawn = 0
    reasons: list[str] = []

    def one_step() -> None:
        st = engine.initial_state(initial)
        engine.run(st, 1)
        reasons.extend(r for r in st.stop_reason if r)

    if restart:
        for _ in range(warmup):
            one_step()
        reasons.clear()
        timer.step_s.clear()
        steps, w0, c0, os0 = 0, time.perf_counter(), time.process_time(), os.times()
        while steps < min_steps or (steps < max_steps and time.perf_counter() - w0 < seconds):
            one_step()
            steps += 1
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        made = steps * len(members)
    else:
        state = engine.initial_state(initial)
        t0 = time.perf_counter()
        engine.run(state, warmup)
        per_step = (time.perf_counter() - t0) / warmup
        steps = int(min(max_steps, max(min_steps, seconds / max(per_step, 1e-9))))
        timer.step_s.clear()
        w0, c0, os0 = time.perf_counter(), time.process_time(), os.times()
        engine.run(state, warmup + steps)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        steps = state.step - warmup
        made = sum(max(0, (state.step if s < 0 else s - 1) - warmup) for s in state.stop_step)
        reasons = [r for r in state.stop_reason if r]
        n_redrawn = sum(state.redraws)
    os1 = os.times()
    return {"members": len(members), "beads": sum(s.graph.n_beads for s in systems), "restart": restart,
            "steps": steps, "wall_s": wall, "cpu_s": cpu, "user_s": os1.user - os0.user, "system_s": os1.system - os0.system,
            "step_ms_median": 1e3 * statistics.median(timer.step_s) if timer.step_s else math.nan,
            "member_steps": int(made), "n_stopped": len(reasons), "first_stop": reasons[0] if reasons else None,
            "redraws": int(n_redrawn)}


def rates(res: dict[str, Any], dt: float) -> dict[str, Any]:
    """Simulated time per wall (and CPU) second: per member and summed over members (``dt`` units)."""
    agg = res["member_steps"] * dt / max(res["wall_s"], 1e-12)
    agg_cpu = res["member_steps"] * dt / max(res["cpu_s"], 1e-12)
    return {**res, "sim_per_s": agg / res["members"], "aggregate_sim_per_s": agg,
            "sim_per_cpu_s": agg_cpu / res["members"], "aggregate_sim_per_cpu_s": agg_cpu}


def load_learned(kind: str, checkpoint: str | None, paths: list[str], device: torch.device) -> dict[str, Any]:
    """Model (as trained, refiner on), mapped systems, learned dt and a label, for ``kind`` (chain | electrolyte)."""
    if checkpoint:
        from cgsim.model.card import ModelCard
        from cgsim.model.checkpoint import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(checkpoint)
        card = ModelCard.from_checkpoint(ckpt, checkpoint)
        stride, learned_dt, unit = card.history_spacing, card.learned_dt, card.time_unit
        model = model_from_checkpoint(ckpt, device=device, use_ema=True)  # use_ema: cgsim rollout's default
        systems = load_systems(paths, "initial", atom_types=list(card.atom_types))
        if not card.matches_save_interval(systems.save_interval):
            raise SystemExit(f"{paths}: frames {systems.save_interval:g} apart x stride {card.stride} is not the "
                             f"checkpoint's learned dt {learned_dt:g}")
        label, temperature = f"checkpoint {checkpoint} (epoch {card.epoch})", 1.0
    else:
        systems = load_systems(paths, "initial")
        positions = torch.from_numpy(systems.trajectories[0].positions)
        model, cfg = untrained_model(kind, len(systems.atom_types), positions, refine=True)
        model = model.to(device)
        stride = int(cfg.data.stride)
        learned_dt, unit = systems.save_interval * stride, systems.time_unit
        label, temperature = f"untrained, experiment={kind} size, decoders' last layers zeroed", 0.0
    n_params = sum(p.numel() for p in model.parameters())
    return {"model": model.eval(), "systems": systems, "stride": stride, "learned_dt": learned_dt, "unit": unit,
            "label": label, "temperature": temperature, "n_params": n_params, "trained": bool(checkpoint)}


# ------------------------------------------------------------------------------------------
# periodic boxes of any size at the mapped electrolyte's bead density
# ------------------------------------------------------------------------------------------
def molecule_ids(graph: SystemGraph) -> np.ndarray:
    """Molecule index of each bead (connected components of the bead bonds)."""
    n = graph.n_beads
    b = graph.bead_bonds.numpy()
    adj = coo_matrix((np.ones(b.shape[1]), (b[0], b[1])), shape=(n, n))
    return connected_components(adj, directed=False)[1]


def _subset_maps(graph: SystemGraph, beads: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fine atoms of ``beads`` (sorted bead indices) and the atom/bead index maps of the subset."""
    bead_map = np.full(graph.n_beads, -1, dtype=np.int64)
    bead_map[beads] = np.arange(beads.size)
    a2b = graph.atom_to_bead.numpy()
    atoms = np.flatnonzero(bead_map[a2b] >= 0)
    atom_map = np.full(a2b.size, -1, dtype=np.int64)
    atom_map[atoms] = np.arange(atoms.size)
    return atoms, atom_map, bead_map


def periodic_box(graph: SystemGraph, history: torch.Tensor, n_target: int) -> tuple[SystemGraph, torch.Tensor]:
    """A periodic box of about ``n_target`` beads at the density of ``graph``'s box, of its whole molecules.

    The box (cubic, edge L0, N0 beads) is tiled k x k x k (k^3 N0 >= n_target); the molecules
    whose centre (of the current frame, wrapped into the tiled box) lies in the cube of edge
    ``L0 (n_target / N0)^(1/3)`` at the origin are kept, every history frame shifted with its
    molecule. Molecules near the new faces may overlap their images a little: harmless for
    timing (the graph keeps the bulk density of edges; ``edges/bead`` in the table shows it).

    Parameters
    ----------
    graph : SystemGraph
        A periodic, cubic mapped system.
    history : torch.Tensor
        Its initial history, (N0, H, 3), nm, unwrapped.
    n_target : int
        Beads wanted.

    Returns
    -------
    (SystemGraph, torch.Tensor)
        The new topology and history ((N, H, 3), nm).
    """
    if graph.box is None:
        raise SystemExit("periodic_box needs a periodic system")
    box0 = graph.box.numpy().astype(np.float64)
    if np.ptp(box0) > 1e-6 * box0.max():
        raise SystemExit(f"periodic_box needs a cubic box, got {box0}")
    l0, n0 = float(box0[0]), graph.n_beads
    k = max(1, math.ceil((n_target / n0) ** (1 / 3) - 1e-9))
    hist0 = history.numpy().astype(np.float64)
    mol0 = molecule_ids(graph)
    n_mol0 = int(mol0.max()) + 1
    shifts = np.array([[i, j, m] for i in range(k) for j in range(k) for m in range(k)], dtype=np.float64) * l0
    # tiled system: copy c holds beads c*n0 .. (c+1)*n0-1, atoms likewise
    hist = np.concatenate([hist0 + s for s in shifts])
    mol = np.concatenate([mol0 + c * n_mol0 for c in range(len(shifts))])
    edge = l0 * (n_target / n0) ** (1 / 3)
    # centres of the current frame (equal bead weights), wrapped into the tiled box
    n_mol = n_mol0 * len(shifts)
    centre = np.zeros((n_mol, 3))
    np.add.at(centre, mol, hist[:, -1])
    centre /= np.bincount(mol, minlength=n_mol)[:, None]
    wrap = np.floor(centre / (k * l0)) * (k * l0)
    hist -= wrap[mol][:, None, :]
    keep_mol = np.all(centre - wrap < edge, axis=1)
    beads = np.flatnonzero(keep_mol[mol])
    # the tiled topology, then the subset
    na0 = int(graph.atom_type.shape[0])
    tiled = SystemGraph(
        atom_type=graph.atom_type.repeat(len(shifts)),
        atom_bonds=torch.cat([graph.atom_bonds + c * na0 for c in range(len(shifts))], dim=1),
        atom_to_bead=torch.cat([graph.atom_to_bead + c * n0 for c in range(len(shifts))]),
        bead_bonds=torch.cat([graph.bead_bonds + c * n0 for c in range(len(shifts))], dim=1),
        n_beads=n0 * len(shifts), box=None)
    atoms, atom_map, bead_map = _subset_maps(tiled, beads)
    ab, bb = tiled.atom_bonds.numpy(), tiled.bead_bonds.numpy()
    ab = ab[:, (atom_map[ab[0]] >= 0) & (atom_map[ab[1]] >= 0)]
    bb = bb[:, (bead_map[bb[0]] >= 0) & (bead_map[bb[1]] >= 0)]
    out = SystemGraph(atom_type=tiled.atom_type[torch.from_numpy(atoms)],
                      atom_bonds=torch.from_numpy(atom_map[ab]),
                      atom_to_bead=torch.from_numpy(bead_map[tiled.atom_to_bead.numpy()[atoms]]),
                      bead_bonds=torch.from_numpy(bead_map[bb]), n_beads=int(beads.size),
                      box=torch.full((3,), edge, dtype=graph.box.dtype))
    return out, torch.from_numpy(hist[beads]).to(history.dtype)


def linear_fit(n: np.ndarray, t: np.ndarray, n_min: float = 0.0) -> dict[str, float]:
    """Least-squares t = a + b n over the sizes n >= ``n_min``, its R^2, and the exponent p of t ~ n^p (log-log)."""
    n, t = np.asarray(n, dtype=float), np.asarray(t, dtype=float)
    sel = n >= n_min
    n, t = n[sel], t[sel]
    if n.size < 2:
        return {}
    b, a = np.polyfit(n, t, 1)
    pred = a + b * n
    r2 = 1.0 - float(((t - pred) ** 2).sum() / max(((t - t.mean()) ** 2).sum(), 1e-300))
    p = float(np.polyfit(np.log(n), np.log(t), 1)[0])
    return {"n_min": float(n_min), "sizes": int(n.size), "intercept_ms": 1e3 * a, "slope_us_per_bead": 1e6 * b,
            "r2": r2, "exponent": p}


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------
def _g(x: float | None) -> str:
    """Compact number for the tables."""
    if x is None or not math.isfinite(x):
        return "-"
    if x == 0:
        return "0"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e5 else f"{x:.2e}"


def _learned_modes(model: MultiScaleDynamics, systems: list[LearnedSystem], temperature: float, dt: float,
                   args: argparse.Namespace, trained: bool) -> dict[str, Any]:
    """The systems as one batch with the refiner as trained ("refined") and without refiner calls ("plain").

    A continuous rollout for a trained model as it is run (with its refiner, or a one-call
    model without one, e.g. bond-tree noise); otherwise every timed step restarts from the
    initial histories (:func:`time_engine`): an untrained stand-in cannot hold its graph against
    the refiner's noise, and a trained model that needs its refiner breaks within a step or two
    without it.
    """
    res: dict[str, Any] = {}
    for mode, on in (("refined", True), ("plain", False)):
        with refinement(model, on, "bench_speed") as calls:
            if mode == "refined" and calls == 0:
                continue  # a model without refiner: one row
            restart = not trained or (model.refiner is not None and calls == 0)
            row = rates(time_engine(model, systems, temperature, args.seconds, args.max_steps, restart=restart,
                                    redraws=args.redraws), dt)
            res[mode] = {**row, "refiner_calls": calls}
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT) if DEFAULT_CHECKPOINT.is_file() else None,
                    help="chain checkpoint (default runs/chain_refine2/checkpoints/best.pt when present)")
    ap.add_argument("--no-checkpoint", action="store_true", help="chain side: untrained stand-in even if a checkpoint exists")
    ap.add_argument("--electrolyte-checkpoint", default=None, help="electrolyte checkpoint; default: untrained stand-in")
    ap.add_argument("--chains", default="seq_00?", help="chain names (glob) in --chain-fine and --chain-mapped")
    ap.add_argument("--chain-fine", default=str(ROOT / "data/chain/test"))
    ap.add_argument("--chain-mapped", default=str(ROOT / "data/chain/mapped/test"))
    ap.add_argument("--electrolyte-run", default=str(ROOT / "data/electrolyte/train/peo8x20_eoli16"))
    ap.add_argument("--electrolyte-mapped", default=str(ROOT / "data/electrolyte/mapped/train/peo8x20_eoli16"))
    ap.add_argument("--sizes", type=int, nargs="*", default=DEFAULT_SIZES, help="beads of the scaling boxes")
    ap.add_argument("--scaling-refine", action="store_true", help="scaling with the refiner on (default off)")
    ap.add_argument("--seconds", type=float, default=4.0, help="timed window of each learned measurement (about)")
    ap.add_argument("--max-steps", type=int, default=400, help="at most this many timed learned steps")
    ap.add_argument("--scaling-seconds", type=float, default=3.0, help="timed window per scaling size (>= 2 steps)")
    ap.add_argument("--knee", type=float, default=3000, help="second fit over sizes >= this (beyond the CPU caches)")
    ap.add_argument("--openmm-seconds", type=float, default=5.0, help="timed window of each OpenMM measurement")
    ap.add_argument("--openmm-warmup", type=float, default=2.0, help="untimed OpenMM seconds first")
    ap.add_argument("--per-chain", type=int, default=None, help="time only the first N chains one by one (default all)")
    ap.add_argument("--no-hmr", action="store_true", help="skip the OpenMM HMR 4 fs comparison row")
    ap.add_argument("--quick", action="store_true", help="short windows, 2 chains alone, sizes up to 3000")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (default all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--redraws", type=int, default=0,
                    help="guard.redraws of the continuous learned rollouts (the shipped models run with 3 and 10)")
    ap.add_argument("--openmm-platform", default="CPU",
                    help="OpenMM platform of the reference side (cgsim.reference.platforms; e.g. OpenCL on pocl)")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="cgsim.runtime.keep_freed_memory() first, as `cgsim rollout` does by default")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.keep_freed_memory:
        from cgsim.runtime import keep_freed_memory

        args.keep_freed_memory = keep_freed_memory()
    if args.quick:
        args.seconds, args.scaling_seconds = min(args.seconds, 1.5), min(args.scaling_seconds, 1.0)
        args.openmm_seconds, args.openmm_warmup = min(args.openmm_seconds, 2.0), min(args.openmm_warmup, 1.0)
        args.per_chain = 2 if args.per_chain is None else args.per_chain
        args.sizes = [n for n in args.sizes if n <= 3000]
    if args.no_checkpoint:
        args.checkpoint = None
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    t_start = time.perf_counter()
    from hydra import compose, initialize_config_dir

    from cgsim.cli import conf_dir, load_verb

    load_verb("rollout")
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        guard = compose("rollout", []).guard  # the guard `cgsim rollout` runs by default
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "python": platform.python_version(),
        "threads": args.threads, "openmm": f"{openmm.__version__} {args.openmm_platform} platform, threads={args.threads}",
        "torch": f"{torch.__version__} on {device}, set_num_threads({args.threads})",
        "guard": OmegaConf.to_container(guard), "args": vars(args)}
    print(f"# {out['date']} {out['machine']}; OpenMM {out['openmm']}; torch {out['torch']}. One process, the two "
          f"sides in turn. Learned side: RolloutEngine + StabilityGuard (bond > {guard.max_bond_factor} x longest, "
          f"beads < {guard.min_distance_factor} x closest initial approach), no file output", flush=True)

    # --- chain ----------------------------------------------------------------------------
    if "chain" in args.parts:
        names = sorted(p.name for p in Path(args.chain_mapped).glob(args.chains) if p.is_dir())
        if not names:
            raise SystemExit(f"no chains {args.chains!r} in {args.chain_mapped}")
        fine = [load_fine_chain(Path(args.chain_fine) / f"{n}.xtc") for n in names]
        lm = load_learned("chain", args.checkpoint, [str(Path(args.chain_mapped) / n) for n in names], device)
        model, dt = lm["model"], lm["learned_dt"]
        lsys = [learned_system(t, model, lm["stride"], guard) for t in lm["systems"].trajectories]
        alone = names if args.per_chain is None else names[:args.per_chain]
        print(f"\n## chain: learned model {lm['label']}, {lm['n_params']:,} parameters, cutoff {model.cutoff} nm, history "
              f"{model.history}, learned dt {dt:g} {lm['unit']}, temperature {lm['temperature']:g}, refiner "
              f"{refiner_calls(model)} calls/step as trained; OpenMM: dt {fine[0].config.timestep} tau, Langevin "
              f"{fine[0].config.friction}/tau, T* {fine[0].config.temperature}", flush=True)
        chain_rows = []
        cases = [([k], n) for k, n in enumerate(names) if n in alone] + [(list(range(len(names))), f"all {len(names)}")]
        for idx, label in cases:
            row: dict[str, Any] = {"system": label, "n_chains": len(idx), "fine_beads": sum(fine[k].n_beads for k in idx),
                                   "cg_beads": sum(lsys[k].graph.n_beads for k in idx)}
            row["openmm"] = openmm_chains([fine[k] for k in idx], args.threads, args.openmm_warmup, args.openmm_seconds,
                                          platform=args.openmm_platform)
            row.update(_learned_modes(model, [lsys[k] for k in idx], lm["temperature"], dt, args, lm["trained"]))
            chain_rows.append(row)
            om = row["openmm"]
            line = f"{label}: OpenMM {_g(om['aggregate_sim_per_s'])} tau/s"
            for mode in ("refined", "plain"):
                if mode in row:
                    r = row[mode]
                    line += (f"; learned {mode} ({r['refiner_calls']} calls) {_g(r['aggregate_sim_per_s'])} tau/s = "
                             f"x{_g(r['aggregate_sim_per_s'] / om['aggregate_sim_per_s'])} ({r['steps']} steps, "
                             f"{r['n_stopped']} stopped)")
            print(line, flush=True)
        out["chain"] = {"model": lm["label"], "n_params": lm["n_params"], "learned_dt": dt, "unit": lm["unit"],
                        "temperature": lm["temperature"], "openmm_dt": float(fine[0].config.timestep), "rows": chain_rows}
        del model, lm, lsys

    # --- electrolyte ----------------------------------------------------------------------
    le = load_learned("electrolyte", args.electrolyte_checkpoint, [args.electrolyte_mapped], device)
    emodel, edt = le["model"], le["learned_dt"]
    if le["unit"] != "ps":
        raise SystemExit(f"{args.electrolyte_mapped}: expected times in ps, got {le['unit']}")
    esys = learned_system(le["systems"].trajectories[0], emodel, le["stride"], guard)
    print(f"\n## electrolyte: learned model {le['label']}, {le['n_params']:,} parameters, cutoff {emodel.cutoff} nm, "
          f"history {emodel.history} x stride {le['stride']}, learned dt {edt:g} ps, temperature {le['temperature']:g}; "
          f"mapped box {esys.graph.n_beads} beads, {float(esys.graph.box[0]):.4g} nm", flush=True)
    if "electrolyte" in args.parts:
        protocols = [("production (2 fs, natural masses)", None, None)]
        if not args.no_hmr:
            protocols.append(("HMR (H 3 amu, 4 fs)", 3.0, 0.004))
        el_openmm = []
        for label, hm, ts in protocols:
            r = openmm_electrolyte(Path(args.electrolyte_run), args.threads, args.openmm_warmup, args.openmm_seconds,
                                   hm, ts, platform=args.openmm_platform)
            el_openmm.append({"protocol": label, **r})
            print(f"electrolyte OpenMM {label}: {r['atoms']} atoms, {_g(r['ns_per_day'])} ns/day "
                  f"({_g(r['ns_per_cpu_day'])} per CPU-day)", flush=True)
        el_learned = _learned_modes(emodel, [esys], le["temperature"], edt, args, le["trained"])
        if not le["trained"]:  # nothing moves at temperature 0 without refiner: a continuous rollout is the same case
            with refinement(emodel, False, "bench_speed") as calls:
                el_learned["plain, continuous"] = {**rates(time_engine(emodel, [esys], le["temperature"], args.seconds,
                                                                       args.max_steps, restart=False), edt),
                                                   "refiner_calls": calls}
        for mode, r in el_learned.items():
            r["ns_per_day"] = r["sim_per_s"] * 86.4
            r["ns_per_cpu_day"] = r["sim_per_cpu_s"] * 86.4
            print(f"electrolyte learned {mode} ({r['refiner_calls']} calls): {_g(r['ns_per_day'])} ns/day", flush=True)
        out["electrolyte"] = {"model": le["label"], "n_params": le["n_params"], "learned_dt_ps": edt,
                              "temperature": le["temperature"], "beads": esys.graph.n_beads, "openmm": el_openmm,
                              "learned": el_learned}

    # --- scaling --------------------------------------------------------------------------
    if "scaling" in args.parts:
        scaling = []
        with refinement(emodel, args.scaling_refine, "bench_speed") as calls:
            for n in args.sizes:
                graph, hist = periodic_box(esys.graph, esys.history, n)
                if float(graph.box[0]) <= 2 * emodel.cutoff:
                    print(f"scaling: {n} beads -> box {float(graph.box[0]):.3g} nm is not above 2 x cutoff; skipped")
                    continue
                traj = BeadTrajectory(name=f"box_{graph.n_beads}", graph=graph,
                                      positions=hist.permute(1, 0, 2).numpy().astype(np.float32), save_interval=1.0)
                box_sys = learned_system(traj, emodel, 1, guard)
                edges = radius_graph(hist[:, -1].to(torch.float32), emodel.cutoff, graph.box).n_edges
                r = time_engine(emodel, [box_sys], le["temperature"], args.scaling_seconds, args.max_steps,
                                restart=True, warmup=1, min_steps=2)
                per_step = r["wall_s"] / max(r["steps"], 1)
                scaling.append({**r, "target": n, "box_nm": float(graph.box[0]), "edges_per_bead": edges / graph.n_beads,
                                "step_s": per_step, "us_per_bead": 1e6 * per_step / graph.n_beads,
                                "step_cpu_s": r["cpu_s"] / max(r["steps"], 1), "refiner_calls": calls})
                print(f"scaling: {graph.n_beads} beads, box {float(graph.box[0]):.3g} nm, {edges / graph.n_beads:.1f} "
                      f"edges/bead: {1e3 * per_step:.4g} ms/step ({r['steps']} steps), {1e6 * per_step / graph.n_beads:.3g} "
                      f"us/bead (user {1e6 * r['user_s'] / r['steps'] / graph.n_beads:.3g}, system "
                      f"{1e6 * r['system_s'] / r['steps'] / graph.n_beads:.3g}), CPU {100 * r['cpu_s'] / r['wall_s']:.0f}%",
                      flush=True)
        nb, ts = np.array([r["beads"] for r in scaling]), np.array([r["step_s"] for r in scaling])
        tc = np.array([r["step_cpu_s"] for r in scaling])
        fits = [f for f in (linear_fit(nb, ts), linear_fit(nb, ts, args.knee)) if f]
        fits_cpu = [f for f in (linear_fit(nb, tc), linear_fit(nb, tc, args.knee)) if f]
        out["scaling"] = {"rows": scaling, "fits": fits, "fits_cpu": fits_cpu,
                          "refiner_calls": refiner_calls(emodel) if args.scaling_refine else 0}

    print_tables(out)
    out["total_s"] = time.perf_counter() - t_start
    print(f"\n# total {out['total_s']:.0f} s")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2, default=str))
        print(f"# wrote {path}")
    return out


def _steps_cell(r: dict[str, Any]) -> str:
    """Steps timed and the guard's stops: ``N (k stopped)`` for a rollout, ``N restarts (k would stop)``."""
    if r["restart"]:
        return f"{r['steps']} restarts ({r['n_stopped']} would stop)"
    redrawn = f", {r['redraws']} redrawn" if r.get("redraws") else ""
    return f"{r['steps']} ({r['n_stopped']} stopped{redrawn})"


def _cpu(r: dict[str, Any]) -> str:
    return f"{100 * r['cpu_s'] / max(r['wall_s'], 1e-12):.0f}%"


def print_tables(out: dict[str, Any]) -> None:
    """The result as markdown tables (as BENCHMARKS.md quotes them)."""
    if "chain" in out:
        _chain_table(out["chain"])
    if "electrolyte" in out:
        _electrolyte_table(out["electrolyte"])
    if "scaling" in out:
        _scaling_table(out["scaling"])


def _chain_table(ch: dict[str, Any]) -> None:
    modes = [m for m in ("refined", "plain") if m in ch["rows"][0]]
    head = "| chains | fine beads | CG beads | OpenMM tau/s (CPU) |"
    rule = "|---|---:|---:|---:|"
    for m in modes:
        calls = ch["rows"][0][m]["refiner_calls"]
        head += f" learned tau/s, {m}: {calls} calls (CPU) | ratio | ratio, CPU s | steps |"
        rule += "---:|---:|---:|---|"
    print(f"\n### chain: simulated tau per wall second (summed over the chains of a row); learned dt "
          f"{ch['learned_dt']:g} tau, OpenMM dt {ch['openmm_dt']:g} tau; model: {ch['model']}\n\n{head}\n{rule}")
    for row in ch["rows"]:
        om = row["openmm"]
        line = (f"| {row['system']} | {row['fine_beads']} | {row['cg_beads']} | {_g(om['aggregate_sim_per_s'])} "
                f"({_cpu(om)}) |")
        for m in modes:
            r = row[m]
            line += (f" {_g(r['aggregate_sim_per_s'])} ({_cpu(r)}) | {_g(r['aggregate_sim_per_s'] / om['aggregate_sim_per_s'])} | "
                     f"{_g(r['aggregate_sim_per_cpu_s'] / om['aggregate_sim_per_cpu_s'])} | {_steps_cell(r)} |")
        print(line)


def _electrolyte_table(el: dict[str, Any]) -> None:
    print(f"\n### electrolyte: ns/day; learned dt {el['learned_dt_ps']:g} ps, {el['beads']} beads; model: {el['model']}\n")
    print("| OpenMM protocol | atoms | OpenMM ns/day (CPU) | learned | refiner calls | learned ns/day (CPU) | ratio | "
          "ratio, CPU s | steps |\n|---|---:|---:|---|---:|---:|---:|---:|---|")
    for om in el["openmm"]:
        for m, r in el["learned"].items():
            print(f"| {om['protocol']} | {om['atoms']} | {_g(om['ns_per_day'])} ({_cpu(om)}) | {m} | {r['refiner_calls']} | "
                  f"{_g(r['ns_per_day'])} ({_cpu(r)}) | {_g(r['ns_per_day'] / om['ns_per_day'])} | "
                  f"{_g(r['ns_per_cpu_day'] / om['ns_per_cpu_day'])} | {_steps_cell(r)} |")


def _scaling_table(sc: dict[str, Any]) -> None:
    if sc["rows"]:
        print(f"\n### cost per learned step vs beads (periodic boxes of whole mapped molecules at the electrolyte's "
              f"bead density; one-step restarts; refiner calls {sc['refiner_calls']})\n")
        print("| beads | box nm | beads / nm^3 | radius edges / bead | steps | ms / step | us / bead | of it user CPU "
              "us / bead | system CPU us / bead | CPU / wall |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in sc["rows"]:
            per = 1e6 / max(r["steps"], 1) / r["beads"]
            print(f"| {r['beads']} | {r['box_nm']:.3g} | {r['beads'] / r['box_nm'] ** 3:.3g} | {r['edges_per_bead']:.1f} | "
                  f"{r['steps']} | {_g(1e3 * r['step_s'])} | {_g(r['us_per_bead'])} | {_g(r['user_s'] * per)} | "
                  f"{_g(r['system_s'] * per)} | {_cpu(r)} |")
        for what, key in (("wall", "fits"), ("CPU", "fits_cpu")):
            for f in sc.get(key, []):
                print(f"\n{what} time, N >= {f['n_min']:g} ({f['sizes']} sizes): least squares t = a + b N with a = "
                      f"{_g(f['intercept_ms'])} ms, b = {_g(f['slope_us_per_bead'])} us/bead, R^2 = {f['r2']:.4f}; "
                      f"power law t ~ N^{f['exponent']:.3f}")


if __name__ == "__main__":
    main()
