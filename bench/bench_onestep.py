"""One learned step from true histories: what each sampler schedule does to local structure.

A fast filter before long rollouts: from every ``--every``-th window of a mapped system, draw one
learned step with a model under several refine schedules and compare the drawn frame with the
true next frame: bonded bead distances (mean, std, JSD), and for electrolytes the Li+
coordination by polymer beads within ``--shell`` nm and the fraction of Li+ with another Li+
closer than ``--li-li`` nm. Calls per step are the model's count for each schedule.

    OMP_NUM_THREADS=1 python bench/bench_onestep.py data/checkpoints/electrolyte.pt \
        data/electrolyte/mapped/test/peo6x25_eoli20 --every 97 \
        --schedule as-is "sampler=student levels=3 sigma_start=1.0 final_denoise=false steps_per_level=0"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from bench_common import write_json

from cgsim.data.load import load_systems
from cgsim.data.windows import history_positions
from cgsim.model.batch import collate
from cgsim.model.card import ModelCard
from cgsim.model.checkpoint import load_checkpoint, model_from_checkpoint
from cgsim.model.graph import molecule_index
from cgsim.model.prior import bead_classes
from cgsim.model.sampling import (
    apply_prior_overrides,
    apply_refine_overrides,
    generator_noise,
    learned_step,
)

POLYMER = ("B1", "B2")


def _min_image(d: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    return d if box is None else d - box * np.round(d / box)


def _jsd(a: np.ndarray, b: np.ndarray, edges: np.ndarray) -> float:
    p = np.histogram(a, edges)[0] + 1e-12
    q = np.histogram(b, edges)[0] + 1e-12
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    return float(0.5 * (p * np.log2(p / m)).sum() + 0.5 * (q * np.log2(q / m)).sum())


def local_structure(x: np.ndarray, bonds: np.ndarray, types: np.ndarray, box: np.ndarray | None, shell: float,
                    li_li: float) -> dict[str, np.ndarray]:
    """Bond lengths (nm), per-Li+ coordination by polymer beads and per-Li+ closest Li+ of one frame (n, 3).

    Keys: ``bond``; with Li+ beads also ``cn``, ``li_nearest`` (nm, to the closest other Li+) and
    ``li_close`` (1.0 where ``li_nearest < li_li``).
    """
    out = {"bond": np.linalg.norm(_min_image(x[bonds[0]] - x[bonds[1]], box), axis=-1)}
    li = np.flatnonzero(types == "LI")
    if len(li):
        poly = np.flatnonzero(np.isin(types, POLYMER))
        d = np.linalg.norm(_min_image(x[li][:, None] - x[poly][None], box), axis=-1)
        out["cn"] = (d < shell).sum(1).astype(float)
        dl = np.linalg.norm(_min_image(x[li][:, None] - x[li][None], box), axis=-1)
        np.fill_diagonal(dl, np.inf)
        out["li_nearest"] = dl.min(1)
        out["li_close"] = (out["li_nearest"] < li_li).astype(float)
    return out


def probe(ckpt_path: str, system: str, schedules: list[str], every: int, shell: float, li_li: float,
          seed: int = 0) -> list[dict[str, Any]]:
    """One row per schedule: calls, structure of one drawn step vs the true next frame."""
    ckpt = load_checkpoint(ckpt_path)
    card = ModelCard.from_checkpoint(ckpt, ckpt_path)
    traj = load_systems([system], "system", list(card.atom_types)).trajectories[0]
    types = np.array(json.loads((Path(system) / "beads.json").read_text())["system"]["particle_types"])
    g = traj.graph
    bonds = g.bead_bonds.numpy()
    box = None if g.box is None else g.box.numpy().reshape(-1)[:3]
    h, stride = card.history, card.stride
    mol = molecule_index(g.n_beads, bonds)
    counts = np.bincount(mol).astype(float)
    starts = range(0, traj.n_frames - h * stride, every)
    rows = []
    for schedule in schedules:
        model = model_from_checkpoint(ckpt)
        if schedule != "as-is":
            over = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in schedule.split())}
            prior = {k.removeprefix("prior."): v for k, v in over.items() if k.startswith("prior.")}
            refine = {k: v for k, v in over.items() if not k.startswith("prior.")}
            if refine:
                apply_refine_overrides(model, refine, ckpt_path)
            if prior:
                apply_prior_overrides(model, prior, ckpt_path)
        gen = torch.Generator().manual_seed(seed)
        drawn: dict[str, list[np.ndarray]] = {}
        true: dict[str, list[np.ndarray]] = {}
        t0 = time.process_time()
        for start in starts:
            b = collate([g], [history_positions(traj, h, stride, start)])
            noise = generator_noise((b.n_beads, 3), gen, b.pos.device, b.pos.dtype)
            topo = None
            if model.prior is not None:
                classes = bead_classes(g.atom_type, g.atom_to_bead, g.n_beads, list(card.atom_types))
                topo = model.prior.topology(classes, b.bead_bonds, b.n_beads, b.pos.device, b.pos.dtype)
            new = learned_step(model, b, noise, prior_topology=topo).numpy()
            nxt = traj.positions[start + h * stride]
            last = traj.positions[start + (h - 1) * stride]  # unwrapped frames: no minimum image
            for frame, store in ((new, drawn), (nxt, true)):
                store.setdefault("step2", []).append(((frame - last) ** 2).sum(-1))
                centre = np.stack([np.bincount(mol, weights=(frame - last)[:, k]) for k in range(3)], 1) / counts[:, None]
                store.setdefault("centre2", []).append((centre[counts > 1] ** 2).sum(-1))
            for frame, store in ((new, drawn), (nxt, true)):
                for k, v in local_structure(frame, bonds, types, box, shell, li_li).items():
                    store.setdefault(k, []).append(v)
        cpu = time.process_time() - t0
        d = {k: np.concatenate(v) for k, v in drawn.items()}
        t = {k: np.concatenate(v) for k, v in true.items()}
        edges = np.linspace(0.0, max(d["bond"].max(), t["bond"].max()) * 1.01, 80)
        row = {"schedule": schedule, "calls": model.calls_per_step(), "windows": len(starts),
               "cpu_s_per_step": cpu / len(starts),
               "bond_mean": float(d["bond"].mean()), "bond_std": float(d["bond"].std()),
               "bond_max": float(d["bond"].max()), "true_bond_mean": float(t["bond"].mean()),
               "true_bond_std": float(t["bond"].std()), "bond_jsd": _jsd(d["bond"], t["bond"], edges)}
        kinds = sorted(set(types))
        row["step2_ratio"] = {k: float(d["step2"].reshape(-1, len(types))[:, types == k].mean()
                                       / t["step2"].reshape(-1, len(types))[:, types == k].mean()) for k in kinds}
        # each bonded molecule's centre (bead mean) step, drawn over MD's: what sets D at long times
        row["centre_step2_ratio"] = float(d["centre2"].mean() / t["centre2"].mean()) if d["centre2"].size else None
        if "cn" in d:
            row.update({"li_cn": float(d["cn"].mean()), "true_li_cn": float(t["cn"].mean()),
                        "li_li_close": float(d["li_close"].mean()), "true_li_li_close": float(t["li_close"].mean())})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("system", help="mapped system directory (true histories and next frames)")
    ap.add_argument("--schedule", nargs="+", default=["as-is"],
                    help="'as-is' or space-separated refine overrides (prior.KEY=V for the prior), one string per schedule")
    ap.add_argument("--every", type=int, default=97, help="window spacing in frames")
    ap.add_argument("--shell", type=float, default=0.38, help="Li+ first-shell radius, nm (mapped Li-PEO g(r) minimum)")
    ap.add_argument("--li-li", type=float, default=0.55, help="Li+...Li+ close-pair distance, nm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = probe(args.checkpoint, args.system, args.schedule, args.every, args.shell, args.li_li, args.seed)
    if args.json:
        write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
