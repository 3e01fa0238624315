"""Rollouts of the learned simulator."""

from cgsim.rollout.core import rollout_positions

__all__ = ["rollout_positions"]
