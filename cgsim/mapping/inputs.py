"""Opening what ``cgsim map`` maps: a topology plus a trajectory, streamed in chunks.

Two families of input:

- anything mdtraj reads (PDB, GRO, DCD, XTC, TRR, HDF5, NetCDF, ...), with a topology file
  (or none, for trajectories that carry one: HDF5, PDB, GRO);
- a LAMMPS dump with a LAMMPS data file as topology (:mod:`cgsim.io.lammps`).

A cgsim sidecar next to the trajectory (``NAME.json``, e.g. reference MD from
``cgsim generate``) is read for atom masses, atom charges (``extra.particle_charges``) and
system facts. Atom charges can also be given as a file (``charges=``, :mod:`cgsim.mapping.charges`):
they then replace those of the sidecar or of a LAMMPS data file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from struct import error as struct_error

import mdtraj as md
import numpy as np

from cgsim.errors import CgsimInputError
from cgsim.io.lammps import LAMMPS_UNITS, iter_dump, read_data
from cgsim.mapping.system import AtomSystem, system_from_lammps, system_from_topology
from cgsim.metadata import TrajectoryMetadata, read_sidecar, sidecar_path

log = logging.getLogger(__name__)

LAMMPS_DUMP_SUFFIXES = (".lammpstrj", ".dump", ".lammpsdump")
LAMMPS_DATA_SUFFIXES = (".data", ".lmp", ".lammps")
#: Formats whose frames carry no usable time.
_NO_TIME_SUFFIXES = (".dcd", ".pdb", ".gro", ".xyz")


def _suffix(path: str) -> str:
    p = Path(path)
    sfx = p.suffixes
    if sfx and sfx[-1] == ".gz" and len(sfx) > 1:
        return sfx[-2].lower()
    return p.suffix.lower()


@dataclass
class FrameChunk:
    """A chunk of input frames, atoms in topology order (after any selection).

    Attributes
    ----------
    xyz : numpy.ndarray
        Positions, nm, shape (n_frames, n_atoms, 3).
    box : numpy.ndarray or None
        Box vectors as rows, nm, shape (n_frames, 3, 3).
    time : numpy.ndarray or None
        Times, ps, shape (n_frames,), when the file knows them.
    images : numpy.ndarray or None
        Image flags, shape (n_frames, n_atoms, 3).
    unwrapped : bool
        The file declares the positions unwrapped.
    """

    xyz: np.ndarray
    box: np.ndarray | None
    time: np.ndarray | None
    images: np.ndarray | None = None
    unwrapped: bool = False

    @property
    def n_frames(self) -> int:
        """Frames in the chunk."""
        return int(len(self.xyz))


@dataclass
class MapInput:
    """An opened input: the atom system and how to stream its frames.

    Attributes
    ----------
    system : AtomSystem
        The (selected) atoms.
    trajectory : str
        Trajectory file.
    topology : str
        Topology file (the trajectory itself when it carries one).
    kind : {"mdtraj", "lammps"}
        Reader family.
    atoms : numpy.ndarray or None
        Selected atom indices of the full topology, or None for all.
    sidecar : TrajectoryMetadata or None
        cgsim metadata found next to the trajectory.
    md_timestep : float or None
        Fine MD time step, ps, when the input states it.
    lammps_units : str
        LAMMPS unit style (LAMMPS inputs).
    lammps_timestep : float or None
        LAMMPS time step in its unit style's time unit (gives times from step numbers).
    """

    system: AtomSystem
    trajectory: str
    topology: str
    kind: str
    atoms: np.ndarray | None = None
    sidecar: TrajectoryMetadata | None = None
    md_timestep: float | None = None
    lammps_units: str = "real"
    lammps_timestep: float | None = None
    _topology_obj: md.Topology | None = field(default=None, repr=False)
    _lammps_ids: np.ndarray | None = field(default=None, repr=False)
    _lammps_expected: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def n_frames_hint(self) -> int | None:
        """Number of frames in the file if cheap to know, else None."""
        if self.kind != "mdtraj" or _suffix(self.trajectory) in (".pdb", ".gro"):
            return None
        try:
            with md.open(self.trajectory) as fh:
                return int(len(fh))
        except Exception:  # noqa: BLE001 - a hint only
            return None

    def chunks(self, chunk: int = 100, stride: int = 1) -> Iterator[FrameChunk]:
        """Stream the frames (every ``stride``-th) in chunks of ``chunk`` frames."""
        if chunk <= 0:
            raise CgsimInputError("input.chunk", f"expected a positive number of frames, got {chunk}")
        if stride <= 0:
            raise CgsimInputError("input.stride", f"expected a positive stride, got {stride}")
        if self.kind == "lammps":
            yield from self._lammps_chunks(chunk, stride)
        else:
            yield from self._mdtraj_chunks(chunk, stride)

    def _lammps_chunks(self, chunk: int, stride: int) -> Iterator[FrameChunk]:
        tfac = LAMMPS_UNITS[self.lammps_units]["time"]
        for fr in iter_dump(self.trajectory, atom_ids=self._lammps_ids, chunk=chunk, stride=stride,
                            units=self.lammps_units, expected=self._lammps_expected):
            time = fr.times
            if time is None and self.lammps_timestep is not None:
                time = fr.steps * self.lammps_timestep * tfac
            sel = self.atoms
            xyz, images = fr.xyz, fr.images
            if sel is not None:
                xyz = xyz[:, sel]
                images = None if images is None else images[:, sel]
            yield FrameChunk(xyz=xyz, box=fr.box, time=time, images=images, unwrapped=fr.unwrapped)

    def _mdtraj_chunks(self, chunk: int, stride: int) -> Iterator[FrameChunk]:
        no_time = _suffix(self.trajectory) in _NO_TIME_SUFFIXES
        it = md.iterload(self.trajectory, chunk=chunk, top=self._topology_obj, stride=stride,
                         atom_indices=self.atoms)
        while True:
            try:
                traj = next(it)
            except StopIteration:
                return
            except CgsimInputError:
                raise
            except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CgsimInputError(self.trajectory, f"cannot be read with topology {self.topology} ({first[:200]})") from None
            if traj.n_frames == 0:
                return
            yield FrameChunk(xyz=traj.xyz, box=traj.unitcell_vectors, time=None if no_time else traj.time.astype(np.float64))


def dcd_frames(path: str) -> tuple[int, int, bool] | None:
    """Complete frames of a DCD file by its size, the frame count its header states, and
    whether it ends inside a frame; None when the layout is not the plain CHARMM/NAMD one
    (fixed atoms, 64-bit record markers) and the check is left to the reader."""
    import struct

    size = Path(path).stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(92)
        if len(head) < 8 or head[4:8] != b"CORD":
            return None  # not a plain DCD (or nothing of it): the reader says so
        for end in ("<", ">"):
            if struct.unpack(f"{end}i", head[:4])[0] == 84:
                break
        else:
            return None
        if len(head) < 92:
            return 0, 0, True
        icntrl = struct.unpack(f"{end}20i", head[8:88])
        nset, namnf, cell, four_d = icntrl[0], icntrl[8], icntrl[10], icntrl[11]
        if namnf != 0:
            return None
        fh.seek(92)
        raw = fh.read(4)
        if len(raw) < 4:
            return 0, nset, True
        (title_bytes,) = struct.unpack(f"{end}i", raw)
        if title_bytes < 0:
            return None
        fh.seek(92 + 4 + title_bytes + 4)
        raw = fh.read(12)
        if len(raw) < 12:
            return 0, nset, True
        marker, n_atoms, _ = struct.unpack(f"{end}3i", raw)
        if marker != 4 or n_atoms <= 0:
            return None
        header = 92 + 4 + title_bytes + 4 + 12
    frame = (56 if cell else 0) + (4 if four_d else 3) * (4 * n_atoms + 8)
    body = max(0, size - header)
    return body // frame, nset, body % frame != 0


def _check_dcd(path: str) -> None:
    """Refuse a truncated DCD file (as the XTC and HDF5 readers do), naming its last complete frame."""
    try:
        found = dcd_frames(path)
    except (OSError, struct_error):
        return  # the reader reports unreadable files
    if found is None:
        return
    complete, nset, partial = found
    if partial or nset > complete:
        last = f"the last complete frame is frame {complete - 1} (0-based)" if complete else "no frame is complete"
        stated = f", its header states {nset}" if nset > complete else ""
        raise CgsimInputError(path, f"DCD file is truncated: {complete} complete frame(s){stated} and "
                                    f"{'a partial one' if partial else 'no more data'}; {last}; expected a complete "
                                    "file (regenerate it, or cut it after its last complete frame)")


def _count_atoms(path: str) -> int | None:
    """Atoms per frame of a topology-less trajectory file (None if not cheap to tell)."""
    try:
        with md.open(path) as fh:
            first = fh.read(n_frames=1)
        xyz = first[0] if isinstance(first, tuple) else first
        return int(np.asarray(xyz).shape[1])
    except Exception:  # noqa: BLE001 - only a pre-check; the reader reports real problems
        return None


def _sidecar(trajectory: str) -> TrajectoryMetadata | None:
    if not sidecar_path(trajectory).is_file():
        return None
    try:
        return read_sidecar(trajectory)
    except CgsimInputError:
        log.warning("%s: ignoring a JSON file that is not a cgsim sidecar", sidecar_path(trajectory))
        return None


def _is_dump(trajectory: str, fmt: str) -> bool:
    from mdtraj.formats.registry import FormatRegistry

    sfx = _suffix(trajectory)
    return sfx in LAMMPS_DUMP_SUFFIXES or (fmt == "lammps" and sfx not in FormatRegistry.loaders)


def _is_data(topology: str | None, fmt: str) -> bool:
    return topology is not None and (fmt == "lammps" or _suffix(topology) in LAMMPS_DATA_SUFFIXES)


def _sidecar_charges(sidecar: TrajectoryMetadata | None, n_atoms: int) -> np.ndarray | None:
    """Atom charges (e, shape (n_atoms,)) a cgsim sidecar declares, if usable."""
    if sidecar is None or not isinstance(sidecar.extra, dict):
        return None
    values = sidecar.extra.get("particle_charges")
    if values is None:
        return None
    try:
        charges = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if charges.shape != (n_atoms,) or not np.isfinite(charges).all():
        return None
    return charges


def open_input(trajectory: str, topology: str | None = None, fmt: str = "auto", selection: str | None = None,
               lammps_units: str = "real", lammps_timestep: float | None = None,
               charges: str | None = None) -> MapInput:
    """Open a trajectory and its topology for mapping.

    Parameters
    ----------
    trajectory : str
        Trajectory file: an mdtraj format, or a LAMMPS text dump (``.lammpstrj``, ``.dump``,
        ``.lammpsdump``, optionally ``.gz``).
    topology : str, optional
        Topology file: an mdtraj format, or a LAMMPS data file (``.data``, ``.lmp``,
        ``.lammps``). May be omitted for trajectories that carry a topology (HDF5, PDB, GRO).
        A LAMMPS data file also serves trajectories in mdtraj formats (LAMMPS DCD/XTC output).
    fmt : {"auto", "mdtraj", "lammps"}
        ``auto`` decides from the suffixes; ``lammps`` reads the topology as a data file and
        the trajectory as a dump (unless it has an mdtraj suffix); ``mdtraj`` uses mdtraj only.
    selection : str, optional
        mdtraj selection of the atoms to map (e.g. ``"not resname HOH"``).
    lammps_units : {"real", "metal"}
        LAMMPS unit style.
    lammps_timestep : float, optional
        LAMMPS time step (fs for ``real``, ps for ``metal``).
    charges : str, optional
        File of atom charges, e, one per atom of the topology in its order (before any
        ``selection``; LAMMPS: ascending atom id): ``.npy``, ``.txt``/``.dat``/``.csv`` or an
        OpenMM System ``.xml`` (:func:`cgsim.mapping.charges.read_charges`). Replaces the
        charges of a LAMMPS data file or of a cgsim sidecar (logged). Without it, an mdtraj
        topology's atoms have unknown charges (zeros) unless the sidecar declares them.

    Raises
    ------
    CgsimInputError
        Missing files, unreadable topology, atom counts that differ, an empty selection,
        a bad charges file (missing, unreadable, wrong count, non-finite values).
    """
    _check_input_options(trajectory, topology, fmt, lammps_units, lammps_timestep, charges)
    if _suffix(trajectory) == ".dcd":
        _check_dcd(trajectory)
    dump = fmt != "mdtraj" and _is_dump(trajectory, fmt)
    data_file = fmt != "mdtraj" and _is_data(topology, fmt)
    sidecar = _sidecar(trajectory)
    md_timestep = None if lammps_timestep is None else lammps_timestep * LAMMPS_UNITS[lammps_units]["time"]

    if dump and not data_file:
        raise CgsimInputError("input.topology", f"a LAMMPS dump needs its LAMMPS data file as input.topology "
                                                f"(.data, .lmp, .lammps, or input.format=lammps), got {topology}")
    if data_file:
        data = read_data(str(topology), units=lammps_units)
        system = system_from_lammps(data, charges=charges)
        inp = MapInput(system=system, trajectory=trajectory, topology=str(topology), kind="lammps" if dump else "mdtraj",
                       sidecar=sidecar, lammps_units=lammps_units, lammps_timestep=lammps_timestep, md_timestep=md_timestep)
        inp._topology_obj = system.topology
        inp._lammps_ids = data.atom_ids
        inp._lammps_expected = {"type": data.types.astype(np.float64),
                                "mol": data.molecule_ids.astype(np.float64) if data.atom_style not in ("charge", "atomic") else None}
        n_top = system.n_atoms
    else:
        top_path = topology or trajectory
        try:
            top = md.load_topology(top_path)
        except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = "" if topology else "; pass input.topology=FILE (PDB, GRO, PSF, PRMTOP, HDF5 ...)"
            raise CgsimInputError(top_path, f"cannot read a topology ({msg[:160]}){hint}") from None
        masses = None
        if sidecar is not None and len(sidecar.system.particle_masses) == top.n_atoms:
            masses = np.asarray(sidecar.system.particle_masses, dtype=np.float64)
            md_timestep = sidecar.system.md_timestep
        side_charges = _sidecar_charges(sidecar, top.n_atoms)
        system = system_from_topology(top, masses=masses, charges=side_charges if charges is None else charges,
                                      source=top_path)
        if side_charges is not None:
            if charges is None:
                system.charges_source = str(sidecar_path(trajectory))
                log.info("%s: atom charges from its sidecar %s", trajectory, system.charges_source)
            else:
                log.info("%s: atom charges from %s replace those of its sidecar", trajectory, charges)
        inp = MapInput(system=system, trajectory=trajectory, topology=top_path, kind="mdtraj", sidecar=sidecar,
                       md_timestep=md_timestep)
        inp._topology_obj = top
        n_top = top.n_atoms
    if inp.kind == "mdtraj" and topology is not None:
        n_traj = _count_atoms(trajectory)
        if n_traj is not None and n_traj != n_top:
            raise CgsimInputError(trajectory, f"has {n_traj} atoms per frame but topology {topology} has {n_top}; "
                                              "expected the same atoms in the same order")

    if selection:
        _select(inp, selection)
    return inp


def _check_input_options(trajectory: str, topology: str | None, fmt: str, lammps_units: str,
                         lammps_timestep: float | None, charges: str | None) -> None:
    """One-line errors for :func:`open_input`'s options: format, files that exist, LAMMPS units."""
    if fmt not in ("auto", "mdtraj", "lammps"):
        raise CgsimInputError("input.format", f"unknown format {fmt!r}; expected auto, mdtraj or lammps")
    if not Path(trajectory).is_file():
        raise CgsimInputError(trajectory, "trajectory file not found")
    if topology is not None and not Path(topology).is_file():
        raise CgsimInputError(topology, "topology file not found")
    if charges is not None and not Path(charges).is_file():
        raise CgsimInputError(str(charges), "charges file not found")
    if lammps_units not in LAMMPS_UNITS:
        raise CgsimInputError("input.lammps_units", f"{lammps_units!r} is not supported; expected one of {sorted(LAMMPS_UNITS)}")
    if lammps_timestep is not None and not lammps_timestep > 0:
        raise CgsimInputError("input.lammps_timestep", f"expected a positive time step, got {lammps_timestep}")


def _select(inp: MapInput, selection: str) -> None:
    """Keep only the atoms ``selection`` (mdtraj syntax) picks of ``inp`` (in place)."""
    try:
        atoms = inp.system.topology.select(selection)
    except Exception as exc:  # noqa: BLE001 - mdtraj raises various errors for bad selections
        raise CgsimInputError("input.selection", f"{selection!r} is not a valid mdtraj selection "
                                                 f"({(str(exc).strip().splitlines() or [''])[0][:120]})") from None
    if len(atoms) == 0:
        raise CgsimInputError("input.selection", f"{selection!r} selects no atoms of {inp.topology}")
    inp.atoms = np.asarray(atoms, dtype=np.int64)
    inp.system = inp.system.subset(inp.atoms)
