"""Fidelity of a long learned rollout on held-out systems against the targets of issue 9.

Reads what ``cgsim rollout ... evaluate=true`` (or ``cgsim rollout`` then ``cgsim evaluate``)
wrote: ``ROLLOUT/summary.json`` (stability, redraws, speed) and ``ROLLOUT/evaluate/metrics.json``
(errors against the reference and the MD-vs-MD noise floor: first vs second half of each
reference trajectory), and prints one table, each error next to its noise floor and target:

- structure: RDF mean abs(dg) and bond-length / bond-angle Jensen-Shannon divergence (median over
  type pairs), target: within the noise floor;
- chains: mean Rg (target 5 %), Rg^2 relaxation time (25 %);
- electrolytes: self-diffusion per bead type (30 %), conductivity (40 %);
- stability: fraction of replicas that finished (100 %), redraws per 1000 member-steps (and
  pairs pushed apart per 1000 member-steps when the rollout ran with ``exclusion.enabled=true``).

    python bench/bench_fidelity.py outputs/rollout/chain_10k --json outputs/bench/fidelity_chain.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench_common import write_json

from cgsim.report.markdown import median_over_keys

#: (label, observable, error measure, target as a relative error; None = the noise floor)
CHECKS = [
    ("RDF mean abs(dg) (median over pairs)", "rdf", "mean_abs_dg", None),
    ("bond lengths JSD (median over types)", "bond_lengths", "jsd", None),
    ("bond angles JSD (median over types)", "bond_angles", "jsd", None),
    ("mean Rg, relative error", "rg", "relative_error_mean", 0.05),
    ("Rg^2 relaxation time, relative error", "rg_acf", "relative_error_tau", 0.25),
    ("self-diffusion D, relative error (median over types)", "diffusion", "relative_error", 0.30),
]


def fidelity(rollout_dir: str | Path, metrics_path: str | Path | None = None) -> dict[str, Any]:
    """The fidelity table of one evaluated rollout directory (see the module docstring)."""
    out = Path(rollout_dir)
    summary = json.loads((out / "summary.json").read_text())
    metrics = json.loads(Path(metrics_path or out / "evaluate" / "metrics.json").read_text())
    rows = []
    for label, obs, measure, target in CHECKS:
        err = median_over_keys(metrics, obs, measure, "error")
        if err is None:
            continue
        floor = median_over_keys(metrics, obs, measure, "noise_floor")
        limit = target if target is not None else floor
        rows.append({"check": label, "rollout": err, "noise_floor": floor, "target": target,
                     "meets": None if limit is None else bool(err <= limit)})
    cond = metrics.get("observables", {}).get("conductivity", {}).get("system", {})
    for key, value in (cond.get("error") or {}).items() if isinstance(cond.get("error"), dict) else []:
        if key.startswith("relative_error[sigma_"):
            floor = (cond.get("noise_floor") or {}).get(key)
            rows.append({"check": f"conductivity {key[15:-1]}, relative error", "rollout": value, "noise_floor": floor,
                         "target": 0.40, "meets": bool(value <= 0.40)})
    members = summary["members"]
    finished = sum(m["status"] == "finished" for m in members) / len(members)
    member_steps = sum((m["stop_step"] - 1) if m["stop_step"] else summary["steps"] for m in members)
    redraws = 1e3 * sum(m.get("redraws", 0) for m in members) / max(1, member_steps)
    # pairs pushed apart by the rollout's pair exclusion (cgsim/rollout/exclusion.py), if it was on
    excluded = (1e3 * sum(m["exclusion_pairs"] for m in members) / max(1, member_steps)
                if all("exclusion_pairs" in m for m in members) else None)
    rows.append({"check": "replicas finished", "rollout": finished, "noise_floor": None, "target": 1.0,
                 "meets": finished >= 1.0})
    return {"rollout": str(out), "steps": summary["steps"], "learned_dt": summary["learned_dt"],
            "time_unit": summary["time_unit"], "simulated_time": summary["simulated_time"], "members": len(members),
            "redraws_per_1000_steps": redraws, "exclusion_pairs_per_1000_steps": excluded, "wall_seconds_total": summary.get("wall_seconds_total"),
            "reference": metrics.get("reference", {}).get("path"), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    """The table as markdown."""
    lines = ["| check | rollout | MD noise floor | target | met |", "|---|---:|---:|---:|:---:|"]
    for r in result["rows"]:
        floor = "-" if r["noise_floor"] is None else f"{r['noise_floor']:.3g}"
        target = "noise floor" if r["target"] is None else f"{r['target']:.3g}"
        met = {True: "yes", False: "no", None: "-"}[r["meets"]]
        lines.append(f"| {r['check']} | {r['rollout']:.3g} | {floor} | {target} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry; returns the result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rollout", help="rollout output directory (summary.json, evaluate/metrics.json)")
    ap.add_argument("--metrics", default=None, help="metrics.json if not ROLLOUT/evaluate/metrics.json")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    result = fidelity(args.rollout, args.metrics)
    print(f"{result['members']} member(s) x {result['steps']} steps of {result['learned_dt']:g} {result['time_unit']} "
          f"(= {result['simulated_time']:g} {result['time_unit']}) against {result['reference']}; "
          f"{result['redraws_per_1000_steps']:.2f} redraws per 1000 member-steps"
          + ("" if result["exclusion_pairs_per_1000_steps"] is None
             else f", {result['exclusion_pairs_per_1000_steps']:.1f} pairs pushed apart per 1000 member-steps"))
    print(markdown(result))
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
