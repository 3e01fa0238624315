"""``cgsim screen``: transport of new PEO + LiTFSI compositions from a learned model, in one command.

::

    cgsim screen eo_li=12 chain_length=20 n_chains=8 output=outputs/screen
    cgsim screen 'compositions=[{eo_li: 8, chain_length: 20, n_chains: 7}, {eo_li: 16, chain_length: 20, n_chains: 8}]' \\
        time_ns=20 replicas=4 output=outputs/screen

For each composition (:mod:`cgsim.screen.composition`) :func:`run` checks it against the EO:Li
and chain lengths the model was trained on (:mod:`cgsim.screen.training`; refused in one line
unless ``allow_extrapolation=true``), then runs four resumable stages into
``OUTPUT/<label>/`` (:mod:`cgsim.screen.stages`): ``md`` (brief all-atom MD,
:mod:`cgsim.screen.pipeline`), ``map``, ``rollout`` and ``analysis`` (transport with replica
error bars, :mod:`cgsim.screen.transport`; Li+ coordination plateau,
:mod:`cgsim.screen.coordination`; ``report.md``, ``results.json``, figures,
:mod:`cgsim.screen.report`). The table over every composition in ``OUTPUT``
(:mod:`cgsim.screen.table`) and one summary line end the run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from cgsim.checks import required
from cgsim.errors import CgsimInputError
from cgsim.io_utils import check_output_directory
from cgsim.model.card import ModelCard
from cgsim.model.checkpoint import load_checkpoint
from cgsim.report.loading import load_set
from cgsim.screen import coordination as co
from cgsim.screen import pipeline
from cgsim.screen.composition import Request, requests_from_config
from cgsim.screen.report import write_composition
from cgsim.screen.stages import STAGES, StageLog
from cgsim.screen.table import write_table
from cgsim.screen.training import (
    TrainingRun,
    composition_ranges,
    interpolated_density,
    outside_ranges,
    training_runs,
)
from cgsim.screen.transport import default_window, mean_and_error, replica_transport


def _check_options(cfg: DictConfig) -> None:
    """Numbers that cannot run, before any work."""
    for key in ("time_ns", "plateau_tolerance", "md.npt_time", "md.npt_block"):
        v = OmegaConf.select(cfg, key)
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise CgsimInputError(key, f"expected a positive number, got {v!r}")
    for key in ("burn_in_ns", "md.compress_time", "md.nvt_equilibration_time"):
        v = OmegaConf.select(cfg, key)
        if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
            raise CgsimInputError(key, f"expected a number >= 0, got {v!r}")
    for key in ("replicas", "md.threads"):
        v = OmegaConf.select(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise CgsimInputError(key, f"expected an integer >= 1, got {v!r}")
    if cfg.coordination_cutoff is not None and not cfg.coordination_cutoff > 0:
        raise CgsimInputError("coordination_cutoff", f"expected a positive distance in nm, got {cfg.coordination_cutoff!r}")


def load_card(path: str) -> ModelCard:
    """The model card of ``checkpoint`` (one line when the file is missing or not a checkpoint)."""
    if not Path(path).is_file():
        raise CgsimInputError("checkpoint", f"{path} does not exist; expected an exported electrolyte model such as "
                                            "data/checkpoints/electrolyte.pt")
    return ModelCard.from_checkpoint(load_checkpoint(path), path)


def _identity(cfg: DictConfig, req: Request) -> dict[str, Any]:
    """What a composition directory's outputs depend on (analysis options aside)."""
    md = {k: v for k, v in OmegaConf.to_container(cfg.md, resolve=True).items() if k not in ("platform", "threads")}
    return {"checkpoint": str(cfg.checkpoint), "composition": req.to_dict(), "md": md, "time_ns": float(cfg.time_ns),
            "burn_in_ns": float(cfg.burn_in_ns), "replicas": int(cfg.replicas), "seed": int(cfg.seed),
            "allow_extrapolation": bool(cfg.allow_extrapolation)}


def _analysis_settings(cfg: DictConfig, r_c: float) -> dict[str, Any]:
    fit = None if cfg.fit_window is None else [float(v) for v in cfg.fit_window]
    return {"coordination_cutoff": r_c, "plateau_tolerance": float(cfg.plateau_tolerance), "fit_window": fit,
            "figures": bool(cfg.figures)}


def _stage(log: StageLog, name: str, bar: tqdm, work: Any, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``work()`` unless ``name`` is recorded (with these settings); record it; advance ``bar``."""
    bar.set_postfix_str(f"{log.dir.name}: {name}")
    if log.done(name, settings):
        bar.update(1)
        return dict(log.records[name].get("facts", {}), skipped=True)
    t0 = time.perf_counter()
    facts = work()
    log.record(name, time.perf_counter() - t0, settings, facts=facts)
    bar.update(1)
    return dict(facts, skipped=False)


def screen_one(cfg: DictConfig, req: Request, card: ModelCard, runs: list[TrainingRun], r_c: float,
               extrapolation: str | None, bar: tqdm) -> dict[str, Any]:
    """All stages of one composition; returns its results (also in results.json)."""
    out = Path(cfg.output) / req.label
    log = StageLog(out, _identity(cfg, req))
    density = interpolated_density(runs, req.molality)
    md_over = pipeline.md_overrides(cfg, req, runs[0], card, density, out / "md")
    md = _stage(log, "md", bar, lambda: pipeline.run_md(md_over))
    mapped = _stage(log, "map", bar, lambda: pipeline.run_map(cfg, md, runs[0], out / "mapped"))
    burn, steps = pipeline.rollout_steps(cfg, card)
    roll = _stage(log, "rollout", bar, lambda: _rollout_facts(pipeline.run_rollout(cfg, mapped["mapped"], steps,
                                                                                     out / "rollout")))
    settings = _analysis_settings(cfg, r_c)
    skipped = [name for name, facts in (("md", md), ("map", mapped), ("rollout", roll)) if facts["skipped"]]

    def analyse() -> dict[str, Any]:
        return _analyse(cfg, req, card, runs, md, mapped, roll, r_c, burn, density, extrapolation, log, out, skipped)

    _stage(log, "analysis", bar, analyse, settings)
    return json.loads((out / "results.json").read_text())


def _rollout_facts(summary: dict[str, Any]) -> dict[str, Any]:
    members = summary["members"]
    return {"finished": sum(m["status"] == "finished" for m in members), "members": len(members),
            "redraws": int(summary["redraws"]), "steps": int(summary["steps"]),
            "wall_seconds": float(summary["wall_seconds_total"]), "learned_dt": float(summary["learned_dt"]),
            "calls_per_step": summary.get("calls_per_step")}


def _analyse(cfg: DictConfig, req: Request, card: ModelCard, runs: list[TrainingRun], md: dict[str, Any],
             mapped: dict[str, Any], roll: dict[str, Any], r_c: float, burn: int, density: float,
             extrapolation: str | None, log: StageLog, out: Path, skipped: list[str]) -> dict[str, Any]:
    """Transport, coordination, cost; writes the composition's files."""
    t0 = time.perf_counter()
    trajs = load_set(out / "rollout", file_index=-1, where="rollout")
    kept = [t for t in trajs if not t.stopped_early and not t.unfinished]
    if not kept:
        raise CgsimInputError(str(out / "rollout"), "every replica was stopped or diverged; nothing to analyse "
                                                    "(see its summary.json)")
    sp = co.species(kept[0])
    analysed = [t.frames(slice(burn, None)) for t in kept]
    window = default_window(analysed[0].duration, cfg.fit_window)
    temperature = runs[0].temperature
    reps = [replica_transport(t, sp, temperature, window, r_c) for t in analysed]
    full_series = [co.coordination_series(t, sp, r_c) for t in kept]
    md_traj = load_set(mapped["mapped"], where="map")[0]
    md_coord = float(co.coordination_series(md_traj, co.species(md_traj), r_c).mean())
    timing = {k: log.wall(k) for k in STAGES[:-1]}
    timing["analysis"] = time.perf_counter() - t0
    total = sum(timing.values())
    rate = float(md["ns_per_day"])
    aa = float(cfg.time_ns) / rate * 86400.0
    rollout_ns = roll["members"] * roll["steps"] * card.learned_dt * 1e-3
    sysc = runs[0].system_config
    results = {
        "label": req.label, "checkpoint": str(cfg.checkpoint), "composition": req.to_dict(),
        "temperature": temperature, "extrapolation": extrapolation, "time_ns": float(cfg.time_ns),
        "burn_in_ns": float(cfg.burn_in_ns), "fit_window": list(window), "coordination_cutoff": r_c,
        "md": {**md, "interpolated_density": density, "density_source": "summary.density of the training runs' sidecars",
               "production_time": pipeline.production_time(card), "hydrogen_mass": sysc.get("hydrogen_mass"),
               "timestep": sysc.get("timestep")},
        "mapping": {**runs[0].mapping, "n_beads": mapped["n_beads"]},
        "rollout": {**roll, "replicas": int(cfg.replicas), "burn_in_steps": burn, "analysed_replicas": len(kept)},
        "transport": mean_and_error(reps), "coordination_md": md_coord,
        "plateau": co.plateau([s[burn:] for s in full_series], float(cfg.plateau_tolerance)),
        "timing": {"stages": timing, "total": total, "skipped": skipped, "units": "s"},
        "cost": {"md_ns_per_day": rate, "all_atom_seconds": aa, "all_atom_seconds_all_replicas": aa * int(cfg.replicas),
                 "speedup_end_to_end": aa / total, "speedup_end_to_end_all_replicas": aa * int(cfg.replicas) / total,
                 "speedup_rollout": (rollout_ns / rate * 86400.0) / max(roll["wall_seconds"], 1e-9),
                 "definitions": "all-atom seconds = time_ns / the measured MD ns/day of this box; end to end = that "
                                "over the whole screening's wall time; rollout only = all-atom seconds of every "
                                "member's simulated time (burn-in included) over the rollout's wall time"},
        "units": {"D": "cm^2/s", "sigma": "S/cm", "time": "ps unless _ns", "wall": "s", "density": "g/cm^3"},
    }
    write_composition(out, results, reps, card.learned_dt * 1e-3, burn, full_series, bool(cfg.figures))
    return {"results": str(out / "results.json")}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Screen every composition of ``cfg`` (module docstring); returns ``{label: results}`` and the table."""
    required(cfg, ("output",), "screen")
    _check_options(cfg)
    requests = requests_from_config(cfg)
    card = load_card(str(cfg.checkpoint))
    runs = training_runs(card)
    ranges = composition_ranges(runs)
    notes: dict[str, str | None] = {}
    for req in requests:
        why = outside_ranges(req.eo_li, req.chain_length, ranges, req.key)
        if why is not None and not cfg.allow_extrapolation:
            raise CgsimInputError(*why)
        note = None if why is None else f"{why[0]}={why[1].split(';')[0]}"
        if note is not None:
            print(f"screen: warning: {note} (allow_extrapolation=true: screening it anyway)")
        notes[req.label] = note
    out = check_output_directory(cfg.output)
    pipeline.resolve_platform(str(cfg.md.platform))
    r_c = float(cfg.coordination_cutoff) if cfg.coordination_cutoff is not None else co.shell_radius(card.train_systems)
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    with tqdm(total=len(STAGES) * len(requests), unit="stage", desc="screen", disable=not cfg.progress,
              dynamic_ncols=True) as bar:
        for req in requests:
            results[req.label] = screen_one(cfg, req, card, runs, r_c, notes[req.label], bar)
    table = write_table(out, bool(cfg.figures))
    parts = [f"{lab}: sigma_NE {r['transport']['sigma_ne']['mean']:.3g} S/cm, D(Li+) "
             f"{r['transport']['D_li']['mean']:.3g} cm^2/s, {r['timing']['total']:.0f} s, "
             f"{r['cost']['speedup_end_to_end']:.3g}x end to end" for lab, r in results.items()]
    print(f"screen: {len(results)} composition(s) in {time.perf_counter() - t0:.1f} s -> {out}; "
          + "; ".join(parts) + f"; table {table['table']}")
    return {"results": results, "table": table}
