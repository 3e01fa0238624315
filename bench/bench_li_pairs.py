"""Li+ pairing and Li+ shells in mapped electrolyte trajectories (MD or rollout), per run.

For each mapped run directory (``cgsim map`` output: ``beads.pdb`` + ``beads.xtc`` +
``beads.json``), every ``--every``-th frame: the fraction of Li+ with another Li+ closer than
``--li-li`` nm, the mean Li+ coordination by PEO beads (B1/B2) within ``--shell`` nm, and the
closest Li+ ... Li+ distance (minimum image). These are the quantities issue 24 holds a
multi-composition model to, measured on MD to see what each composition teaches.

    OMP_NUM_THREADS=1 python bench/bench_li_pairs.py data/electrolyte/mapped/train/* data/electrolyte/mapped/test/*
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
from bench_common import write_json
from bench_onestep import local_structure


def li_pairs(run: Path, every: int, shell: float, li_li: float) -> dict[str, Any]:
    """Pairing and shell figures of one mapped run (see the module docstring)."""
    types = np.array(json.loads((run / "beads.json").read_text())["system"]["particle_types"])
    traj = md.load(str(run / "beads.xtc"), top=str(run / "beads.pdb"))
    li = np.flatnonzero(types == "LI")
    if li.size < 2:
        raise SystemExit(f"{run}: fewer than two Li+ beads (type LI)")
    close, cn, closest = [], [], []
    no_bonds = np.zeros((2, 0), dtype=int)
    for k in range(0, traj.n_frames, every):
        x = traj.xyz[k].astype(float)
        box = traj.unitcell_lengths[k].astype(float)
        s = local_structure(x, no_bonds, types, box, shell, li_li)
        close.append(s["li_close"].mean())
        cn.append(s["cn"].mean())
        closest.append(s["li_nearest"].min())
    return {"run": str(run), "n_li": int(li.size), "frames": len(close), "li_close_fraction": float(np.mean(close)),
            "li_cn_peo": float(np.mean(cn)), "closest_li_li_nm": float(np.min(closest)),
            "median_frame_closest_li_li_nm": float(np.median(closest))}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="mapped run directories")
    ap.add_argument("--every", type=int, default=10, help="frame spacing")
    ap.add_argument("--shell", type=float, default=0.38, help="Li+ first-shell radius to PEO beads, nm")
    ap.add_argument("--li-li", type=float, default=0.55, help="Li+ ... Li+ close-pair distance, nm")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = [li_pairs(Path(r), args.every, args.shell, args.li_li) for r in args.runs]
    print(f"| run | Li+ | Li+ with a Li+ < {args.li_li:g} nm | Li+ CN (PEO beads) | closest Li-Li, nm (median of frame minima) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['n_li']} | {r['li_close_fraction']:.3f} | {r['li_cn_peo']:.2f} | "
              f"{r['closest_li_li_nm']:.3f} ({r['median_frame_closest_li_li_nm']:.3f}) |")
    if args.json:
        write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
