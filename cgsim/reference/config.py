"""Structured-config schemas of ``cgsim generate`` (hydra validates overrides against them).

A wrong key or a value of the wrong type in an override is rejected by hydra with its own
message before any cgsim code runs. Range checks (positive times, known letters) happen in
the generators and raise :class:`cgsim.errors.CgsimInputError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ChainSystemConfig:
    """Options of ``system=chain`` (all in reduced LJ units: sigma, epsilon, m, tau)."""

    name: str = "chain"
    #: explicit sequences; when null, ``n_chains`` sequences are drawn from ``seed``
    sequences: list[str] | None = None
    n_chains: int = 4
    #: smallest and largest number of monomers of drawn sequences
    n_monomers: list[int] = field(default_factory=lambda: [50, 100])
    seed: int = 0
    monomers: dict[str, list[str]] = field(default_factory=lambda: {"A": ["B1", "S1"], "B": ["B2", "S2"]})
    epsilon: dict[str, float] = field(default_factory=lambda: {"B1": 0.8, "B2": 0.5, "S1": 1.2, "S2": 0.1})
    mass: dict[str, float] = field(default_factory=lambda: {"B1": 1.0, "B2": 1.0, "S1": 1.0, "S2": 1.0})
    nonbonded: str = "lj"
    lj_cutoff: float = 2.5
    fene_k: float = 30.0
    fene_r0: float = 1.5
    temperature: float = 1.0
    friction: float = 1.0
    timestep: float = 0.01
    equilibration_time: float = 2000.0
    production_time: float = 5000.0
    save_interval: float = 5.0
    #: time recorded every ``save_interval`` into NAME.xtc; null = all of production
    dense_time: float | None = None
    #: if set, frames every ``sparse_interval`` over all of production go to NAME_long.xtc
    sparse_interval: float | None = None
    name_prefix: str = "seq"
    #: grid spacing between chains, sigma (chains do not interact; this only keeps
    #: OpenMM's neighbour grid sparse)
    spacing: float = 40.0
    #: sigma, epsilon and m in MD units (nm, kJ/mol, amu)
    lj_units: dict[str, float] = field(default_factory=lambda: {"sigma": 1.0, "epsilon": 1.0, "mass": 1.0})


@dataclass
class GenerateConfig:
    """Root options of ``cgsim generate``."""

    system: Any = MISSING
    #: output directory (created); a directory holding a different run is refused
    output: str = MISSING
    #: OpenMM platform: auto (CUDA if present, else CPU), CPU, CUDA, OpenCL, Reference
    platform: str = "auto"
    threads: int = 1
    frames_per_chunk: int = 50
    progress: bool = True


def register() -> None:
    """Put the schemas into hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="generate_schema", node=GenerateConfig)
    cs.store(group="system", name="chain_schema", node=ChainSystemConfig)
