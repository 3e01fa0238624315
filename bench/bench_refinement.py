"""Refinement schedule vs stability and structure: how few denoiser calls per learned step suffice.

For each schedule ``LxS`` (``L`` annealing levels x ``S`` Langevin steps per level, ``+d`` adds the
final Tweedie denoising call) the same trained checkpoint rolls out every held-out system x
``--replicas`` replicas for ``--steps`` learned steps through the real rollout engine and stability
guard (the limits ``cgsim rollout`` uses), and reports:

- stable: fraction of replicas that finish every step;
- steps survived (mean over replicas);
- bond W1: Wasserstein-1 distance between the rollout's and the reference's bead-bond lengths, nm;
- Rg error: relative error of the mean radius of gyration vs the reference;
- wall ms per learned step and network calls per step.

Usage::

    python bench/bench_refinement.py --checkpoint runs/chain_refine/checkpoints/best.pt \
        --initial 'data/chain/mapped/test/seq_00[0-5]' --reference-suffix _long --steps 2000 \
        --schedules 0x0 0x0+d 1x1 2x2+d 5x2+d 10x2+d --json /tmp/refine.json
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from cgsim.data.load import load_systems
from cgsim.data.windows import history_positions as initial_history
from cgsim.model.card import ModelCard
from cgsim.model.checkpoint import load_checkpoint, model_from_checkpoint
from cgsim.observables.bonds import bond_lengths
from cgsim.observables.polymer import radius_of_gyration
from cgsim.rollout.engine import Member, RolloutEngine, RolloutHook, member_seed
from cgsim.rollout.hooks import StabilityGuard
from cgsim.rollout.limits import guard_limits


class _Recorder(RolloutHook):
    """Keeps every ``every``-th frame of every member in memory (positions of the current frame)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.frames: list[tuple[int, torch.Tensor]] = []

    def on_step(self, engine, state):  # noqa: D102
        if state.step % self.every == 0:
            self.frames.append((state.step, state.pos[:, -1].clone()))


def parse_schedule(text: str) -> dict:
    """``"[D|O]LxS[+d][@start][:karras]"`` -> options: ``D`` = diffusion (predictor-corrector) sampler,
    ``O`` = probability-flow ODE (Heun), ``L`` levels, ``S`` Langevin steps per level, ``+d`` final
    denoise, ``@start`` first noise level (target-scale units), ``:karras`` the rho = 7 ladder.

    ``"5x2+d"`` = Langevin 5 levels x 2 steps + denoise; ``"D8x0+d@1.0"`` = 8-level reverse diffusion from 1.0.
    """
    text, _, spacing = text.partition(":")
    body, _, start = text.partition("@")
    sampler = {"D": "diffusion", "O": "ode"}.get(body[:1], "langevin")
    body = body.lstrip("DO")
    body, _, flag = body.partition("+")
    levels, steps = (int(v) for v in body.split("x"))
    return {"sampler": sampler, "levels": levels, "steps_per_level": steps, "final_denoise": flag == "d",
            "sigma_start": float(start) if start else None, "spacing": spacing or "geometric"}


def run_schedule(model, trajs, refs, schedule: str, replicas: int, steps: int, seed: int, every: int,
                 temperature: float = 1.0, redraws: int = 0, spacing: int = 1) -> dict:
    """Roll out every system x replica with one refinement schedule and score it (histories
    ``spacing`` recorded frames apart: the model card's ``history_spacing``)."""
    opts = parse_schedule(schedule)
    if model.refiner is None:
        if opts["levels"] or opts["final_denoise"]:
            raise SystemExit("this checkpoint has no refiner; only schedule 0x0 applies")
    else:
        model.refiner.set_schedule(**opts)
    members, initial, max_bond, min_dist = [], [], [], []
    for s, t in enumerate(trajs):
        longest, closest = guard_limits(t, model.cutoff, 50)
        for r in range(replicas):
            members.append(Member(system=s, replica=r, name=f"{t.name}/{r}", graph=t.graph, seed=member_seed(seed, s, r)))
            initial.append(initial_history(t, model.history, spacing))
            max_bond.append(1.5 * longest)
            min_dist.append(0.5 * closest)
    rec = _Recorder(every)
    engine = RolloutEngine(model, members, temperature=temperature, hooks=[StabilityGuard(max_bond, min_dist), rec],
                           max_redraws=redraws)
    t0 = time.perf_counter()
    state = engine.run(engine.initial_state(initial), steps)
    wall = time.perf_counter() - t0
    survived = [steps if s < 0 else s - 1 for s in state.stop_step]
    w1, rg_err = [], []
    for k, m in enumerate(members):
        sl = engine.member_slice(k)
        kept = [p[sl].cpu().numpy() for step, p in rec.frames if step <= survived[k]]
        if len(kept) < 2:
            continue
        xs = np.stack(kept)
        bonds = m.graph.bead_bonds.numpy().T
        bonds = bonds[bonds[:, 0] < bonds[:, 1]]
        ref = refs[m.system]
        w1.append(wasserstein_distance(bond_lengths(ref, bonds).ravel(), bond_lengths(xs, bonds).ravel()))
        rg_ref = radius_of_gyration(ref).values.mean()
        rg_err.append(abs(radius_of_gyration(xs).values.mean() - rg_ref) / rg_ref)
    return {"schedule": schedule, "calls_per_step": model.refiner.calls_per_step if model.refiner else 0,
            "stable_fraction": float(np.mean([s < 0 for s in state.stop_step])),
            "mean_steps_survived": float(np.mean(survived)),
            "bond_w1_nm": float(np.mean(w1)) if w1 else float("nan"),
            "rg_rel_error": float(np.mean(rg_err)) if rg_err else float("nan"),
            "ms_per_step": 1e3 * wall / max(1, state.step),
            "redraws_per_1000_steps": 1e3 * sum(state.redraws) / max(1, sum(survived)),
            "stop_reasons": dict(Counter(r.split(" ")[0] for r in state.stop_reason if r)),
            "stop_details": [r for r in state.stop_reason if r][:12]}


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry; returns the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--initial", default="data/chain/mapped/test/seq_00[0-5]")
    ap.add_argument("--reference-suffix", default="_long", help="reference = initial dir + this suffix, if it exists")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--record-every", type=int, default=10)
    ap.add_argument("--schedules", nargs="+", default=["0x0", "0x0+d", "1x1+d", "2x2+d", "5x2+d"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=1.0, help="scale of the Gaussian step's noise")
    ap.add_argument("--redraws", type=int, default=0, help="resample a step that fails the guard up to N times")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    card = ModelCard.from_checkpoint(ckpt, args.checkpoint)
    model = model_from_checkpoint(ckpt)
    dirs = sorted(glob.glob(args.initial))
    trajs = load_systems(dirs, "initial", atom_types=list(card.atom_types)).trajectories
    refs = []
    for d, t in zip(dirs, trajs, strict=True):
        long = Path(d + args.reference_suffix)
        refs.append(load_systems([str(long)], "reference").trajectories[0].positions if long.is_dir() else t.positions)
    print(f"{len(trajs)} systems x {args.replicas} replicas, {args.steps} learned steps, checkpoint {args.checkpoint}")
    print(f"{'schedule':>12} {'calls':>5} {'stable':>6} {'survived':>8} {'bond W1 nm':>10} {'Rg err':>7} {'ms/step':>8} "
          f"{'redraw/1k':>9}")
    rows = []
    for sched in args.schedules:
        r = run_schedule(model, trajs, refs, sched, args.replicas, args.steps, args.seed, args.record_every,
                         args.temperature, args.redraws, card.history_spacing)
        rows.append(r)
        print(f"{r['schedule']:>12} {r['calls_per_step']:>5d} {r['stable_fraction']:>6.2f} {r['mean_steps_survived']:>8.0f} "
              f"{r['bond_w1_nm']:>10.4f} {r['rg_rel_error']:>7.3f} {r['ms_per_step']:>8.1f} "
              f"{r['redraws_per_1000_steps']:>9.2f}", flush=True)
    result = {"checkpoint": str(args.checkpoint), "steps": args.steps, "replicas": args.replicas,
              "temperature": args.temperature, "redraws": args.redraws,
              "systems": [t.name for t in trajs], "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
