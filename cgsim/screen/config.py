"""Structured-config schema of ``cgsim screen`` (hydra validates overrides against it).

This schema is the one source of the screening's defaults: ``conf/screen.yaml`` only merges it.
Compositions come either as a list (``'compositions=[{eo_li: 12, chain_length: 20, n_chains:
8}, {eo_li: 20, chain_length: 20, n_chains: 8}]'``) or, for one composition and for hydra
multiruns, as the three top-level options ``eo_li=12 chain_length=20 n_chains=8``
(``cgsim screen -m eo_li=8,12,20 chain_length=20 n_chains=8 output=...``); both may be given.
MD units: nm, ps, K, g/cm^3.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class CompositionConfig:
    """One composition to screen: PEO + LiTFSI."""

    #: ether oxygens (EO units) per Li+; the salt count is round(n_chains * chain_length / eo_li)
    eo_li: float = MISSING
    #: EO units per PEO chain (CH3-O-(CH2-CH2-O)n-CH3), >= 2
    chain_length: int = MISSING
    #: PEO chains in the box
    n_chains: int = MISSING


@dataclass
class ScreenMDConfig:
    """The brief all-atom stage (OpenMM, the project's electrolyte generator).

    Force field, temperature, pressure, time step, hydrogen mass, charge scaling, cutoff and
    thermostats are those of the model's training runs (read from their sidecars); only the
    lengths of the stages are chosen here.
    """

    #: NPT at the generator's compress pressure after packing, ps (a multiple of npt_block)
    compress_time: float = 40.0
    #: NPT at the training pressure, ps (a multiple of npt_block); the NVT box is then set to the
    #: density interpolated from the training runs (the short NPT only relaxes the packing)
    npt_time: float = 40.0
    npt_block: float = 10.0
    #: unrecorded NVT before the frames the model's history needs, ps
    nvt_equilibration_time: float = 10.0
    #: null = the training runs' cutoff, nm (a smaller one only for boxes too small for it: tests)
    cutoff: float | None = None
    seed: int = 0
    #: OpenMM platform: auto (OpenCL if present, else CPU), CPU, CUDA, OpenCL, Reference
    platform: str = "auto"
    threads: int = 1


@dataclass
class ScreenConfig:
    """Root options of ``cgsim screen``."""

    #: an exported electrolyte model (its card names the training systems and their ranges)
    checkpoint: str = "data/checkpoints/electrolyte.pt"
    #: compositions to screen (module docstring); may be combined with eo_li/chain_length/n_chains
    compositions: list[CompositionConfig] = field(default_factory=list)
    #: one composition as top-level options (hydra multirun sweeps these)
    eo_li: float | None = None
    chain_length: int | None = None
    n_chains: int | None = None
    #: output directory: one sub-directory per composition, and the table over every composition in it
    output: str = MISSING
    #: learned-model time analysed per replica after the burn-in, ns
    time_ns: float = 20.0
    #: learned-model time discarded first (the slow relaxation the brief MD leaves), ns
    burn_in_ns: float = 2.0
    replicas: int = 4
    seed: int = 0
    #: screen compositions outside the model's training ranges (EO:Li, chain length; and, in the
    #: rollout, bond lengths and bead density beyond 2x), saying so, instead of refusing them
    allow_extrapolation: bool = False
    #: Li+ ... PEO-bead distance that counts as coordination, nm; null = the first minimum of the
    #: Li+ - PEO-bead g(r) of the training systems
    coordination_cutoff: float | None = None
    #: largest relative change of the mean Li+ coordination between the two halves of the analysed
    #: run that still counts as a plateau
    plateau_tolerance: float = 0.05
    #: diffusion / conductivity fit window, ps, over the analysed run; null = 10 % - 50 % of it
    fit_window: list[float] | None = None
    md: ScreenMDConfig = field(default_factory=ScreenMDConfig)
    #: torch threads of the rollout (null = torch's default)
    num_threads: int | None = None
    device: str = "cpu"
    progress: bool = True
    figures: bool = True


def register() -> None:
    """Put the schema into hydra's ConfigStore."""
    ConfigStore.instance().store(name="screen_schema", node=ScreenConfig)
