"""LAMMPS text dump files (frames), streamed in chunks and read into MD units.

:func:`iter_dump` reads ``dump atom`` / ``dump custom`` files, optionally gzipped; the accepted
columns, boxes and unit styles are described in :mod:`cgsim.io.lammps`, which re-exports the
public names.
"""

from __future__ import annotations

import gzip
import io
import itertools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from cgsim.errors import CgsimInputError
from cgsim.io.lammps_data import _units, box_from_bounds

#: Coordinate column sets of a dump, in order of preference, and whether they are unwrapped.
_COORDINATE_SETS: tuple[tuple[tuple[str, str, str], bool, bool], ...] = (
    # (columns, unwrapped, scaled)
    (("xu", "yu", "zu"), True, False),
    (("xsu", "ysu", "zsu"), True, True),
    (("x", "y", "z"), False, False),
    (("xs", "ys", "zs"), False, True),
)


def _dump_bounds_to_lo_hi(bounds: np.ndarray, triclinic: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Dump ``BOX BOUNDS`` rows -> (lo, hi, tilt). Dumps give the bounding box of a triclinic
    cell; LAMMPS's documented relations give back the cell's own lo/hi."""
    lo_b, hi_b = bounds[:, 0].copy(), bounds[:, 1].copy()
    if not triclinic:
        return lo_b, hi_b, None
    xy, xz, yz = bounds[:, 2]
    lo = np.array([lo_b[0] - min(0.0, xy, xz, xy + xz), lo_b[1] - min(0.0, yz), lo_b[2]])
    hi = np.array([hi_b[0] - max(0.0, xy, xz, xy + xz), hi_b[1] - max(0.0, yz), hi_b[2]])
    return lo, hi, np.array([xy, xz, yz])



@dataclass
class DumpFrames:
    """A chunk of frames from a LAMMPS dump, atoms sorted by id, in MD units.

    Attributes
    ----------
    steps : numpy.ndarray
        MD step of each frame, shape (n_frames,), int64.
    times : numpy.ndarray or None
        Time of each frame, ps, shape (n_frames,), when the dump carries ``ITEM: TIME``.
    xyz : numpy.ndarray
        Positions, nm, shape (n_frames, n_atoms, 3), float64.
    box : numpy.ndarray or None
        Box vectors as rows, nm, shape (n_frames, 3, 3); None for a non-periodic box.
    images : numpy.ndarray or None
        Image flags, shape (n_frames, n_atoms, 3), int64: read from ``ix iy iz`` with wrapped
        coordinates, or, with unwrapped ones in a periodic box, those they hold (the cell of
        each position, counted from the box origin): mapping needs them to unwrap an NPT run
        without bias (:class:`cgsim.mapping.pbc.ImageUnwrapper`).
    unwrapped : bool
        True when ``xyz`` are LAMMPS unwrapped coordinates (``xu``/``xsu`` columns).
    columns : tuple[str, ...]
        The dump's column names.
    """

    steps: np.ndarray
    times: np.ndarray | None
    xyz: np.ndarray
    box: np.ndarray | None
    images: np.ndarray | None
    unwrapped: bool
    columns: tuple[str, ...]

    @property
    def n_frames(self) -> int:
        """Number of frames in the chunk."""
        return int(len(self.steps))


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"))
    return open(path)  # noqa: SIM115 - closed by the caller's context


class _DumpReader:
    """Frame-by-frame parser of a dump file (tracks line numbers for messages)."""

    def __init__(self, path: Path, fh: IO[str]) -> None:
        self.path = path
        self.where = str(path)
        self.fh = fh
        self.lineno = 0

    def _line(self) -> str:
        line = self.fh.readline()
        if not line:
            raise CgsimInputError(self.where, f"ends in the middle of a frame (after line {self.lineno}); the file is truncated")
        self.lineno += 1
        return line

    def _item(self, expected: str) -> str:
        line = self._line().strip()
        if not line.startswith(f"ITEM: {expected}"):
            raise CgsimInputError(f"{self.where}:{self.lineno}", f"expected 'ITEM: {expected}', found {line[:60]!r}; is this a LAMMPS text dump?")
        return line

    def read_frame(self, parse: bool = True) -> dict | None:
        """Parse the next frame (or with ``parse=False`` only skip over it); None at the end of the file."""
        first = self.fh.readline()
        while first and not first.strip():
            self.lineno += 1
            first = self.fh.readline()
        if not first:
            return None
        self.lineno += 1
        if not first.startswith("ITEM: TIMESTEP"):
            raise CgsimInputError(f"{self.where}:{self.lineno}", f"expected 'ITEM: TIMESTEP', found {first.strip()[:60]!r}; is this a LAMMPS text dump?")
        step = int(self._line().split()[0])
        time = None
        item = self._line().strip()
        while not item.startswith("ITEM: NUMBER OF ATOMS"):
            if item.startswith("ITEM: TIME"):
                time = float(self._line().split()[0])
            elif item.startswith("ITEM: UNITS"):
                self._line()
            else:
                raise CgsimInputError(f"{self.where}:{self.lineno}", f"unexpected {item[:60]!r}; expected 'ITEM: NUMBER OF ATOMS'")
            item = self._line().strip()
        n = int(self._line().split()[0])
        box_line = self._item("BOX BOUNDS")
        flags = box_line.split()[3:]
        if flags[:2] == ["abc", "origin"]:
            raise CgsimInputError(f"{self.where}:{self.lineno}", "general triclinic box ('BOX BOUNDS abc origin') is not supported; "
                                                                   "expected an orthorhombic or restricted triclinic (xy xz yz) box")
        triclinic = flags[:3] == ["xy", "xz", "yz"]
        bflags = flags[3:] if triclinic else flags
        bounds = np.array([[float(t) for t in self._line().split()[: 3 if triclinic else 2]] for _ in range(3)])
        periodic = [f == "pp" for f in bflags]
        if len(bflags) == 3 and not all(periodic) and any(periodic):
            raise CgsimInputError(f"{self.where}:{self.lineno}", f"box is periodic in some directions only ({' '.join(bflags)}); "
                                                                   "expected 'pp pp pp' or a non-periodic box")
        columns = tuple(self._item("ATOMS").split()[2:])
        lines = list(itertools.islice(self.fh, n))
        if len(lines) < n:
            raise CgsimInputError(self.where, f"frame at step {step} has {len(lines)} of {n} atom lines; the file is truncated")
        self.lineno += n
        if not parse:
            return {"step": step, "skipped": True}
        ncol = len(columns)
        text = "".join(lines)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = np.fromstring(text, sep=" ")
        if values.size == n * ncol:
            table = values.reshape(n, ncol)
        else:  # non-numeric columns (element names, labels): parse as tokens
            tokens = text.split()
            if len(tokens) != n * ncol:
                raise CgsimInputError(self.where, f"frame at step {step}: {len(tokens)} values for {n} atoms x {ncol} columns")
            table = np.array(tokens, dtype=object).reshape(n, ncol)
        lo, hi, tilt = _dump_bounds_to_lo_hi(bounds, triclinic)
        box, origin = box_from_bounds(lo, hi, tilt)
        return {"step": step, "time": time, "n": n, "columns": columns, "table": table,
                "box": box if all(periodic) else None, "full_box": box, "origin": origin}


def _column_plan(columns: tuple[str, ...], where: str) -> tuple[tuple[str, str, str], bool, bool, bool]:
    if "id" not in columns:
        raise CgsimInputError(where, f"dump has no 'id' column (columns: {' '.join(columns)}); expected 'dump custom' with id")
    for cset, unwrapped, scaled in _COORDINATE_SETS:
        if all(c in columns for c in cset):
            images = (not unwrapped) and all(c in columns for c in ("ix", "iy", "iz"))
            return cset, unwrapped, scaled, images
    raise CgsimInputError(where, f"dump has no coordinate columns (columns: {' '.join(columns)}); "
                                 "expected x y z, xu yu zu, xs ys zs or xsu ysu zsu")


def iter_dump(path: str | Path, atom_ids: np.ndarray | None = None, chunk: int = 100, stride: int = 1,
              units: str = "real", expected: dict[str, np.ndarray] | None = None) -> Iterator[DumpFrames]:
    """Stream a LAMMPS text dump in chunks of frames.

    Parameters
    ----------
    path : path-like
        The dump (``.lammpstrj``, ``.dump``; ``.gz`` is decompressed on the fly).
    atom_ids : numpy.ndarray, optional
        The atom ids the frames must hold (ascending, shape (n_atoms,)), e.g. a data file's.
    chunk : int
        Frames per yielded chunk.
    stride : int
        Keep every ``stride``-th frame.
    units : {"real", "metal"}
        LAMMPS unit style of the dump.
    expected : dict, optional
        Per-atom columns to cross-check, e.g. ``{"type": data.types, "mol": data.molecule_ids}``,
        each of shape (n_atoms,) in ``atom_ids`` order; a disagreement is an error.

    Yields
    ------
    DumpFrames
        Up to ``chunk`` frames each, atoms sorted by id.

    Raises
    ------
    CgsimInputError
        Missing file or columns, atom ids that differ from ``atom_ids``, non-finite coordinates,
        unsupported box, truncated frame.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise CgsimInputError(where, "LAMMPS dump file not found")
    if chunk <= 0 or stride <= 0:
        raise CgsimInputError("input.chunk", f"chunk and stride must be positive, got {chunk} and {stride}")
    fac = _units(units, "input.lammps_units")
    with _open_text(path) as fh:
        reader = _DumpReader(path, fh)
        buf: list[dict] = []
        index = 0
        plan = None
        while True:
            keep = index % stride == 0
            frame = reader.read_frame(parse=keep)
            if frame is None:
                break
            index += 1
            if not keep:
                continue
            if plan is None or frame["columns"] != plan[0]:
                plan = (frame["columns"], *_column_plan(frame["columns"], where))
            buf.append(_frame_arrays(frame, plan, atom_ids, expected, where, fac))
            if len(buf) == chunk:
                yield _stack(buf, where)
                buf = []
        if buf:
            yield _stack(buf, where)


def _frame_arrays(frame: dict, plan: tuple, atom_ids: np.ndarray | None, expected: dict[str, np.ndarray] | None,
                  where: str, fac: dict[str, float]) -> dict:
    columns, cset, unwrapped, scaled, has_images = plan
    col = {c: i for i, c in enumerate(columns)}
    table = frame["table"]
    step = frame["step"]
    try:
        ids = table[:, col["id"]].astype(np.float64).astype(np.int64)
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        xyz = table[order][:, [col[c] for c in cset]].astype(np.float64)
    except (TypeError, ValueError):
        raise CgsimInputError(where, f"frame at step {step}: non-numeric id or coordinate values") from None
    if atom_ids is not None and (len(ids) != len(atom_ids) or not np.array_equal(ids, atom_ids)):
        if len(ids) != len(atom_ids):
            raise CgsimInputError(where, f"frame at step {step} has {len(ids)} atoms but the topology has {len(atom_ids)}; "
                                         "expected a dump of all atoms of the data file")
        raise CgsimInputError(where, f"frame at step {step} has atom ids that are not those of the topology; expected the same atoms")
    if not np.isfinite(xyz).all():
        bad = int(np.argwhere(~np.isfinite(xyz).all(axis=1))[0, 0])
        raise CgsimInputError(where, f"frame at step {step}: non-finite coordinates for atom id {ids[bad]}")
    if expected:
        for name, values in expected.items():
            if name in col and values is not None:
                got = table[order][:, col[name]].astype(np.float64)
                diff = ~np.isclose(got, values)
                if diff.any():
                    k = int(np.argwhere(diff)[0, 0])
                    raise CgsimInputError(where, f"column '{name}' of atom id {ids[k]} is {got[k]:g} but the topology says "
                                                 f"{values[k]:g}; the dump and the topology describe different systems")
    box, origin = frame["full_box"], frame["origin"]
    if scaled:
        xyz = origin + xyz @ box
    images = None
    if has_images:
        images = table[order][:, [col["ix"], col["iy"], col["iz"]]].astype(np.float64).astype(np.int64)
    elif unwrapped and frame["box"] is not None:
        images = np.floor((xyz - origin) @ np.linalg.inv(box)).astype(np.int64)
    length = fac["length"]
    time = frame["time"] * fac["time"] if frame["time"] is not None else None
    return {"step": step, "time": time, "xyz": xyz * length,
            "box": frame["box"] * length if frame["box"] is not None else None,
            "images": images, "unwrapped": unwrapped, "columns": columns}


def _stack(frames: list[dict], where: str) -> DumpFrames:
    boxes = [f["box"] for f in frames]
    if any(b is None for b in boxes) and not all(b is None for b in boxes):
        raise CgsimInputError(where, "some frames have a periodic box and others not")
    has_img = [f["images"] is not None for f in frames]
    times = [f["time"] for f in frames]
    return DumpFrames(
        steps=np.array([f["step"] for f in frames], dtype=np.int64),
        times=np.array(times, dtype=np.float64) if all(t is not None for t in times) else None,
        xyz=np.stack([f["xyz"] for f in frames]),
        box=None if boxes[0] is None else np.stack(boxes),
        images=np.stack([f["images"] for f in frames]) if all(has_img) else None,
        unwrapped=bool(frames[0]["unwrapped"]),
        columns=frames[0]["columns"],
    )
