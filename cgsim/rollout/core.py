"""The innermost rollout loop lives in :mod:`cgsim.model.sampling` (re-exported here).

:func:`rollout_positions` repeatedly samples the next positions of a batch of systems; training
validation uses it, so it sits in the model package, below both training and rollouts. The full
engine (hooks, writers, stability guard, resume) is :mod:`cgsim.rollout.engine`.
"""

from __future__ import annotations

from cgsim.model.sampling import rollout_positions

__all__ = ["rollout_positions"]
