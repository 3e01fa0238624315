"""Li+ shells and close Li+ pairs over electrolyte rollouts, against the reference MD.

For each rollout directory (``cgsim rollout`` output) and the reference mapped system: the Li+
coordination by polymer beads within ``--shell`` nm (mean over Li+ and frames, first and second
half of the rollout, so a shell that empties over time shows), the fraction of Li+ with another
Li+ closer than ``--li-li`` nm, PEO bond mean and std, and the redraws per 1000 member-steps that
the rollout recorded.

    python bench/bench_shell.py --reference data/electrolyte/mapped/test/peo6x25_eoli20 \
        outputs/rollout/el_a outputs/rollout/el_b --json outputs/bench/shell.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_json  # noqa: E402
from bench_onestep import local_structure  # noqa: E402

from cgsim.data.load import load_systems  # noqa: E402


def _frames_summary(xyz: np.ndarray, bonds: np.ndarray, types: np.ndarray, box: np.ndarray | None, shell: float,
                    li_li: float) -> dict[str, float]:
    per = [local_structure(x, bonds, types, box, shell, li_li) for x in xyz]
    half = len(per) // 2
    cn = [p["cn"].mean() for p in per]
    bond = np.concatenate([p["bond"] for p in per])
    return {"frames": len(per), "li_cn": float(np.mean(cn)), "li_cn_first_half": float(np.mean(cn[:half] or [np.nan])),
            "li_cn_second_half": float(np.mean(cn[half:])),
            "li_li_close": float(np.mean([p["li_close"].mean() for p in per])),
            "bond_mean": float(bond.mean()), "bond_std": float(bond.std())}


def shell_table(reference: str, rollouts: list[str], shell: float = 0.38, li_li: float = 0.55,
                every: int = 1) -> dict[str, Any]:
    """Reference and per-rollout (all replicas pooled) shell statistics."""
    ref = Path(reference)
    traj = load_systems([str(ref)], "reference").trajectories[0]
    types = np.array(json.loads((ref / "beads.json").read_text())["system"]["particle_types"])
    bonds = traj.graph.bead_bonds.numpy()
    box = None if traj.graph.box is None else traj.graph.box.numpy().reshape(-1)[:3]
    out: dict[str, Any] = {"reference": str(ref), "shell_nm": shell, "li_li_nm": li_li,
                           "md": _frames_summary(traj.positions[::every], bonds, types, box, shell, li_li), "rollouts": {}}
    for r in rollouts:
        rows = []
        for h5 in sorted(Path(r).glob("*/replica_*/rollout.h5")):
            xyz = md.load(str(h5)).xyz[1:]
            row = _frames_summary(xyz[::every], bonds, types, box, shell, li_li)
            sidecar = h5.parent / "rollout.json"
            meta = json.loads(sidecar.read_text()).get("extra", {}) if sidecar.exists() else {}
            row["replica"] = h5.parent.name
            row["status"] = meta.get("status")
            row["steps_done"] = meta.get("steps_done")
            row["redraws"] = meta.get("redraws")
            rows.append(row)
        out["rollouts"][r] = rows
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rollouts", nargs="+")
    ap.add_argument("--reference", required=True)
    ap.add_argument("--shell", type=float, default=0.38)
    ap.add_argument("--li-li", type=float, default=0.55)
    ap.add_argument("--every", type=int, default=1, help="use every N-th frame")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    out = shell_table(args.reference, args.rollouts, args.shell, args.li_li, args.every)
    m = out["md"]
    print(f"MD: CN {m['li_cn']:.2f} Li-Li<{args.li_li} {m['li_li_close']:.3f} bond {m['bond_mean']:.3f}+-{m['bond_std']:.3f}")
    for r, rows in out["rollouts"].items():
        for row in rows:
            print(f"{r} {row['replica']}: {row['status']} {row['steps_done']} steps, redraws {row['redraws']}; CN "
                  f"{row['li_cn_first_half']:.2f} -> {row['li_cn_second_half']:.2f}, Li-Li close {row['li_li_close']:.3f}, "
                  f"bond {row['bond_mean']:.3f}+-{row['bond_std']:.3f}")
    if args.json:
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
