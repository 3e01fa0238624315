"""Distil a model's many-call refiner into a student that takes one to three calls per step.

The chain model's refiner integrates the probability-flow ODE of its denoiser from the top noise
level down (``sampler="ode"``: 23 calls per learned step). Once the Gaussian draw has been
diffused to the top level, that sampler is a *deterministic* map from the noisy positions
``y_0`` (and the history) to the refined positions ``x``. A student of the same architecture,
started from the teacher's weights, learns that map directly (Luhman & Luhman 2021, "Knowledge
distillation in iterative generative models"; trained on the whole ODE path, as consistency
distillation does, Song et al. 2023):

1. :func:`teacher_pairs`: from random windows of the model's training systems (true histories),
   draw one learned step with the teacher and record the positions at every level of its path
   ``y_k`` (k = 0 the top) and the end point ``x``; written in resumable chunks.
2. :func:`train_student`: the student's one jump from level k,
   ``x_hat = y_k - sigma_k * scale * eps_student(y_k, sigma_k)``, is fitted to ``x`` (mean
   squared error in target-scale units); the top level is drawn with probability ``top_weight``
   (the level a one-call student uses), the others uniformly, so the student can also be
   sampled in two or three jumps (re-noising between them, ``sampler="student"``).
3. The result is a model file with the student's weights in place of the teacher's refiner and
   the schedule ``sampler=student``; export it as any model (``python -m cgsim.train.export``)
   to add a prior or recommended rollout settings.

The dynamics network is not changed: its latent (the refiner's conditioning) is stored with
each pair. Only a sampler whose path is deterministic after the first level can be distilled
this way (``ode`` without correctors); a stochastic teacher is refused.

Command line::

    python -m cgsim.train.distill TEACHER.pt OUT_DIR --windows 4096 --steps 3000
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cgsim.data.windows import BeadTrajectory, history_positions
from cgsim.errors import CgsimInputError
from cgsim.io_utils import atomic_path, check_output_directory
from cgsim.metadata import now_iso
from cgsim.model.batch import collate
from cgsim.model.checkpoint import (
    load_model_file,
    save_checkpoint,
    with_refiner,
)
from cgsim.model.refinement import ScoreRefiner
from cgsim.model.sampling import generator_noise
from cgsim.model.simulator import MultiScaleDynamics
from cgsim.train.prior_fit import training_systems

__all__ = ["teacher_pairs", "train_student", "student_checkpoint", "main"]

#: one pair: system index, first history frame, latent (n, C), path (L, n, 3) nm, end (n, 3) nm
Pair = dict[str, Any]


def _check_teacher(model: MultiScaleDynamics, source: str) -> ScoreRefiner:
    refiner = model.refiner
    if refiner is None:
        raise CgsimInputError(source, "the model has no refiner to distil")
    if refiner.sampler != "ode" or refiner.steps_per_level != 0 or refiner.levels < 2:
        raise CgsimInputError(source, f"the teacher's sampler must be deterministic after its first level "
                                      f"(sampler=ode, steps_per_level=0, levels >= 2); it is {refiner.schedule()}")
    return refiner


@torch.no_grad()
def _teacher_batch(model: MultiScaleDynamics, systems: list[BeadTrajectory], picks: list[tuple[int, int]],
                   stride: int, noise_gen: torch.Generator) -> list[Pair]:
    h = model.history
    graphs = [systems[k].graph for k, _ in picks]
    b = collate(graphs, [history_positions(systems[k], h, stride, start) for k, start in picks])
    b = b.with_pos(b.pos.to(next(model.parameters()).dtype))
    noise = generator_noise((b.n_beads, 3), noise_gen, b.pos.device, b.pos.dtype)
    pred = model(b)
    y = model.positions_from_target(b.pos[:, -h:], pred.value(noise(), 1.0))
    path: list[torch.Tensor] = []
    end = model.refiner.refine(b.with_pos(b.pos[:, -h:]), pred.latent, y, pred.scale, noise, trace=path)
    stacked = torch.stack(path)
    out = []
    for j, (k, start) in enumerate(picks):
        sel = b.batch == j
        out.append({"system": k, "start": start, "latent": pred.latent[sel].clone(), "path": stacked[:, sel].clone(),
                    "end": end[sel].clone()})
    return out


def teacher_pairs(model: MultiScaleDynamics, systems: list[BeadTrajectory], stride: int, windows: int,
                  out_dir: str | Path, batch_windows: int = 16, chunk_windows: int = 256, seed: int = 0,
                  progress: bool = True) -> list[Pair]:
    """Record the teacher's refinement path from random training windows (resumable).

    Parameters
    ----------
    model : MultiScaleDynamics
        The teacher (its refiner: ``sampler=ode``, no correctors).
    systems : list of BeadTrajectory
        Its training systems.
    stride : int
        Recorded frames per learned step (the model's).
    windows : int
        Pairs to record.
    out_dir : path-like
        Folder of the chunk files ``pairs_NNNNN.pt`` (each written atomically; chunks already
        there are loaded, not recomputed, so a killed run continues where it stopped).
    batch_windows : int
        Windows per teacher batch.
    chunk_windows : int
        Windows per chunk file.
    seed : int
        Seed of chunk ``c`` is ``seed + c`` (windows and noise), so a resumed run is the same.
    progress : bool
        Show a progress bar.

    Returns
    -------
    list of dict
        ``{"system", "start", "latent" (n, C), "path" (levels, n, 3) nm, "end" (n, 3) nm}``.
    """
    _check_teacher(model, "teacher")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    span = model.history * stride
    usable = [k for k, t in enumerate(systems) if t.n_frames > span]
    if not usable:
        raise CgsimInputError("data.train_systems", f"no training system has more than {span} frames")
    pairs: list[Pair] = []
    n_chunks = math.ceil(windows / chunk_windows)
    bar = tqdm(total=windows, desc="teacher pairs", unit="window", disable=not progress)
    for c in range(n_chunks):
        path = out / f"pairs_{c:05d}.pt"
        n = min(chunk_windows, windows - c * chunk_windows)
        if path.exists():
            chunk = torch.load(path, weights_only=False)
        else:
            rng = np.random.default_rng(seed + c)
            gen = torch.Generator().manual_seed(seed + c)
            picks = []
            for _ in range(n):
                k = int(rng.choice(usable))
                picks.append((k, int(rng.integers(0, systems[k].n_frames - span))))
            chunk = []
            for i in range(0, n, batch_windows):
                chunk.extend(_teacher_batch(model, systems, picks[i:i + batch_windows], stride, gen))
                bar.update(len(picks[i:i + batch_windows]))
            with atomic_path(path) as tmp:
                torch.save(chunk, tmp)
            pairs.extend(chunk)
            continue
        pairs.extend(chunk)
        bar.update(n)
    bar.close()
    return pairs


def _student_loss(model: MultiScaleDynamics, student: ScoreRefiner, systems: list[BeadTrajectory],
                  pairs: list[Pair], idx: np.ndarray, levels_k: np.ndarray, sigmas: list[float], stride: int) -> torch.Tensor:
    h = model.history
    sel = [pairs[i] for i in idx]
    b = collate([systems[p["system"]].graph for p in sel],
                [history_positions(systems[p["system"]], h, stride, p["start"]) for p in sel])
    dtype = next(student.parameters()).dtype
    b = b.with_pos(b.pos.to(dtype))
    latent = torch.cat([p["latent"] for p in sel])
    y = torch.cat([p["path"][k] for p, k in zip(sel, levels_k, strict=True)])
    end = torch.cat([p["end"] for p in sel])
    sigma_sys = torch.tensor([sigmas[k] for k in levels_k], dtype=dtype)
    sigma = sigma_sys[b.batch]
    scale = model.target_scale
    jump = y - (sigma * scale)[:, None] * student(b, latent, y, sigma, scale)
    return ((jump - end) / scale).pow(2).sum(-1).mean()


def train_student(model: MultiScaleDynamics, systems: list[BeadTrajectory], pairs: list[Pair], stride: int,
                  steps: int, state_path: str | Path, lr: float = 2e-4, batch_windows: int = 16,
                  top_weight: float = 0.5, val_fraction: float = 0.05, seed: int = 0, save_every: int = 200,
                  progress: bool = True) -> tuple[ScoreRefiner, dict[str, Any]]:
    """Fit a student refiner, started from the teacher's weights, to the teacher's end points.

    Parameters
    ----------
    model : MultiScaleDynamics
        The teacher (not changed).
    systems, stride
        As for :func:`teacher_pairs`.
    pairs : list of dict
        From :func:`teacher_pairs`.
    steps : int
        Optimiser steps (AdamW, cosine decay from ``lr``).
    state_path : path-like
        Resumable training state (student, optimiser, step, random state), written atomically
        every ``save_every`` steps and at the end; a run finds it and continues.
    batch_windows : int
        Pairs per step.
    top_weight : float
        Probability of training a pair's top level (the one-call student's); else a lower
        level, uniformly.
    val_fraction : float
        Pairs held out to report the student's error, per level, at the end.
    seed : int
        Seed of the batches and levels.

    Returns
    -------
    student : ScoreRefiner
        The trained student.
    report : dict
        ``train_loss`` (last 100 steps), ``val_rmsd`` per level (nm per bead, the student's one
        jump vs the teacher's end), ``teacher_rmsd_to_start`` (how far the teacher moved from each
        level), ``steps``.
    """
    refiner = _check_teacher(model, "teacher")
    sigmas = refiner.annealing_levels()
    student = copy.deepcopy(refiner).train()
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr * 0.05)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    n_val = max(1, int(len(pairs) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    step, losses = 0, []
    state_path = Path(state_path)
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        student.load_state_dict(state["student"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, losses = state["step"], state["losses"]
        rng.bit_generator.state = state["rng"]

    def save() -> None:
        with atomic_path(state_path) as tmp:
            torch.save({"student": student.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "step": step, "losses": losses, "rng": rng.bit_generator.state}, tmp)

    bar = tqdm(total=steps, initial=step, desc="distil student", unit="step", disable=not progress)
    while step < steps:
        idx = rng.choice(train, size=batch_windows, replace=False)
        top = rng.random(batch_windows) < top_weight
        levels_k = np.where(top, 0, rng.integers(1, len(sigmas), size=batch_windows))
        loss = _student_loss(model, student, systems, pairs, idx, levels_k, sigmas, stride)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % save_every == 0 or step == steps:
            save()
    bar.close()
    student.eval()
    return student, {"steps": step, "train_loss": float(np.mean(losses[-100:])) if losses else float("nan"),
                     **_validate(model, student, systems, pairs, val, sigmas, stride)}


@torch.no_grad()
def _validate(model: MultiScaleDynamics, student: ScoreRefiner, systems: list[BeadTrajectory], pairs: list[Pair],
              val: np.ndarray, sigmas: list[float], stride: int) -> dict[str, Any]:
    """RMSD (nm per bead) of the student's one jump from each level to the teacher's end point."""
    scale = float(model.target_scale)
    val_rmsd, moved = [], []
    for k in range(len(sigmas)):
        errs = []
        for i in range(0, len(val), 32):
            idx = val[i:i + 32]
            ks = np.full(len(idx), k)
            errs.append(float(_student_loss(model, student, systems, pairs, idx, ks, sigmas, stride)) * len(idx))
        val_rmsd.append(math.sqrt(sum(errs) / len(val)) * scale)
        moved.append(float(torch.cat([(pairs[i]["path"][k] - pairs[i]["end"]).pow(2).sum(-1) for i in val]).mean().sqrt()))
    return {"sigmas": sigmas, "val_rmsd_nm": val_rmsd, "teacher_rmsd_to_start_nm": moved}


def student_checkpoint(teacher_ckpt: dict[str, Any], model: MultiScaleDynamics, student: ScoreRefiner, levels: int,
                       record: dict[str, Any]) -> dict[str, Any]:
    """The model file of the teacher with the student in its refiner's place, sampled
    ``sampler=student`` in ``levels`` jumps (calls), no final denoising."""
    refine = {"sampler": "student", "levels": int(levels), "final_denoise": False, "steps_per_level": 0}
    return with_refiner(teacher_ckpt, model, student, refine, {"distilled": record, "date": now_iso()})


def main(argv: list[str] | None = None) -> None:
    """Command-line entry (module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teacher", help="model file whose refiner is the teacher (sampler=ode, no correctors)")
    ap.add_argument("out", help="folder: teacher pairs, training state, student.pt, distill.json")
    ap.add_argument("--windows", type=int, default=4096, help="teacher pairs to record")
    ap.add_argument("--steps", type=int, default=3000, help="student optimiser steps")
    ap.add_argument("--batch", type=int, default=16, help="windows per batch")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--top-weight", type=float, default=0.5, help="probability of the top level per pair")
    ap.add_argument("--levels", type=int, default=1, help="student calls per step in the written model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        out = check_output_directory(args.out, "out")
        ckpt, card, model = load_model_file(args.teacher)
        _check_teacher(model, args.teacher)
        systems = training_systems(card)
        stride = card.stride
        pairs = teacher_pairs(model, systems, stride, args.windows, out / "pairs", args.batch, seed=args.seed)
        student, report = train_student(model, systems, pairs, stride, args.steps, out / "distill_state.pt",
                                        lr=args.lr, batch_windows=args.batch, top_weight=args.top_weight,
                                        seed=args.seed)
    except CgsimInputError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    record = {"teacher": str(args.teacher), "windows": args.windows, "steps": args.steps, "lr": args.lr,
              "top_weight": args.top_weight, "report": report}
    save_checkpoint(out / "student.pt", student_checkpoint(ckpt, model, student, args.levels, record))
    import json

    with atomic_path(out / "distill.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    top = report["val_rmsd_nm"][0]
    print(f"distill: {args.teacher} -> {out / 'student.pt'} ({args.levels} call(s) per step); held-out pairs: "
          f"student vs teacher {top:.3f} nm per bead from the top level (teacher moved "
          f"{report['teacher_rmsd_to_start_nm'][0]:.3f} nm)")


if __name__ == "__main__":
    main()
