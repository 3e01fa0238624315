"""Rollout speed of the learned simulator, and what a Verlet neighbour list could save.

Measured on one device and thread count:

1. **rollout**: the real engine (:class:`cgsim.rollout.engine.RolloutEngine`, no hooks)
   running 1, 8 and 64 replicas of one chain system: simulated time per wall second (per
   replica and summed over replicas; the learned dt is the checkpoint's ``data.learned_dt``)
   and beads x learned steps per second, after two untimed warm-up steps.
2. **graph share**: at the same sizes, one ``radius_graph`` of the current frame against one
   model forward (which contains that radius graph) and one engine step.
3. **rebuild rate at the learned step**: the reference trajectory the rollout starts from
   (frames one learned step apart) and, with a checkpoint, the timed rollout, replayed through
   a :class:`cgsim.geometry.VerletList`.
4. **refinement**: engine steps of a model with the score refiner (``experiment=chain``'s
   ``model/refinement=score``: its schedule's network calls per learned step, each building
   the radius graph of its current positions); the positions of every refiner call are recorded and searched again with a
   fresh ``radius_graph`` per call and with Verlet lists of several skins: time per call,
   rebuild rate, and the share of a step the Verlet list would save.
5. **Verlet vs plain** on a synthetic sequence of small moves (each bead moves 0.01-0.05 nm in
   a random direction per call, a random walk), uniform random beads in a periodic cubic box,
   10^3..10^5 beads: time per call of a fresh ``radius_graph`` and of the Verlet list
   (amortised over the calls, builds included), builds, and a check that both give the same
   edges and vectors at the last call.
6. optionally (``--compile``): the model forward in ``torch.compile`` (dynamic shapes, as
   ``cgsim rollout compile=true`` does it) against eager: compile time and time per forward.

With no ``--checkpoint`` the model is an untrained one of the chain experiment's size (the
composed ``cgsim train experiment=chain`` config: hidden 64, fine 3, bead 5 layers, cutoff
3.0 nm, history 8), normalised on the initial system, on ``data/chain/mapped/test/seq_000``
(learned dt = its frame interval, 5 tau), so the script runs on a fresh clone. A network's
cost depends on its graph, not its weights; so that the graph stays that of a physical chain
(an untrained model would fly apart and lose its edges), its decoders' last layers are zeroed
and the target is the displacement: at temperature 0 each replica stays where it starts.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_rollout.py --threads 1 --json outputs/bench/rollout.json
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_rollout.py --checkpoint runs/chain/checkpoints/best.pt
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_common import StepTimer, untrained_model

from cgsim.data.load import load_systems
from cgsim.data.windows import history_positions as initial_history
from cgsim.geometry import VerletList, radius_graph
from cgsim.model.batch import SystemGraph, collate
from cgsim.model.simulator import MultiScaleDynamics
from cgsim.rollout.engine import Member, RolloutEngine, RolloutState, member_seed

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INITIAL = ROOT / "data" / "chain" / "mapped" / "test" / "seq_000"


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, s."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _amortised(times: list[float], built: list[bool]) -> float:
    """Time per call of a Verlet list, s: median build and median reuse, weighted by their counts.

    Medians, not means: on a shared machine a call is now and then descheduled for long.
    """
    builds = [t for t, b in zip(times, built, strict=True) if b]
    reuses = [t for t, b in zip(times, built, strict=True) if not b]
    total = len(builds) * (statistics.median(builds) if builds else 0.0)
    total += len(reuses) * (statistics.median(reuses) if reuses else 0.0)
    return total / max(len(times), 1)


class _Recorder(StepTimer):
    """A :class:`StepTimer` that also keeps the current frame (N, 3) of every committed step."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[torch.Tensor] = []

    def on_step(self, engine: RolloutEngine, state: RolloutState) -> None:  # noqa: D102
        super().on_step(engine, state)
        self.frames.append(state.pos[:, -1].clone())


def chain_model(n_atom_types: int, refine: bool, positions: torch.Tensor) -> MultiScaleDynamics:
    """Untrained model of ``experiment=chain``, with its refiner (``refine``) or without refiner calls.

    See :func:`bench_common.untrained_model` (decoders' last layers zeroed: mean step 0, so at
    temperature 0 a replica stays at its initial configuration; the refiner only adds its
    Langevin noise). Normalisation is fitted to ``positions`` (T, N, 3), nm.
    """
    return untrained_model("chain", n_atom_types, positions, refine=refine)[0]


def load_model(args: argparse.Namespace, device: torch.device, refine: bool = False) -> dict[str, Any]:
    """The model, the initial system's graph and history, and what the table needs to know."""
    if args.checkpoint:
        from cgsim.model.card import ModelCard
        from cgsim.model.checkpoint import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        card = ModelCard.from_checkpoint(ckpt, args.checkpoint)
        stride, learned_dt, time_unit = card.history_spacing, card.learned_dt, card.time_unit
        model = model_from_checkpoint(ckpt, device=device, use_ema=True)
        systems = load_systems([str(args.initial)], "initial", atom_types=list(card.atom_types))
        traj = systems.trajectories[0]
        if not card.matches_save_interval(systems.save_interval):
            raise SystemExit(f"{args.initial}: frames {systems.save_interval:g} apart x stride {card.stride} "
                             f"is not the learned dt {learned_dt:g}")
        label = f"checkpoint {args.checkpoint}"
    else:
        systems = load_systems([str(args.initial)], "initial")
        traj, stride = systems.trajectories[0], 1
        learned_dt, time_unit = float(systems.save_interval), systems.time_unit
        model = chain_model(len(systems.atom_types), refine, torch.from_numpy(traj.positions)).to(device)
        label = "untrained, chain experiment size, mean step 0" + (" + score refiner" if refine else "")
    hist = initial_history(traj, model.history, stride)
    n_params = sum(p.numel() for p in model.parameters())
    return {"model": model.eval(), "graph": traj.graph, "hist": hist, "traj": traj, "stride": stride,
            "learned_dt": learned_dt, "time_unit": time_unit, "label": label, "n_params": n_params}


def bench_rollout(model: MultiScaleDynamics, graph: SystemGraph, hist: torch.Tensor, replicas: int,
                  temperature: float, seconds: float, max_steps: int, warmup: int = 2) -> dict[str, Any]:
    """Time the engine on ``replicas`` copies of one system; returns speed and the recorded frames."""
    members = [Member(system=0, replica=r, name=f"bench/replica_{r:03d}", graph=graph, seed=member_seed(0, 0, r))
               for r in range(replicas)]
    rec = _Recorder()
    engine = RolloutEngine(model, members, temperature, hooks=[rec])
    state = engine.initial_state([hist] * replicas)
    t0 = time.perf_counter()
    engine.run(state, warmup)
    per_step = (time.perf_counter() - t0) / warmup
    steps = int(min(max_steps, max(5, seconds / max(per_step, 1e-9))))
    rec.step_s.clear()
    t0 = time.perf_counter()
    engine.run(state, warmup + steps)
    wall = time.perf_counter() - t0
    done = state.step - warmup
    n_beads = graph.n_beads
    bead_steps = sum(n_beads * ((s if s >= 0 else state.step) - warmup) for s in state.stop_step)
    step = statistics.median(rec.step_s) if rec.step_s else wall / max(done, 1)
    return {"replicas": replicas, "beads": n_beads * replicas, "steps": done, "wall_s": wall,
            "step_ms": 1e3 * step, "step_ms_mean": 1e3 * wall / max(done, 1),
            "n_stopped": sum(s >= 0 for s in state.stop_step),
            "bead_steps_per_s": bead_steps / max(done, 1) / step, "frames": rec.frames,
            "batch": torch.arange(replicas, device=state.pos.device).repeat_interleave(n_beads)}


@torch.inference_mode()
def bench_graph_share(model: MultiScaleDynamics, graph: SystemGraph, hist: torch.Tensor, replicas: int,
                      repeats: int, device: torch.device) -> dict[str, float]:
    """Median time of one radius graph and one forward at ``replicas`` copies of the system."""
    p = next(model.parameters())
    batch = collate([graph] * replicas, [hist[:, -model.history:].to(p.dtype)] * replicas).to(device)
    chem = model.chemistry(batch)
    x = batch.pos[:, -1]
    model(batch, chem)  # warm-up
    t_graph = _median_time(lambda: radius_graph(x, model.cutoff, batch.box, batch.batch), repeats)
    t_fwd = _median_time(lambda: model(batch, chem), repeats)
    n_edges = radius_graph(x, model.cutoff, batch.box, batch.batch).n_edges
    return {"graph_ms": 1e3 * t_graph, "forward_ms": 1e3 * t_fwd, "radius_edges": n_edges}


def bench_refinement(model: MultiScaleDynamics, graph: SystemGraph, hist: torch.Tensor, replicas: int,
                     temperature: float, steps: int, skins: list[float], device: torch.device) -> dict[str, Any]:
    """Engine steps with the score refiner; its inputs replayed through radius_graph and VerletLists.

    Every refiner call builds the radius graph of its current positions ``y``; those ``y`` are
    recorded (a forward pre-hook) and the same sequence is then searched with a fresh
    ``radius_graph`` per call and with a Verlet list per skin.
    """
    refiner = model.refiner
    members = [Member(system=0, replica=r, name=f"bench/replica_{r:03d}", graph=graph, seed=member_seed(0, 0, r))
               for r in range(replicas)]
    rec = _Recorder()
    engine = RolloutEngine(model, members, temperature, hooks=[rec])
    state = engine.initial_state([hist] * replicas)
    ys: list[torch.Tensor] = []
    handle = refiner.register_forward_pre_hook(lambda mod, args: ys.append(args[2].detach().clone()))
    try:
        engine.run(state, 1)  # warm-up
        ys.clear()
        rec.step_s.clear()
        t0 = time.perf_counter()
        engine.run(state, 1 + steps)
        wall = time.perf_counter() - t0
    finally:
        handle.remove()
    done = state.step - 1
    batch = torch.arange(replicas, device=device).repeat_interleave(graph.n_beads)
    box = None if graph.box is None else graph.box.to(device).expand(replicas, 3)
    t_plain: list[float] = []
    edges = []
    for y in ys:
        t1 = time.perf_counter()
        g = radius_graph(y, refiner.cutoff, box, batch)
        t_plain.append(time.perf_counter() - t1)
        edges.append(g.n_edges)
    moves = torch.stack([(b - a).norm(dim=1).max() for a, b in zip(ys[:-1], ys[1:], strict=True)])
    per_skin = []
    for skin in skins:
        nl = VerletList(refiner.cutoff, skin)
        times, built = [], []
        for y in ys:
            n0, t1 = nl.n_builds, time.perf_counter()
            nl(y, box, batch)
            times.append(time.perf_counter() - t1)
            built.append(nl.n_builds > n0)
        per_skin.append({"skin": skin, "verlet_ms": 1e3 * _amortised(times, built), "builds": nl.n_builds,
                         "rebuild_rate": nl.rebuild_rate})
    step_ms = 1e3 * statistics.median(rec.step_s) if rec.step_s else 1e3 * wall / max(done, 1)
    plain_ms = 1e3 * statistics.median(t_plain)
    calls = len(ys) / max(done, 1)
    return {"replicas": replicas, "beads": replicas * graph.n_beads, "steps": done, "step_ms": step_ms,
            "step_ms_mean": 1e3 * wall / max(done, 1),
            "refiner_calls_per_step": calls, "radius_edges_mean": statistics.mean(edges),
            "median_max_move_per_call": float(moves.median()) if len(moves) else math.nan,
            "plain_ms": plain_ms, "graph_share_step": calls * plain_ms / step_ms,
            "verlet": [{**v, "saving_share_step": calls * (plain_ms - v["verlet_ms"]) / step_ms} for v in per_skin]}


def replay_verlet(frames: list[torch.Tensor], cutoff: float, skin: float, box: torch.Tensor | None,
                  batch: torch.Tensor | None) -> dict[str, float]:
    """Builds a Verlet list would do over ``frames`` (each (N, 3), nm)."""
    nl = VerletList(cutoff, skin)
    for x in frames:
        nl(x, box, batch)
    return {"calls": nl.n_calls, "builds": nl.n_builds, "rebuild_rate": nl.rebuild_rate}


def bench_verlet(n: int, density: float, cutoff: float, skin: float, calls: int, move: tuple[float, float],
                 plain_budget: float, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Plain radius graph vs Verlet list over ``calls`` small random moves of ``n`` beads."""
    side = max((n / density) ** (1 / 3), 2.0 * (cutoff + skin) + 1e-3)
    box = torch.full((3,), side, dtype=torch.float32, device=device)

    def positions():
        g = torch.Generator().manual_seed(seed)
        x = torch.rand((n, 3), generator=g) * side
        for _ in range(calls):
            yield x.to(device)
            u = torch.randn((n, 3), generator=g)
            u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
            x = x + u * (move[0] + (move[1] - move[0]) * torch.rand((n, 1), generator=g))

    # plain: every call searches afresh (time budget bounds the calls at large n, at least 3)
    t_plain: list[float] = []
    for x in positions():
        t0 = time.perf_counter()
        ref = radius_graph(x, cutoff, box)
        t_plain.append(time.perf_counter() - t0)
        del ref
        if len(t_plain) >= 3 and sum(t_plain) > plain_budget:
            break
    nl = VerletList(cutoff, skin)
    times, built, last_x, g = [], [], None, None
    for x in positions():
        builds = nl.n_builds
        t0 = time.perf_counter()
        g = nl(x, box)
        times.append(time.perf_counter() - t0)
        built.append(nl.n_builds > builds)
        last_x = x
    assert g is not None and last_x is not None
    ref = radius_graph(last_x, cutoff, box)
    same = bool(torch.equal(g.edge_index, ref.edge_index) and torch.equal(g.vec, ref.vec))
    build_t = [t for t, b in zip(times, built, strict=True) if b]
    reuse_t = [t for t, b in zip(times, built, strict=True) if not b]
    return {"beads": n, "box_nm": side, "edges": ref.n_edges, "candidates": nl.n_candidates, "calls": calls,
            "plain_calls_timed": len(t_plain), "plain_ms": 1e3 * statistics.median(t_plain),
            "plain_ms_mean": 1e3 * statistics.mean(t_plain), "verlet_ms": 1e3 * _amortised(times, built),
            "verlet_ms_mean": 1e3 * statistics.mean(times), "verlet_build_ms": 1e3 * statistics.median(build_t),
            "verlet_reuse_ms": 1e3 * statistics.median(reuse_t) if reuse_t else math.nan,
            "builds": nl.n_builds, "rebuild_rate": nl.rebuild_rate, "identical_last_call": same}


def bench_compile(model: MultiScaleDynamics, graph: SystemGraph, hist: torch.Tensor, replicas: list[int], repeats: int,
                  device: torch.device) -> dict[str, Any]:
    """Eager vs ``torch.compile`` forward (compiled once, dynamic shapes) at each replica count."""
    from cgsim.rollout.compile import compile_model

    p = next(model.parameters())
    h = model.history
    cases = []
    with torch.inference_mode():
        for r in replicas:
            batch = collate([graph] * r, [hist[:, -h:].to(p.dtype)] * r).to(device)
            cases.append((r, batch, model.chemistry(batch)))
    t0 = time.perf_counter()
    compiled, error = compile_model(model, example=lambda m: m(cases[0][1], cases[0][2]))
    out: dict[str, Any] = {"compile_s": time.perf_counter() - t0, "compiled": error is None, "error": error, "sizes": []}
    for r, batch, chem in cases:
        row: dict[str, Any] = {"replicas": r}
        with torch.inference_mode():
            model(batch, chem)
            row["eager_ms"] = 1e3 * _median_time(lambda b=batch, c=chem: model(b, c), repeats)
            if error is None:
                t0 = time.perf_counter()
                compiled(batch, chem)  # a new size may recompile
                row["first_call_s"] = time.perf_counter() - t0
                row["compiled_ms"] = 1e3 * _median_time(lambda b=batch, c=chem: compiled(b, c), repeats)
                a, b = model(batch, chem), compiled(batch, chem)
                la, lb = getattr(a, "latent", a.std), getattr(b, "latent", b.std)
                row["max_abs_diff_latent"] = float((la - lb).abs().max())
        out["sizes"].append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="trained checkpoint; default: untrained chain-size model")
    ap.add_argument("--initial", default=str(DEFAULT_INITIAL), help="mapped system the replicas start from")
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--seconds", type=float, default=8.0, help="timed rollout seconds per replica count (about)")
    ap.add_argument("--max-steps", type=int, default=400)
    ap.add_argument("--temperature", type=float, default=0.0, help="noise scale (0: mean; untrained stays finite)")
    ap.add_argument("--repeats", type=int, default=7, help="repeats of the graph / forward timings (median)")
    ap.add_argument("--refine-replicas", type=int, default=8, help="replicas of the refinement run (0: skip it)")
    ap.add_argument("--refine-steps", type=int, default=8)
    ap.add_argument("--skins", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="nm, refinement replay")
    ap.add_argument("--skin", type=float, default=0.5, help="Verlet skin, nm, other Verlet figures")
    ap.add_argument("--verlet-sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--verlet-calls", type=int, default=20)
    ap.add_argument("--verlet-move", type=float, nargs=2, default=[0.01, 0.05], help="nm per call: min max")
    ap.add_argument("--verlet-density", type=float, default=0.5, help="beads per nm^3")
    ap.add_argument("--verlet-cutoff", type=float, default=None, help="nm; default: the model's cutoff")
    ap.add_argument("--plain-budget", type=float, default=15.0, help="s of plain radius graphs per size (>= 3 calls)")
    ap.add_argument("--compile", action="store_true", help="also time a torch.compile'd forward")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t_start = time.perf_counter()

    m = load_model(args, device)
    model, graph, hist = m["model"], m["graph"], m["hist"]
    unit = m["time_unit"]
    refiner = getattr(model, "refiner", None)
    print(f"# torch {torch.__version__} on {device}, {args.threads} thread(s), {platform.machine()}; model: {m['label']} "
          f"({m['n_params']:,} parameters, cutoff {model.cutoff} nm, history {model.history}, target {model.target}, "
          f"refiner {'yes' if refiner is not None else 'no'}); system {Path(args.initial).name}: {graph.n_beads} beads, "
          f"learned dt {m['learned_dt']:g} {unit}, temperature {args.temperature:g}")

    rows, frames_by_r = [], {}
    for r in args.replicas:
        res = bench_rollout(model, graph, hist, r, args.temperature, args.seconds, args.max_steps)
        share = bench_graph_share(model, graph, hist, r, args.repeats, device)
        frames, batch = res.pop("frames"), res.pop("batch")
        frames_by_r[r] = (frames, batch)
        box_r = None if graph.box is None else graph.box.to(device).expand(r, 3)
        sim = m["learned_dt"] / (1e-3 * res["step_ms"])
        res.update(share, sim_per_s=sim, aggregate_sim_per_s=sim * r,
                   edges_per_bead_last=radius_graph(frames[-1], model.cutoff, box_r, batch).n_edges / res["beads"],
                   graph_share_forward=share["graph_ms"] / share["forward_ms"],
                   graph_share_step=share["graph_ms"] / res["step_ms"])
        rows.append(res)
    print(f"\n## rollout (RolloutEngine, no hooks)\n{'replicas':>8} {'beads':>6} {'steps':>6} {'step ms':>8} "
          f"{unit + '/s':>9} {'agg ' + unit + '/s':>11} {'bead-steps/s':>12} {'edges/bead':>10} {'radius ms':>9} "
          f"{'fwd ms':>8} {'graph/fwd':>9} {'graph/step':>10} {'stopped':>7}")
    for res in rows:
        print(f"{res['replicas']:>8d} {res['beads']:>6d} {res['steps']:>6d} {res['step_ms']:>8.2f} {res['sim_per_s']:>9.4g} "
              f"{res['aggregate_sim_per_s']:>11.4g} {res['bead_steps_per_s']:>12.4g} "
              f"{res['radius_edges'] / res['beads']:>4.1f}/{res['edges_per_bead_last']:<5.1f} {res['graph_ms']:>9.2f} "
              f"{res['forward_ms']:>8.2f} {100 * res['graph_share_forward']:>8.1f}% {100 * res['graph_share_step']:>9.1f}% "
              f"{res['n_stopped']:>7d}")
    print("(step ms: median engine step; rates from it. edges/bead: radius edges per bead at the start / at the end "
          "of the timed rollout; radius ms and fwd ms: one radius_graph and one model forward at the start "
          "configuration, median)")

    # rebuild rate a Verlet list would have at the learned step
    traj = m["traj"]
    ref_frames = [torch.from_numpy(f).to(device) for f in traj.positions[::m["stride"]]]
    box = None if graph.box is None else graph.box.to(device)
    r_big = max(frames_by_r)
    frames, batch = frames_by_r[r_big]
    box_b = None if box is None else box.expand(r_big, 3)
    disp_ref = torch.stack(ref_frames).diff(dim=0).norm(dim=-1)  # (T-1, N)
    rebuild: dict[str, Any] = {"skin": args.skin,
                               "reference": {**replay_verlet(ref_frames, model.cutoff, args.skin, box, None),
                                             "median_bead_move_per_step": float(disp_ref.median()),
                                             "median_max_move_per_step": float(disp_ref.max(dim=1).values.median())}}
    ref = rebuild["reference"]
    line = (f"\n## Verlet list (skin {args.skin} nm) at the learned step ({m['learned_dt']:g} {unit})\n"
            f"reference trajectory ({len(ref_frames)} frames): beads move {ref['median_bead_move_per_step']:.3g} nm per "
            f"step (median; fastest bead {ref['median_max_move_per_step']:.3g} nm), rebuild rate {ref['rebuild_rate']:.3f}")
    if args.checkpoint:  # the untrained stand-in does not move; a trained model's rollout does
        rebuild["rollout"] = {"replicas": r_big, **replay_verlet(frames, model.cutoff, args.skin, box_b, batch)}
        line += (f"; rollout of {r_big} replicas ({rebuild['rollout']['calls']} steps): rebuild rate "
                 f"{rebuild['rollout']['rebuild_rate']:.3f}")
    print(line)

    refine = None
    if args.refine_replicas > 0:
        rmodel = model
        if refiner is None and not args.checkpoint:
            rmodel = load_model(args, device, refine=True)["model"]
        if getattr(rmodel, "refiner", None) is None:
            print("\n## refinement: the checkpoint's model has no refiner; skipped")
        else:
            refine = bench_refinement(rmodel, graph, hist, args.refine_replicas, args.temperature, args.refine_steps,
                                      args.skins, device)
            rf = rmodel.refiner
            print(f"\n## refinement (score refiner: {rf.levels} levels x {rf.steps_per_level} + "
                  f"{int(rf.final_denoise)} calls, cutoff {rf.cutoff} nm), {refine['replicas']} replicas, "
                  f"{refine['steps']} steps\nstep {refine['step_ms']:.1f} ms ({refine['steps'] * m['learned_dt'] / (1e-3 * refine['step_ms'] * refine['steps']):.4g} "
                  f"{unit}/s per replica), {refine['refiner_calls_per_step']:.0f} refiner calls per step; fastest bead moves "
                  f"{refine['median_max_move_per_call']:.3g} nm per call (median); radius_graph {refine['plain_ms']:.2f} ms "
                  f"per call = {100 * refine['graph_share_step']:.1f}% of a step")
            print(f"{'skin nm':>7} {'verlet ms/call':>14} {'builds':>6} {'rebuild rate':>12} {'step saved':>10}")
            for v in refine["verlet"]:
                print(f"{v['skin']:>7.2f} {v['verlet_ms']:>14.2f} {v['builds']:>6d} {v['rebuild_rate']:>12.3f} "
                      f"{100 * v['saving_share_step']:>9.1f}%")

    cutoff = args.verlet_cutoff or model.cutoff
    vrows = [bench_verlet(n, args.verlet_density, cutoff, args.skin, args.verlet_calls, tuple(args.verlet_move),
                          args.plain_budget, device) for n in args.verlet_sizes]
    print(f"\n## radius graph vs Verlet list: {args.verlet_calls} calls, beads move {args.verlet_move[0]:g}-"
          f"{args.verlet_move[1]:g} nm per call (random walk); periodic cube, {args.verlet_density:g} beads/nm^3, "
          f"cutoff {cutoff:g} nm, skin {args.skin:g} nm")
    print(f"{'beads':>7} {'edges':>9} {'candidates':>10} {'plain ms':>9} {'verlet ms':>9} {'speed-up':>8} {'builds':>6} "
          f"{'build ms':>9} {'reuse ms':>8} {'same':>5}")
    for v in vrows:
        print(f"{v['beads']:>7d} {v['edges']:>9d} {v['candidates']:>10d} {v['plain_ms']:>9.2f} {v['verlet_ms']:>9.2f} "
              f"{v['plain_ms'] / v['verlet_ms']:>7.2f}x {v['builds']:>6d} {v['verlet_build_ms']:>9.2f} "
              f"{v['verlet_reuse_ms']:>8.2f} {str(v['identical_last_call']):>5}")
    print("(plain ms: median of a fresh radius_graph per call; verlet ms: per call, builds included: median build and "
          "median reuse weighted by their counts; same: identical edges and vectors at the last call)")

    comp = None
    if args.compile:
        comp = bench_compile(model, graph, hist, args.replicas, args.repeats, device)
        print(f"\n## torch.compile of the model forward (dynamic shapes, compiled on {args.replicas[0]} replica(s))")
        if not comp["compiled"]:
            print(f"compilation failed after {comp['compile_s']:.1f} s: {comp['error']}")
        else:
            print(f"compile {comp['compile_s']:.1f} s\n{'replicas':>8} {'eager ms':>9} {'compiled ms':>11} {'speed-up':>8} "
                  f"{'first call s':>12} {'max |diff|':>10}")
        for row in comp["sizes"]:
            if comp["compiled"]:
                print(f"{row['replicas']:>8d} {row['eager_ms']:>9.2f} {row['compiled_ms']:>11.2f} "
                      f"{row['eager_ms'] / row['compiled_ms']:>7.2f}x {row['first_call_s']:>12.2f} "
                      f"{row['max_abs_diff_latent']:>10.2g}")

    total = time.perf_counter() - t_start
    print(f"\n# total {total:.0f} s")
    if args.json:
        out = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "device": str(device), "threads": args.threads,
               "model": m["label"], "n_params": m["n_params"], "system": str(args.initial), "beads_per_system": graph.n_beads,
               "learned_dt": m["learned_dt"], "time_unit": unit, "temperature": args.temperature, "rollout": rows,
               "verlet_learned_step": rebuild, "refinement": refine, "verlet_small_moves": vrows, "compile": comp,
               "total_s": total, "args": vars(args)}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2, default=float))
        print(f"# wrote {path}")


if __name__ == "__main__":
    main()
