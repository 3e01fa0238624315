"""Structured-config schema of ``cgsim rollout`` (hydra validates overrides against it).

This schema is the one source of the rollout's defaults: ``conf/rollout.yaml`` only merges it
(``defaults: [rollout_schema]``) and holds hydra's own settings. The values live here, not in
the YAML, because Python reads them too: a resumed rollout fills options added since its state
was written at these defaults (:func:`cgsim.config_compat.with_added_defaults`), and benches and
tests build ``GuardConfig()`` without composing hydra. Fields without a default (``MISSING``)
are required on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class GuardConfig:
    """Stability guard: when a replica is stopped (the others go on)."""

    enabled: bool = True
    #: a bond longer than this factor x the longest bond of the initial trajectory stops the replica
    max_bond_factor: float = 1.5
    #: two beads closer than this, nm, stop the replica; null = min_distance_factor x the closest
    #: approach of two beads in the initial trajectory
    min_distance: float | None = None
    min_distance_factor: float = 0.5
    #: true: the overlap limit is per pair of bead types (min_distance_factor x the closest
    #: approach of that pair in the scanned frames; pairs never within the cutoff keep the
    #: overall limit), so ions that repel (Li+ ... Li+, >= 0.59 nm in MD) cannot drift into each other
    by_type_pair: bool = False
    #: initial frames (evenly spaced) scanned for the longest bond / closest approach
    scan_frames: int = 50
    #: a replica whose step fails a check is sampled again (fresh noise) up to this many times
    #: before it is stopped; 0 = stop at the first failure. Counted per replica in the outputs.
    redraws: int = 0


@dataclass
class ExclusionConfig:
    """Hard-core pair exclusion of sampled steps (cgsim/rollout/exclusion.py): off by default."""

    enabled: bool = False
    #: a pair of bead types is kept at least this fraction of its closest approach in the
    #: scanned initial frames (guard.scan_frames) apart; pairs never within the model cutoff: no limit
    factor: float = 0.8
    #: overlap-removal sweeps per step at most (corrected pairs are counted in summary.json)
    iterations: int = 10


@dataclass
class PriorConfig:
    """Override the checkpoint's structural-prior schedule (null = as exported; cgsim/model/prior.py)."""

    #: Langevin updates per learned step after the draw (0 = off; no network calls)
    steps: int | None = None
    #: step size as a fraction of each bead's inverse curvature
    tau: float | None = None
    #: exponent of the fitted potential of mean force (1 = as fitted)
    strength: float | None = None
    #: mean (sample q x prior) | draw (move the draw to where the prior allows)
    anchor: str | None = None
    #: the last N updates without noise (removes the last update's jitter)
    settle: int | None = None
    #: excluded volume inside a bond-tree draw: proposals per bead (0/1 = off; cgsim/model/excluded.py)
    core_tries: int | None = None
    #: first (rejection sampling; tables >= 0) | weighted (pick by exp(-u): tables may attract)
    core_select: str | None = None


@dataclass
class RefineConfig:
    """Override the checkpoint's refinement schedule (null = as trained; see cgsim/model/refinement.py)."""

    #: langevin | diffusion | ode | student (a distilled denoiser: one jump per level)
    sampler: str | None = None
    levels: int | None = None
    steps_per_level: int | None = None
    step_size: float | None = None
    sigma_start: float | None = None
    final_denoise: bool | None = None
    #: geometric | karras
    spacing: str | None = None
    #: true: molecule centres stay where the Gaussian sample put them
    keep_centres: bool | None = None
    #: last (smallest) level of the ladder, target-scale units (default: the trained sigma_min)
    sigma_end: float | None = None


@dataclass
class RolloutConfig:
    """Root options of ``cgsim rollout``."""

    #: training checkpoint (``best.pt`` / ``last.pt``); the model is rebuilt from its saved config
    checkpoint: str = MISSING
    #: mapped-system directory (from ``cgsim map``), or a list of them / globs
    initial: Any = MISSING
    #: total learned steps (each = the checkpoint's learned dt)
    steps: int = MISSING
    output: str = MISSING
    #: replicas of each initial system (independent noise streams)
    replicas: int = 1
    seed: int = 0
    #: apply the model card's recommended rollout settings (``recommended_rollout``, set at export
    #: with ``--recommend``) to every option still at its default here; false: ignore them
    use_recommended: bool = True
    #: write every k-th learned step (frame 0 = the last initial frame)
    save_every: int = 1
    #: learned steps between rollout checkpoints (= commits of frames to disk); 0 = only at the end
    checkpoint_every: int = 100
    device: str = "cpu"
    #: noise scale (0 = deterministic mean)
    temperature: float = 1.0
    #: keep freed heap memory in the process (glibc, cgsim/runtime.py): no page faults on the big
    #: per-step tensors
    keep_freed_memory: bool = True
    #: continue the rollout in ``output`` from its last checkpoint (same frames as one uninterrupted run)
    resume: bool = False
    #: run initial systems whose bond lengths or bead density lie beyond 2x the model's training
    #: range (its model card's ``ranges``; e.g. coordinates in Angstrom: 10x bonds), saying so,
    #: instead of refusing them
    allow_extrapolation: bool = False
    #: use the EMA weights of the checkpoint when it has them
    use_ema: bool = True
    write_dcd: bool = True
    progress: bool = True
    num_threads: int | None = None
    #: wrap the model forward in ``torch.compile`` (compiled once before the first step; on
    #: failure a one-line warning and the eager model). Slow to compile; see BENCHMARKS.md
    compile: bool = False
    guard: GuardConfig = field(default_factory=GuardConfig)
    #: a member with a bond or a molecule (largest distance of a bead from its centre) beyond this
    #: factor x the largest of its scanned initial frames has diverged: it ends with the status
    #: "diverged" (step and replica in summary.json and the summary line), whatever guard.* says;
    #: so does one with non-finite coordinates. Must be > 1
    divergence_factor: float = 3.0
    #: push apart bead pairs that a sampled step brings closer than MD ever does (before the guard)
    exclusion: ExclusionConfig = field(default_factory=ExclusionConfig)
    #: refinement schedule at rollout time (models trained with model/refinement=score)
    refine: RefineConfig = field(default_factory=RefineConfig)
    #: structural-prior schedule at rollout time (models exported with ``--prior``)
    prior: PriorConfig = field(default_factory=PriorConfig)
    #: after the rollout, run ``cgsim evaluate reference=<reference> rollout=<output>`` into output/evaluate
    evaluate: bool = False
    #: reference trajectory set for ``evaluate`` (a trajectory file with sidecar, or a dataset directory)
    reference: str | None = None
    #: extra overrides for the evaluate config, e.g. ``['figures=false', 'match_topology=false']``
    evaluate_overrides: list[str] = field(default_factory=list)


def register() -> None:
    """Put the schema into hydra's ConfigStore."""
    ConfigStore.instance().store(name="rollout_schema", node=RolloutConfig)
