"""Scaling of the cell-list radius graph (cgsim.geometry.radius_graph) with the number of beads.

Uniform random beads at a liquid-like number density in a periodic cubic box (and the same
beads with no box), cutoff fixed, N from 1e2 to 1e5. Prints the time per graph, the time per
bead (flat = linear scaling) and, for reference, scipy's periodic cKDTree on the same input.

    .venv/bin/python bench/bench_neighbors.py --density 0.85 --cutoff 2.5 --threads 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.spatial import cKDTree

from cgsim.geometry import radius_graph


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 3000, 10_000, 30_000, 100_000])
    ap.add_argument("--density", type=float, default=0.85, help="beads per nm^3")
    ap.add_argument("--cutoff", type=float, default=2.5, help="nm")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__} on {args.device}, {args.threads} thread(s); density {args.density}/nm^3, "
          f"cutoff {args.cutoff} nm; best of {args.repeats}")
    print(f"{'N':>7} {'edges':>10} {'pbc ms':>9} {'us/bead':>8} {'free ms':>9} {'us/bead':>8} {'kdtree ms':>10}")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        side = max((n / args.density) ** (1 / 3), 2.0 * args.cutoff + 1e-3)
        pos_np = rng.random((n, 3)) * side
        pos = torch.from_numpy(pos_np).float().to(args.device)
        box = torch.tensor([side] * 3, dtype=torch.float32, device=args.device)
        g = radius_graph(pos, args.cutoff, box)
        t_pbc = _best_of(lambda: radius_graph(pos, args.cutoff, box), args.repeats)  # noqa: B023
        t_free = _best_of(lambda: radius_graph(pos, args.cutoff), args.repeats)  # noqa: B023
        t_kd = _best_of(lambda: cKDTree(pos_np, boxsize=side).query_pairs(args.cutoff, output_type="ndarray"),  # noqa: B023
                        args.repeats)
        print(f"{n:>7d} {g.n_edges:>10d} {1e3 * t_pbc:>9.2f} {1e6 * t_pbc / n:>8.2f} {1e3 * t_free:>9.2f} "
              f"{1e6 * t_free / n:>8.2f} {1e3 * t_kd:>10.2f}")


if __name__ == "__main__":
    main()
