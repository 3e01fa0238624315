"""Chain size over the first learned steps from true histories: where a rollout's Rg error starts.

A long rollout's mean Rg error can build up slowly (a drift) or appear in the first steps (the
draw itself gets the chain's global shape wrong). From every ``--every``-th window of each mapped
chain, roll the model out ``max(--steps)`` learned steps and compare the mean Rg after each of
``--steps`` with MD's at the same times (the true frames ``k * stride`` later), per chain.

    OMP_NUM_THREADS=1 python bench/bench_shape_steps.py runs/core_learn.pt \
        'data/chain/mapped/test/seq_00[0-5]' --every 20 --prior core_tries=0

``--prior key=value ...`` sets the model's structural-prior schedule (as ``cgsim rollout prior.*``).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from bench_common import write_json

from cgsim.data.load import load_systems
from cgsim.data.windows import history_positions
from cgsim.model.checkpoint import load_model_file
from cgsim.model.sampling import apply_prior_overrides, rollout_positions


def radius_of_gyration(x: torch.Tensor) -> float:
    """Rg (nm) of positions (N, 3), equal bead weights."""
    c = x - x.mean(dim=0, keepdim=True)
    return float(c.pow(2).sum(dim=-1).mean().sqrt())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("systems", help="mapped chain directories (glob)")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50])
    ap.add_argument("--every", type=int, default=20, help="window spacing in frames")
    ap.add_argument("--prior", nargs="*", default=[], help="structural-prior schedule, key=value")
    ap.add_argument("--temperature", type=float, default=1.0, help="scale of the draw's noise (0: its mean)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, card, model = load_model_file(args.checkpoint)
    model.eval()
    given: dict[str, Any] = {}
    for item in args.prior:
        key, value = item.split("=", 1)
        given[key] = int(value) if value.lstrip("-").isdigit() else value
    apply_prior_overrides(model, given, args.checkpoint)
    dtype = next(model.parameters()).dtype
    systems = load_systems([args.systems], "systems", list(card.atom_types)).trajectories
    stride, h = card.stride, model.history
    need = (h - 1) * stride + 1
    horizon = max(args.steps)
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    print("| chain | windows | MD Rg, nm | " + " | ".join(f"after {k}" for k in args.steps) + " |")
    print("|---|---:|---:|" + "---:|" * len(args.steps))
    for t in systems:
        drawn = {k: [] for k in args.steps}
        true = {k: [] for k in args.steps}
        starts = range(0, t.n_frames - need - horizon * stride, args.every)
        for start in starts:
            hist = history_positions(t, h, stride, start).to(dtype)
            traj = rollout_positions(model, [t.graph], [hist], horizon, gen, args.temperature)
            for k in args.steps:
                drawn[k].append(radius_of_gyration(traj[k - 1]))
                true[k].append(radius_of_gyration(torch.from_numpy(t.positions[start + need - 1 + k * stride])))
        md = float(np.mean([np.mean(v) for v in true.values()]))
        ratio = {k: float(np.mean(drawn[k]) / np.mean(true[k])) for k in args.steps}
        rows.append({"chain": t.name, "windows": len(starts), "md_rg_nm": md,
                     "rg_nm": {k: float(np.mean(drawn[k])) for k in args.steps}, "ratio_to_md": ratio})
        print(f"| {t.name} | {len(starts)} | {md:.2f} | "
              + " | ".join(f"{np.mean(drawn[k]):.2f} ({ratio[k]:.2f}x)" for k in args.steps) + " |", flush=True)
    mean_ratio = {k: float(np.mean([r["ratio_to_md"][k] for r in rows])) for k in args.steps}
    print("mean Rg ratio to MD after " + ", ".join(f"{k}: {v:.3f}" for k, v in mean_ratio.items()))
    if args.json:
        write_json(args.json, {"checkpoint": args.checkpoint, "prior": given, "temperature": args.temperature, "stride": stride, "chains": rows,
                               "mean_ratio_to_md": mean_ratio})


if __name__ == "__main__":
    main()
