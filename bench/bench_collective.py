"""Collective motion of one learned step: per-molecule centre displacements, model vs MD.

The model samples each bead's step from its own Gaussian, independently of the other beads
(a diagonal Gaussian; the refiner then corrects the sample). If MD moves whole molecules
coherently, independent per-bead noise averages out over a molecule and the molecule's
centre moves too little, however well each bead's own step is matched. This script measures
that, from true histories (no rollout error involved):

for ``--windows`` evenly spaced windows of each held-out trajectory (the model's history,
``data.stride`` frames apart, and the true next frame) it draws ``--draws`` steps of the model,
unrefined and refined, and reports per molecule kind (molecules = connected components of the
bead bonds; kind = number of beads + bead types) the mean square displacement of

- the molecule centre (unweighted mean of its beads) in MD, in the model's mean step, and in
  the model's samples (unrefined / refined);
- the unpredictable part: ``|dc_MD - dc_mean|^2`` in MD against ``|dc_sample - dc_mean|^2`` in
  the model (the noise the model puts on the centre);
- single beads, as a control (the model is fitted to these).

Ratios model / MD near 1 mean the molecule moves as in MD over one learned step.

    python bench/bench_collective.py --checkpoint data/checkpoints/chain.pt \\
        --systems 'data/chain/mapped/test/seq_00[0-5]' --json outputs/bench/collective_chain.json
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from bench_common import write_json

from cgsim.data.load import expand_paths, load_systems
from cgsim.data.windows import BeadTrajectory
from cgsim.model.batch import collate
from cgsim.model.card import ModelCard
from cgsim.model.checkpoint import load_checkpoint, model_from_checkpoint
from cgsim.model.graph import molecule_index
from cgsim.model.sampling import apply_refine_overrides


def molecules(traj: BeadTrajectory, types: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Molecule index per bead (N,) and a kind label per molecule (``"30 beads B1,B2"``).

    ``types`` are the bead types (length N) from the mapped system's sidecar, if known."""
    mol = molecule_index(traj.graph.n_beads, traj.graph.bead_bonds.numpy())
    kinds = []
    for m in range(int(mol.max()) + 1 if mol.size else 0):
        members = np.flatnonzero(mol == m)
        names = "" if types is None else " " + ",".join(sorted({str(types[i]) for i in members}))
        kinds.append(f"{members.size} beads{names}")
    return mol, kinds


def centres(x: torch.Tensor, mol: torch.Tensor, n_mol: int) -> torch.Tensor:
    """Unweighted centre of each molecule: (..., N, 3) -> (..., n_mol, 3)."""
    out = torch.zeros((*x.shape[:-2], n_mol, 3), dtype=x.dtype)
    count = torch.bincount(mol, minlength=n_mol).to(x.dtype)
    out.index_add_(-2, mol, x)
    return out / count[:, None]


@torch.no_grad()
def one_system(model, traj: BeadTrajectory, stride: int, windows: int, draws: int, seed: int,
               types: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Sums of squared displacements per molecule kind for one trajectory."""
    h = model.history
    first, last = (h - 1) * stride, traj.n_frames - 1 - stride
    if last < first:
        raise SystemExit(f"{traj.name}: {traj.n_frames} frames, a window needs {(h - 1) * stride + stride + 1}")
    starts = np.unique(np.linspace(first, last, windows).round().astype(int))
    mol_np, kinds = molecules(traj, types)
    mol, n_mol = torch.from_numpy(mol_np).long(), len(kinds)
    gen = torch.Generator().manual_seed(seed)
    acc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    kind_of = np.array(kinds)
    for t0 in starts:
        hist = torch.from_numpy(np.ascontiguousarray(traj.positions[t0 - first:t0 + 1:stride].transpose(1, 0, 2)))
        true_next = torch.from_numpy(traj.positions[t0 + stride])
        batch = collate([traj.graph] * draws, [hist] * draws)
        pred = model(batch)
        cur = batch.pos[:, -1]
        mean = model.positions_from_target(batch.pos[:, -h:], pred.mean * pred.scale)
        raw = model.positions_from_target(batch.pos[:, -h:], pred.sample(gen))  # collective noise included
        refined = model.refine(batch, pred, raw, functools.partial(torch.randn, raw.shape, generator=gen, dtype=raw.dtype))
        n = traj.graph.n_beads
        steps = {name: (v - cur).view(draws, n, 3) for name, v in
                 (("mean", mean), ("sample", raw), ("refined", refined))}
        md = (true_next - hist[:, -1])[None]
        c = {name: centres(v, mol, n_mol) for name, v in steps.items()}
        c_md = centres(md, mol, n_mol)
        sq = {
            "centre_md": (c_md ** 2).sum(-1).expand(draws, n_mol),
            "centre_mean": (c["mean"] ** 2).sum(-1),
            "centre_sample": (c["sample"] ** 2).sum(-1),
            "centre_refined": (c["refined"] ** 2).sum(-1),
            "centre_resid_md": ((c_md - c["mean"]) ** 2).sum(-1),
            "centre_noise_sample": ((c["sample"] - c["mean"]) ** 2).sum(-1),
            "centre_noise_refined": ((c["refined"] - c["mean"]) ** 2).sum(-1),
        }
        bead_sq = {"bead_md": (md ** 2).sum(-1).expand(draws, n), "bead_sample": (steps["sample"] ** 2).sum(-1),
                   "bead_refined": (steps["refined"] ** 2).sum(-1)}
        for kind in set(kinds):
            sel_m = torch.from_numpy(np.flatnonzero(kind_of == kind))
            sel_b = torch.from_numpy(np.flatnonzero(np.isin(mol_np, sel_m.numpy())))
            a = acc[kind]
            a["n"] += draws * sel_m.numel()
            a["n_beads"] += draws * sel_b.numel()
            for key, v in sq.items():
                a[key] += float(v[:, sel_m].sum())
            for key, v in bead_sq.items():
                a[key] += float(v[:, sel_b].sum())
    return acc


def summarise(acc: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Mean squares (nm^2) and model / MD ratios per molecule kind."""
    rows = []
    for kind, a in sorted(acc.items()):
        m = {k: v / a["n"] for k, v in a.items() if k.startswith("centre")}
        b = {k: v / a["n_beads"] for k, v in a.items() if k.startswith("bead_")}
        rows.append({"kind": kind, "molecules_x_draws": int(a["n"]), **m, **b,
                     "centre_ratio_sample": m["centre_sample"] / m["centre_md"],
                     "centre_ratio_refined": m["centre_refined"] / m["centre_md"],
                     "centre_noise_ratio_sample": m["centre_noise_sample"] / m["centre_resid_md"],
                     "centre_noise_ratio_refined": m["centre_noise_refined"] / m["centre_resid_md"],
                     "bead_ratio_sample": b["bead_sample"] / b["bead_md"],
                     "bead_ratio_refined": b["bead_refined"] / b["bead_md"]})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """One row per molecule kind."""
    head = ("| molecules | centre MSD, MD (nm^2) | model / MD: sample | refined | centre noise / MD residual: sample "
            "| refined | bead MSD model / MD: sample | refined |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['centre_md']:.4g} | {r['centre_ratio_sample']:.2f} | "
                     f"{r['centre_ratio_refined']:.2f} | {r['centre_noise_ratio_sample']:.2f} | "
                     f"{r['centre_noise_ratio_refined']:.2f} | {r['bead_ratio_sample']:.2f} | {r['bead_ratio_refined']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--systems", nargs="+", required=True, help="mapped held-out systems (globs allowed)")
    ap.add_argument("--windows", type=int, default=40, help="windows per system, evenly spaced")
    ap.add_argument("--draws", type=int, default=16, help="model draws per window")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--refine", nargs="*", default=[], metavar="KEY=VALUE",
                    help="refinement schedule overrides, as cgsim rollout refine.KEY=VALUE (e.g. keep_centres=true)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ckpt = load_checkpoint(args.checkpoint)
    card = ModelCard.from_checkpoint(ckpt, args.checkpoint)
    model = model_from_checkpoint(ckpt).eval()
    stride = card.history_spacing
    if args.refine:
        overrides = dict(kv.split("=", 1) for kv in args.refine)
        apply_refine_overrides(model, {k: yaml.safe_load(v) for k, v in overrides.items()}, args.checkpoint)
    trajs = load_systems(args.systems, "--systems", atom_types=list(card.atom_types)).trajectories
    dirs = expand_paths(args.systems, "--systems")  # the order load_systems reads them in
    acc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for k, t in enumerate(trajs):
        meta = dirs[k] / "beads.json"
        types = json.loads(meta.read_text())["system"].get("particle_types") if meta.is_file() else None
        for kind, a in one_system(model, t, stride, args.windows, args.draws, args.seed + k, types).items():
            for key, v in a.items():
                acc[kind][key] += v
    rows = summarise(acc)
    table = markdown(rows)
    print(table)
    if args.json:
        write_json(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})
    print(f"bench_collective: {len(trajs)} system(s) x {args.windows} windows x {args.draws} draws in "
          f"{time.perf_counter() - t0:.0f} s" + (f" -> {args.json}" if args.json else ""))
    return rows


if __name__ == "__main__":
    main()
