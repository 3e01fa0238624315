"""Probe: one-call learned step with the structural prior, across prior schedules.

For a checkpoint that carries a structural prior (``python -m cgsim.train.export ... --prior``),
roll out held-out systems with each prior schedule (``steps``, ``tau``, ``strength``; the
refiner's schedule as in the checkpoint) and report, per schedule, in one table:

- stability: redraws per 1000 member-steps and stopped members (guard as given);
- structure: Jensen-Shannon divergence (bits) of the pooled bond-length and 1-3 distance
  histograms against the reference frames, and the same for the reference's first vs second
  half (the noise floor); short non-bonded pair distances (closest approach per type pair);
- size (chains): mean radius of gyration relative to the reference;
- network calls per learned step (:meth:`MultiScaleDynamics.calls_per_step`).

This is a quick probe to choose a schedule; the shipped figures come from ``cgsim evaluate``
and ``bench/bench_fidelity.py``.

    python bench/bench_prior.py CKPT --initial 'data/chain/mapped/test/seq_00[0-5]' \
        --reference 'data/chain/mapped/test/seq_00[0-5]_long' --steps 500 --schedule 10,0.3,1.0 20,0.3,1.0
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
from bench_common import write_json
from hydra import compose, initialize_config_dir

from cgsim.cli import conf_dir, load_verb
from cgsim.data.load import load_systems
from cgsim.model.prior import pair_lists
from cgsim.observables.distributions import js_divergence
from cgsim.rollout.command import rollout


def _distances(x: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x[:, pairs[0]] - x[:, pairs[1]], axis=-1).ravel()


def _jsd(a: np.ndarray, b: np.ndarray, edges: np.ndarray) -> float:
    pa, _ = np.histogram(a, edges)
    pb, _ = np.histogram(b, edges)
    return float(js_divergence(pa / max(pa.sum(), 1), pb / max(pb.sum(), 1)))


def _rg(x: np.ndarray) -> np.ndarray:
    c = x - x.mean(axis=1, keepdims=True)
    return np.sqrt((c**2).sum(-1).mean(-1))


def structure(frames: list[np.ndarray], refs: list[np.ndarray], bonds: list[Any]) -> dict[str, float]:
    """JSDs (bond, 1-3) rollout vs reference and the reference's half-vs-half floor; Rg ratio."""
    out: dict[str, float] = {}
    for k, name in ((0, "bond"), (1, "angle")):
        roll = np.concatenate([_distances(f, pair_lists(b, f.shape[1])[k].numpy()) for f, b in zip(frames, bonds, strict=True)])
        ref = [_distances(r, pair_lists(b, r.shape[1])[k].numpy()) for r, b in zip(refs, bonds, strict=True)]
        half_a = np.concatenate([_distances(r[: len(r) // 2], pair_lists(b, r.shape[1])[k].numpy()) for r, b in zip(refs, bonds, strict=True)])
        half_b = np.concatenate([_distances(r[len(r) // 2:], pair_lists(b, r.shape[1])[k].numpy()) for r, b in zip(refs, bonds, strict=True)])
        ref = np.concatenate(ref)
        if ref.size == 0:
            continue
        edges = np.linspace(0.0, np.quantile(ref, 0.999) * 1.5, 80)
        out[f"{name}_jsd"] = _jsd(roll, ref, edges)
        out[f"{name}_jsd_floor"] = _jsd(half_a, half_b, edges)
    rg_roll = np.mean([_rg(f).mean() for f in frames])
    rg_ref = np.mean([_rg(r).mean() for r in refs])
    out["rg_ratio"] = float(rg_roll / rg_ref)
    return out


def run_one(ckpt: str, initial: str, steps: int, schedule: tuple[int, float, float, str] | None, redraws: int,
            extra: list[str], out: Path) -> dict[str, Any]:
    overrides = [f"checkpoint={ckpt}", f"initial='{initial}'", f"steps={steps}", f"output={out}", "progress=false",
                 "num_threads=1", "checkpoint_every=0", f"guard.redraws={redraws}", "write_dcd=false", *extra]
    if schedule is not None:  # None: the checkpoint as it is (no prior overrides)
        steps_p, tau, strength, anchor = schedule
        overrides += [f"prior.steps={steps_p}", f"prior.tau={tau}", f"prior.strength={strength}", f"prior.anchor={anchor}"]
    load_verb("rollout")  # registers the schemas
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="rollout", overrides=overrides)
    return rollout(cfg)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--initial", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--redraws", type=int, default=3)
    ap.add_argument("--schedule", nargs="+", default=["10,0.3,1.0"], help="steps,tau,strength[,anchor], or as-is (the checkpoint's own schedule)")
    ap.add_argument("--override", nargs="*", default=[], help="extra rollout overrides")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    refs = load_systems([args.reference], "reference").trajectories
    inits = load_systems([args.initial], "initial").trajectories
    rows = []
    for sched in args.schedule:
        parsed = None
        if sched != "as-is":
            s, t, k, *a = sched.split(",")
            parsed = (int(s), float(t), float(k), a[0] if a else "mean")
        with tempfile.TemporaryDirectory() as tmp:
            summary = run_one(args.checkpoint, args.initial, args.steps, parsed, args.redraws,
                              args.override, Path(tmp) / "r")
            frames, bonds, ref_frames = [], [], []
            for init, ref in zip(inits, refs, strict=True):
                for h5 in sorted((Path(tmp) / "r" / Path(init.name).name).glob("replica_*/rollout.h5")):
                    frames.append(md.load(str(h5)).xyz.astype(np.float64))
                    bonds.append(init.graph.bead_bonds)
                    ref_frames.append(ref.positions)
            row = {"schedule": sched, **structure(frames, ref_frames, bonds)}
        members = summary["members"]
        member_steps = sum((m["stop_step"] - 1) if m.get("stop_step") else summary["steps"] for m in members)
        row.update({"redraws_per_1000": 1000 * summary["redraws"] / max(member_steps, 1),
                    "stopped": summary["n_stopped"], "members": len(members),
                    "calls_per_step": summary.get("calls_per_step"),
                    "bead_steps_per_second": summary["bead_steps_per_second"]})
        rows.append(row)
        print(json.dumps(row))
    if args.json:
        write_json(args.json, rows, indent=1)
    return rows


if __name__ == "__main__":
    main()
