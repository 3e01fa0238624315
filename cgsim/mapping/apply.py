"""Applying a mapping to frames: atoms -> beads, molecules whole, continuous in time.

:class:`BeadMapper` maps chunks of frames one after the other with memory that does not grow
with the trajectory (its only state is one position per unit root). For each chunk it

1. gets unwrapped atom positions, by one of the ``pbc`` modes:

   ``images``  wrapped positions plus image flags times the box (LAMMPS ``ix iy iz``), or
               positions the input declares unwrapped (LAMMPS ``xu yu zu``), used as they are
               while the box stays the same; when it changes (NPT) each box crossing counts
               with the box of its frame (:class:`cgsim.mapping.pbc.ImageUnwrapper`, the
               scheme of von Bulow, Bullerjahn & Hummer 2020), which ``w + n L`` would bias;
   ``bonds``   units made whole along bonds and continuous in time by minimum-image
               displacements between frames (:mod:`cgsim.mapping.pbc`; unbiased under NPT);
   ``none``    positions used as they are (non-periodic input, or input already unwrapped);
   ``auto``    ``images`` when the input has them, else ``bonds`` when there is a box, else
               ``none``;

2. averages each bead's atoms with the mapping's weights, as one sparse matrix product.
"""

from __future__ import annotations

import logging

import mdtraj as md
import numpy as np

from cgsim.errors import CgsimInputError
from cgsim.mapping.core import CGMapping
from cgsim.mapping.pbc import ImageUnwrapper, Unwrapper, unwrap_plan
from cgsim.mapping.system import PDB_STANDARD_RESIDUES, topology_bonds

log = logging.getLogger(__name__)

PBC_MODES = ("auto", "images", "bonds", "none")


def bead_topology(mapping: CGMapping) -> md.Topology:
    """The coarse-grained topology of a mapping.

    One chain; one residue per molecule (named after the molecule, numbered from 1); one
    atom per bead named after the bead, with the virtual-site element; bead bonds. PDB files
    written from it carry the bonds as CONECT records and open in VMD and mdtraj.
    """
    top = md.Topology()
    chain = top.add_chain()
    atoms = []
    residue = None
    prev = -1
    for b in range(mapping.n_beads):
        m = int(mapping.bead_molecule[b])
        if m != prev:
            name = mapping.molecule_names[m][:4]
            if name.upper() in PDB_STANDARD_RESIDUES:  # mdtraj writes no CONECT for these
                name = f"M{name[:3]}"
            residue = top.add_residue(name, chain, resSeq=m + 1)
            prev = m
        atoms.append(top.add_atom(mapping.bead_names[b], md.element.virtual, residue))
    for i, j in mapping.bonds:
        top.add_bond(atoms[int(i)], atoms[int(j)])
    return top


def clean_box(box: np.ndarray | None, where: str = "trajectory", first_frame: int = 0,
              n_frames: int | None = None) -> np.ndarray | None:
    """Check box vectors (n_frames, 3, 3), nm; an all-zero box means "not periodic" -> None.

    Raises
    ------
    CgsimInputError
        Wrong shape, non-finite values, or some (not all) frames with a zero-volume box.
    """
    if box is None:
        return None
    box = np.asarray(box, dtype=np.float64)
    if box.ndim != 3 or box.shape[1:] != (3, 3) or (n_frames is not None and len(box) != n_frames):
        raise CgsimInputError(where, f"box has shape {box.shape}; expected ({n_frames or 'n_frames'}, 3, 3)")
    if not np.isfinite(box).all():
        raise CgsimInputError(where, f"non-finite box vectors in frames {first_frame}..{first_frame + len(box) - 1}")
    flat = np.abs(np.linalg.det(box)) <= 1e-12
    if flat.all():  # e.g. PDB without CRYST1
        return None
    if flat.any():
        raise CgsimInputError(where, f"frame {first_frame + int(np.flatnonzero(flat)[0])}: box has zero volume")
    return box


class BeadMapper:
    """Map chunks of atom frames to bead frames (see the module docstring).

    Parameters
    ----------
    mapping : CGMapping
        The mapping.
    bonds : numpy.ndarray
        Atom bonds of the fine topology, shape (n_bonds, 2); may be empty.
    pbc : {"auto", "images", "bonds", "none"}
        How to get unwrapped positions.
    where : str
        The trajectory file, named in errors.
    """

    def __init__(self, mapping: CGMapping, bonds: np.ndarray, pbc: str = "auto", where: str = "trajectory") -> None:
        if pbc not in PBC_MODES:
            raise CgsimInputError("pbc", f"unknown mode {pbc!r}; expected one of {PBC_MODES}")
        mapping.validate()
        self.mapping = mapping
        self.pbc = pbc
        self.where = where
        self.matrix = mapping.matrix()
        self.bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
        self.mode: str | None = None  # the mode in use, fixed by the first chunk
        self.frames_done = 0
        self._unwrapper: Unwrapper | None = None
        self._images = ImageUnwrapper()

    @property
    def n_atoms(self) -> int:
        """Number of atoms per input frame."""
        return self.mapping.n_atoms

    def _resolve(self, box: np.ndarray | None, images: np.ndarray | None, unwrapped: bool) -> str:
        has_images = images is not None or unwrapped
        if self.pbc == "none" or (box is None and self.pbc != "bonds"):
            return "none"
        if self.pbc == "images":
            if not has_images:
                raise CgsimInputError(self.where, "pbc=images but the input has no image flags (ix iy iz) or unwrapped coordinates")
            return "images"
        if self.pbc == "bonds":
            if box is None:
                raise CgsimInputError(self.where, "pbc=bonds but the input has no periodic box; use pbc=none or auto")
            return "bonds"
        if has_images:
            return "images"
        return "bonds" if box is not None else "none"

    def _setup_bonds(self) -> None:
        plan = unwrap_plan(self.n_atoms, self.bonds, self.mapping.atom_bead)
        if len(self.bonds) == 0:
            log.warning("%s: topology has no bonds; each bead is made whole by minimum image about its first atom", self.where)
        elif plan.n_unbonded_beads:
            log.warning("%s: %d beads have atoms not joined by bonds; those atoms are placed by minimum image about the "
                        "bead's first atom", self.where, plan.n_unbonded_beads)
        self._unwrapper = Unwrapper(plan)

    def unwrap(self, xyz: np.ndarray, box: np.ndarray | None = None, images: np.ndarray | None = None,
               unwrapped: bool = False) -> np.ndarray:
        """Unwrapped atom positions of a chunk (step 1 of the module docstring).

        Parameters
        ----------
        xyz : numpy.ndarray
            Atom positions, nm, shape (n_frames, n_atoms, 3).
        box : numpy.ndarray, optional
            Box vectors as rows, nm, shape (n_frames, 3, 3); None when not periodic.
        images : numpy.ndarray, optional
            Image flags, shape (n_frames, n_atoms, 3), int (with ``unwrapped``: those the
            unwrapped positions hold, which a changing box needs).
        unwrapped : bool
            The input says ``xyz`` are already unwrapped (LAMMPS ``xu``).

        Returns
        -------
        numpy.ndarray
            Shape (n_frames, n_atoms, 3), float64, nm.
        """
        xyz = np.asarray(xyz, dtype=np.float64)
        if xyz.ndim != 3 or xyz.shape[1:] != (self.n_atoms, 3):
            raise CgsimInputError(self.where, f"frames have {xyz.shape[1] if xyz.ndim == 3 else '?'} atoms but the mapping is for "
                                              f"{self.n_atoms}; expected the topology's atoms in its order")
        finite = np.isfinite(xyz).all(axis=(1, 2))
        if not finite.all():
            f = int(np.flatnonzero(~finite)[0])
            a = int(np.flatnonzero(~np.isfinite(xyz[f]).all(axis=1))[0])
            raise CgsimInputError(self.where, f"frame {self.frames_done + f}: non-finite coordinates (atom {a})")
        box = clean_box(box, self.where, self.frames_done, len(xyz))
        mode = self._resolve(box, images, unwrapped)
        if self.mode is None:
            self.mode = mode
            if mode == "bonds":
                self._setup_bonds()
            log.info("%s: pbc=%s (%s)", self.where, self.pbc, mode)
        elif mode != self.mode:
            raise CgsimInputError(self.where, f"frame {self.frames_done}: input changes from pbc mode {self.mode} to {mode} "
                                              "(box or image flags appear or disappear)")
        if mode == "images" and images is not None:
            out = self._images(xyz, box, images, unwrapped)
        elif mode == "bonds":
            assert self._unwrapper is not None
            out = self._unwrapper(xyz, box)
        else:
            out = xyz
        return out

    def average(self, xyz: np.ndarray) -> np.ndarray:
        """Bead positions: weighted averages of (unwrapped) atom positions.

        Parameters
        ----------
        xyz : numpy.ndarray
            Shape (n_frames, n_atoms, 3), nm.

        Returns
        -------
        numpy.ndarray
            Shape (n_frames, n_beads, 3), float64, nm.
        """
        f, n, _ = xyz.shape
        flat = np.ascontiguousarray(np.asarray(xyz, dtype=np.float64).transpose(1, 0, 2)).reshape(n, f * 3)
        beads = self.matrix @ flat
        return np.ascontiguousarray(beads.reshape(self.mapping.n_beads, f, 3).transpose(1, 0, 2))

    def map(self, xyz: np.ndarray, box: np.ndarray | None = None, images: np.ndarray | None = None,
            unwrapped: bool = False) -> np.ndarray:
        """Bead positions of a chunk of frames (unwrap, then average).

        Parameters are those of :meth:`unwrap`; returns shape (n_frames, n_beads, 3), nm.
        """
        beads = self.average(self.unwrap(xyz, box, images, unwrapped))
        self.frames_done += len(beads)
        return beads


def apply_mapping(traj: md.Trajectory, mapping: CGMapping, pbc: str = "auto", images: np.ndarray | None = None,
                  chunk: int = 0) -> md.Trajectory:
    """Map an in-memory trajectory to beads.

    Parameters
    ----------
    traj : mdtraj.Trajectory
        Atom trajectory; its topology's bonds are used to make molecules whole.
    mapping : CGMapping
        The mapping (``mapping.n_atoms == traj.n_atoms``).
    pbc : {"auto", "images", "bonds", "none"}
        See the module docstring.
    images : numpy.ndarray, optional
        Image flags, shape (n_frames, n_atoms, 3).
    chunk : int
        Frames per chunk (0: all at once); the result does not depend on it.

    Returns
    -------
    mdtraj.Trajectory
        Bead positions (unwrapped, continuous in time), with the input's times and boxes and
        :func:`bead_topology`.
    """
    if traj.n_atoms != mapping.n_atoms:
        raise CgsimInputError("trajectory", f"has {traj.n_atoms} atoms but the mapping is for {mapping.n_atoms}")
    mapper = BeadMapper(mapping, topology_bonds(traj.topology), pbc=pbc)
    box = traj.unitcell_vectors
    step = chunk if chunk > 0 else max(1, traj.n_frames)
    out = []
    for s in range(0, traj.n_frames, step):
        sl = slice(s, s + step)
        out.append(mapper.map(traj.xyz[sl], None if box is None else box[sl], None if images is None else images[sl]))
    xyz = np.concatenate(out) if out else np.zeros((0, mapping.n_beads, 3))
    result = md.Trajectory(xyz.astype(np.float32), bead_topology(mapping), time=traj.time.copy())
    if box is not None:
        result.unitcell_vectors = box.astype(np.float32)
    return result
