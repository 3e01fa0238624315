"""Streamed, atomic writing of trajectories in standard formats (mdtraj HDF5, XTC, DCD).

:class:`TrajectoryWriter` appends chunks of frames to a temporary file next to the target
and renames it over the target only when the ``with`` block ends without an error, so a
reader never sees a half-written trajectory and an interrupted run leaves nothing behind.
Positions and boxes are passed in nm and times in ps whatever the format stores.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import TracebackType

import mdtraj as md
import numpy as np

from cgsim.io_utils import atomic_path

#: Formats :class:`TrajectoryWriter` writes, by file suffix.
TRAJECTORY_FORMATS = ("h5", "xtc", "dcd")


def box_lengths_angles(box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box vectors (n_frames, 3, 3) -> lengths (n_frames, 3) and angles (n_frames, 3), degrees."""
    a, b, c, alpha, beta, gamma = md.utils.box_vectors_to_lengths_and_angles(box[:, 0], box[:, 1], box[:, 2])
    return np.stack([a, b, c], axis=1), np.stack([alpha, beta, gamma], axis=1)


class TrajectoryWriter:
    """Write frames chunk by chunk to ``path`` (format from its suffix), atomically.

    Parameters
    ----------
    path : path-like
        Target file; its suffix (``.h5``, ``.xtc``, ``.dcd``) picks the format.
    topology : mdtraj.Topology
        Topology of the frames (stored in HDF5 files).

    Examples
    --------
    >>> with TrajectoryWriter("beads.h5", top) as w:       # doctest: +SKIP
    ...     for xyz, time, box in chunks:
    ...         w.write(xyz, time, box)
    """

    def __init__(self, path: str | Path, topology: md.Topology) -> None:
        self.path = Path(path)
        self.format = self.path.suffix.lstrip(".").lower()
        if self.format not in TRAJECTORY_FORMATS:
            raise ValueError(f"cannot write {self.path.suffix!r} trajectories; expected one of {TRAJECTORY_FORMATS}")
        self.topology = topology
        self.n_frames = 0
        self._stack = contextlib.ExitStack()
        self._fh = None

    def __enter__(self) -> TrajectoryWriter:
        tmp = self._stack.enter_context(atomic_path(self.path))
        if self.format == "h5":
            fh = md.formats.HDF5TrajectoryFile(str(tmp), "w")
            fh.topology = self.topology
        elif self.format == "xtc":
            fh = md.formats.XTCTrajectoryFile(str(tmp), "w")
        else:
            fh = md.formats.DCDTrajectoryFile(str(tmp), "w")
        # the format's file is closed before atomic_path renames it (ExitStack is LIFO)
        self._fh = self._stack.enter_context(fh)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool | None:
        self._fh = None
        return self._stack.__exit__(exc_type, exc, tb)

    def write(self, xyz: np.ndarray, time: np.ndarray, box: np.ndarray | None = None) -> None:
        """Append frames.

        Parameters
        ----------
        xyz : numpy.ndarray
            Positions, nm, shape (n_frames, n_particles, 3).
        time : numpy.ndarray
            Times, ps, shape (n_frames,).
        box : numpy.ndarray, optional
            Box vectors as rows, nm, shape (n_frames, 3, 3).
        """
        if self._fh is None:
            raise RuntimeError("TrajectoryWriter.write outside its `with` block")
        xyz = np.asarray(xyz, dtype=np.float32)
        time = np.asarray(time, dtype=np.float64)
        if self.format == "h5":
            lengths = angles = None
            if box is not None:
                lengths, angles = box_lengths_angles(np.asarray(box, dtype=np.float64))
            self._fh.write(coordinates=xyz, time=time, cell_lengths=lengths, cell_angles=angles)
        elif self.format == "xtc":
            self._fh.write(xyz, time=time.astype(np.float32), box=None if box is None else np.asarray(box, dtype=np.float32))
        else:  # DCD stores Angstrom
            lengths = angles = None
            if box is not None:
                lengths, angles = box_lengths_angles(np.asarray(box, dtype=np.float64))
                lengths = lengths * 10.0
            self._fh.write(xyz * 10.0, cell_lengths=lengths, cell_angles=angles)
        self.n_frames += len(xyz)
