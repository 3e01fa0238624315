"""Speed and memory of `cgsim map` (METIS mapping of a periodic all-atom system).

Builds a periodic box of ``--copies``^3 copies of the 83-atom test electrolyte
(tests/fixtures/mapping/electrolyte.pdb: a PEO oligomer, 2 Li+, 2 TFSI-), moves every
molecule by a random walk (so molecules cross the box edges), writes XTC trajectories of
``--frames`` and 10x ``--frames`` frames, and runs ``cgsim map`` on each in a fresh process,
reporting atom-frames/s (from its summary line) and peak resident memory (GNU time).

    .venv/bin/python bench/bench_mapping.py --copies 5 --frames 200
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import mdtraj as md
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "mapping" / "electrolyte.pdb"


def build(copies: int, frames: int, workdir: Path, seed: int = 0) -> tuple[Path, Path, int]:
    """Write ``box.pdb`` + ``traj_{frames}.xtc`` of a tiled, randomly moving system."""
    unit = md.load(str(FIXTURE))
    box = unit.unitcell_lengths[0]
    tiles = []
    for i in range(copies):
        for j in range(copies):
            for k in range(copies):
                t = unit.slice(0, copy=True)
                t.xyz += np.array([i, j, k]) * box
                tiles.append(t)
    top = tiles[0].topology
    for t in tiles[1:]:
        top = top.join(t.topology)
    xyz0 = np.concatenate([t.xyz for t in tiles], axis=1)[0]
    big = box * copies
    mol_of_atom = np.zeros(top.n_atoms, dtype=int)
    for m, mol in enumerate(top.find_molecules()):
        mol_of_atom[[a.index for a in mol]] = m
    rng = np.random.default_rng(seed)
    steps = rng.normal(scale=0.05, size=(frames, mol_of_atom.max() + 1, 3))
    shift = np.cumsum(steps, axis=0)[:, mol_of_atom]  # molecules move rigidly, cross edges
    xyz = xyz0[None] + shift
    xyz -= big * np.floor(xyz / big)  # wrapped, as MD engines write them
    traj = md.Trajectory(xyz.astype(np.float32), top, time=np.arange(frames) * 2.0,
                         unitcell_lengths=np.tile(big, (frames, 1)), unitcell_angles=np.full((frames, 3), 90.0))
    pdb = workdir / "box.pdb"
    traj[0].save_pdb(str(pdb))
    xtc = workdir / f"traj_{frames}.xtc"
    traj.save_xtc(str(xtc))
    return pdb, xtc, top.n_atoms


def run_map(pdb: Path, xtc: Path, out: Path) -> tuple[float, float, int]:
    """(atom-frames/s, wall s, peak RSS MiB) of one `cgsim map` run."""
    cmd = ["/usr/bin/time", "-f", "MAXRSS_KB=%M", sys.executable, "-m", "cgsim", "map", f"input.trajectory={xtc}",
           f"input.topology={pdb}", "mapping=metis", "mapping.atoms_per_bead=7", f"output={out}", "progress=false",
           f"hydra.run.dir={out}_hydra"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
    text = res.stdout + res.stderr
    rate = float(re.search(r"\(([0-9.e+]+) atom-frames/s\)", text).group(1))
    wall = float(re.search(r" in ([0-9.]+) s ", text).group(1))
    rss = int(re.search(r"MAXRSS_KB=(\d+)", text).group(1)) / 1024
    return rate, wall, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=5)
    ap.add_argument("--frames", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"{'atoms':>7} {'frames':>7} {'atom-frames/s':>14} {'map s':>7} {'peak RSS MiB':>13}")
        for frames in (args.frames, 10 * args.frames):
            pdb, xtc, n_atoms = build(args.copies, frames, tmp)
            rate, wall, rss = run_map(pdb, xtc, tmp / f"out_{frames}")
            print(f"{n_atoms:>7d} {frames:>7d} {rate:>14.3g} {wall:>7.1f} {rss:>13.0f}")


if __name__ == "__main__":
    main()
