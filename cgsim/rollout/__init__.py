"""Rollouts of the learned simulator: the ``cgsim rollout`` verb and its engine.

:mod:`cgsim.rollout.engine` is the batched, guarded, resumable engine with hook points;
:mod:`cgsim.rollout.hooks` its guard, writer and progress hooks; :mod:`cgsim.rollout.limits` the
guard and exclusion limits scanned from the initial frames; :mod:`cgsim.rollout.command` the
verb. :func:`rollout_positions`, the plain inner loop training validation uses, lives in
:mod:`cgsim.model.sampling` (below both training and rollouts) and is re-exported here.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from cgsim.rollout.core import rollout_positions

__all__ = ["register_configs", "rollout_positions", "run"]


def register_configs() -> None:
    """Register the structured-config schema of ``conf/rollout.yaml``."""
    from cgsim.rollout.config import register

    register()


def run(cfg: DictConfig) -> dict[str, Any]:
    """Roll out as ``cfg`` says (see :func:`cgsim.rollout.command.rollout`)."""
    from cgsim.rollout.command import rollout

    return rollout(cfg)
