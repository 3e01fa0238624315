"""Closest approach of each pair of bead types in rollouts, relative to the reference MD.

A ratio below 1 means a rollout brought two beads of those types closer than the reference ever
does (in the frames scanned); the stability guard's per-type-pair limit is 0.5 and the pair
exclusion's default 0.8 (``cgsim/rollout/exclusion.py``), so the table shows which pairs a model
pushes into each other and whether a rollout option held them off.

    python bench/bench_closest_approach.py --reference data/electrolyte/mapped/test/peo6x25_eoli20 \
        outputs/rollout/el_a outputs/rollout/el_b --json outputs/bench/closest.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
from bench_common import write_json

from cgsim.data.load import load_systems
from cgsim.rollout.limits import closest_by_type_pair, closest_in_frames


def rollout_trajectories(rollout_dir: Path) -> list[Path]:
    """Every replica's ``rollout.h5`` under a rollout output directory."""
    found = sorted(rollout_dir.glob("*/replica_*/rollout.h5"))
    if not found:
        raise SystemExit(f"{rollout_dir}: no */replica_*/rollout.h5 (not a cgsim rollout output)")
    return found


def closest_table(reference: str, rollouts: list[str], cutoff: float = 0.8, scan_frames: int = 50) -> dict[str, Any]:
    """Closest approach per type pair: reference, and each rollout's over all its replicas and frames."""
    ref = Path(reference)
    traj = load_systems([str(ref)], "reference").trajectories[0]
    types = json.loads((ref / "beads.json").read_text())["system"]["particle_types"]
    names, index, ref_closest = closest_by_type_pair(traj, types, cutoff, scan_frames)
    result: dict[str, Any] = {"reference": str(ref), "types": names, "cutoff": cutoff,
                              "reference_closest": ref_closest.tolist(), "rollouts": {}}
    for r in rollouts:
        per = np.full_like(ref_closest, np.inf)
        for h5 in rollout_trajectories(Path(r)):
            xyz = md.load(str(h5)).xyz[1:]  # frame 0 is the initial (reference) frame
            per = np.minimum(per, closest_in_frames(xyz, index, len(names), traj.graph.box, cutoff))
        result["rollouts"][r] = {"closest": per.tolist(), "ratio": (per / ref_closest).tolist()}
    return result


def markdown(result: dict[str, Any]) -> str:
    """One row per pair of types: the reference's closest approach and each rollout's ratio to it."""
    names = result["types"]
    runs = list(result["rollouts"])
    lines = ["| pair | MD closest, nm | " + " | ".join(Path(r).name for r in runs) + " |",
             "|---|---:|" + "---:|" * len(runs)]
    ref = np.array(result["reference_closest"])
    for i in range(len(names)):
        for j in range(i, len(names)):
            if not np.isfinite(ref[i, j]):
                continue
            ratios = [np.array(result["rollouts"][r]["ratio"])[i, j] for r in runs]
            lines.append(f"| {names[i]}-{names[j]} | {ref[i, j]:.3f} | " + " | ".join(f"{x:.2f}" for x in ratios) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry; returns the result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rollouts", nargs="+", help="rollout output directories")
    ap.add_argument("--reference", required=True, help="mapped reference directory (beads.pdb/json + trajectory)")
    ap.add_argument("--cutoff", type=float, default=0.8, help="search radius, nm")
    ap.add_argument("--scan-frames", type=int, default=50, help="reference frames scanned (evenly spaced)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    result = closest_table(args.reference, args.rollouts, args.cutoff, args.scan_frames)
    print(markdown(result))
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
