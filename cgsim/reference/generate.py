"""The ``cgsim generate`` verb: reference MD of a system chosen by ``system=...``.

``run(cfg)`` dispatches on ``cfg.system.name`` to the system's generator; each generator is
a plain function ``(cfg) -> dict`` returning a summary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from cgsim.checks import required
from cgsim.errors import CgsimInputError
from cgsim.io_utils import check_output_directory
from cgsim.reference.platforms import select_platform


def _generators() -> dict[str, Callable[[DictConfig], dict[str, Any]]]:
    from cgsim.reference.chain_generate import generate_chains
    from cgsim.reference.electrolyte_generate import generate_electrolyte

    return {"chain": generate_chains, "electrolyte": generate_electrolyte}


def register_configs() -> None:
    """Register the structured-config schemas of ``conf/generate.yaml`` and ``conf/system/``."""
    from cgsim.reference.config import register

    register()


def run(cfg: DictConfig) -> dict[str, Any]:
    """Generate reference MD for ``cfg.system``; returns the generator's summary."""
    gens = _generators()
    required(cfg, ("output",), "generate")
    check_output_directory(cfg.output)
    select_platform(str(cfg.platform), cfg.threads)  # a platform or thread count that cannot run: before any file
    name = cfg.system.name
    if name not in gens:
        raise CgsimInputError("system.name", f"no generator for system {name!r}; expected one of {sorted(gens)}")
    return gens[name](cfg)
