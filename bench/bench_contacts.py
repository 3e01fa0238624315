"""Excluded volume of bead trajectories: close contacts between beads of a molecule that are not
bonded neighbours, rollout against reference MD.

For every trajectory (any file mdtraj reads, with the bonds of its topology file, e.g. the
``beads.pdb`` that ``cgsim map`` and ``cgsim rollout`` write) and every frame: the number of bead
pairs of one molecule that are at least ``--min-bonds`` bonds apart and closer than each of
``--radii`` (nm), per bead; and the mean distance of beads ``k`` bonds apart (k = 1, 2, 3, 5,
10: local swelling or collapse that a mean Rg can hide). Pairs are within molecules only and
distances are taken as stored (unwrapped chains; no minimum image).

    python bench/bench_contacts.py --reference 'data/chain/mapped/test/seq_00[0-5]_long' \\
        --rollout outputs/rollout/tree_d2s --json outputs/bench/contacts_tree_d2s.json
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
from bench_common import write_json
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import shortest_path

SEPARATIONS = (1, 2, 3, 5, 10)


def bond_hops(top: md.Topology) -> np.ndarray:
    """Bonds between every pair of beads along the topology's bond graph (inf: other molecule), (N, N)."""
    n = top.n_atoms
    pairs = np.array([[b[0].index, b[1].index] for b in top.bonds], dtype=np.int64).reshape(-1, 2)
    adj = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return shortest_path(adj, unweighted=True, directed=False)


def contact_stats(traj: md.Trajectory, radii: list[float], min_bonds: int) -> dict[str, Any]:
    """Per-bead contacts within each radius (pairs >= ``min_bonds`` bonds apart) and the mean
    distance at each of :data:`SEPARATIONS` bonds, over all frames of ``traj``."""
    hops = bond_hops(traj.topology)
    i, j = np.triu_indices(traj.n_atoms, 1)
    h = hops[i, j]
    d = np.linalg.norm(traj.xyz[:, i] - traj.xyz[:, j], axis=-1)  # (frames, pairs), nm
    far = np.isfinite(h) & (h >= min_bonds)
    out: dict[str, Any] = {"frames": int(traj.n_frames), "beads": int(traj.n_atoms)}
    out["contacts_per_bead"] = {f"{r:g}": float((d[:, far] < r).sum(1).mean() / traj.n_atoms) for r in radii}
    out["distance_at_bonds"] = {str(k): float(d[:, h == k].mean()) for k in SEPARATIONS if (h == k).any()}
    return out


def _load(path: str) -> md.Trajectory:
    p = Path(path)
    if p.is_dir():  # a mapped system (beads.xtc) or a rollout member (rollout.dcd)
        traj = next((p / f for f in ("beads.xtc", "rollout.dcd") if (p / f).is_file()), None)
        if traj is None:
            raise SystemExit(f"{p}: no beads.xtc or rollout.dcd")
        return md.load(str(traj), top=str(p / "beads.pdb"))
    raise SystemExit(f"{p}: expected a mapped system or rollout member directory")


def _pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Frame-weighted means over trajectories."""
    w = np.array([r["frames"] for r in rows], dtype=float)
    out = {}
    for key in ("contacts_per_bead", "distance_at_bonds"):
        keys = sorted({k for r in rows for k in r[key]}, key=float)
        out[key] = {k: float(np.average([r[key].get(k, np.nan) for r in rows], weights=w)) for k in keys}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", nargs="+", required=True, help="mapped MD systems (globs allowed)")
    ap.add_argument("--rollout", nargs="*", default=[], help="cgsim rollout output folders")
    ap.add_argument("--radii", type=float, nargs="+", default=[1.2, 1.6], help="contact distances, nm")
    ap.add_argument("--min-bonds", type=int, default=3, help="pairs at least this many bonds apart")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    refs = sorted(p for pat in args.reference for p in glob.glob(pat))
    result: dict[str, Any] = {"reference": _pooled([contact_stats(_load(p), args.radii, args.min_bonds) for p in refs])}
    for run in args.rollout:
        members = sorted(glob.glob(str(Path(run) / "*" / "replica_*")))
        if not members:
            raise SystemExit(f"{run}: no rollout members (expected {run}/<system>/replica_*/rollout.dcd)")
        result[run] = _pooled([contact_stats(_load(m), args.radii, args.min_bonds) for m in members])
    print("| trajectories | " + " | ".join(f"contacts < {r:g} nm per bead" for r in args.radii)
          + " | " + " | ".join(f"d({k} bonds), nm" for k in SEPARATIONS) + " |")
    print("|---|" + "---:|" * (len(args.radii) + len(SEPARATIONS)))
    for name, row in result.items():
        cells = [f"{row['contacts_per_bead'][f'{r:g}']:.3f}" for r in args.radii]
        cells += [f"{row['distance_at_bonds'].get(str(k), float('nan')):.2f}" for k in SEPARATIONS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
