"""Scaling of the cell-list radius graph (cgsim.geometry.radius_graph) with the number of beads.

Uniform random beads at a liquid-like number density in a periodic cubic box (and the same
beads with no box), cutoff fixed, N from 1e2 to 1e5. Prints the time per graph (edges with
minimum-image vectors) for both methods, the torch cell list and the scipy cKDTree path,
and the time per bead (flat = linear scaling).

    .venv/bin/python bench/bench_neighbors.py --density 0.85 --cutoff 2.5 --threads 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

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
    print(f"{'N':>7} {'edges':>10} {'cells pbc ms':>12} {'us/bead':>8} {'kdtree pbc ms':>13} {'us/bead':>8} "
          f"{'cells free ms':>13} {'kdtree free ms':>14}")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        side = max((n / args.density) ** (1 / 3), 2.0 * args.cutoff + 1e-3)
        pos = torch.from_numpy(rng.random((n, 3)) * side).float().to(args.device)
        box = torch.tensor([side] * 3, dtype=torch.float32, device=args.device)
        g = radius_graph(pos, args.cutoff, box)
        t = {}
        for method in ("cells", "kdtree"):
            t[("pbc", method)] = _best_of(lambda m=method, p=pos, b=box: radius_graph(p, args.cutoff, b, method=m), args.repeats)
            t[("free", method)] = _best_of(lambda m=method, p=pos: radius_graph(p, args.cutoff, method=m), args.repeats)
        print(f"{n:>7d} {g.n_edges:>10d} {1e3 * t['pbc', 'cells']:>12.2f} {1e6 * t['pbc', 'cells'] / n:>8.2f} "
              f"{1e3 * t['pbc', 'kdtree']:>13.2f} {1e6 * t['pbc', 'kdtree'] / n:>8.2f} "
              f"{1e3 * t['free', 'cells']:>13.2f} {1e3 * t['free', 'kdtree']:>14.2f}")

if __name__ == "__main__":
    main()
