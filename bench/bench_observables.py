"""Wall and CPU time of every observable: on the shipped chain data and on a large synthetic box.

Two parts:

1. Shipped data (``data/chain/mapped/{test,train}``, METIS-mapped bead-spring chains): each
   set is loaded as ``cgsim evaluate`` loads it and every observable of the chain preset is
   computed with the evaluate defaults (``cgsim.report.suite.compute_suite``, contact maps
   included), pooled over the set's trajectories.
2. A synthetic periodic trajectory, ``--frames`` x ``--beads`` (default 10^4 x 10^3) random
   walkers of three types at ``--density`` in a cubic box: the RDF per type pair to half the
   box (``method="dense"`` on every frame; the k-d tree path of earlier versions,
   ``method="tree"``, on ``--tree-frames`` frames and scaled to all), the RDF to a short
   cutoff, a coordination number, MSD per type, self-diffusion with block errors, and the
   Nernst-Einstein / Einstein-Helfand conductivity with transference numbers (types A and B
   carry +1 / -1 e).

Run from the repository root, one thread (the numbers in BENCHMARKS.md were taken so)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_observables.py --json /tmp/bench_observables.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {  # label -> glob (relative to the repository root)
    "mapped/test (held-out, 1000 tau)": "data/chain/mapped/test/seq_00?",
    "mapped/test long (50,000 tau)": "data/chain/mapped/test/seq_00?_long",
    "mapped/train": "data/chain/mapped/train/seq_*",
}
CHAIN_OBSERVABLES = ("rdf", "bond_lengths", "bond_angles", "rg", "end_to_end", "contact_map", "msd", "diffusion",
                     "rg_acf")


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Result, wall seconds and CPU seconds (this process, all threads) of ``fn()``."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _evaluate_config(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    from cgsim import evaluate
    from cgsim.cli import conf_dir

    evaluate.register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("evaluate", overrides)


def shipped(rows: list[dict[str, Any]]) -> None:
    """Part 1: every chain observable on each shipped set, as ``cgsim evaluate`` computes it."""
    import torch  # noqa: F401 - see synthetic()

    from cgsim.observables import rdf_by_type
    from cgsim.report.loading import load_set
    from cgsim.report.suite import _frames_for_rdf, compute_suite, make_settings

    for label, pattern in SHIPPED.items():
        if not list(REPO.glob(pattern)):
            print(f"# {label}: {pattern} not found, skipped", file=sys.stderr)
            continue
        cfg = _evaluate_config([f"reference={REPO / pattern}", "output=/tmp/unused", "progress=false"])
        trajs, wall, cpu = _timed(lambda p=pattern: load_set(REPO / p))
        settings = make_settings(trajs, cfg, CHAIN_OBSERVABLES)
        frames = sum(t.n_frames for t in trajs)
        beads = f"{min(t.n_particles for t in trajs)}-{max(t.n_particles for t in trajs)}"
        common = {"set": label, "trajectories": len(trajs), "frames": frames, "particles": beads}
        rows.append({**common, "observable": "loading (mdtraj + sidecars)", "wall_s": wall, "cpu_s": cpu})
        for name in CHAIN_OBSERVABLES:
            one = type(settings)(**{**settings.__dict__, "observables": (name,)})
            _, wall, cpu = _timed(lambda s=one, ts=trajs: compute_suite(ts, s, "reference"))
            rows.append({**common, "observable": name, "wall_s": wall, "cpu_s": cpu})

        def tree_rdfs(ts: list[Any] = trajs, s: Any = settings) -> list[Any]:
            """The same RDFs with the k-d tree path of earlier versions."""
            return [rdf_by_type(t.xyz[_frames_for_rdf(t, s.rdf_max_frames)], t.types, None,
                                r_max=float(s.rdf_edges[-1]), n_bins=s.rdf_edges.size - 1, periodic=False,
                                method="tree") for t in ts]

        _, wall, cpu = _timed(tree_rdfs)
        rows.append({**common, "observable": "rdf, previous method (tree)", "wall_s": wall, "cpu_s": cpu})


def synthetic(rows: list[dict[str, Any]], n_frames: int, n_beads: int, density: float, tree_frames: int,
              workers: int) -> None:
    """Part 2: RDF (both methods), coordination number and dynamics on random walkers in a box."""
    import torch  # noqa: F401 - the dense RDF's bincount; imported here so its start-up is not timed

    from cgsim.observables import (
        coordination_number,
        ionic_conductivity,
        msd,
        rdf_by_type,
        self_diffusion,
    )

    rng = np.random.default_rng(0)
    length = (n_beads / density) ** (1 / 3)
    types = np.array(["A", "B", "C"])[np.arange(n_beads) % 3]
    step = np.where(types == "C", 0.02, 0.04)[None, :, None]  # nm per frame and axis
    xyz = rng.uniform(0, length, (1, n_beads, 3)) + np.cumsum(rng.normal(0, 1, (n_frames, n_beads, 3)) * step, axis=0)
    box = np.full((n_frames, 3), length)
    dt = 1.0  # ps between frames
    label = f"synthetic {n_frames} x {n_beads}, L = {length:.2f} nm"
    common = {"set": label, "trajectories": 1, "frames": n_frames, "particles": str(n_beads)}
    half = 0.5 * length * (1 - 1e-9)

    res, wall, cpu = _timed(lambda: rdf_by_type(xyz, types, box, r_max=half, n_bins=100, method="dense",
                                                workers=workers))
    rows.append({**common, "observable": f"rdf per type pair, r_max = L/2, dense, {workers} thread(s)",
                 "wall_s": wall, "cpu_s": cpu, "ms_per_frame": 1e3 * wall / n_frames})
    nt = min(tree_frames, n_frames)
    tree, wall, cpu = _timed(lambda: rdf_by_type(xyz[:nt], types, box[:nt], r_max=half, n_bins=100, method="tree",
                                                 workers=workers))
    scale = n_frames / nt
    rows.append({**common, "observable": f"rdf per type pair, r_max = L/2, tree (previous method; {nt} frames x "
                                         f"{scale:g})", "wall_s": wall * scale, "cpu_s": cpu * scale,
                 "ms_per_frame": 1e3 * wall / nt})
    dense_part = rdf_by_type(xyz[:nt], types, box[:nt], r_max=half, n_bins=100, method="dense")
    diff = max(float(np.abs(dense_part[k].g - tree[k].g).max()) for k in tree)
    cnt = max(float(np.abs(dense_part[k].counts - tree[k].counts).max()) for k in tree)
    print(f"# dense vs tree on {nt} frames: max |dg| = {diff:.2e}, max |dcounts| per bin = {cnt:g} "
          f"(of up to {max(float(r.counts.max()) for r in tree.values()):.3g})", file=sys.stderr)
    for method in ("dense", "tree", "auto"):
        _, wall, cpu = _timed(lambda m=method: rdf_by_type(xyz[:nt], types, box[:nt], r_max=1.0, n_bins=50, method=m))
        rows.append({**common, "observable": f"rdf per type pair, r_max = 1 nm, {method} ({nt} frames x {scale:g})",
                     "wall_s": wall * scale, "cpu_s": cpu * scale, "ms_per_frame": 1e3 * wall / nt})
    _, wall, cpu = _timed(lambda: coordination_number(res[("A", "B")], 0.5))
    rows.append({**common, "observable": "coordination number (from the RDF)", "wall_s": wall, "cpu_s": cpu})
    _, wall, cpu = _timed(lambda: msd(xyz, dt, groups=types, box=box))
    rows.append({**common, "observable": "msd per type (FFT, all origins)", "wall_s": wall, "cpu_s": cpu})
    window = (0.02 * n_frames * dt, 0.2 * n_frames * dt)
    _, wall, cpu = _timed(lambda: self_diffusion(xyz, dt, window, groups=types, box=box, n_blocks=4))
    rows.append({**common, "observable": "self-diffusion (+ 4 blocks)", "wall_s": wall, "cpu_s": cpu})
    charges = np.select([types == "A", types == "B"], [1.0, -1.0], 0.0)
    _, wall, cpu = _timed(lambda: ionic_conductivity(xyz, dt, charges, box, 300.0, window, species=types, n_blocks=4))
    rows.append({**common, "observable": "conductivity NE + EH + transference (+ 4 blocks)", "wall_s": wall,
                 "cpu_s": cpu})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=10_000, help="frames of the synthetic trajectory")
    ap.add_argument("--beads", type=int, default=1_000, help="beads of the synthetic trajectory")
    ap.add_argument("--density", type=float, default=10.0, help="beads per nm^3 (CG electrolyte ~10)")
    ap.add_argument("--tree-frames", type=int, default=1_000, help="frames timed with the slower tree method")
    ap.add_argument("--workers", type=int, default=1, help="threads of the RDF")
    ap.add_argument("--skip-shipped", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    if not args.skip_shipped:
        shipped(rows)
    if not args.skip_synthetic:
        synthetic(rows, args.frames, args.beads, args.density, args.tree_frames, args.workers)
    print(f"# {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"numpy {np.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print("| set | trajectories x frames | particles | observable | wall s | CPU s | ms/frame |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for r in rows:
        per = f"{r['ms_per_frame']:.3g}" if "ms_per_frame" in r else ""
        print(f"| {r['set']} | {r['trajectories']} x {r['frames'] // r['trajectories']} | {r['particles']} | "
              f"{r['observable']} | {r['wall_s']:.3g} | {r['cpu_s']:.3g} | {per} |")
    if args.json is not None:
        meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
                "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "argv": sys.argv[1:]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
