"""Training windows cut lazily from bead trajectories.

A *window* is ``history`` frames spaced ``stride`` recorded frames apart (the model's input)
plus the frame ``stride`` recorded frames after the last of them (the target). The learned
time step is ``stride x save_interval``. Windows are views into the stored arrays: nothing is
copied until a batch is assembled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cgsim.errors import CgsimInputError
from cgsim.model.batch import BeadBatch, SystemGraph, collate


@dataclass
class BeadTrajectory:
    """One system's bead trajectory and topology.

    Attributes
    ----------
    name : str
        Identifier (file stem), used in errors and splits.
    graph : SystemGraph
        Topology for the model.
    positions : numpy.ndarray
        Bead positions, shape (n_frames, n_beads, 3), float32, nm, unwrapped.
    save_interval : float
        Time between frames, ps.
    """

    name: str
    graph: SystemGraph
    positions: np.ndarray
    save_interval: float

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return int(self.positions.shape[0])


def window_frames(start: int, history: int, stride: int, target: bool = False) -> np.ndarray:
    """Frame indices of ``history`` frames ``stride`` recorded frames apart, the first at ``start``.

    This is the one place that spaces a model's input frames: training windows, the histories
    that validation rollouts and ``cgsim rollout`` start from all take their frames here. With
    ``target`` the frame ``stride`` after the last input frame is appended (shape (H+1,), else (H,)).
    """
    return int(start) + int(stride) * np.arange(int(history) + int(bool(target)))


def history_positions(traj: BeadTrajectory, history: int, stride: int, start: int | None = None) -> torch.Tensor:
    """``history`` frames ``stride`` apart (:func:`window_frames`), shape (n_beads, history, 3), nm.

    Parameters
    ----------
    traj : BeadTrajectory
        The trajectory.
    history, stride : int
        Frames, and recorded frames between two of them.
    start : int, optional
        First frame; ``None``: the last ``history`` frames (the latest history, which a rollout
        continues from).

    Raises
    ------
    CgsimInputError
        If the trajectory has fewer than ``(history - 1) * stride + 1`` frames from ``start``.
    """
    need = (history - 1) * stride + 1
    first = traj.n_frames - need if start is None else int(start)
    if first < 0 or first + need > traj.n_frames:
        raise CgsimInputError(traj.name, f"trajectory has {traj.n_frames} frames; the model needs a history of {history} "
                                         f"frames {stride} apart ({need} frames)")
    frames = traj.positions[window_frames(first, history, stride)]
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(1, 0, 2)))


class WindowDataset(torch.utils.data.Dataset):
    """All windows of ``history`` + 1 frames, ``stride`` frames apart, over many trajectories.

    Parameters
    ----------
    trajectories : sequence of BeadTrajectory
        The systems (a split: never share a trajectory between train and test).
    history : int
        Frames of input H (>= 2).
    stride : int
        Recorded frames per learned step (>= 1).
    window_step : int
        Start a window every ``window_step`` frames (1 = every frame).

    Raises
    ------
    CgsimInputError
        If ``stride`` or ``history`` is not positive, or a trajectory is shorter than one
        window (``(history) * stride + 1`` frames).
    """

    def __init__(self, trajectories: Sequence[BeadTrajectory], history: int, stride: int, window_step: int = 1) -> None:
        if int(stride) < 1:
            raise CgsimInputError("data.stride", f"expected a stride of at least 1 recorded frame, got {stride}")
        if int(history) < 2:
            raise CgsimInputError("data.history", f"expected a history of at least 2 frames, got {history}")
        if int(window_step) < 1:
            raise CgsimInputError("data.window_step", f"expected at least 1, got {window_step}")
        self.trajectories = list(trajectories)
        self.history, self.stride = int(history), int(stride)
        span = self.history * self.stride + 1  # frames covered by one window incl. target
        index = []
        for k, traj in enumerate(self.trajectories):
            if traj.n_frames < span:
                raise CgsimInputError(traj.name, f"trajectory has {traj.n_frames} frames; a window of history "
                                                 f"{self.history} x stride {self.stride} needs {span}")
            starts = np.arange(0, traj.n_frames - span + 1, int(window_step))
            index.append(np.stack([np.full_like(starts, k), starts], axis=1))
        self.index = np.concatenate(index) if index else np.zeros((0, 2), dtype=np.int64)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def frames(self, i: int) -> np.ndarray:
        """Frame indices of window ``i``: H inputs then the target, shape (H+1,)."""
        _, start = self.index[i]
        return window_frames(start, self.history, self.stride, target=True)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        """(trajectory index, positions (n_beads, H+1, 3) float32 nm)."""
        k, _ = self.index[i]
        window = self.trajectories[k].positions[self.frames(i)]  # (H+1, n, 3)
        return int(k), torch.from_numpy(np.ascontiguousarray(window.transpose(1, 0, 2)))

    def sample_windows(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """Positions of ``n`` random windows stacked over beads: (sum n_beads, H+1, 3)."""
        picks = rng.choice(len(self), size=min(n, len(self)), replace=False)
        return torch.cat([self[int(i)][1] for i in picks])


@dataclass
class WindowBatch:
    """A training batch: the model input and the true next positions (N, 3), nm."""

    inputs: BeadBatch
    target: torch.Tensor

    def to(self, device: torch.device | str) -> WindowBatch:
        """Copy to ``device``."""
        return WindowBatch(self.inputs.to(device), self.target.to(device))


def random_symmetry(box: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random exact symmetry of a system's dynamics, as a 3x3 orthogonal matrix.

    Classical MD is invariant under rotations and reflections of the whole system, so a window
    transformed by one is an equally valid training example. Without a box any orthogonal
    matrix qualifies (drawn uniformly from O(3): Haar rotation, reflected with probability 1/2).
    With an orthorhombic box only the symmetries of the lattice do: axis sign flips, and
    permutations of axes of equal length (all 48 for a cubic box, 8 for three different edges).

    Parameters
    ----------
    box : torch.Tensor or None
        Box lengths, shape (3,), nm; ``None`` if not periodic.
    generator : torch.Generator, optional
        Source of randomness.

    Returns
    -------
    torch.Tensor
        Orthogonal matrix R, shape (3, 3), float32; apply as ``x @ R.T``.
    """
    if box is None:
        q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))  # Haar-uniform rotation-or-reflection (Mezzadri 2007)
        if torch.det(q) < 0:
            q[:, 0] = -q[:, 0]
        if float(torch.rand((), generator=generator)) < 0.5:
            q = -q
        return q.to(torch.float32)
    lengths = box.to(torch.float64)
    perms = [p for p in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
             if torch.allclose(lengths[list(p)], lengths, rtol=1e-6, atol=0.0)]
    perm = perms[int(torch.randint(len(perms), (), generator=generator))]
    signs = torch.randint(2, (3,), generator=generator).to(torch.float32) * 2.0 - 1.0
    return torch.eye(3)[list(perm)] * signs[:, None]


class WindowCollator:
    """Collate ``(trajectory index, window)`` items of a :class:`WindowDataset` into a batch.

    Parameters
    ----------
    trajectories : sequence of BeadTrajectory
        The dataset's trajectories (for their topologies).
    noise_std : sequence of float
        Input-noise augmentation: each window gets Gaussian noise of one of these stds
        (nm, chosen uniformly) added to its input frames, not to the target (as in the method:
        it teaches the model to correct its own errors). Empty or ``[0]`` = none.
    generator : torch.Generator, optional
        Source of the noise (and of the symmetries).
    symmetries : bool
        Transform each window (inputs and target together) by a random exact symmetry of its
        system (:func:`random_symmetry`): data augmentation for a network that is not
        equivariant by construction.
    """

    def __init__(self, trajectories: Sequence[BeadTrajectory], noise_std: Sequence[float] = (),
                 generator: torch.Generator | None = None, symmetries: bool = False) -> None:
        self.graphs = [t.graph for t in trajectories]
        self.noise_std = [float(s) for s in noise_std]
        self.generator = generator
        self.symmetries = bool(symmetries)

    def __call__(self, items: Sequence[tuple[int, torch.Tensor]]) -> WindowBatch:
        graphs = [self.graphs[k] for k, _ in items]
        inputs, targets = [], []
        for (_, w), graph in zip(items, graphs, strict=True):
            w = w.to(torch.float32)
            if self.symmetries:
                w = w @ random_symmetry(graph.box, self.generator).T
            x = w[:, :-1]
            if self.noise_std and max(self.noise_std) > 0:
                pick = int(torch.randint(len(self.noise_std), (1,), generator=self.generator))
                x = x + self.noise_std[pick] * torch.randn(x.shape, generator=self.generator)
            inputs.append(x)
            targets.append(w[:, -1])
        return WindowBatch(collate(graphs, inputs), torch.cat(targets))
