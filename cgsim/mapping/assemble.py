"""Assemble a :class:`~cgsim.mapping.core.CGMapping` from a raw atom -> bead assignment.

Every scheme of :mod:`cgsim.mapping.builders` and the user files of :mod:`cgsim.mapping.spec`
end here: :func:`finish_mapping` renumbers the beads, checks that none crosses a molecule,
types them by chemistry (:func:`bead_signatures`, a Weisfeiler-Lehman hash of each bead's
labelled bond graph) and sums masses, charges and bonds from the atoms. It sits below both
modules so that neither imports the other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from cgsim.errors import CgsimInputError
from cgsim.mapping.core import WEIGHTINGS, CGMapping
from cgsim.mapping.system import AtomSystem

# --- deterministic 64-bit hashing (no Python hash randomisation) ---------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _label_codes(labels: np.ndarray) -> np.ndarray:
    """String labels -> stable uint64 codes (sha256 of the text)."""
    uniq, inv = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    codes = np.array([int.from_bytes(hashlib.sha256(u.encode()).digest()[:8], "little") for u in uniq], dtype=np.uint64)
    return codes[inv]


def bead_signatures(atom_types: np.ndarray, bonds: np.ndarray, atom_bead: np.ndarray, n_beads: int,
                    rounds: int = 4) -> np.ndarray:
    """A chemistry fingerprint of each bead (vectorised Weisfeiler-Lehman hash).

    Parameters
    ----------
    atom_types : numpy.ndarray
        Label of each atom, shape (n_atoms,), str.
    bonds : numpy.ndarray
        Atom bonds, shape (n_bonds, 2), int.
    atom_bead : numpy.ndarray
        Bead of each atom, shape (n_atoms,), int.
    n_beads : int
        Number of beads.
    rounds : int
        Refinement rounds (each lets a label see one bond further).

    Returns
    -------
    numpy.ndarray
        Shape (n_beads,), uint64; equal for beads whose atoms have the same labels bonded the
        same way within the bead (different, up to hash collisions, otherwise).
    """
    label = _mix(_label_codes(atom_types))
    inside = atom_bead[bonds[:, 0]] == atom_bead[bonds[:, 1]] if len(bonds) else np.zeros(0, dtype=bool)
    i, j = bonds[inside, 0], bonds[inside, 1]
    with np.errstate(over="ignore"):
        for _ in range(rounds):
            acc = np.zeros_like(label)
            msg_i, msg_j = _mix(label[j] ^ _M1), _mix(label[i] ^ _M1)
            np.add.at(acc, i, msg_i)
            np.add.at(acc, j, msg_j)
            label = _mix(label * _M2 + acc)
        sig = np.zeros(n_beads, dtype=np.uint64)
        np.add.at(sig, atom_bead, _mix(label))
        return _mix(sig + np.bincount(atom_bead, minlength=n_beads).astype(np.uint64) * _GOLDEN)


def _unique_names(bases: Sequence[str], numbered: Sequence[bool]) -> list[str]:
    """Distinct names of at most 4 characters from base names (``B`` -> ``B1``, ``B2``...)."""
    taken: set[str] = set()
    out = []
    for base, num in zip(bases, numbered, strict=True):
        base = (base or "X")[:4]
        if not num and base not in taken:
            name = base
        else:
            k = 1
            while True:
                suffix = str(k)
                name = base[: max(1, 4 - len(suffix))] + suffix
                if name not in taken or len(suffix) >= 4:
                    break
                k += 1
        taken.add(name)
        out.append(name)
    return out


def finish_mapping(system: AtomSystem, raw: np.ndarray, bases: dict[int, str], numbered: dict[int, bool],
                   weighting: str, scheme: str, options: dict[str, Any],
                   bead_names: dict[int, str] | None = None, where: str = "mapping") -> CGMapping:
    """Turn a raw atom -> bead label assignment into a :class:`CGMapping`.

    Beads are renumbered by (molecule, first atom); bead types come from
    :func:`bead_signatures`; masses, charges and bead bonds are summed from the atoms.

    Parameters
    ----------
    system : AtomSystem
        The atoms.
    raw : numpy.ndarray
        Any integer label per atom, shape (n_atoms,); atoms with the same label form a bead.
    bases : dict[int, str]
        Base name for each raw label (type names derive from the first bead of each type).
    numbered : dict[int, bool]
        Whether the type name of a raw label always gets a number suffix (``B1``, ``B2``).
    weighting : {"mass", "geometry"}
        Centre of mass or of geometry.
    scheme, options :
        Recorded in the mapping.
    bead_names : dict[int, str], optional
        Bead name per raw label (default: its type name).
    where : str
        Config key or file named in errors.
    """
    if weighting not in WEIGHTINGS:
        raise CgsimInputError("mapping.weighting", f"{weighting!r} is not a weighting; expected one of {WEIGHTINGS}")
    n = system.n_atoms
    raw = np.asarray(raw, dtype=np.int64)
    labels, atom_bead = np.unique(raw, return_inverse=True)
    n_beads = len(labels)
    # beads must not cross molecules
    mol_min = np.full(n_beads, np.iinfo(np.int64).max)
    mol_max = np.full(n_beads, -1)
    np.minimum.at(mol_min, atom_bead, system.molecule)
    np.maximum.at(mol_max, atom_bead, system.molecule)
    crossing = np.flatnonzero(mol_min != mol_max)
    if len(crossing):
        b = int(crossing[0])
        atoms = np.flatnonzero(atom_bead == b)
        raise CgsimInputError(where, f"a bead spans molecules {int(mol_min[b])} and {int(mol_max[b])} (atoms {atoms[:6].tolist()}); "
                                     "beads must stay within one molecule")
    # renumber by (molecule, first atom)
    first = np.full(n_beads, n, dtype=np.int64)
    np.minimum.at(first, atom_bead, np.arange(n))
    order = np.lexsort((first, mol_min))
    rank = np.empty(n_beads, dtype=np.int64)
    rank[order] = np.arange(n_beads)
    atom_bead = rank[atom_bead]
    labels = labels[order]
    bead_molecule = mol_min[order]

    if weighting == "mass":
        # massless atoms (virtual sites such as the M site of 4-point water, dummy atoms) get
        # weight 0: a centre of mass is defined whenever the bead's total mass is positive
        weights = system.masses.copy()
        totals = np.bincount(atom_bead, weights=weights, minlength=n_beads)
        bad = np.flatnonzero(~(totals > 0))
        if len(bad):
            b = int(bad[0])
            atoms = np.flatnonzero(atom_bead == b)
            names = ", ".join(str(system.topology.atom(int(a))) for a in atoms[:4]) + (" ..." if len(atoms) > 4 else "")
            raise CgsimInputError(where, f"bead {b} (atoms {atoms[:6].tolist()}: {names}) has mass 0 (all its atoms are massless); a "
                                         "centre of mass needs a positive bead mass (use mapping.weighting=geometry, a topology with "
                                         "masses, or a mapping that puts massless sites with massive atoms)")
    else:
        weights = np.ones(n)

    sig = bead_signatures(system.atom_types, system.bonds, atom_bead, n_beads)
    _, first_of_sig, bead_type_raw = np.unique(sig, return_index=True, return_inverse=True)
    type_order = np.argsort(first_of_sig)
    type_rank = np.empty(len(type_order), dtype=np.int64)
    type_rank[type_order] = np.arange(len(type_order))
    bead_types = type_rank[bead_type_raw]
    first_bead_of_type = np.sort(first_of_sig)
    type_names = _unique_names([bases[int(labels[b])] for b in first_bead_of_type],
                               [numbered[int(labels[b])] for b in first_bead_of_type])
    if bead_names is None:
        names = [type_names[t] for t in bead_types]
    else:
        names = [bead_names[int(lab)] for lab in labels]

    bonds = system.bonds
    if len(bonds):
        pairs = np.sort(atom_bead[bonds], axis=1)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        bead_bonds = np.unique(pairs, axis=0) if len(pairs) else np.zeros((0, 2), dtype=np.int64)
    else:
        bead_bonds = np.zeros((0, 2), dtype=np.int64)
    mapping = CGMapping(
        atom_bead=atom_bead, weights=weights, bead_names=names, bead_types=bead_types, type_names=type_names,
        bead_masses=np.bincount(atom_bead, weights=system.masses, minlength=n_beads),
        bead_charges=np.bincount(atom_bead, weights=system.charges, minlength=n_beads),
        bonds=bead_bonds, bead_molecule=bead_molecule, molecule_names=list(system.molecule_names),
        weighting=weighting, scheme=scheme, options=dict(options),
        atom_labels=[str(x) for x in system.atom_types], atom_bonds=system.bonds)
    mapping.validate(where)
    return mapping
