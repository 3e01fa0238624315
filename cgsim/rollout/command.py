"""``cgsim rollout``: load a checkpoint and initial systems, build the engine and its hooks, run.

``rollout(cfg)`` is a plain function (hydra only composes ``cfg``)::

    cgsim rollout checkpoint=runs/chain/checkpoints/best.pt initial=data/chain/mapped/test/seq_000 \\
        steps=10000 output=outputs/rollout/chain replicas=8 save_every=10

The model is rebuilt from the config saved in the checkpoint (never guessed). Each initial
system's history is its last ``history`` frames, ``data.stride`` recorded frames apart (the
spacing the model was trained on); every system x replica is one member of the batch.

Output (``output``): per member ``<system>/replica_<r>/`` with ``rollout.h5``, ``rollout.dcd``,
``beads.pdb`` and the ``rollout.json`` sidecar (see :mod:`cgsim.rollout.hooks`);
``rollout_state.pt`` (the rollout checkpoint ``resume=true`` continues from) and
``summary.json`` (speed and the guard's verdict per member).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from cgsim.checks import output_apart_from_inputs, periodic_initial, positive_temperature
from cgsim.config_compat import with_added_defaults
from cgsim.data.load import TRAJECTORY_NAMES, expand_paths, load_systems
from cgsim.data.windows import BeadTrajectory
from cgsim.errors import CgsimInputError
from cgsim.geometry import radius_graph
from cgsim.io_utils import write_json_atomic
from cgsim.metadata import command_line, now_iso, read_sidecar
from cgsim.rollout.config import RolloutConfig
from cgsim.rollout.engine import Member, RolloutEngine, RolloutHook, load_state, member_seed
from cgsim.rollout.exclusion import STATE_KEY, PairExclusion, exclusion_table
from cgsim.rollout.hooks import MemberOutput, ProgressBar, StabilityGuard, TrajectoryOutput
from cgsim.runtime import keep_freed_memory
from cgsim.train.checkpoint import load_checkpoint

#: options that must match for ``resume=true`` (``steps``, ``device``, ``progress`` may change)
RESUME_MUST_MATCH = ("checkpoint", "initial", "replicas", "seed", "save_every", "temperature", "use_ema",
                     "write_dcd", "guard", "refine", "exclusion", "prior")


def _positive(cfg: DictConfig, key: str, minimum: int) -> int:
    value = cfg[key]
    if value is None or int(value) < minimum:
        raise CgsimInputError(key, f"expected an integer >= {minimum}, got {value}")
    return int(value)


def initial_paths(value: Any) -> list[str]:
    """``initial`` as a list of paths/globs (a single string is one entry)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple, ListConfig)) and value:
        return [str(v) for v in value]
    raise CgsimInputError("initial", f"expected a mapped-system directory or a list of them, got {value!r}")


def initial_history(traj: BeadTrajectory, history: int, stride: int) -> torch.Tensor:
    """Last ``history`` frames ``stride`` apart, shape (n_beads, history, 3), nm.

    Raises
    ------
    CgsimInputError
        If the trajectory has fewer than ``(history - 1) * stride + 1`` frames.
    """
    need = (history - 1) * stride + 1
    if traj.n_frames < need:
        raise CgsimInputError(traj.name, f"trajectory has {traj.n_frames} frames; the model needs a history of {history} "
                                         f"frames {stride} apart ({need} frames)")
    frames = traj.positions[traj.n_frames - need::stride]
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(1, 0, 2)))


def _scanned_frames(traj: BeadTrajectory, scan_frames: int) -> np.ndarray:
    """Positions of at most ``scan_frames`` evenly spaced frames of ``traj``, (F, N, 3) nm."""
    idx = np.unique(np.linspace(0, traj.n_frames - 1, max(1, min(scan_frames, traj.n_frames))).round().astype(int))
    return traj.positions[idx]


def longest_bond(traj: BeadTrajectory, scan_frames: int) -> float:
    """Longest bead bond (nm) over evenly spaced frames of ``traj`` (``inf`` without bonds)."""
    x = _scanned_frames(traj, scan_frames)
    bonds = traj.graph.bead_bonds.numpy()
    bonds = bonds[:, bonds[0] < bonds[1]]
    return float(np.linalg.norm(x[:, bonds[0]] - x[:, bonds[1]], axis=-1).max()) if bonds.shape[1] else math.inf


def guard_limits(traj: BeadTrajectory, cutoff: float, scan_frames: int) -> tuple[float, float]:
    """Longest bond and closest bead approach (nm) over evenly spaced frames of ``traj``.

    The closest approach is searched within ``cutoff`` (0.0 when no pair is that close).
    """
    _, _, closest = closest_by_type_pair(traj, ["all"] * traj.graph.n_beads, cutoff, scan_frames)
    return longest_bond(traj, scan_frames), _overall(closest)


def _overall(closest: np.ndarray) -> float:
    """Closest approach of any pair from a per-type-pair table (0.0 when none came within the cutoff)."""
    return float(closest.min()) if np.isfinite(closest).any() else 0.0


def closest_by_type_pair(traj: BeadTrajectory, types: Sequence[str], cutoff: float,
                         scan_frames: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Closest approach (nm) of each pair of bead types over evenly spaced frames of ``traj``.

    Parameters
    ----------
    traj : BeadTrajectory
        Mapped trajectory, ``n_beads`` beads.
    types : sequence of str
        Bead type of each bead, length ``n_beads``.
    cutoff : float
        Search radius, nm: pairs never closer than this get ``inf``.
    scan_frames : int
        At most this many frames, evenly spaced over the trajectory.

    Returns
    -------
    names : list of str
        The distinct types, sorted (T of them).
    index : numpy.ndarray
        Type index of each bead, shape (n_beads,), int64.
    closest : numpy.ndarray
        Symmetric (T, T) closest approaches, nm (``inf`` where no pair came within ``cutoff``).
    """
    if len(types) != traj.graph.n_beads:
        raise CgsimInputError("particle_types", f"{traj.name}: expected one type per bead ({traj.graph.n_beads}), "
                                                f"got {len(types)}")
    names = sorted(set(types))
    index = np.array([names.index(t) for t in types], dtype=np.int64)
    return names, index, closest_in_frames(_scanned_frames(traj, scan_frames), index, len(names),
                                           traj.graph.box, cutoff)


def closest_in_frames(frames: np.ndarray, index: np.ndarray, n_types: int, box: torch.Tensor | None,
                      cutoff: float) -> np.ndarray:
    """Closest approach of each pair of types over all ``frames``, symmetric (T, T) nm.

    Parameters
    ----------
    frames : numpy.ndarray
        Positions, shape (F, N, 3), nm.
    index : numpy.ndarray
        Type index of each bead, shape (N,), values 0..T-1.
    n_types : int
        T.
    box : torch.Tensor or None
        Box lengths (3,), nm; ``None``: not periodic.
    cutoff : float
        Search radius, nm: pairs never closer than this get ``inf``.
    """
    closest = np.full((n_types, n_types), np.inf)
    for frame in frames:
        g = radius_graph(torch.from_numpy(np.ascontiguousarray(frame)), cutoff, box)
        if g.n_edges:
            a, b = index[g.edge_index[0].numpy()], index[g.edge_index[1].numpy()]
            np.minimum.at(closest, (a, b), g.dist.numpy())
    return np.minimum(closest, closest.T)


def _trajectory_file(directory: Path) -> Path:
    return next(directory / n for n in TRAJECTORY_NAMES if (directory / n).is_file())


def _labels(trajectories: Sequence[BeadTrajectory]) -> list[str]:
    labels: list[str] = []
    for k, t in enumerate(trajectories):
        name = Path(t.name).name or f"system_{k:03d}"
        labels.append(name if name not in labels else f"{name}_{k:03d}")
    return labels


def rollout(cfg: DictConfig, extra_hooks: Sequence[RolloutHook] = ()) -> dict[str, Any]:
    """Run (or resume) the rollout described by ``cfg``; return the summary (also in summary.json).

    Parameters
    ----------
    cfg : DictConfig
        Composed ``conf/rollout.yaml`` (schema :class:`cgsim.rollout.config.RolloutConfig`).
    extra_hooks : sequence of RolloutHook
        Appended after the built-in hooks (tests, notebooks).

    Raises
    ------
    CgsimInputError
        steps <= 0 or other bad numbers; a missing, truncated or non-checkpoint file; initial
        systems that are missing, triclinic, too short for the history, recorded at another
        time step, or with fine types the model does not know; an output holding a rollout
        without ``resume=true`` (or a resume with other settings).
    """
    steps = _positive(cfg, "steps", 1)
    replicas = _positive(cfg, "replicas", 1)
    save_every = _positive(cfg, "save_every", 1)
    checkpoint_every = _positive(cfg, "checkpoint_every", 0)
    positive_temperature(cfg.temperature, "temperature", allow_zero=True, unit="noise scale, 0 = the deterministic mean")
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    if cfg.keep_freed_memory:
        keep_freed_memory()
    device = torch.device(str(cfg.device))
    out = Path(cfg.output)
    state_path = out / "rollout_state.pt"
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    if state_path.is_file() and not cfg.resume:
        raise CgsimInputError(str(out), "output already holds a rollout; pass resume=true to continue it or choose another output")
    if cfg.evaluate and not cfg.reference:
        raise CgsimInputError("reference", "evaluate=true needs reference=PATH (a trajectory with sidecar or a dataset directory)")
    if cfg.resume and not state_path.is_file():
        raise CgsimInputError(str(state_path), "resume=true but there is no rollout state to resume from")
    output_apart_from_inputs(out, expand_paths(initial_paths(cfg.initial), "initial"), "output", "initial")

    ckpt = load_checkpoint(cfg.checkpoint)
    try:
        vocab = list(ckpt["data"]["atom_types"])
        stride = int(ckpt["config"]["data"]["stride"])
        learned_dt = float(ckpt["data"]["learned_dt"])
        time_unit = str(ckpt["data"]["time_unit"])
    except (KeyError, TypeError) as exc:
        raise CgsimInputError(str(cfg.checkpoint), f"checkpoint lacks field {exc}; not a training checkpoint of this cgsim") from None
    from cgsim.train.loop import model_from_checkpoint

    model = model_from_checkpoint(ckpt, device=device, use_ema=bool(cfg.use_ema))
    apply_refine_overrides(model, cfg.get("refine") or {}, str(cfg.checkpoint))
    apply_prior_overrides(model, cfg.get("prior") or {}, str(cfg.checkpoint))
    systems = load_systems(initial_paths(cfg.initial), "initial", atom_types=vocab)
    periodic_initial(ckpt, systems.trajectories, str(cfg.checkpoint))
    if systems.time_unit != time_unit:
        raise CgsimInputError("initial", f"systems are in {systems.time_unit} units, the model was trained in {time_unit}")
    if not math.isclose(systems.save_interval * stride, learned_dt, rel_tol=1e-6):
        raise CgsimInputError("initial", f"frames are {systems.save_interval:g} {time_unit} apart; with the model's stride "
                                         f"{stride} that is not its learned dt {learned_dt:g} {time_unit}")
    histories = [initial_history(t, model.history, stride) for t in systems.trajectories]

    labels = _labels(systems.trajectories)
    members: list[Member] = []
    initial: list[torch.Tensor] = []
    outputs: list[MemberOutput] = []
    max_bond: list[float] = []
    min_dist: list[float] = []
    pair_min: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    pair_exclusion: list[tuple[torch.Tensor, torch.Tensor]] = []
    gc, xc = cfg.guard, cfg.exclusion
    if xc.enabled and not 0.0 < float(xc.factor) <= 1.0:
        raise CgsimInputError("exclusion.factor", f"expected a fraction of the closest approach in (0, 1], got {xc.factor}")
    if xc.enabled and int(xc.iterations) < 1:
        raise CgsimInputError("exclusion.iterations", f"expected an integer >= 1, got {xc.iterations}")
    if gc.enabled and gc.by_type_pair and gc.min_distance is not None:
        raise CgsimInputError("guard.by_type_pair", "per type pair limits come from guard.min_distance_factor; "
                                                    "leave guard.min_distance null")
    ps_per_unit = 1.0
    for s, (traj, label, hist) in enumerate(zip(systems.trajectories, labels, histories, strict=True)):
        d = Path(traj.name)
        meta = read_sidecar(_trajectory_file(d))
        if time_unit == "tau":
            ps_per_unit = float(meta.system.units.get("lj_in_md_units", {}).get("tau_ps", 1.0))
        top = md.load_topology(str(d / "beads.pdb"))
        box = None if traj.graph.box is None else np.diag(traj.graph.box.numpy()).astype(np.float64)
        longest = longest_bond(traj, int(gc.scan_frames))
        # one scan of the initial frames gives the closest approach per pair of types (all beads
        # one type unless the limits are per type pair) and overall
        # guard.by_type_pair needs the system's bead types (a clear error without them); the
        # exclusion uses them when there are any and treats all beads as one type otherwise
        one_type = ["all"] * traj.graph.n_beads
        if gc.by_type_pair:
            types = list(meta.system.particle_types or [])
        elif xc.enabled:
            types = list(meta.system.particle_types or []) or one_type
        else:
            types = one_type
        _, type_index, pair_closest = closest_by_type_pair(traj, types, model.cutoff, int(gc.scan_frames))
        if xc.enabled:
            exclusion = (torch.from_numpy(type_index), torch.from_numpy(exclusion_table(pair_closest, float(xc.factor))))
        closest = _overall(pair_closest)
        limit = float(gc.min_distance) if gc.min_distance is not None else float(gc.min_distance_factor) * closest
        pair_limits = None
        if gc.by_type_pair:
            # pairs never seen within the cutoff keep the overall limit
            table = np.where(np.isfinite(pair_closest), float(gc.min_distance_factor) * pair_closest, limit)
            pair_limits = (torch.from_numpy(type_index), torch.from_numpy(table))
            limit = float(table.max())
        for r in range(replicas):
            seed = member_seed(int(cfg.seed), s, r)
            members.append(Member(system=s, replica=r, name=f"{label}/replica_{r:03d}", graph=traj.graph, seed=seed))
            initial.append(hist)
            max_bond.append(float(gc.max_bond_factor) * longest)
            min_dist.append(limit)
            pair_min.append(pair_limits)
            if xc.enabled:
                pair_exclusion.append(exclusion)
            outputs.append(MemberOutput(directory=out / label / f"replica_{r:03d}", topology=top, source_pdb=d / "beads.pdb",
                                        system=meta.system, box=box,
                                        extra={"source": str(d), "system_index": s, "replica": r, "member_seed": seed,
                                               "checkpoint": str(cfg.checkpoint), "seed": int(cfg.seed),
                                               "temperature": float(cfg.temperature), "learned_steps": steps}))

    provenance = {"command": command_line("rollout", "cgsim.rollout.command.rollout"), "config": cfg_dict, "checkpoint": str(Path(cfg.checkpoint).resolve()),
                  "checkpoint_epoch": ckpt.get("epoch"), "seed": int(cfg.seed)}
    writer = TrajectoryOutput(outputs, save_every, learned_dt, time_unit, ps_per_unit, bool(cfg.write_dcd), provenance)
    hooks: list[RolloutHook] = []
    if xc.enabled:
        hooks.append(PairExclusion(pair_exclusion, int(xc.iterations)))
    if gc.enabled:
        hooks.append(StabilityGuard(max_bond, min_dist, pair_min if gc.by_type_pair else None))
    hooks += [writer, ProgressBar(steps, learned_dt, time_unit, bool(cfg.progress)), *extra_hooks]
    if cfg.compile:
        model = _compiled(model, members, initial)
    redraws = int(gc.redraws) if gc.enabled else 0
    if redraws < 0:
        raise CgsimInputError("guard.redraws", f"expected an integer >= 0, got {redraws}")
    engine = RolloutEngine(model, members, float(cfg.temperature), hooks, state_path, checkpoint_every, redraws)

    if cfg.resume:
        state = load_state(state_path)
        saved = with_added_defaults(state.extra.get("config", {}), RolloutConfig())
        for key in RESUME_MUST_MATCH:
            if saved.get(key) != cfg_dict.get(key):
                raise CgsimInputError(str(state_path), f"rollout was started with a different '{key}'; resume with the same settings")
        if state.pos.shape[0] != engine.n_beads:
            raise CgsimInputError(str(state_path), "rollout state has another number of beads than these systems")
    else:
        state = engine.initial_state(initial)
        state.extra["config"] = cfg_dict
    write_json_atomic(out / "dataset.json", _dataset_index(labels, replicas, time_unit))
    step0 = state.step
    t0 = time.perf_counter()
    state = engine.run(state, steps)
    wall = time.perf_counter() - t0

    done = state.step - step0
    bead_steps = sum(m.n_beads * max(0, (state.step if s < 0 else s) - step0) for m, s in zip(members, state.stop_step, strict=True))
    sim = done * learned_dt
    rate = sim / max(wall, 1e-12)
    summary: dict[str, Any] = {
        "members": [{"name": m.name, "n_beads": m.n_beads, "seed": m.seed, "frames": state.frames_written[k],
                     "status": "stopped" if state.stop_step[k] >= 0 else "finished",
                     "stop_step": state.stop_step[k] if state.stop_step[k] >= 0 else None,
                     "stop_reason": state.stop_reason[k] or None, "redraws": state.redraws[k],
                     **({"exclusion_pairs": state.extra[STATE_KEY][k]} if xc.enabled else {})}
                    for k, m in enumerate(members)],
        "steps": state.step, "learned_dt": learned_dt, "time_unit": time_unit, "simulated_time": state.step * learned_dt,
        "steps_this_call": done, "wall_seconds_this_call": wall, "wall_seconds_total": state.wall_seconds,
        "simulated_time_per_second": rate, "aggregate_simulated_time_per_second": rate * len(members), "bead_steps_per_second": bead_steps / max(wall, 1e-12),
        "n_stopped": sum(s >= 0 for s in state.stop_step), "redraws": sum(state.redraws),
        **({"exclusion_pairs": sum(state.extra[STATE_KEY])} if xc.enabled else {}),
        "calls_per_step": int(model.calls_per_step()),
        "prior_steps": int(model.prior.steps) if getattr(model, "prior", None) is not None else 0,
        "device": str(device), "finished": now_iso(),
    }
    if time_unit == "ps":
        summary["ns_per_day"] = rate * 86400 / 1000.0
    write_json_atomic(out / "summary.json", summary)
    per_day = f"{summary['ns_per_day']:.4g} ns/day" if time_unit == "ps" else f"{rate * 86400:.4g} tau/day"
    stopped = summary["n_stopped"]
    first = next((m["stop_reason"] for m in summary["members"] if m["stop_reason"]), "")
    redrawn = f", {summary['redraws']} step(s) redrawn" if summary["redraws"] else ""
    if xc.enabled:
        redrawn += f", {summary['exclusion_pairs']} pair(s) pushed apart"
    print(f"rollout: {len(members)} member(s) x {done} step(s) = {sim:.4g} {time_unit} in {wall:.1f} s: "
          f"{rate:.4g} {time_unit}/s ({per_day}), {summary['bead_steps_per_second']:.4g} beads x steps/s; "
          f"{stopped} stopped{f' (first: {first})' if stopped else ''}{redrawn} -> {out}")
    if cfg.evaluate:
        summary["evaluate"] = _evaluate(cfg, out)
    return summary


def apply_refine_overrides(model: torch.nn.Module, overrides: Any, checkpoint: str) -> None:
    """Set the refiner's sampling schedule from ``refine.*`` (null entries keep the trained values).

    Raises
    ------
    CgsimInputError
        If a schedule is given for a model without a refiner, or a value is out of range.
    """
    given = {k: v for k, v in dict(overrides).items() if v is not None}
    if not given:
        return
    refiner = getattr(model, "refiner", None)
    if refiner is None:
        raise CgsimInputError(f"refine.{next(iter(given))}", f"{checkpoint} was trained without refinement "
                                                             "(model/refinement=score); nothing to schedule")
    try:
        refiner.set_schedule(**given)
    except ValueError as exc:
        name, _, message = str(exc).partition(": ")
        raise CgsimInputError(f"refine.{name}", message) from None


def apply_prior_overrides(model: torch.nn.Module, overrides: Any, checkpoint: str) -> None:
    """Set the structural prior's schedule from ``prior.*`` (null entries keep the exported values).

    Raises
    ------
    CgsimInputError
        If a schedule is given for a model without a prior, or a value is out of range.
    """
    given = {k: v for k, v in dict(overrides).items() if v is not None}
    if not given:
        return
    if getattr(model, "prior", None) is None:
        raise CgsimInputError(f"prior.{next(iter(given))}", f"{checkpoint} carries no structural prior "
                                                            "(export it with --prior); nothing to schedule")
    try:
        model.prior = model.prior.with_schedule(**given)
    except ValueError as exc:
        raise CgsimInputError(f"prior.{next(iter(given))}", str(exc)) from None


def _compiled(model: torch.nn.Module, members: Sequence[Member], initial: Sequence[torch.Tensor]) -> torch.nn.Module:
    """``model`` with its forward wrapped in ``torch.compile``, compiled on the rollout's first batch.

    Falls back to ``model`` with a one-line warning if compilation fails
    (:func:`cgsim.rollout.compile.compile_model`).
    """
    from cgsim.model.batch import collate
    from cgsim.rollout.compile import compile_model

    p = next(model.parameters())
    h = int(model.history)
    with torch.inference_mode():
        example = collate([m.graph for m in members], [x[:, -h:].to(p.dtype) for x in initial]).to(p.device)
        chem = model.chemistry(example)
    compiled, _ = compile_model(model, example=lambda m: m(example, chem))
    return compiled


def _dataset_index(labels: Sequence[str], replicas: int, time_unit: str) -> dict[str, Any]:
    """``dataset.json`` of the output: one molecule per system, one file per replica."""
    return {"format": "cgsim-dataset", "kind": "rollout", "time_unit": time_unit,
            "molecules": [{"name": label, "files": [{"trajectory": f"{label}/replica_{r:03d}/rollout.h5",
                                                     "topology": f"{label}/replica_{r:03d}/beads.pdb"}
                                                    for r in range(replicas)]} for label in labels]}


def _evaluate(cfg: DictConfig, out: Path) -> Any:
    """Run ``cgsim evaluate`` on the finished rollout against ``cfg.reference``."""
    from cgsim.cli import compose_verb, hydra_quoted, load_verb

    run_evaluate = load_verb("evaluate")
    # paths are quoted so globs ('seq_00[0-5]') and odd characters survive hydra's override grammar
    overrides = [f"reference={hydra_quoted(cfg.reference)}", f"rollout={hydra_quoted(out)}",
                 f"output={hydra_quoted(out / 'evaluate')}",
                 f"progress={str(bool(cfg.progress)).lower()}", *cfg.evaluate_overrides]
    ecfg = compose_verb("evaluate", overrides)
    return run_evaluate(ecfg)
