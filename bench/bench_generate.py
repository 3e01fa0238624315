"""Speed of the chain reference generator (OpenMM, CPU platform).

Measures integration speed of independent graft copolymer chains integrated as one OpenMM
System, for 1 and for many chains, after a warm-up, and prints chain-steps/s and tau/s.

    .venv/bin/python bench/bench_generate.py --monomers 50 --chains 1 20 --steps 5000 --threads 1 [--platform OpenCL]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import openmm
import openmm.unit as u

from cgsim.reference.chain import (
    ChainModel,
    build_system,
    chain_topology,
    initial_conformation,
    place_chains,
)
from cgsim.reference.md_cost import openmm_context
from cgsim.reference.platforms import minimize_energy
from cgsim.reference.sequence import draw_sequences
from cgsim.units import LJUnits


def measure(n_chains: int, n_monomers: int, steps: int, threads: int, seed: int = 0,
            platform_name: str = "CPU") -> dict[str, float]:
    """Steps per second of ``n_chains`` chains of ``n_monomers`` monomers (dt = 0.01 tau)."""
    rng = np.random.default_rng(seed)
    model, lj = ChainModel(), LJUnits()
    chains = [chain_topology(s, model) for s in draw_sequences(n_chains, (n_monomers, n_monomers), "AB", rng)]
    system = build_system(chains, model, lj)
    pos = place_chains([initial_conformation(c, rng) for c in chains], 40.0)
    integ = openmm.LangevinMiddleIntegrator(lj.temperature * u.kelvin, 1.0 / u.picosecond, 0.01 * u.picosecond)
    ctx = openmm_context(system, integ, platform_name, threads, xyz=pos)
    minimize_energy(ctx, 1e-3, 2000, threads)
    integ.step(max(1000, steps // 5))  # warm-up: let the chains relax from the random walk
    t0 = time.perf_counter()
    integ.step(steps)
    wall = time.perf_counter() - t0
    sps = steps / wall
    return {"chains": n_chains, "beads": system.getNumParticles(), "steps_per_s": sps,
            "chain_steps_per_s": sps * n_chains, "tau_per_s": sps * 0.01}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--monomers", type=int, default=50)
    ap.add_argument("--chains", type=int, nargs="+", default=[1, 20])
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--platform", default="CPU", help="OpenMM platform (cgsim.reference.platforms.select_platform)")
    args = ap.parse_args()
    print(f"# OpenMM {openmm.__version__} {args.platform}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"{args.monomers} monomers/chain ({2 * args.monomers} beads)")
    print(f"{'chains':>6} {'beads':>6} {'steps/s':>9} {'chain-steps/s':>14} {'tau/s':>7}")
    for n in args.chains:
        r = measure(n, args.monomers, args.steps, args.threads, platform_name=args.platform)
        print(f"{r['chains']:>6d} {r['beads']:>6d} {r['steps_per_s']:>9.0f} {r['chain_steps_per_s']:>14.0f} {r['tau_per_s']:>7.1f}")


if __name__ == "__main__":
    main()
