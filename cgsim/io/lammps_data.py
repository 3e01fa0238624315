"""LAMMPS data files (topology), read into MD units.

:func:`read_data` reads the header (atom count, box), ``Masses``, ``Atoms`` (styles ``full``,
``molecular``/``bond``/``angle``, ``charge``, ``atomic``, with or without image flags) and
``Bonds``; other sections (coefficients, angles, velocities, ...) are skipped.
:func:`lammps_topology` turns the result into an :class:`mdtraj.Topology` (elements guessed
from masses, one residue per molecule, bonds). The unit styles and box conventions shared with
the dump reader (:mod:`cgsim.io.lammps_dump`) live here too; :mod:`cgsim.io.lammps` describes
both and re-exports their public names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mdtraj as md
import numpy as np

from cgsim.errors import CgsimInputError

#: Length and time factors from LAMMPS unit styles to nm and ps.
LAMMPS_UNITS: dict[str, dict[str, float]] = {
    "real": {"length": 0.1, "time": 1.0e-3},  # Angstrom, fs
    "metal": {"length": 0.1, "time": 1.0},  # Angstrom, ps
}

#: Columns of the ``Atoms`` section per atom style (image flags may follow).
ATOM_STYLES: dict[str, tuple[str, ...]] = {
    "full": ("id", "mol", "type", "q", "x", "y", "z"),
    "molecular": ("id", "mol", "type", "x", "y", "z"),
    "bond": ("id", "mol", "type", "x", "y", "z"),
    "angle": ("id", "mol", "type", "x", "y", "z"),
    "charge": ("id", "type", "q", "x", "y", "z"),
    "atomic": ("id", "type", "x", "y", "z"),
}

#: Elements tried when guessing an element from a mass (lightest first).
_GUESS_SYMBOLS = ("H", "Li", "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "K",
                  "Ca", "Zn", "Br", "I")


def _units(units: str, where: str) -> dict[str, float]:
    if units not in LAMMPS_UNITS:
        raise CgsimInputError(where, f"LAMMPS unit style {units!r} is not supported; expected one of {sorted(LAMMPS_UNITS)}")
    return LAMMPS_UNITS[units]


def element_from_mass(mass: float, tolerance: float = 0.05) -> md.element.Element:
    """The element whose standard atomic mass is within ``tolerance`` amu of ``mass``.

    Parameters
    ----------
    mass : float
        Atom mass, amu.
    tolerance : float
        Largest accepted difference, amu.

    Returns
    -------
    mdtraj.element.Element
        The closest element among common organic and electrolyte elements, or
        ``mdtraj.element.virtual`` when none is close enough (e.g. a united atom or a bead).
    """
    best, best_diff = md.element.virtual, tolerance
    for symbol in _GUESS_SYMBOLS:
        el = md.element.get_by_symbol(symbol)
        diff = abs(el.mass - mass)
        if diff <= best_diff:
            best, best_diff = el, diff
    return best


# ------------------------------------------------------------------------------------------
# boxes
# ------------------------------------------------------------------------------------------
def box_from_bounds(lo: np.ndarray, hi: np.ndarray, tilt: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Box vectors and origin from LAMMPS ``lo``/``hi`` values and tilt factors.

    Parameters
    ----------
    lo, hi : numpy.ndarray
        ``xlo ylo zlo`` and ``xhi yhi zhi`` of the (restricted triclinic) cell, shape (3,).
    tilt : numpy.ndarray or None
        ``xy xz yz``, shape (3,), or None for an orthorhombic box.

    Returns
    -------
    box : numpy.ndarray
        Box vectors as rows ``a, b, c``, shape (3, 3), same length unit as the input.
    origin : numpy.ndarray
        Lower corner ``(xlo, ylo, zlo)``, shape (3,).
    """
    box = np.diag(hi - lo).astype(np.float64)
    if tilt is not None:
        xy, xz, yz = tilt
        box[1, 0] = xy
        box[2, 0] = xz
        box[2, 1] = yz
    return box, np.asarray(lo, dtype=np.float64)



# ------------------------------------------------------------------------------------------
# data files
# ------------------------------------------------------------------------------------------
@dataclass
class LammpsData:
    """Topology read from a LAMMPS data file, atoms sorted by id, in MD units.

    Attributes
    ----------
    path : str
        The file read.
    atom_style : str
        Atom style of the ``Atoms`` section (``full``, ``molecular``, ...).
    atom_ids : numpy.ndarray
        LAMMPS atom ids, ascending, shape (n_atoms,), int64.
    molecule_ids : numpy.ndarray
        LAMMPS molecule ids, shape (n_atoms,), int64 (0 = none, as in LAMMPS).
    types : numpy.ndarray
        Atom types, shape (n_atoms,), int64.
    charges : numpy.ndarray or None
        Charges, e, shape (n_atoms,); None for styles without charges.
    positions : numpy.ndarray
        Positions, nm, shape (n_atoms, 3).
    images : numpy.ndarray or None
        Image flags, shape (n_atoms, 3), int64, if the file has them.
    type_masses : dict[int, float]
        Mass of each atom type, amu.
    type_labels : dict[int, str]
        Name of each atom type from the comment after its mass (``1 12.011 # c4``), if any.
    bonds : numpy.ndarray
        Bonded atom pairs as 0-based indices into the arrays above, shape (n_bonds, 2), int64.
    box : numpy.ndarray or None
        Box vectors as rows, nm, shape (3, 3).
    origin : numpy.ndarray or None
        Lower corner of the box, nm, shape (3,).
    """

    path: str
    atom_style: str
    atom_ids: np.ndarray
    molecule_ids: np.ndarray
    types: np.ndarray
    charges: np.ndarray | None
    positions: np.ndarray
    images: np.ndarray | None
    type_masses: dict[int, float]
    type_labels: dict[int, str]
    bonds: np.ndarray
    box: np.ndarray | None
    origin: np.ndarray | None

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return int(len(self.atom_ids))

    @property
    def masses(self) -> np.ndarray:
        """Mass of each atom, amu, shape (n_atoms,)."""
        return np.array([self.type_masses[int(t)] for t in self.types], dtype=np.float64)

    def molecule_index(self) -> np.ndarray:
        """Molecule of each atom, 0..n_molecules-1, numbered by first atom, shape (n_atoms,).

        Atoms with molecule id 0 (LAMMPS: "no molecule") are grouped by bonded components.
        """
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        n = self.n_atoms
        key = np.empty(n, dtype=np.int64)
        has_mol = self.molecule_ids != 0
        _, inv = np.unique(self.molecule_ids[has_mol], return_inverse=True)
        key[has_mol] = inv
        offset = int(inv.max()) + 1 if inv.size else 0
        if (~has_mol).any():
            graph = coo_matrix((np.ones(len(self.bonds)), (self.bonds[:, 0], self.bonds[:, 1])), shape=(n, n))
            _, comp = connected_components(graph, directed=False)
            key[~has_mol] = offset + comp[~has_mol]
        # renumber by first appearance
        _, first = np.unique(key, return_index=True)
        order = np.argsort(first)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        return rank[np.searchsorted(np.unique(key), key)]


def _strip(line: str) -> str:
    return line.split("#", 1)[0].strip()


def _is_section(text: str) -> bool:
    known = {"Atoms", "Velocities", "Masses", "Ellipsoids", "Lines", "Triangles", "Bodies", "Bonds",
             "Angles", "Dihedrals", "Impropers"}
    return text in known or text.endswith(" Coeffs") or text.endswith(" Labels")


def _int(token: str, where: str, what: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise CgsimInputError(where, f"{what} {token!r} is not an integer (type labels are not supported)") from None


def read_data(path: str | Path, units: str = "real") -> LammpsData:
    """Read a LAMMPS data file.

    Parameters
    ----------
    path : path-like
        The data file (as written by ``write_data`` or by hand).
    units : {"real", "metal"}
        LAMMPS unit style of the file.

    Returns
    -------
    LammpsData
        Atoms sorted by id, positions in nm, masses in amu.

    Raises
    ------
    CgsimInputError
        Missing ``Atoms``/``Masses`` section, unsupported atom style, counts that disagree with
        the header, bonds naming unknown atoms.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise CgsimInputError(where, "LAMMPS data file not found")
    factor = _units(units, "input.lammps_units")["length"]
    header, (lo, hi, tilt, have_box), sections = _sections(path.read_text().splitlines(), where)
    if "Atoms" not in sections:
        raise CgsimInputError(where, "no 'Atoms' section; expected a LAMMPS data file with atoms")
    if "Masses" not in sections:
        raise CgsimInputError(where, "no 'Masses' section; expected per-type masses")
    type_masses, type_labels = _masses(sections["Masses"][1], where)
    style, cols, table = _atom_table(sections["Atoms"], header, where)
    col = {name: i for i, name in enumerate(cols)}
    atom_ids = table[:, col["id"]].astype(np.int64)
    if np.any(np.diff(atom_ids) == 0):
        raise CgsimInputError(where, "atom ids in 'Atoms' are not unique")
    types = table[:, col["type"]].astype(np.int64)
    missing = sorted(set(types.tolist()) - set(type_masses))
    if missing:
        raise CgsimInputError(where, f"atom types {missing} have no entry in 'Masses'")
    mol = table[:, col["mol"]].astype(np.int64) if "mol" in col else np.zeros(len(table), dtype=np.int64)
    charges = table[:, col["q"]].astype(np.float64) if "q" in col else None
    positions = table[:, [col["x"], col["y"], col["z"]]] * factor
    images = table[:, len(cols):len(cols) + 3].astype(np.int64) if table.shape[1] == len(cols) + 3 else None
    bonds = _bonds(sections.get("Bonds", ("", []))[1], atom_ids, header, where)
    box = origin = None
    if all(have_box):
        b, o = box_from_bounds(lo, hi, tilt)
        box, origin = b * factor, o * factor
    return LammpsData(path=where, atom_style=style, atom_ids=atom_ids, molecule_ids=mol, types=types, charges=charges,
                      positions=positions, images=images, type_masses=type_masses, type_labels=type_labels,
                      bonds=bonds, box=box, origin=origin)


def _sections(lines: list[str], where: str) -> tuple[dict[str, int], tuple, dict[str, tuple[str, list[tuple[int, str]]]]]:
    """Header counts, box bounds ``(lo, hi, tilt, have_box)`` and ``{section: (style comment, [(line number, line)])}``."""
    header: dict[str, int] = {}
    lo = np.zeros(3)
    hi = np.zeros(3)
    tilt = None
    have_box = [False, False, False]
    sections: dict[str, tuple[str, list[tuple[int, str]]]] = {}
    current: str | None = None
    for lineno, raw in enumerate(lines[1:], start=2):  # the first line is a title
        text = _strip(raw)
        if not text:
            continue
        if current is None and text[0] in "0123456789+-.":
            tok = text.split()
            for axis, name in enumerate("xyz"):
                if tok[2:4] == [f"{name}lo", f"{name}hi"]:
                    lo[axis], hi[axis] = float(tok[0]), float(tok[1])
                    have_box[axis] = True
                    break
            else:
                if tok[3:6] == ["xy", "xz", "yz"]:
                    tilt = np.array([float(t) for t in tok[:3]])
                elif len(tok) >= 2 and not tok[1][0].isdigit():
                    header[" ".join(tok[1:])] = int(float(tok[0]))
            continue
        if _is_section(text):
            comment = raw.split("#", 1)[1].strip() if "#" in raw else ""
            current = text
            sections[current] = (comment, [])
            continue
        if current is None:
            raise CgsimInputError(f"{where}:{lineno}", f"unknown section {text!r}; expected header lines ('83 atoms', "
                                                       "'0 25 xlo xhi') then sections such as 'Masses', 'Atoms', 'Bonds'")
        if text[0].isalpha():
            raise CgsimInputError(f"{where}:{lineno}", f"unknown section {text!r} (or a type label in '{current}'; "
                                                       "type labels are not supported)")
        sections[current][1].append((lineno, raw))
    return header, (lo, hi, tilt, have_box), sections


def _masses(rows: list[tuple[int, str]], where: str) -> tuple[dict[int, float], dict[int, str]]:
    """``Masses``: per-type mass (amu) and the label of its comment, if any."""
    type_masses: dict[int, float] = {}
    type_labels: dict[int, str] = {}
    for lineno, raw in rows:
        tok = _strip(raw).split()
        t = _int(tok[0], f"{where}:{lineno}", "atom type")
        type_masses[t] = float(tok[1])
        if "#" in raw and raw.split("#", 1)[1].strip():
            type_labels[t] = raw.split("#", 1)[1].strip().split()[0]
    return type_masses, type_labels


def _atom_table(section: tuple[str, list[tuple[int, str]]], header: dict[str, int], where: str
                ) -> tuple[str, tuple[str, ...], np.ndarray]:
    """``Atoms``: its style, the style's columns and the rows sorted by atom id (image flags last, if any)."""
    style_hint, atom_lines = section
    ncol = {len(_strip(r).split()) for _, r in atom_lines}
    if len(ncol) != 1:
        raise CgsimInputError(where, f"'Atoms' lines have different numbers of columns {sorted(ncol)}; expected one atom style")
    (ncol_,) = ncol
    style = style_hint.split()[0] if style_hint else ""
    if not style:
        guesses = [s for s, cols in ATOM_STYLES.items() if len(cols) in (ncol_, ncol_ - 3)]
        kinds = {ATOM_STYLES[s] for s in guesses}
        if len(kinds) != 1:
            raise CgsimInputError(where, f"'Atoms' section has no style comment and {ncol_} columns, which fits "
                                         f"{' or '.join(sorted(guesses)) or 'no supported style'}; write e.g. 'Atoms # full'")
        style = guesses[0]
    if style not in ATOM_STYLES:
        raise CgsimInputError(where, f"atom style {style!r} is not supported; expected one of {sorted(ATOM_STYLES)}")
    cols = ATOM_STYLES[style]
    if ncol_ not in (len(cols), len(cols) + 3):
        raise CgsimInputError(where, f"'Atoms # {style}' lines have {ncol_} columns; expected {len(cols)} "
                                     f"({' '.join(cols)}) or {len(cols) + 3} with image flags")
    try:
        table = np.array([_strip(r).split() for _, r in atom_lines], dtype=np.float64)
    except ValueError:
        raise CgsimInputError(where, "'Atoms' section holds non-numeric values (type labels are not supported)") from None
    if "atoms" in header and header["atoms"] != len(table):
        raise CgsimInputError(where, f"header says {header['atoms']} atoms but the 'Atoms' section has {len(table)} lines")
    order = np.argsort(table[:, 0], kind="stable")
    return style, cols, table[order]


def _bonds(bond_rows: list[tuple[int, str]], atom_ids: np.ndarray, header: dict[str, int], where: str) -> np.ndarray:
    """``Bonds`` as atom index pairs (in id order), shape (n_bonds, 2), each pair sorted."""
    if bond_rows:
        try:
            btab = np.array([_strip(r).split()[:4] for _, r in bond_rows], dtype=np.int64)
        except ValueError:
            raise CgsimInputError(where, "'Bonds' lines must be 'id type atom1 atom2' with integers") from None
        pairs = btab[:, 2:4]
        idx = np.searchsorted(atom_ids, pairs)
        idx_c = np.minimum(idx, len(atom_ids) - 1)
        bad = atom_ids[idx_c] != pairs
        if bad.any():
            k = int(np.argwhere(bad.any(axis=1))[0, 0])
            raise CgsimInputError(f"{where}:{bond_rows[k][0]}", f"bond {btab[k, 0]} names atom id {pairs[k][bad[k]][0]}, which is not in 'Atoms'")
        bonds = np.sort(idx_c, axis=1)
    else:
        bonds = np.zeros((0, 2), dtype=np.int64)
    if "bonds" in header and header["bonds"] != len(bonds):
        raise CgsimInputError(where, f"header says {header['bonds']} bonds but the 'Bonds' section has {len(bonds)} lines")
    return bonds


def lammps_topology(data: LammpsData) -> md.Topology:
    """An mdtraj topology for a LAMMPS data file.

    One chain; atoms in data-file (id) order; a residue for each molecule (a molecule whose
    atoms are not contiguous in id order gets one residue per contiguous run). Elements are
    guessed from masses (:func:`element_from_mass`). Atom names are the element symbol and
    the atom's 1-based position in its molecule (``C1``, ``H2``, ...; ``X3`` for an unknown
    element), so a user mapping file can name them. Residue names: a single-atom molecule is
    named after its element (``LI``); a larger molecule is ``M1``, ``M2``, ... numbered by
    molecule kind (same atom types and bonds in the same order = same kind).
    """
    n = data.n_atoms
    mol = data.molecule_index()
    elements = {t: element_from_mass(m) for t, m in data.type_masses.items()}
    # molecule kinds: same sequence of types and same local bonds
    order = np.argsort(mol, kind="stable")
    starts = np.searchsorted(mol[order], np.arange(mol.max() + 1 if n else 0))
    bonds_of: dict[int, list[tuple[int, int]]] = {}
    for a, b in data.bonds:
        bonds_of.setdefault(int(mol[a]), []).append((int(a), int(b)))
    kind_names: dict[tuple, str] = {}
    res_name: list[str] = []
    local_index = np.empty(n, dtype=np.int64)
    for m in range(len(starts)):
        stop = starts[m + 1] if m + 1 < len(starts) else n
        atoms = order[starts[m]:stop]
        local_index[atoms] = np.arange(len(atoms))
        if len(atoms) == 1:
            el = elements[int(data.types[atoms[0]])]
            res_name.append(el.symbol.upper() if el is not md.element.virtual else f"T{int(data.types[atoms[0]])}")
            continue
        pos = {int(a): i for i, a in enumerate(atoms)}
        key = (tuple(data.types[atoms].tolist()), tuple(sorted((pos[a], pos[b]) for a, b in bonds_of.get(m, []))))
        if key not in kind_names:
            kind_names[key] = f"M{len(kind_names) + 1}"
        res_name.append(kind_names[key])

    top = md.Topology()
    chain = top.add_chain()
    atoms_out = []
    residue = None
    prev = -1
    for i in range(n):
        m = int(mol[i])
        if m != prev:
            residue = top.add_residue(res_name[m], chain, resSeq=m + 1)
            prev = m
        el = elements[int(data.types[i])]
        symbol = el.symbol if el is not md.element.virtual else "X"
        atoms_out.append(top.add_atom(f"{symbol}{local_index[i] + 1}", el, residue))
    for a, b in data.bonds:
        top.add_bond(atoms_out[int(a)], atoms_out[int(b)])
    return top
