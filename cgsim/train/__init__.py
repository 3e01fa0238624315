"""The ``cgsim train`` verb: hydra configs -> :func:`cgsim.train.loop.train`."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def register_configs() -> None:
    """Register the structured-config schema of ``conf/train.yaml``."""
    from cgsim.train.config import register

    register()


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train as ``cfg`` says (see :func:`cgsim.train.loop.train`)."""
    from cgsim.train.loop import train

    return train(cfg)
