"""``cgsim rollout``: load a checkpoint and initial systems, build the engine and its hooks, run.

``rollout(cfg)`` is a plain function (hydra only composes ``cfg``)::

    cgsim rollout checkpoint=runs/chain/checkpoints/best.pt initial=data/chain/mapped/test/seq_000 \\
        steps=10000 output=outputs/rollout/chain replicas=8 save_every=10

The model is rebuilt from the config saved in the checkpoint (never guessed), and everything
else it needs is read from its :class:`~cgsim.model.card.ModelCard`. Each initial system's
history is its last ``history`` frames, the card's ``history_spacing`` recorded frames apart
(the spacing the model was trained on); every system x replica is one member of the batch.

:func:`rollout` only orchestrates named steps: check the options, load the model
(:func:`load_model`) and the initial systems (:func:`load_initial`), plan the members and their
limits (:func:`plan_members`, limits from :mod:`cgsim.rollout.limits`), build the hooks
(:func:`build_hooks`), start or resume the state, run the engine and summarise
(:func:`summarise`).

Output (``output``): per member ``<system>/replica_<r>/`` with ``rollout.h5``, ``rollout.dcd``,
``beads.pdb`` and the ``rollout.json`` sidecar (see :mod:`cgsim.rollout.hooks`);
``rollout_state.pt`` (the rollout checkpoint ``resume=true`` continues from) and
``summary.json`` (speed, and per member its status: ``finished``, ``stopped`` by the guard or
``diverged``, with the step and the reason).
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from cgsim.checks import (
    output_apart_from_inputs,
    periodic_initial,
    positive_int,
    positive_temperature,
    required,
    torch_device,
)
from cgsim.config_compat import with_added_defaults
from cgsim.data.load import TRAJECTORY_NAMES, SystemSet, expand_paths, load_systems
from cgsim.data.ranges import beyond_training_ranges, with_training_ranges
from cgsim.data.windows import BeadTrajectory, history_positions
from cgsim.errors import CgsimInputError
from cgsim.io_utils import check_output_directory, write_json_atomic
from cgsim.metadata import command_line, command_line_keys, now_iso, read_sidecar
from cgsim.model import checkpoint as model_checkpoint
from cgsim.model.card import ModelCard
from cgsim.model.sampling import apply_prior_overrides, apply_refine_overrides
from cgsim.rollout.config import RolloutConfig
from cgsim.rollout.engine import (
    Member,
    RolloutEngine,
    RolloutHook,
    RolloutState,
    load_state,
    member_seed,
)
from cgsim.rollout.exclusion import STATE_KEY, PairExclusion
from cgsim.rollout.hooks import MemberOutput, ProgressBar, StabilityGuard, TrajectoryOutput
from cgsim.rollout.limits import (
    SystemLimits,
    check_limit_options,
    closest_by_type_pair,
    closest_in_frames,
    guard_limits,
    longest_bond,
    system_limits,
)
from cgsim.runtime import keep_freed_memory

# moved: the guard-limit scans live in cgsim.rollout.limits, the refine / prior overrides in
# cgsim.model.sampling and the history in cgsim.data.windows; re-exported for older imports
initial_history = history_positions
__all__ = ["RESUME_MUST_MATCH", "RolloutPlan", "apply_prior_overrides", "apply_refine_overrides", "build_hooks",
           "closest_by_type_pair", "closest_in_frames", "guard_limits", "initial_history", "initial_paths",
           "load_initial", "load_model", "longest_bond", "plan_members", "rollout", "summarise"]

#: options that must match for ``resume=true`` (``steps``, ``device``, ``progress`` may change)
RESUME_MUST_MATCH = ("checkpoint", "initial", "replicas", "seed", "save_every", "temperature", "use_ema",
                     "write_dcd", "guard", "refine", "exclusion", "prior", "divergence_factor")


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


def _trajectory_file(directory: Path) -> Path:
    return next(directory / n for n in TRAJECTORY_NAMES if (directory / n).is_file())


def _labels(trajectories: Sequence[BeadTrajectory]) -> list[str]:
    labels: list[str] = []
    for k, t in enumerate(trajectories):
        name = Path(t.name).name or f"system_{k:03d}"
        labels.append(name if name not in labels else f"{name}_{k:03d}")
    return labels


# -- the named steps of a rollout -------------------------------------------------------------
def _check_options(cfg: DictConfig) -> None:
    """One-line errors for options that cannot run, before anything is loaded."""
    for key, minimum in (("steps", 1), ("replicas", 1), ("save_every", 1), ("checkpoint_every", 0)):
        _positive(cfg, key, minimum)
    positive_temperature(cfg.temperature, "temperature", allow_zero=True, unit="noise scale, 0 = the deterministic mean")
    factor = cfg.divergence_factor
    if not (isinstance(factor, int | float) and math.isfinite(factor) and factor > 1):
        raise CgsimInputError("divergence_factor", f"expected a number > 1 (a bond or molecule this many times the "
                                                   f"largest of the initial frames means divergence), got {factor!r}")
    out, state_path = check_output_directory(cfg.output), Path(cfg.output) / "rollout_state.pt"
    if state_path.is_file() and not cfg.resume:
        raise CgsimInputError(str(out), "output already holds a rollout; pass resume=true to continue it or choose another output")
    if cfg.evaluate and not cfg.reference:
        raise CgsimInputError("reference", "evaluate=true needs reference=PATH (a trajectory with sidecar or a dataset directory)")
    if cfg.resume and not state_path.is_file():
        raise CgsimInputError(str(state_path), "resume=true but there is no rollout state to resume from")
    output_apart_from_inputs(out, expand_paths(initial_paths(cfg.initial), "initial"), "output", "initial")
    check_limit_options(cfg.guard, cfg.exclusion)
    torch_device(cfg.device, "device")
    positive_int(cfg.num_threads, "num_threads", allow_none=True, what=" (torch threads)")
    if cfg.evaluate:  # the evaluation's overrides are checked now, not after a long rollout
        from cgsim.cli import check_overrides, hydra_quoted

        try:
            check_overrides("evaluate", [f"reference={hydra_quoted(cfg.reference)}", f"rollout={hydra_quoted(out)}",
                                         f"output={hydra_quoted(out / 'evaluate')}", *cfg.evaluate_overrides])
        except CgsimInputError as exc:
            raise CgsimInputError("evaluate_overrides", str(exc)) from None


def with_recommended(cfg: DictConfig, given: Collection[str] = ()) -> DictConfig:
    """``cfg`` with the model card's recommended settings in every option left at its default.

    A model is exported with the settings it is meant to run with (``--recommend``: guard,
    redraws, exclusion, temperature; :data:`cgsim.model.card.RECOMMENDABLE`), so that
    ``cgsim rollout checkpoint=... initial=... steps=...`` runs it as its model card says. An
    option the user set to anything but the schema's default wins, and so does one named in
    ``given`` (the keys set on the command line, :func:`cgsim.metadata.command_line_keys`: an
    explicit ``exclusion.enabled=false`` means off even when the card recommends it);
    ``use_recommended=false`` ignores the card's settings altogether. The settings used are
    printed once.
    """
    if not cfg.get("use_recommended", True) or cfg.get("checkpoint") in (None, "???"):
        return cfg
    card = ModelCard.from_checkpoint(model_checkpoint.load_checkpoint(cfg.checkpoint), cfg.checkpoint)
    if not card.recommended_rollout:
        return cfg
    defaults = OmegaConf.structured(RolloutConfig)
    out = cfg.copy()
    applied = []
    for key, value in card.recommended_rollout.items():
        if key in given:
            continue
        if OmegaConf.select(out, key) == OmegaConf.select(defaults, key) and value != OmegaConf.select(out, key):
            OmegaConf.update(out, key, value, merge=False)
            applied.append(f"{key}={value}")
    if applied:
        print(f"rollout: the model's recommended settings: {' '.join(applied)} (use_recommended=false to ignore)")
    return out


def load_model(cfg: DictConfig, device: torch.device) -> tuple[ModelCard, torch.nn.Module]:
    """The checkpoint's card and its model, with the ``refine.*`` / ``prior.*`` schedule overrides applied."""
    _, card, model = model_checkpoint.load_model_file(cfg.checkpoint, device=device, use_ema=bool(cfg.use_ema))
    apply_refine_overrides(model, cfg.get("refine") or {}, card.path)
    apply_prior_overrides(model, cfg.get("prior") or {}, card.path)
    return card, model


def load_initial(cfg: DictConfig, card: ModelCard) -> SystemSet:
    """The initial systems, checked against the card (fine types, periodic box, time unit and step,
    and the ranges of the training data: :func:`check_training_ranges`)."""
    systems = load_systems(initial_paths(cfg.initial), "initial", atom_types=list(card.atom_types))
    periodic_initial(card.periodic, systems.trajectories, card.path)
    check_training_ranges(card, systems, bool(cfg.get("allow_extrapolation", False)))
    if systems.time_unit != card.time_unit:
        raise CgsimInputError("initial", f"systems are in {systems.time_unit} units, the model was trained in {card.time_unit}")
    if not card.matches_save_interval(systems.save_interval):
        raise CgsimInputError("initial", f"frames are {systems.save_interval:g} {card.time_unit} apart; with the model's "
                                         f"stride {card.stride} that is not its learned dt {card.learned_dt:g} {card.time_unit}")
    return systems


def check_training_ranges(card: ModelCard, systems: SystemSet, allow: bool) -> None:
    """Refuse initial systems whose bond lengths (per pair of bead classes) or bead density lie beyond
    2x what the model was trained on (:func:`cgsim.data.ranges.beyond_training_ranges`): coordinates in
    Angstrom give 10x bonds. ``allow`` (``allow_extrapolation=true``) runs them, saying so in one line.
    A card without ranges (an old checkpoint whose training systems are gone) is not checked."""
    ranges = card.ranges if card.ranges is not None else with_training_ranges(card).ranges
    if ranges is None:
        return
    beyond = beyond_training_ranges(ranges, systems.trajectories, card.atom_types)
    if beyond is None:
        return
    if allow:
        print(f"rollout: allow_extrapolation=true: {beyond}; the model extrapolates")
        return
    raise CgsimInputError("initial", f"{beyond}; map the initial state in nm, or pass allow_extrapolation=true to run "
                                     "the model outside its training data knowingly")


@dataclass
class RolloutPlan:
    """The members of a rollout and what each needs, in member order (:func:`plan_members`).

    Attributes
    ----------
    labels : list of str
        Output directory name of each system.
    members : list of Member
        Every system x replica.
    initial : list of torch.Tensor
        Position history of each member, (n_beads, H, 3), nm.
    outputs : list of MemberOutput
        Where each member's trajectory goes.
    limits : list of SystemLimits
        Guard and exclusion limits of each member (its system's).
    ps_per_unit : float
        Picoseconds per time unit of the files (``tau``: from the systems' sidecars).
    """

    labels: list[str]
    members: list[Member]
    initial: list[torch.Tensor]
    outputs: list[MemberOutput]
    limits: list[SystemLimits]
    ps_per_unit: float = 1.0


def plan_members(cfg: DictConfig, card: ModelCard, systems: SystemSet, out: Path) -> RolloutPlan:
    """Members (system x replica), their histories, outputs and limits (one scan per system)."""
    histories = [history_positions(t, card.history, card.history_spacing) for t in systems.trajectories]
    plan = RolloutPlan(labels=_labels(systems.trajectories), members=[], initial=[], outputs=[], limits=[])
    for s, (traj, label, hist) in enumerate(zip(systems.trajectories, plan.labels, histories, strict=True)):
        d = Path(traj.name)
        meta = read_sidecar(_trajectory_file(d))
        if card.time_unit == "tau":
            plan.ps_per_unit = float(meta.system.units.get("lj_in_md_units", {}).get("tau_ps", 1.0))
        top = md.load_topology(str(d / "beads.pdb"))
        box = None if traj.graph.box is None else np.diag(traj.graph.box.numpy()).astype(np.float64)
        limits = system_limits(traj, meta.system.particle_types, card.cutoff, cfg.guard, cfg.exclusion,
                               float(cfg.divergence_factor))
        for r in range(int(cfg.replicas)):
            seed = member_seed(int(cfg.seed), s, r)
            plan.members.append(Member(system=s, replica=r, name=f"{label}/replica_{r:03d}", graph=traj.graph, seed=seed))
            plan.initial.append(hist)
            plan.limits.append(limits)
            plan.outputs.append(MemberOutput(
                directory=out / label / f"replica_{r:03d}", topology=top, source_pdb=d / "beads.pdb", system=meta.system,
                box=box, extra={"source": str(d), "system_index": s, "replica": r, "member_seed": seed,
                                "checkpoint": str(cfg.checkpoint), "seed": int(cfg.seed),
                                "temperature": float(cfg.temperature), "learned_steps": int(cfg.steps)}))
    return plan


def build_hooks(cfg: DictConfig, card: ModelCard, plan: RolloutPlan, cfg_dict: dict[str, Any],
                extra_hooks: Sequence[RolloutHook] = ()) -> list[RolloutHook]:
    """Exclusion, guard, trajectory writer, progress bar, then ``extra_hooks``, in that order."""
    provenance = {"command": command_line("rollout", "cgsim.rollout.command.rollout"), "config": cfg_dict,
                  "checkpoint": str(Path(cfg.checkpoint).resolve()), "checkpoint_epoch": card.epoch, "seed": int(cfg.seed)}
    writer = TrajectoryOutput(plan.outputs, int(cfg.save_every), card.learned_dt, card.time_unit, plan.ps_per_unit,
                              bool(cfg.write_dcd), provenance)
    hooks: list[RolloutHook] = []
    if cfg.exclusion.enabled:
        hooks.append(PairExclusion([lim.exclusion for lim in plan.limits], int(cfg.exclusion.iterations)))
    if cfg.guard.enabled:
        hooks.append(StabilityGuard([lim.max_bond for lim in plan.limits], [lim.min_distance for lim in plan.limits],
                                    [lim.pair_min_distance for lim in plan.limits] if cfg.guard.by_type_pair else None))
    return [*hooks, writer, ProgressBar(int(cfg.steps), card.learned_dt, card.time_unit, bool(cfg.progress)), *extra_hooks]


def _start_state(cfg: DictConfig, engine: RolloutEngine, plan: RolloutPlan, cfg_dict: dict[str, Any],
                 state_path: Path) -> RolloutState:
    """The state at step 0, or (``resume=true``) the saved one, checked against these settings."""
    if not cfg.resume:
        state = engine.initial_state(plan.initial)
        state.extra["config"] = cfg_dict
        return state
    state = load_state(state_path)
    saved = with_added_defaults(state.extra.get("config", {}), RolloutConfig())
    for key in RESUME_MUST_MATCH:
        if saved.get(key) != cfg_dict.get(key):
            raise CgsimInputError(str(state_path), f"rollout was started with a different '{key}'; resume with the same settings")
    if state.pos.shape[0] != engine.n_beads:
        raise CgsimInputError(str(state_path), "rollout state has another number of beads than these systems")
    return state


def summarise(state: RolloutState, members: Sequence[Member], step0: int, wall: float, card: ModelCard,
              model: torch.nn.Module, exclusion: bool, device: torch.device) -> dict[str, Any]:
    """``summary.json`` of a run: per member status, and the speed of this call."""
    done = state.step - step0
    bead_steps = sum(m.n_beads * max(0, (state.step if s < 0 else s) - step0) for m, s in zip(members, state.stop_step, strict=True))
    rate = done * card.learned_dt / max(wall, 1e-12)
    summary: dict[str, Any] = {
        "members": [{"name": m.name, "system": m.system, "replica": m.replica, "n_beads": m.n_beads, "seed": m.seed,
                     "frames": state.frames_written[k],
                     "status": state.status(k) if state.stop_step[k] >= 0 else "finished",
                     "stop_step": state.stop_step[k] if state.stop_step[k] >= 0 else None,
                     "stop_reason": state.stop_reason[k] or None, "redraws": state.redraws[k],
                     **({"exclusion_pairs": state.extra[STATE_KEY][k]} if exclusion else {})}
                    for k, m in enumerate(members)],
        "steps": state.step, "learned_dt": card.learned_dt, "time_unit": card.time_unit,
        "simulated_time": state.step * card.learned_dt,
        "steps_this_call": done, "wall_seconds_this_call": wall, "wall_seconds_total": state.wall_seconds,
        "simulated_time_per_second": rate, "aggregate_simulated_time_per_second": rate * len(members),
        "bead_steps_per_second": bead_steps / max(wall, 1e-12),
        "n_stopped": sum(s >= 0 for s in state.stop_step), "redraws": sum(state.redraws),
        "n_diverged": sum(state.diverged),
        **({"exclusion_pairs": sum(state.extra[STATE_KEY])} if exclusion else {}),
        "calls_per_step": int(model.calls_per_step()),
        "prior_steps": int(model.prior.steps) if getattr(model, "prior", None) is not None else 0,
        "device": str(device), "finished": now_iso(),
    }
    if card.time_unit == "ps":
        summary["ns_per_day"] = rate * 86400 / 1000.0
    return summary


def _summary_line(summary: dict[str, Any], out: Path) -> str:
    """The one line a finished rollout prints."""
    done, wall, unit = summary["steps_this_call"], summary["wall_seconds_this_call"], summary["time_unit"]
    rate = summary["simulated_time_per_second"]
    per_day = f"{summary['ns_per_day']:.4g} ns/day" if unit == "ps" else f"{rate * 86400:.4g} tau/day"
    members = summary["members"]
    guarded = [m for m in members if m["status"] == "stopped"]
    diverged = [m for m in members if m["status"] == "diverged"]
    first = f" (first: {guarded[0]['stop_reason']})" if guarded else ""
    if diverged:
        d = diverged[0]
        first += (f", {len(diverged)} DIVERGED (first: {d['name']}, replica {d['replica']}, {d['stop_reason']}; its "
                  f"frames end at step {d['stop_step'] - 1} in {out / d['name'] / 'rollout.h5'})")
    redrawn = f", {summary['redraws']} step(s) redrawn" if summary["redraws"] else ""
    if "exclusion_pairs" in summary:
        redrawn += f", {summary['exclusion_pairs']} pair(s) pushed apart"
    return (f"rollout: {len(members)} member(s) x {done} step(s) = {done * summary['learned_dt']:.4g} {unit} "
            f"in {wall:.1f} s: {rate:.4g} {unit}/s ({per_day}), {summary['bead_steps_per_second']:.4g} beads x steps/s; "
            f"{len(guarded)} stopped{first}{redrawn} -> {out}")


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
    required(cfg, ("checkpoint", "initial", "steps", "output"), "rollout")
    cfg = with_recommended(cfg, command_line_keys())
    _check_options(cfg)
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    if cfg.keep_freed_memory:
        keep_freed_memory()
    device, out = torch.device(str(cfg.device)), Path(cfg.output)
    state_path = out / "rollout_state.pt"
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    card, model = load_model(cfg, device)
    plan = plan_members(cfg, card, load_initial(cfg, card), out)
    hooks = build_hooks(cfg, card, plan, cfg_dict, extra_hooks)
    if cfg.compile:
        model = _compiled(model, plan.members, plan.initial)
    redraws = int(cfg.guard.redraws) if cfg.guard.enabled else 0
    engine = RolloutEngine(model, plan.members, float(cfg.temperature), hooks, state_path, int(cfg.checkpoint_every), redraws,
                           divergence=[lim.divergence for lim in plan.limits])
    state = _start_state(cfg, engine, plan, cfg_dict, state_path)
    if cfg.resume:  # every trajectory readable and whole before anything is written
        next(h for h in hooks if isinstance(h, TrajectoryOutput)).check_resumable(state)
    write_json_atomic(out / "dataset.json", _dataset_index(plan.labels, int(cfg.replicas), card.time_unit))
    step0, t0 = state.step, time.perf_counter()
    state = engine.run(state, int(cfg.steps))
    summary = summarise(state, plan.members, step0, time.perf_counter() - t0, card, model, bool(cfg.exclusion.enabled), device)
    write_json_atomic(out / "summary.json", summary)
    print(_summary_line(summary, out))
    if cfg.evaluate:
        summary["evaluate"] = _evaluate(cfg, out)
    return summary


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
    # paths are quoted so globs ('seq_00[0-5]') and odd characters survive hydra's override grammar;
    # file_index=-1: every replica of the rollout (and every file of the reference) is pooled, as a
    # user who asked for replicas expects (evaluate's own default, 0, would read replica 0 alone)
    overrides = [f"reference={hydra_quoted(cfg.reference)}", f"rollout={hydra_quoted(out)}",
                 f"output={hydra_quoted(out / 'evaluate')}", "file_index=-1",
                 f"progress={str(bool(cfg.progress)).lower()}", *cfg.evaluate_overrides]
    ecfg = compose_verb("evaluate", overrides)
    return run_evaluate(ecfg)
