"""Shared fixtures: compose cgsim's hydra configs at tiny sizes without running hydra's app."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cgsim.cli import conf_dir, load_verb


@pytest.fixture
def compose_cfg() -> Callable[..., DictConfig]:
    """``compose_cfg(verb, overrides)`` -> the composed root config of ``verb``."""

    def _compose(verb: str, overrides: list[str] | None = None) -> DictConfig:
        load_verb(verb)  # registers the verb's schemas
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose(config_name=verb, overrides=list(overrides or []))

    return _compose


def tiny_chain_overrides(out, **kw) -> list[str]:
    """Overrides for a chain run of a few seconds."""
    base = {
        "output": str(out),
        "system.n_chains": 3,
        "system.n_monomers": "[8,12]",
        "system.equilibration_time": 5.0,
        "system.production_time": 50.0,
        "system.save_interval": 5.0,
        "frames_per_chunk": 3,
        "progress": False,
    }
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    """Tests use tiny tensors: one thread is faster and immune to oversubscription on 2 cores."""
    import torch

    torch.set_num_threads(1)
    yield
