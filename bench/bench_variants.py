"""Model variants at one training budget on the same data (issue 8: equivariance, coarser level).

Each *arm* is a list of ``cgsim train`` overrides on top of ``experiment=NAME`` (the plain
multi-scale network, ``model=equivariant_gnn``, ``model/coarse=segments``, ...). For every arm and
every data fraction the script

1. trains ``cgsim train experiment=NAME <arm> data.train=[first f of the experiment's training
   systems]`` for the same number of epochs x optimiser steps (``--epochs``,
   ``--steps-per-epoch``), so arms differ only in the model (and, across fractions, in the data);
2. reads the best epoch's one-step validation NLL (validation systems are never trained on) and
   the parameter count from the checkpoint;
3. rolls the best checkpoint out on held-out systems with ``cgsim rollout ... evaluate=true``
   (``--initial``, ``--reference``, ``--rollout-steps``; a failing step is redrawn up to
   ``--redraws`` times) and reads the errors against reference MD with ``bench_fidelity``;
4. writes one row per run (JSON and a markdown table): parameters, training time, NLL, stability,
   Rg / Rg^2-relaxation / diffusion / structure errors and the rollout speed (beads x steps/s).

Every stage resumes: a finished training or rollout is read back, a killed one continues
(re-run the same command). Training and rollout use ``--threads`` threads each.

    python bench/bench_variants.py --experiment chain --arms plain equivariant --fractions 0.25 1.0 \\
        --epochs 4 --steps-per-epoch 1000 --rollout-steps 1000 --out outputs/bench/variants_chain
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path
from typing import Any

import bench_fidelity

from cgsim.cli import compose_verb, hydra_quoted, load_verb
from cgsim.data.load import expand_paths
from cgsim.errors import CgsimInputError
from cgsim.model.card import ModelCard
from cgsim.model.checkpoint import load_checkpoint
from cgsim.report.markdown import median_over_keys

#: named arms: ``cgsim train`` overrides on top of the experiment. Each arm says what it has and what it
#: has not (``~group`` drops a group the experiment selects), so an arm means the same whatever the
#: experiment's defaults are (experiment=chain selects the coarse level and collective noise).
_PLAIN = ["~model/coarse", "~model/collective"]
ARMS: dict[str, list[str]] = {
    "plain": list(_PLAIN),
    "plain+symmetries": [*_PLAIN, "data.augment_symmetry=true"],
    "equivariant": ["model=equivariant_gnn", *_PLAIN],
    "coarse": ["model/coarse=segments", "~model/collective"],
    "equivariant+coarse": ["model=equivariant_gnn", "model/coarse=segments", "~model/collective"],
    "collective": ["~model/coarse", "model/collective=centre"],
    "coarse+collective": ["model/coarse=segments", "model/collective=centre"],
}

#: the structural observables evaluated when no replica finished (dynamics need full-length replicas)
STRUCTURE = ("rdf", "bond_lengths", "bond_angles", "rg")

#: rollout errors reported per run: (column, observable, error measure)
ERRORS = [
    ("rg_err", "rg", "relative_error_mean"),
    ("rg_relax_err", "rg_acf", "relative_error_tau"),
    ("diffusion_err", "diffusion", "relative_error"),
    ("rdf_dg", "rdf", "mean_abs_dg"),
    ("bond_jsd", "bond_lengths", "jsd"),
    ("angle_jsd", "bond_angles", "jsd"),
]

#: errors of some keys only, reported where the evaluation has them: (column, observable, measure, key prefix)
KEYED_ERRORS = [
    ("com_msd_dev", "msd", "mean_relative_deviation", "com:"),   # molecule centres' MSD, mean over lags
    ("com_d_err", "diffusion", "relative_error", "com:"),
    ("li_d_err", "diffusion", "relative_error", "LI"),
    ("tfsi_d_err", "diffusion", "relative_error", "TFS"),
    ("sigma_ne_err", "conductivity", "relative_error[sigma_ne_S_cm]", "system"),
]


def parse_arm(text: str) -> tuple[str, list[str]]:
    """``NAME`` (one of :data:`ARMS`) or ``NAME=override,override`` (a custom arm)."""
    if "=" not in text:
        if text not in ARMS:
            raise SystemExit(f"--arms: unknown arm {text!r}; known: {', '.join(ARMS)} (or NAME=override,override)")
        return text, list(ARMS[text])
    name, overrides = text.split("=", 1)
    return name, [o for o in overrides.split(",") if o]


def training_systems(experiment: str, extra: list[str]) -> list[str]:
    """The experiment's training systems (globs expanded, sorted) as path strings."""
    cfg = compose_verb("train", [f"experiment={experiment}", "output=unused", *extra])
    return [str(p) for p in expand_paths(list(cfg.data.train), "data.train")]


def subset(systems: list[str], fraction: float) -> list[str]:
    """The first ``ceil(fraction x n)`` systems (at least one): nested subsets across fractions."""
    if not 0.0 < fraction <= 1.0:
        raise SystemExit(f"--fractions: {fraction} is not in (0, 1]")
    return systems[: max(1, math.ceil(fraction * len(systems) - 1e-9))]


def _metrics_rows(path: Path) -> list[dict[str, float]]:
    with path.open() as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def train_arm(experiment: str, overrides: list[str], systems: list[str], out: Path, epochs: int, steps: int,
              threads: int, progress: bool) -> dict[str, Any]:
    """Train (or resume, or read back) one arm; return its training record."""
    train = load_verb("train")
    args = [f"experiment={experiment}", *overrides, f"data.train=[{','.join(hydra_quoted(s) for s in systems)}]",
            f"trainer.max_epochs={epochs}", f"trainer.max_steps_per_epoch={steps}", f"trainer.num_threads={threads}",
            f"trainer.progress={str(progress).lower()}", "trainer.tensorboard=false", f"output={out}"]
    last, metrics = out / "checkpoints" / "last.pt", out / "metrics.csv"
    done = metrics.is_file() and (out / "checkpoints" / "best.pt").is_file() and \
        any(int(r["epoch"]) >= epochs for r in _metrics_rows(metrics))
    if done:  # read back as it is (its config may predate options added since)
        print(f"{out}: finished ({epochs} epochs), read back", flush=True)
    else:
        if last.is_file():
            args.append("resume=true")
        train(compose_verb("train", args))
    rows = _metrics_rows(metrics)
    validated = [r for r in rows if not math.isnan(r["val_nll"])]
    best_path = out / "checkpoints" / "best.pt"
    best = ModelCard.from_checkpoint(load_checkpoint(best_path), best_path)
    return {"n_parameters": int(best.n_parameters), "train_seconds": sum(r["epoch_seconds"] for r in rows),
            "optimizer_steps": int(rows[-1]["step"]), "best_epoch": int(best.epoch) + 1,
            "val_nll": float(best.metrics["val_nll"]),
            "val_nll_last": validated[-1]["val_nll"] if validated else float("nan"),
            "checkpoint": str(out / "checkpoints" / "best.pt")}


def rollout_arm(checkpoint: str, initial: str, reference: str, steps: int, out: Path, redraws: int,
                save_every: int, threads: int, progress: bool, extra: list[str] | None = None) -> dict[str, Any]:
    """Roll the checkpoint out on the held-out systems and evaluate it; return errors and speed."""
    rollout = load_verb("rollout")
    args = [f"checkpoint={checkpoint}", f"initial={hydra_quoted(initial)}", f"steps={steps}", f"output={out}",
            f"guard.redraws={redraws}", f"save_every={save_every}", f"checkpoint_every={max(save_every, 100)}",
            f"num_threads={threads}", f"progress={str(progress).lower()}", "evaluate=true",
            f"reference={hydra_quoted(reference)}", *(extra or [])]
    note = None
    summary_path, metrics_path = out / "summary.json", out / "evaluate" / "metrics.json"
    done = summary_path.is_file() and metrics_path.is_file() and \
        json.loads(summary_path.read_text())["steps"] >= steps
    if done:
        print(f"{out}: finished ({steps} steps), read back", flush=True)
        members = json.loads(summary_path.read_text())["members"]
        if all(m["status"] == "stopped" for m in members):
            note = "every replica was stopped early by the stability guard: structure only"
    else:
        if (out / "rollout_state.pt").is_file():
            args.append("resume=true")
        try:
            rollout(compose_verb("rollout", args))
        except CgsimInputError as exc:  # every replica stopped early: no dynamics to compare, structure still
            if not (summary_path.is_file() and "no replica left" in str(exc)):
                raise
            note = str(exc)
            load_verb("evaluate")(compose_verb("evaluate", [
                f"reference={hydra_quoted(reference)}", f"rollout={out}", f"output={out / 'evaluate'}",
                f"observables=[{','.join(STRUCTURE)}]", "progress=false"]))
    summary = json.loads(summary_path.read_text())
    metrics = json.loads(metrics_path.read_text())
    fid = bench_fidelity.fidelity(out)
    finished = next(r["rollout"] for r in fid["rows"] if r["check"] == "replicas finished")
    record = {"finished": finished, "evaluate_note": note, "redraws_per_1000_steps": fid["redraws_per_1000_steps"],
              "bead_steps_per_second": bead_steps_per_second(summary)}
    for column, obs, measure in ERRORS:
        record[column] = median_over_keys(metrics, obs, measure, "error")
        record[column + "_noise"] = median_over_keys(metrics, obs, measure, "noise_floor")
    for column, obs, measure, prefix in KEYED_ERRORS:
        record[column] = median_over_keys(metrics, obs, measure, "error", prefix)
        record[column + "_noise"] = median_over_keys(metrics, obs, measure, "noise_floor", prefix)
    return record


def bead_steps_per_second(summary: dict[str, Any]) -> float:
    """Beads x steps per wall second over the whole rollout (all calls, resumed ones included)."""
    steps = int(summary["steps"])
    work = sum(int(m["n_beads"]) * (int(m["stop_step"]) if m.get("stop_step") is not None else steps)
               for m in summary["members"])
    wall = float(summary.get("wall_seconds_total") or 0.0)
    return work / wall if wall > 0 else float("nan")


def markdown(rows: list[dict[str, Any]]) -> str:
    """One table row per run."""
    cols = [("arm", "arm", "{}"), ("data", "fraction", "{:.0%}"), ("params", "n_parameters", "{:,}"),
            ("train s", "train_seconds", "{:.0f}"), ("val NLL", "val_nll", "{:.4f}"),
            ("finished", "finished", "{:.0%}"), ("redraws/1000", "redraws_per_1000_steps", "{:.1f}"),
            ("Rg err", "rg_err", "{:.3f}"), ("Rg2 relax err", "rg_relax_err", "{:.3f}"),
            ("D err", "diffusion_err", "{:.3f}"), ("RDF dg", "rdf_dg", "{:.3f}"),
            ("bond JSD", "bond_jsd", "{:.4f}"), ("centre MSD dev", "com_msd_dev", "{:.3f}"),
            ("centre D err", "com_d_err", "{:.3f}"), ("Li+ D err", "li_d_err", "{:.3f}"),
            ("TFSI- D err", "tfsi_d_err", "{:.3f}"), ("NE cond err", "sigma_ne_err", "{:.3f}"),
            ("beads x steps/s", "bead_steps_per_second", "{:.0f}")]
    # columns no run has (e.g. ion diffusion for chains) are left out
    cols = [c for c in cols if c[1] in ("arm", "fraction") or any(r.get(c[1]) is not None for r in rows)]
    lines = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for _, key, fmt in cols:
            value = r.get(key)
            cells.append("-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Command-line entry; returns one record per (arm, fraction)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="chain")
    ap.add_argument("--arms", nargs="+", default=["plain", "equivariant"],
                    help=f"named arms ({', '.join(ARMS)}) or NAME=override,override")
    ap.add_argument("--fractions", nargs="+", type=float, default=[1.0], help="fractions of the training systems")
    ap.add_argument("--train-overrides", nargs="*", default=[], help="extra cgsim train overrides for every arm")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps-per-epoch", type=int, default=1000)
    ap.add_argument("--initial", default="data/chain/mapped/test/seq_00[0-5]")
    ap.add_argument("--reference", default="data/chain/mapped/test/seq_00[0-5]_long")
    ap.add_argument("--rollout-overrides", nargs="*", default=[],
                    help="extra cgsim rollout overrides for every arm (e.g. replicas=2 guard.by_type_pair=true)")
    ap.add_argument("--rollout-steps", type=int, default=1000, help="0 = train only")
    ap.add_argument("--save-every", type=int, default=5)
    ap.add_argument("--redraws", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/variants"))
    ap.add_argument("--report", default="variants",
                    help="stem of the written tables (OUT/REPORT.json, OUT/REPORT.md): several comparisons can "
                         "share one OUT and so its trained arms")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)

    arms = [parse_arm(a) for a in args.arms]
    systems = training_systems(args.experiment, args.train_overrides)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for fraction in args.fractions:
        chosen = subset(systems, fraction)
        for name, overrides in arms:
            run = args.out / f"{name}_{round(100 * fraction)}pct"
            print(f"== {name}, {len(chosen)}/{len(systems)} training systems -> {run}", flush=True)
            record: dict[str, Any] = {"arm": name, "overrides": overrides, "fraction": fraction,
                                      "train_systems": len(chosen)}
            record.update(train_arm(args.experiment, [*overrides, *args.train_overrides], chosen, run / "train",
                                    args.epochs, args.steps_per_epoch, args.threads, args.progress))
            if args.rollout_steps > 0:
                record.update(rollout_arm(record["checkpoint"], args.initial, args.reference, args.rollout_steps,
                                          run / "rollout", args.redraws, args.save_every, args.threads, args.progress,
                                          args.rollout_overrides))
            rows.append(record)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{args.report}.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                                 "rows": rows}, indent=2))
    table = markdown(rows)
    (args.out / f"{args.report}.md").write_text(table + "\n")
    print(table)
    print(f"bench_variants: {len(rows)} run(s) in {time.perf_counter() - t0:.0f} s -> {args.out / f'{args.report}.json'}")
    return rows


if __name__ == "__main__":
    main()
