"""Fit a model's few-call sampler to true next frames with a proper scoring rule (energy score).

A student sampler (``sampler="student"``: ``L`` jumps, ``L + 1`` network calls per learned step)
whose denoiser was trained by denoising score matching, or distilled from a deterministic
teacher, returns *posterior means*: each jump from a noise level to the clean positions averages
over everything the noise hides, so a step moves beads less than MD does (the electrolyte model's
3-call schedule: Li+ mean-square step 0.4-0.5x MD's and D(Li+) half of MD's; BENCHMARKS.md).
Here the sampler itself is trained end to end, through its ``L`` jumps, on the true next frames.

The loss is the energy score of a two-member ensemble (Gneiting & Raftery 2007, JASA 102:359):
for two steps ``x_a, x_b`` drawn from the same history and the observed next frame ``y``,

    ES(f) = (|f(x_a) - f(y)| + |f(x_b) - f(y)|) / 2 - |f(x_a) - f(x_b)| / 2,

whose expectation is smallest only when ``f(x)`` has the true conditional distribution of
``f(y)``; so, unlike a squared error, it does not reward shrinking the step to its mean. It is
applied to

- every bead's displacement over the step (a 3-vector, target-scale units): how far beads move;
- every bead bond length and every non-bonded pair distance within ``pair_cutoff`` of the current
  frame (scalars, same units): bonds, shells, close ion pairs.

The dynamics network is frozen (its Gaussian draw and latent feed the sampler); only the refiner
changes, started from the model's own. Training is resumable (``state.pt``, written atomically);
the result is a model file with the new refiner and the student schedule it was trained for.

Command line::

    python -m cgsim.train.energy_score MODEL.pt OUT_DIR --steps 1500 --levels 2 --sigma-end 0.3
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cgsim.data.load import load_systems
from cgsim.data.windows import BeadTrajectory, history_positions
from cgsim.errors import CgsimInputError
from cgsim.io_utils import atomic_path, check_output_directory
from cgsim.metadata import now_iso
from cgsim.model.batch import BeadBatch, collate
from cgsim.model.checkpoint import (
    load_model_file,
    save_checkpoint,
    with_refiner,
)
from cgsim.model.graph import molecule_index
from cgsim.model.prior_tables import bead_classes
from cgsim.model.refinement import ScoreRefiner
from cgsim.model.sampling import generator_noise
from cgsim.model.scoring import ScoreTerms, energy_score_terms
from cgsim.model.simulator import MultiScaleDynamics
from cgsim.train.prior_fit import training_systems

__all__ = ["ScoreTerms", "batch_terms", "energy_score_terms", "main", "sampler_checkpoint", "system_classes", "system_molecules",
           "train_sampler"]


def _check_model(model: MultiScaleDynamics, source: str) -> ScoreRefiner:
    if model.refiner is None:
        raise CgsimInputError(source, "the model has no refiner: there is no sampler to train")
    return model.refiner


def system_classes(systems: list[BeadTrajectory], atom_types: list[str]) -> list[torch.Tensor]:
    """Class index of every bead of each system, shape (n_beads,) int64: beads of the same fine
    composition (:func:`cgsim.model.prior_tables.bead_classes`) share one, across systems."""
    names = [bead_classes(t.graph.atom_type, t.graph.atom_to_bead, t.graph.n_beads, atom_types) for t in systems]
    index = {c: i for i, c in enumerate(sorted({c for row in names for c in row}))}
    return [torch.tensor([index[c] for c in row], dtype=torch.long) for row in names]


def system_molecules(systems: list[BeadTrajectory]) -> list[torch.Tensor]:
    """Molecule of every bead of each system (connected components of its bead bonds), (n_beads,) int64."""
    return [torch.from_numpy(molecule_index(t.graph.n_beads, t.graph.bead_bonds.numpy())) for t in systems]


def _window_batch(model: MultiScaleDynamics, systems: list[BeadTrajectory], picks: list[tuple[int, int]], stride: int,
                  lead: int = 1) -> tuple[BeadBatch, BeadBatch, torch.Tensor]:
    """The picked windows once and twice over (two draws in one batch), and their true frames
    ``lead`` learned steps after the last history frame (N, 3) nm."""
    h = model.history
    dtype = next(model.parameters()).dtype
    hist = [history_positions(systems[k], h, stride, start).to(dtype) for k, start in picks]
    later = [torch.from_numpy(np.ascontiguousarray(systems[k].positions[start + (h - 1 + lead) * stride]))
             for k, start in picks]
    graphs = [systems[k].graph for k, _ in picks]
    return collate(graphs, hist), collate(graphs + graphs, hist + hist), torch.cat(later).to(dtype)


def _draws(model: MultiScaleDynamics, refiner: ScoreRefiner, b: BeadBatch, levels: list[float],
           gen: torch.Generator, unroll: int = 0) -> torch.Tensor:
    """Student-sampled positions (N, 3) nm ``unroll + 1`` learned steps after the history of batch
    ``b``: ``unroll`` steps without gradients (each member on its own), then one differentiable
    in ``refiner``'s weights."""
    h = model.history
    noise = generator_noise((b.n_beads, 3), gen, b.pos.device, b.pos.dtype)
    for _ in range(unroll):
        with torch.no_grad():
            pred = model(b)
            y0 = model.positions_from_target(b.pos[:, -h:], pred.value(noise(), 1.0))
            x = refiner.student_jumps(b.with_pos(b.pos[:, -h:]), pred.latent, y0, pred.scale, noise, levels)
            b = b.with_pos(torch.cat([b.pos[:, 1:], x[:, None]], dim=1))
    with torch.no_grad():
        pred = model(b)
        y0 = model.positions_from_target(b.pos[:, -h:], pred.value(noise(), 1.0))
    return refiner.student_jumps(b.with_pos(b.pos[:, -h:]), pred.latent, y0, pred.scale, noise, levels)


def batch_terms(model: MultiScaleDynamics, refiner: ScoreRefiner, systems: list[BeadTrajectory],
                picks: list[tuple[int, int]], stride: int, levels: list[float], gen: torch.Generator,
                pair_cutoff: float, classes: list[torch.Tensor] | None = None, unroll: int = 0,
                molecules: list[torch.Tensor] | None = None) -> ScoreTerms:
    """:func:`energy_score_terms` of two student draws per picked window (``(system, start)``),
    each ``unroll + 1`` steps ahead (the members unrolled apart), against the true frame as far
    ahead; displacements and the scored pairs are taken from the last true history frame.
    ``classes`` (:func:`system_classes`) balances the terms over bead classes; ``molecules``
    (:func:`system_molecules`) adds the molecule-centre term."""
    single, doubled, y = _window_batch(model, systems, picks, stride, lead=unroll + 1)
    x = _draws(model, refiner, doubled, levels, gen, unroll)
    n = single.n_beads
    bead_class = torch.cat([classes[k] for k, _ in picks]) if classes is not None else None
    molecule = None
    if molecules is not None:
        parts, offset = [], 0
        for k, _ in picks:
            parts.append(molecules[k] + offset)
            offset += int(molecules[k].max()) + 1
        molecule = torch.cat(parts)
    return energy_score_terms(x[:n], x[n:], y, single, model.target_scale, pair_cutoff, bead_class, molecule)


def _picks(systems: list[BeadTrajectory], span: int, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    usable = [k for k, t in enumerate(systems) if t.n_frames > span]
    out = []
    for _ in range(n):
        k = int(rng.choice(usable))
        out.append((k, int(rng.integers(0, systems[k].n_frames - span))))
    return out


def train_sampler(model: MultiScaleDynamics, systems: list[BeadTrajectory], stride: int, levels: int,
                  sigma_start: float, sigma_end: float, steps: int, state_path: str | Path, lr: float = 1e-4,
                  batch_windows: int = 4, bond_weight: float = 1.0, pair_weight: float = 1.0,
                  pair_cutoff: float = 0.6, val_windows: int = 32, seed: int = 0, save_every: int = 50,
                  progress: bool = True, atom_types: list[str] | None = None, max_unroll: int = 0,
                  centre_weight: float = 0.0) -> tuple[ScoreRefiner, dict[str, Any]]:
    """Train the model's refiner, as a ``levels``-jump student, by the energy score.

    Parameters
    ----------
    model : MultiScaleDynamics
        The model (its dynamics network is not changed; its refiner is the starting point).
    systems : list of BeadTrajectory
        Training systems (true histories and next frames).
    stride : int
        Recorded frames per learned step (the model's).
    levels : int
        Student jumps per step (network calls of the sampler).
    sigma_start, sigma_end : float
        Top and bottom noise levels of the jumps (target-scale units, geometric ladder).
    steps : int
        Optimiser steps (AdamW, cosine decay from ``lr``).
    state_path : path-like
        Resumable training state (refiner, optimiser, step, losses), written atomically every
        ``save_every`` steps and at the end; a run finds it and continues. Windows and noise of
        step ``s`` are seeded by ``(seed, s)``, so a resumed run draws what an unbroken one would.
    batch_windows : int
        Windows per step (two draws each).
    bond_weight, pair_weight : float
        Weights of the bond-length and pair-distance scores against the displacement score.
    pair_cutoff : float
        Non-bonded pairs within this distance (nm) of the current frame are scored.
    val_windows : int
        Held-out windows (drawn with seed ``seed + 1``) scored before and after training.
    atom_types : list of str, optional
        The model's fine type vocabulary: given, the terms are balanced over bead classes
        (:func:`energy_score_terms`); ``None``, plain means over beads and pairs.
    max_unroll : int
        Pushforward: each training step first rolls both draws ``k`` steps on their own, ``k``
        uniform in ``0..max_unroll`` (no gradients), then scores the next draw against the true
        frame ``k + 1`` steps ahead, so the sampler learns from states it produced itself
        (validation: one step, as without it).
    centre_weight : float
        Weight of the molecule-centre displacement score (0: not computed).

    Returns
    -------
    refiner : ScoreRefiner
        The trained refiner (schedule set to the student's).
    report : dict
        ``val_before`` / ``val_after`` (each term on the held-out windows), ``train_loss`` (mean
        of the last 50 steps), ``steps``.
    """
    refiner = copy.deepcopy(_check_model(model, "model"))
    refiner.set_schedule(sampler="student", levels=levels, steps_per_level=0, final_denoise=False,
                         sigma_start=sigma_start, sigma_end=sigma_end)
    ladder = refiner.annealing_levels()
    for p in model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(refiner.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr * 0.05)
    span = (model.history + max_unroll) * stride + 1
    classes = system_classes(systems, atom_types) if atom_types is not None else None
    molecules = system_molecules(systems) if centre_weight > 0 else None
    val = _picks(systems, span, val_windows, np.random.default_rng(seed + 1))

    @torch.no_grad()
    def validate() -> dict[str, float]:
        refiner.eval()
        acc = {"displacement": 0.0, "bond": 0.0, "pair": 0.0, "centre": 0.0}
        for i in range(0, len(val), batch_windows):
            part = val[i:i + batch_windows]
            t = batch_terms(model, refiner, systems, part, stride, ladder,
                            torch.Generator().manual_seed(seed * 7919 + i), pair_cutoff, classes,
                            molecules=molecules)
            for key in acc:
                acc[key] += float(getattr(t, key)) * len(part) / len(val)
        refiner.train()
        return acc

    step, losses, report = 0, [], {}
    state_path = Path(state_path)
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        refiner.load_state_dict(state["refiner"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, losses, report = state["step"], state["losses"], state["report"]
    if "val_before" not in report:
        report["val_before"] = validate()

    def save() -> None:
        with atomic_path(state_path) as tmp:
            torch.save({"refiner": refiner.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "step": step, "losses": losses, "report": report}, tmp)

    refiner.train()
    bar = tqdm(total=steps, initial=step, desc="energy-score sampler", unit="step", disable=not progress)
    while step < steps:
        rng = np.random.default_rng([seed, step])
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        unroll = int(rng.integers(0, max_unroll + 1))
        t = batch_terms(model, refiner, systems, _picks(systems, span, batch_windows, rng), stride, ladder, gen,
                        pair_cutoff, classes, unroll, molecules)
        loss = t.total(bond_weight, pair_weight, centre_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(refiner.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        losses.append([float(v.detach()) for v in (loss, t.displacement, t.bond, t.pair, t.centre)])
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean([r[0] for r in losses[-50:]]):.4f}")
        if step % save_every == 0 or step == steps:
            save()
    bar.close()
    report["val_after"] = validate()
    report["train_loss"] = float(np.mean([r[0] for r in losses[-50:]])) if losses else float("nan")
    report["steps"] = step
    save()
    refiner.eval()
    return refiner, report


def sampler_checkpoint(ckpt: dict[str, Any], model: MultiScaleDynamics, refiner: ScoreRefiner,
                       record: dict[str, Any]) -> dict[str, Any]:
    """The model file of ``ckpt`` with ``refiner`` in place of its own and the student schedule."""
    refine = {k: v for k, v in refiner.schedule().items() if k != "keep_centres"}
    return with_refiner(ckpt, model, refiner, refine, {"energy_score": record, "date": now_iso()})


def main(argv: list[str] | None = None) -> None:
    """Command-line entry (module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="model file or training checkpoint with a refiner")
    ap.add_argument("out", help="folder: training state, sampler.pt, energy_score.json")
    ap.add_argument("--systems", nargs="*", default=None,
                    help="mapped training systems (default: the model's own training systems)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--levels", type=int, default=2, help="student jumps per step (calls = levels + 1)")
    ap.add_argument("--sigma-start", type=float, default=1.0, help="top noise level, target-scale units")
    ap.add_argument("--sigma-end", type=float, default=0.3, help="last noise level, target-scale units")
    ap.add_argument("--batch", type=int, default=4, help="windows per step (two draws each)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--bond-weight", type=float, default=1.0)
    ap.add_argument("--pair-weight", type=float, default=1.0)
    ap.add_argument("--pair-cutoff", type=float, default=0.6, help="nm")
    ap.add_argument("--centre-weight", type=float, default=0.0,
                    help="weight of each molecule's centre displacement score (self-diffusion)")
    ap.add_argument("--unroll", type=int, default=0,
                    help="pushforward: score draws up to this many extra self-made steps ahead")
    ap.add_argument("--balance", action="store_true",
                    help="average the displacement and pair scores over bead classes (ions count as much as polymer)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        out = check_output_directory(args.out, "out")
        ckpt, card, model = load_model_file(args.model)
        _check_model(model, args.model)
        if args.systems:
            systems = load_systems(args.systems, "--systems", list(card.atom_types)).trajectories
        else:
            systems = training_systems(card)
        if args.levels < 1:
            raise CgsimInputError("--levels", f"expected >= 1 jump, got {args.levels}")
        refiner, report = train_sampler(model, systems, card.stride, args.levels, args.sigma_start, args.sigma_end,
                                        args.steps, out / "state.pt", lr=args.lr, batch_windows=args.batch,
                                        bond_weight=args.bond_weight, pair_weight=args.pair_weight,
                                        pair_cutoff=args.pair_cutoff, seed=args.seed,
                                        atom_types=list(card.atom_types) if args.balance else None,
                                        max_unroll=args.unroll, centre_weight=args.centre_weight)
    except CgsimInputError as exc:
        print(f"energy_score: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as exc:  # a schedule value out of the refiner's trained range
        print(f"energy_score: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    record = {"model": str(args.model), "systems": [t.name for t in systems], **{k: v for k, v in vars(args).items()
              if k not in ("model", "out", "systems")}, "report": report}
    save_checkpoint(out / "sampler.pt", sampler_checkpoint(ckpt, model, refiner, record))
    with atomic_path(out / "energy_score.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    b, a = report["val_before"], report["val_after"]
    print(f"energy_score: {args.model} -> {out / 'sampler.pt'} ({args.levels + 1} calls per step); held-out "
          f"energy score displacement {b['displacement']:.4f} -> {a['displacement']:.4f}, bond {b['bond']:.4f} -> "
          f"{a['bond']:.4f}, pair {b['pair']:.4f} -> {a['pair']:.4f}, molecule centre {b['centre']:.4f} -> "
          f"{a['centre']:.4f}")
    if not all(math.isfinite(v) for v in a.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
