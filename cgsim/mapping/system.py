"""The fine (all-atom) system a mapping is built for: topology plus per-atom data.

An :class:`AtomSystem` collects what the mapping needs and mdtraj topologies do not all carry:
masses and charges per atom, a chemistry label per atom (for bead types) and the molecule of
each atom. Build one from an mdtraj topology (:func:`system_from_topology`) or a LAMMPS data
file (:func:`system_from_lammps`). Atom charges an mdtraj topology lacks come from an array or
a charges file (:func:`cgsim.mapping.charges.read_charges`: ``.npy``, text, OpenMM System XML).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

import mdtraj as md
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cgsim.errors import CgsimInputError
from cgsim.io.lammps import LammpsData, lammps_topology
from cgsim.mapping.charges import read_charges

log = logging.getLogger(__name__)

#: Atom charges as given to the system loaders: an array (e, shape (n_atoms,)) or a charges file.
ChargesLike = np.ndarray | str | os.PathLike

#: Residue names that mdtraj's PDB writer treats as standard (it writes no CONECT records for
#: bonds between them), so they are never used as bead residue names.
PDB_STANDARD_RESIDUES = frozenset({
    "ALA", "ASN", "CYS", "GLU", "HIS", "LEU", "MET", "PRO", "THR", "TYR", "ARG", "ASP", "GLN", "GLY",
    "ILE", "LYS", "PHE", "SER", "TRP", "VAL", "A", "G", "C", "U", "I", "DA", "DG", "DC", "DT", "DI", "HOH",
})


@dataclass
class AtomSystem:
    """A fine-grained system: topology and per-atom data, in MD units.

    Attributes
    ----------
    topology : mdtraj.Topology
        Atoms (n_atoms), residues and bonds.
    masses : numpy.ndarray
        Atom masses, amu, shape (n_atoms,), float64.
    charges : numpy.ndarray
        Atom charges, e, shape (n_atoms,), float64 (zeros when ``charges_known`` is False).
    atom_types : numpy.ndarray
        Chemistry label of each atom (force-field type when the input has one, else the
        element symbol), shape (n_atoms,), str. Beads with the same labels and bonding share
        a bead type.
    molecule : numpy.ndarray
        Molecule of each atom, numbered 0.. by first atom, shape (n_atoms,), int64.
    molecule_names : list[str]
        Name of each molecule (<= 4 characters): the residue name of a one-residue molecule,
        else ``M1``, ``M2``, ... per molecule kind.
    bonds : numpy.ndarray
        Bonded atom pairs ``i < j``, sorted, unique, shape (n_bonds, 2), int64.
    charges_known : bool
        Whether ``charges`` come from the input (a LAMMPS data file, a charges file or array)
        or are unknown zeros.
    source : str
        Where the system was read from.
    charges_source : str
        Where the charges came from: a file path, ``"array"``, the LAMMPS data file, or
        ``""`` when they are unknown.
    """

    topology: md.Topology
    masses: np.ndarray
    charges: np.ndarray
    atom_types: np.ndarray
    molecule: np.ndarray
    molecule_names: list[str]
    bonds: np.ndarray
    charges_known: bool = False
    source: str = ""
    charges_source: str = ""

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return int(self.topology.n_atoms)

    @property
    def n_molecules(self) -> int:
        """Number of molecules."""
        return len(self.molecule_names)

    def molecule_atoms(self) -> list[np.ndarray]:
        """Atom indices of each molecule, ascending (list of n_molecules int64 arrays)."""
        order = np.argsort(self.molecule, kind="stable")
        bounds = np.searchsorted(self.molecule[order], np.arange(self.n_molecules + 1))
        return [order[bounds[m]:bounds[m + 1]] for m in range(self.n_molecules)]

    def subset(self, atoms: np.ndarray) -> AtomSystem:
        """The system restricted to ``atoms`` (ascending indices), molecules renumbered."""
        atoms = np.asarray(atoms, dtype=np.int64)
        top = self.topology.subset(atoms)
        mol = self.molecule[atoms]
        uniq, first = np.unique(mol, return_index=True)
        order = np.argsort(first)
        rank = np.empty(len(uniq), dtype=np.int64)
        rank[order] = np.arange(len(uniq))
        new_mol = rank[np.searchsorted(uniq, mol)]
        names = [self.molecule_names[int(uniq[k])] for k in order]
        return AtomSystem(topology=top, masses=self.masses[atoms], charges=self.charges[atoms],
                          atom_types=self.atom_types[atoms], molecule=new_mol, molecule_names=names,
                          bonds=topology_bonds(top), charges_known=self.charges_known, source=self.source,
                          charges_source=self.charges_source)

    def with_charges(self, charges: ChargesLike) -> AtomSystem:
        """A copy of the system with the given atom charges (``charges_known`` True).

        Parameters
        ----------
        charges : numpy.ndarray or path-like
            Atom charges, e, shape (n_atoms,), or a charges file
            (:func:`cgsim.mapping.charges.read_charges`: ``.npy``, ``.txt``/``.dat``/``.csv``,
            OpenMM System ``.xml``) with one charge per atom of this system.

        Raises
        ------
        CgsimInputError
            A missing or unreadable file, a count other than ``n_atoms``, non-finite values.
        """
        values, origin = _resolve_charges(charges, self.n_atoms, self.source or "system")
        return replace(self, charges=values, charges_known=True, charges_source=origin)


def topology_bonds(topology: md.Topology) -> np.ndarray:
    """Bonds of an mdtraj topology as sorted unique pairs ``i < j``, shape (n_bonds, 2), int64."""
    if topology.n_bonds == 0:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.array([(a.index, b.index) for a, b in topology.bonds], dtype=np.int64)
    pairs = np.sort(pairs, axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(pairs, axis=0)


def _components(n: int, edges: np.ndarray) -> np.ndarray:
    """Connected components of a graph on ``n`` nodes, numbered by first node, shape (n,)."""
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)) if len(edges) else coo_matrix((n, n))
    _, comp = connected_components(graph, directed=False)
    _, first = np.unique(comp, return_index=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[comp].astype(np.int64)


def _resolve_charges(charges: ChargesLike, n_atoms: int, where: str) -> tuple[np.ndarray, str]:
    """Atom charges (e, shape (n_atoms,), float64, finite) and where they came from."""
    if isinstance(charges, (str, os.PathLike)):
        return read_charges(charges, n_atoms), str(charges)
    values = np.asarray(charges, dtype=np.float64)
    if values.shape != (n_atoms,):
        raise CgsimInputError(where, f"expected {n_atoms} atom charges (one per atom), got shape {values.shape}")
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise CgsimInputError(where, f"charge of atom {bad} is {values[bad]}; expected finite charges (e)")
    return values, "array"


def molecule_names_for(topology: md.Topology, molecule: np.ndarray, atom_types: np.ndarray,
                       bonds: np.ndarray) -> list[str]:
    """Names of the molecules (<= 4 characters).

    A molecule made of one residue is named after it (unless that name is a PDB standard
    residue, whose bonds PDB writers leave out); other molecules are ``M1``, ``M2``, ... with
    one number per molecule kind (same atom labels and bonds in the same order).
    """
    n_mol = int(molecule.max()) + 1 if len(molecule) else 0
    res_of_atom = np.array([a.residue.index for a in topology.atoms], dtype=np.int64)
    res_names = [r.name for r in topology.residues]
    order = np.argsort(molecule, kind="stable")
    bounds = np.searchsorted(molecule[order], np.arange(n_mol + 1))
    bond_mol = molecule[bonds[:, 0]] if len(bonds) else np.zeros(0, dtype=np.int64)
    border = np.argsort(bond_mol, kind="stable")
    bbounds = np.searchsorted(bond_mol[border], np.arange(n_mol + 1))
    kinds: dict[tuple, str] = {}
    names: list[str] = []
    for m in range(n_mol):
        atoms = order[bounds[m]:bounds[m + 1]]
        residues = np.unique(res_of_atom[atoms])
        if len(residues) == 1:
            name = res_names[int(residues[0])][:4]
            if name and name.upper() not in PDB_STANDARD_RESIDUES:
                names.append(name)
                continue
        local = np.searchsorted(atoms, bonds[border[bbounds[m]:bbounds[m + 1]]])
        key = (tuple(atom_types[atoms].tolist()), local.tobytes())
        if key not in kinds:
            kinds[key] = f"M{len(kinds) + 1}" if len(kinds) < 999 else "MOL"
        names.append(kinds[key])
    return names


def system_from_topology(topology: md.Topology, masses: np.ndarray | None = None, charges: ChargesLike | None = None,
                         source: str = "") -> AtomSystem:
    """An :class:`AtomSystem` from an mdtraj topology.

    Molecules are the connected components of the bond graph, with every residue kept in
    one molecule (so a topology without bonds still has molecules: its residues).

    Parameters
    ----------
    topology : mdtraj.Topology
        The topology.
    masses : numpy.ndarray, optional
        Atom masses, amu, shape (n_atoms,); default: the elements' masses.
    charges : numpy.ndarray or path-like, optional
        Atom charges, e, shape (n_atoms,), or a charges file with one charge per atom
        (:func:`cgsim.mapping.charges.read_charges`: ``.npy``, ``.txt``/``.dat``/``.csv``,
        OpenMM System ``.xml``); default: unknown (zeros, ``charges_known`` False).
    source : str
        Where the topology was read from (for messages).

    Raises
    ------
    CgsimInputError
        If ``masses`` or ``charges`` have the wrong length or are not finite, or the charges
        file is missing or unreadable.
    """
    n = topology.n_atoms
    where = source or "topology"
    if n == 0:
        raise CgsimInputError(where, "topology has no atoms")
    if masses is None:
        masses = np.array([a.element.mass if a.element is not None else 0.0 for a in topology.atoms], dtype=np.float64)
    masses = np.asarray(masses, dtype=np.float64)
    if masses.shape != (n,) or not np.isfinite(masses).all() or (masses < 0).any():
        raise CgsimInputError(where, f"expected {n} finite non-negative atom masses, got shape {masses.shape}")
    charges_known = charges is not None
    charges, charges_source = (np.zeros(n), "") if charges is None else _resolve_charges(charges, n, where)
    types = []
    for a in topology.atoms:
        el = a.element
        types.append(el.symbol if el is not None and el is not md.element.virtual else a.name)
    atom_types = np.array(types, dtype=object)
    bonds = topology_bonds(topology)
    res = np.array([a.residue.index for a in topology.atoms], dtype=np.int64)
    # link consecutive atoms of each residue so a residue never spans two molecules
    order = np.lexsort((np.arange(n), res))
    same = res[order[1:]] == res[order[:-1]]
    res_links = np.stack([order[:-1][same], order[1:][same]], axis=1)
    molecule = _components(n, np.concatenate([bonds, res_links]) if len(res_links) else bonds)
    names = molecule_names_for(topology, molecule, atom_types, bonds)
    return AtomSystem(topology=topology, masses=masses, charges=charges, atom_types=atom_types, molecule=molecule,
                      molecule_names=names, bonds=bonds, charges_known=charges_known, source=source,
                      charges_source=charges_source)


def system_from_lammps(data: LammpsData, charges: ChargesLike | None = None) -> AtomSystem:
    """An :class:`AtomSystem` from a LAMMPS data file.

    Masses and charges come from the file; the chemistry label of an atom is its LAMMPS
    type (the type's comment label in ``Masses`` if given, else ``type<N>``); molecules are
    LAMMPS molecule ids (atoms with id 0 are grouped by bonds).

    Parameters
    ----------
    data : LammpsData
        The data file as read by :func:`cgsim.io.lammps.read_data`.
    charges : numpy.ndarray or path-like, optional
        Atom charges, e, in ascending atom-id order, shape (n_atoms,), or a charges file
        (:func:`cgsim.mapping.charges.read_charges`); they replace the data file's charges
        (logged). Default: the data file's charges (unknown zeros for styles without).

    Raises
    ------
    CgsimInputError
        Bad ``charges`` (wrong count, non-finite, unreadable file).
    """
    top = lammps_topology(data)
    labels = np.array([data.type_labels.get(int(t), f"type{int(t)}") for t in data.types], dtype=object)
    molecule = data.molecule_index()
    file_charges = data.charges if data.charges is not None else np.zeros(data.n_atoms)
    bonds = np.unique(np.sort(data.bonds, axis=1), axis=0) if len(data.bonds) else np.zeros((0, 2), dtype=np.int64)
    system = AtomSystem(topology=top, masses=data.masses, charges=np.asarray(file_charges, dtype=np.float64),
                        atom_types=labels, molecule=molecule,
                        molecule_names=molecule_names_for(top, molecule, labels, bonds), bonds=bonds,
                        charges_known=data.charges is not None, source=data.path,
                        charges_source=data.path if data.charges is not None else "")
    if charges is not None:
        system = system.with_charges(charges)
        if data.charges is not None:
            log.info("%s: atom charges from %s replace those of the LAMMPS data file (total %.6g e, was %.6g e)",
                     data.path, system.charges_source, system.charges.sum(), data.charges.sum())
        else:
            log.info("%s: atom charges from %s (atom style %r has none)", data.path, system.charges_source, data.atom_style)
    elif data.charges is None:
        log.info("%s: atom style %r has no charges; bead charges are 0 (set input.charges=FILE to give them)",
                 data.path, data.atom_style)
    return system
