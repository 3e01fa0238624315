"""Li+ structure per composition: what a model's rollouts do on each mapped electrolyte run vs MD.

For each mapped run (training compositions and held-out ones alike): ``--replicas`` rollouts of
``--steps`` learned steps from the run's last frames (``cgsim rollout``, no pair exclusion unless
the overrides say so), then, against the run's own MD frames (:func:`bench_shell.shell_table`),
the Li+ coordination by PEO beads (second half of the rollout), the fraction of Li+ with another
Li+ closer than 0.55 nm, the PEO bond width, and how many replicas finished with how many guard
redraws. One row per composition, so a model that fits some compositions and not others shows
where (issue 24: "per-composition closest approaches, the Li+ coordination the model sees in
training windows versus what it produces").

    OMP_NUM_THREADS=1 python bench/bench_compositions.py data/checkpoints/electrolyte.pt \
        data/electrolyte/mapped/train/* data/electrolyte/mapped/test/* --steps 300 \
        --out outputs/bench/compositions_shipped --json outputs/bench/compositions_shipped.json \
        --overrides guard.redraws=10 guard.by_type_pair=true
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_json  # noqa: E402
from bench_shell import shell_table  # noqa: E402


def roll(checkpoint: str, run: Path, out: Path, steps: int, replicas: int, overrides: list[str]) -> dict[str, Any]:
    """``cgsim rollout`` of one mapped run (kept if ``out`` already holds a finished one)."""
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    from cgsim.cli import compose_verb
    from cgsim.rollout.command import rollout

    cfg = compose_verb("rollout", [f"checkpoint={checkpoint}", f"initial={run}", f"steps={steps}",
                                   f"replicas={replicas}", f"output={out}", "progress=false", "num_threads=1",
                                   *overrides])
    return rollout(cfg)


def composition_row(checkpoint: str, run: Path, out: Path, steps: int, replicas: int,
                    overrides: list[str]) -> dict[str, Any]:
    """MD vs rollout Li+ structure of one mapped run (see the module docstring)."""
    summary = roll(checkpoint, run, out, steps, replicas, overrides)
    table = shell_table(str(run), [str(out)])
    rows = table["rollouts"][str(out)]
    md = table["md"]
    done = sum(int(r["steps_done"] or 0) for r in rows)
    redraws = sum(int(r["redraws"] or 0) for r in rows)
    return {"run": run.name, "split": run.parent.name, "calls_per_step": summary.get("calls_per_step"),
            "md_li_cn": md["li_cn"], "md_li_li_close": md["li_li_close"], "md_bond_std": md["bond_std"],
            "li_cn_second_half": float(np.mean([r["li_cn_second_half"] for r in rows])),
            "li_li_close": float(np.mean([r["li_li_close"] for r in rows])),
            "bond_std": float(np.mean([r["bond_std"] for r in rows])),
            "finished": sum(r["status"] == "finished" for r in rows), "replicas": len(rows),
            "steps_done": done, "redraws_per_1000": 1000.0 * redraws / max(done, 1)}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("runs", nargs="+", help="mapped electrolyte runs (cgsim map output directories)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--out", required=True, help="folder for the rollouts (one sub-folder per run)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--overrides", nargs="*", default=[], help="extra cgsim rollout overrides (key=value ...)")
    args = ap.parse_args(argv)
    rows = [composition_row(args.checkpoint, Path(r), Path(args.out) / Path(r).name, args.steps, args.replicas,
                            args.overrides) for r in args.runs]
    print("| run | split | calls | Li+ CN MD -> model | Li+ with a Li+ < 0.55 nm MD -> model | PEO bond std MD -> model, nm "
          "| finished | redraws / 1000 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['split']} | {r['calls_per_step']} | {r['md_li_cn']:.2f} -> {r['li_cn_second_half']:.2f} "
              f"| {r['md_li_li_close']:.3f} -> {r['li_li_close']:.3f} | {r['md_bond_std']:.3f} -> {r['bond_std']:.3f} "
              f"| {r['finished']}/{r['replicas']} ({r['steps_done']} steps) | {r['redraws_per_1000']:.0f} |")
    if args.json:
        write_json(args.json, {"checkpoint": args.checkpoint, "steps": args.steps, "overrides": args.overrides,
                               "rows": rows})
    return rows


if __name__ == "__main__":
    main()
