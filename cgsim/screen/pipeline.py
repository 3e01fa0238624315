"""The three producing stages of one composition: brief all-atom MD, mapping, learned rollout.

Each stage is the project's own verb run in-process on a config composed exactly as its command
line would compose it (:func:`cgsim.cli.compose_verb`):

- :func:`run_md`: ``cgsim generate system=electrolyte`` with every force-field and thermostat
  option of the model's first training run (its sidecar's ``system`` config: temperature, time
  step, hydrogen mass, charge scaling, cutoff, ...), the composition, short compress and NPT
  stages, the NVT box at the density interpolated from the training runs (``nvt_density``) and
  only as many recorded frames as the model's history spans (``history_frames`` x the save
  interval of the training data);
- :func:`run_map`: ``cgsim map`` with the training systems' mapping scheme and options (their
  ``mapping.yaml``); the ion charges come from the MD sidecar (scaled as in training);
- :func:`run_rollout`: ``cgsim rollout`` (:func:`cgsim.rollout.command.rollout`, which applies
  the model's recommended settings) for the burn-in plus the analysed time, with replicas.

Units: ps, nm, g/cm^3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cgsim.cli import compose_verb
from cgsim.errors import CgsimInputError
from cgsim.metadata import read_sidecar
from cgsim.model.card import ModelCard
from cgsim.reference.platforms import available_platforms
from cgsim.screen.composition import Request
from cgsim.screen.training import TrainingRun

#: training-run options the screening does not copy: names, machine paths and the stage lengths it sets
_NOT_COPIED = ("name", "file_name", "packmol", "n_chains", "chain_length", "n_salt", "eo_li_ratio", "seed",
               "compress_time", "npt_block", "npt_window", "npt_min_time", "npt_max_time", "nvt_equilibration_time",
               "production_time", "save_interval", "nvt_density")


def resolve_platform(name: str) -> str:
    """``auto`` -> CUDA if OpenMM has it, else OpenCL (1.8x the CPU platform on a CPU OpenCL
    runtime here, BENCHMARKS.md), else CPU; any other name is returned as given."""
    if name != "auto":
        return name
    names = available_platforms()
    return next((n for n in ("CUDA", "OpenCL") if n in names), "CPU")


def production_time(card: ModelCard) -> float:
    """Recorded MD the model's history needs, ps: ``(history_frames - 1) x save interval``."""
    return (card.history_frames - 1) * card.save_interval


def _window(npt_time: float, block: float) -> float:
    """NPT density window: half the NPT blocks (at least one), ps."""
    n_blocks = max(1, int(round(npt_time / block)))
    return block * max(1, n_blocks // 2)


def md_overrides(cfg: DictConfig, req: Request, run: TrainingRun, card: ModelCard, density: float,
                 out: Path) -> list[str]:
    """The ``cgsim generate`` overrides of the brief MD of ``req`` (module docstring)."""
    md = cfg.md
    base = {k: v for k, v in run.system_config.items() if k not in _NOT_COPIED}
    if md.cutoff is not None:
        base["cutoff"] = float(md.cutoff)
    if not math.isclose(float(run.system_config.get("save_interval", card.save_interval)), card.save_interval,
                        rel_tol=1e-6):
        raise CgsimInputError("checkpoint", f"the training run {run.reference} saved frames every "
                                            f"{run.system_config.get('save_interval')} ps but the model's learned dt "
                                            f"implies {card.save_interval:g} ps; not a model of these runs")

    def value(v: Any) -> str:
        return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    npt = float(md.npt_time)
    sets = {**base, "n_chains": req.n_chains, "chain_length": req.chain_length, "n_salt": req.n_salt,
            "eo_li_ratio": req.eo_li, "seed": int(md.seed), "compress_time": float(md.compress_time),
            "npt_block": float(md.npt_block), "npt_window": _window(npt, float(md.npt_block)), "npt_min_time": npt,
            "npt_max_time": npt, "nvt_equilibration_time": float(md.nvt_equilibration_time),
            "nvt_density": round(float(density), 6), "production_time": production_time(card),
            "save_interval": card.save_interval, "file_name": req.label}
    return ["system=electrolyte", f"output={out}", f"platform={resolve_platform(str(md.platform))}",
            f"threads={int(md.threads)}", f"progress={value(bool(cfg.progress))}",
            *[f"system.{k}={value(v)}" for k, v in sets.items()]]


def run_md(overrides: Sequence[str]) -> dict[str, Any]:
    """Run (or resume) the brief MD; returns the trajectory, its topology and the measured speed.

    Returns
    -------
    dict
        ``trajectory``, ``topology`` (paths), ``ns_per_day`` (the run's MD speed: all its
        steps over its wall time, as the generator records it), ``npt_density`` (mean of the
        last NPT block, g/cm^3), ``nvt_density`` (g/cm^3), ``n_atoms``, ``platform``.
    """
    from cgsim.reference.generate import run as generate

    gcfg = compose_verb("generate", list(overrides))
    generate(gcfg)
    out = Path(gcfg.output)
    traj = out / f"{gcfg.system.file_name}.xtc"
    meta = read_sidecar(traj)
    eq = (meta.extra or {}).get("equilibration") or {}
    npt = [b["density"] for b in eq.get("blocks", []) if b.get("stage") == "npt"]
    return {"trajectory": str(traj), "topology": str(traj.with_suffix(".pdb")),
            "ns_per_day": meta.summary.get("ns_per_day"), "npt_density": npt[-1] if npt else None,
            "nvt_density": meta.summary.get("density"), "n_atoms": len(meta.system.particle_types),
            "platform": meta.provenance.get("platform")}


def run_map(cfg: DictConfig, md: dict[str, Any], run: TrainingRun, out: Path) -> dict[str, Any]:
    """Map the MD with the training systems' mapping; returns the mapped directory and its size."""
    from cgsim.mapping.command import run as map_run

    opts = [f"mapping.{k}={v}" for k, v in run.mapping["options"].items()]
    mcfg = compose_verb("map", [f"input.trajectory={md['trajectory']}", f"input.topology={md['topology']}",
                                f"mapping={run.mapping['scheme']}", *opts, "trajectory_format=xtc",
                                f"output={out}", "overwrite=true", f"progress={str(bool(cfg.progress)).lower()}"])
    summary = map_run(mcfg)
    return {"mapped": str(out), "n_beads": summary.get("n_beads"), "n_frames": summary.get("n_frames")}


def rollout_steps(cfg: DictConfig, card: ModelCard) -> tuple[int, int]:
    """``(burn-in steps, total steps)`` of the rollout: burn_in_ns and time_ns in learned steps."""
    dt_ns = card.learned_dt * 1.0e-3
    burn = int(math.ceil(float(cfg.burn_in_ns) / dt_ns - 1e-9))
    total = burn + int(math.ceil(float(cfg.time_ns) / dt_ns - 1e-9))
    return burn, total


def run_rollout(cfg: DictConfig, mapped: str, steps: int, out: Path) -> dict[str, Any]:
    """Roll the model out from the mapped MD (resuming a rollout killed half-way); its summary."""
    from cgsim.rollout.command import rollout

    overrides = [f"checkpoint={cfg.checkpoint}", f"initial={mapped}", f"steps={steps}", f"output={out}",
                 f"replicas={int(cfg.replicas)}", f"seed={int(cfg.seed)}",
                 f"allow_extrapolation={str(bool(cfg.allow_extrapolation)).lower()}", f"device={cfg.device}",
                 f"progress={str(bool(cfg.progress)).lower()}", "write_dcd=false",
                 f"resume={str((out / 'rollout_state.pt').is_file()).lower()}"]
    if cfg.num_threads is not None:
        overrides.append(f"num_threads={int(cfg.num_threads)}")
    rcfg = compose_verb("rollout", overrides)
    return dict(rollout(rcfg))
