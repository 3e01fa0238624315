"""What a rollout is made of and what it saves: members, their state, divergence limits.

:class:`Member` (one replica of one system) and :class:`RolloutState` (everything a rollout needs
to continue exactly, saved atomically by :func:`save_state` and read back by :func:`load_state`),
the per-member seeds (:func:`member_seed`), and what counts as a diverged member
(:class:`DivergenceLimits`, :func:`non_finite_members`). :mod:`cgsim.rollout.engine` advances them
and re-exports every name here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cgsim.errors import CgsimInputError
from cgsim.io_utils import atomic_path
from cgsim.model.batch import SystemGraph

STATE_FORMAT = "cgsim-rollout-state"
STATE_VERSION = 1

#: a member whose beads spread over more than this (nm, max - min of a coordinate) has diverged
#: (like non-finite coordinates; it also keeps the guard's cell list bounded)
MAX_SPREAD = 1e4


class Divergence(str):
    """A stop reason that means the member diverged (not a guard's stop): :meth:`RolloutEngine.run`
    records ``state.diverged`` for it."""


@dataclass(frozen=True)
class DivergenceLimits:
    """When a member counts as diverged, whatever the stability guard says.

    Attributes
    ----------
    max_bond : float
        Longest bond, nm (``inf``: not checked); ``cgsim rollout``: 3 x the longest bond in
        the scanned initial frames (:func:`cgsim.rollout.limits.divergence_limits`).
    max_size : float
        Largest molecule size, nm: the largest distance of a bead from its molecule's centre
        (``inf``: not checked; molecules of one bead are never checked).
    factor : float
        The factor of the initial frames' largest bond and molecule the limits are (for the reason text).
    """

    max_bond: float = math.inf
    max_size: float = math.inf
    factor: float = 3.0


def member_seed(seed: int, system: int, replica: int) -> int:
    """Seed of the noise generator of replica ``replica`` of system ``system`` (63-bit int)."""
    state = np.random.SeedSequence([int(seed), int(system), int(replica)]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


def non_finite_members(pos: torch.Tensor, member_of_bead: torch.Tensor, n_members: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which members of a batch hold a non-finite coordinate (NaN or infinity).

    Parameters
    ----------
    pos : torch.Tensor
        Positions of the batch, shape (N, 3).
    member_of_bead : torch.Tensor
        Member (0..n_members-1) of each bead, shape (N,), int64.
    n_members : int
        Members in the batch.

    Returns
    -------
    bad : torch.Tensor
        Shape (n_members,), bool: True for a member with any non-finite coordinate.
    finite : torch.Tensor
        Shape (N,), bool: True for a bead whose three coordinates are finite.
    """
    finite = torch.isfinite(pos).all(1)
    bad = torch.zeros(n_members, device=pos.device, dtype=pos.dtype).index_add_(0, member_of_bead, (~finite).to(pos.dtype)) > 0
    return bad, finite


@dataclass
class Member:
    """One replica of one system.

    Attributes
    ----------
    system : int
        Index of the system (initial trajectory) it starts from.
    replica : int
        Replica index within that system.
    name : str
        Label used for output paths, e.g. ``"seq_000/replica_001"``.
    graph : SystemGraph
        Topology (shared by the replicas of a system).
    seed : int
        Seed of its noise generator (see :func:`member_seed`).
    """

    system: int
    replica: int
    name: str
    graph: SystemGraph
    seed: int

    @property
    def n_beads(self) -> int:
        """Number of beads."""
        return int(self.graph.n_beads)


@dataclass
class RolloutState:
    """Everything a rollout needs to continue exactly; saved in its checkpoints.

    Attributes
    ----------
    pos : torch.Tensor
        Position history of all members (active and stopped), shape (N, H, 3), nm,
        unwrapped, members in order; ``pos[:, -1]`` is the current frame.
    step : int
        Learned steps done (0 = the initial frame).
    rng_states : list of torch.Tensor
        State of each member's noise generator (uint8 tensors, on the CPU).
    stop_step : list of int
        Step at which each member was stopped (its last committed step is ``stop_step - 1``),
        -1 while it runs.
    stop_reason : list of str
        Why each member was stopped ("" while it runs).
    frames_written : list of int
        Frames of each member committed to its trajectory files.
    wall_seconds : float
        Wall time spent stepping so far (over all resumes).
    redraws : list of int
        Steps of each member sampled again because a draw failed a check (see ``max_redraws``).
    diverged : list of bool
        Whether each stopped member diverged (non-finite or exploding coordinates, see
        :class:`DivergenceLimits`) rather than being stopped by a guard.
    extra : dict
        Whatever the command stores with the state (the config, checked on resume).
    """

    pos: torch.Tensor
    step: int
    rng_states: list[torch.Tensor]
    stop_step: list[int]
    stop_reason: list[str]
    frames_written: list[int]
    wall_seconds: float = 0.0
    redraws: list[int] = field(default_factory=list)
    diverged: list[bool] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.redraws:  # states saved before redraws existed
            self.redraws = [0] * len(self.stop_step)
        if not self.diverged:  # states saved before divergence was told apart
            self.diverged = [False] * len(self.stop_step)

    def status(self, m: int) -> str:
        """``running``, ``stopped`` (by a guard) or ``diverged`` for member ``m``."""
        if self.stop_step[m] < 0:
            return "running"
        return "diverged" if self.diverged[m] else "stopped"

    @property
    def active(self) -> list[int]:
        """Indices of the members still running."""
        return [m for m, s in enumerate(self.stop_step) if s < 0]

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for ``torch.save`` (tensors on the CPU)."""
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "pos": self.pos.detach().cpu(), "step": self.step,
                "rng_states": [s.cpu() for s in self.rng_states], "stop_step": list(self.stop_step),
                "stop_reason": list(self.stop_reason), "frames_written": list(self.frames_written),
                "wall_seconds": self.wall_seconds, "redraws": list(self.redraws), "diverged": list(self.diverged),
                "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> RolloutState:
        """Inverse of :meth:`to_dict`; raises :class:`CgsimInputError` for another file."""
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise CgsimInputError(where, f"field 'format' is not {STATE_FORMAT!r}; not a cgsim rollout state")
        if data.get("version") != STATE_VERSION:
            raise CgsimInputError(where, f"rollout state version {data.get('version')} is not supported (expected {STATE_VERSION})")
        body = {k: v for k, v in data.items() if k not in ("format", "version")}
        return cls(**body)


def save_state(path: str | Path, state: RolloutState) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state.to_dict(), tmp)
    return path


def load_state(path: str | Path) -> RolloutState:
    """Read a rollout state written by :func:`save_state`.

    Raises
    ------
    CgsimInputError
        If the file is missing, truncated or not a rollout state.
    """
    path = Path(path)
    if not path.is_file():
        raise CgsimInputError(str(path), "rollout state not found; nothing to resume")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise CgsimInputError(str(path), f"not a readable rollout state (truncated or another format: {type(exc).__name__})") from None
    return RolloutState.from_dict(data, str(path))
