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
class ElectrolyteSystemConfig:
    """Options of ``system=electrolyte``: all-atom PEO + LiTFSI (MD units: nm, ps, K, bar, g/cm^3).

    Force field and builder: :mod:`cgsim.reference.electrolyte`; the run:
    :mod:`cgsim.reference.electrolyte_generate`.
    """

    name: str = "electrolyte"
    #: PEO chains CH3-O-(CH2-CH2-O)n-CH3 and their n
    n_chains: int = 8
    chain_length: int = 20
    #: LiTFSI pairs; when null, round(n_chains * chain_length / eo_li_ratio)
    n_salt: int | None = None
    eo_li_ratio: float | None = 16.0
    temperature: float = 400.0
    pressure: float = 1.0
    seed: int = 0
    #: factor on the Li+ and TFSI- charges (missing polarisation); PEO is unscaled
    charge_scale: float = 0.8
    #: ForceField XML; null = the shipped cgsim/reference/forcefields/peo_litfsi.xml
    forcefield: str | None = None
    cutoff: float = 1.0
    ewald_tolerance: float = 5.0e-4
    dispersion_correction: bool = True
    #: HBonds or null
    constraints: str | None = "HBonds"
    #: hydrogen mass repartitioning (amu); null = natural masses
    hydrogen_mass: float | None = None
    timestep: float = 0.002
    #: Langevin friction during equilibration and during production, 1/ps
    friction: float = 1.0
    production_friction: float = 0.1
    #: packing: density, smallest intermolecular distance (nm), packmol binary (null = find it)
    pack_density: float = 0.5
    pack_tolerance: float = 0.2
    packmol: str | None = None
    minimize_tolerance: float = 10.0
    minimize_max_iterations: int = 5000
    #: NPT at compress_pressure for compress_time, then at pressure until the density is stable
    compress_pressure: float = 1000.0
    compress_time: float = 100.0
    #: steps between MonteCarloBarostat moves while compressing, and afterwards
    compress_barostat_interval: int = 5
    barostat_interval: int = 25
    npt_block: float = 10.0
    npt_sample: float = 1.0
    npt_window: float = 100.0
    npt_min_time: float = 300.0
    npt_max_time: float = 3000.0
    density_tolerance: float = 0.005
    #: NVT before the first recorded frame, then production with frames every save_interval
    nvt_equilibration_time: float = 20.0
    #: NVT box density, g/cm^3 (molecule centres scaled to it, molecules rigid); null = the mean
    #: NPT density of the last window. ``cgsim screen`` sets it to the training runs' density
    #: interpolated to its composition after a short NPT
    nvt_density: float | None = None
    production_time: float = 2000.0
    save_interval: float = 2.0
    #: stem of the output files; null = composition label, e.g. peo8x20_litfsi10
    file_name: str | None = None


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
    #: electrolyte runs: write the trajectory files from the production frames recorded so far
    #: (sidecar ``complete: false``) and stop, without running MD; the run stays resumable
    export_partial: bool = False


def register() -> None:
    """Put the schemas into hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="generate_schema", node=GenerateConfig)
    cs.store(group="system", name="chain_schema", node=ChainSystemConfig)
    cs.store(group="system", name="electrolyte_schema", node=ElectrolyteSystemConfig)
