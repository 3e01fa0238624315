"""Datasets of bead trajectories: windows of history -> next frame."""

from cgsim.data.windows import BeadTrajectory, WindowBatch, WindowCollator, WindowDataset

__all__ = ["BeadTrajectory", "WindowBatch", "WindowCollator", "WindowDataset"]
