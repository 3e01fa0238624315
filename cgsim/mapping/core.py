"""A coarse-grained mapping as data (:class:`CGMapping`) and its file, ``mapping.yaml``.

The file is plain YAML a person can read::

    format: cgsim-mapping
    version: 1
    hash: sha256:3f1c...          # of the content below; checked on load
    scheme: metis
    options: {atoms_per_bead: 7, keep_whole_max_atoms: 15, seed: 0}
    weighting: mass
    units: {mass: amu, charge: e}
    n_atoms: 83
    n_beads: 12
    types: [EO, B1, LI, TFS]
    molecules: [M1, LI, LI, TFS, TFS]
    beads:
    - {name: B1, type: 1, molecule: 0, mass: 45.06, charge: 0.0, atoms: 0-6, weights: [12.011, ...]}
    ...
    bonds: [[0, 1], [1, 2], ...]

``atoms`` lists the atom indices of a bead as ranges (``0-6 9 12-14``); ``weights`` are the
atoms' weights in the bead's average, in that order (their masses, amu, for centre-of-mass
mapping; the list is left out for centre-of-geometry mapping, where every weight is 1).
The hash covers everything that changes the mapped trajectory (not ``scheme``/``options``,
which only record how the mapping was made), so two runs with the same hash produced
comparable bead trajectories.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.sparse import csr_matrix

from cgsim.errors import CgsimInputError
from cgsim.io_utils import write_text_atomic

MAPPING_FORMAT = "cgsim-mapping"
MAPPING_VERSION = 1
WEIGHTINGS = ("mass", "geometry")


@dataclass
class CGMapping:
    """Which atoms make each bead, and what the beads are.

    Attributes
    ----------
    atom_bead : numpy.ndarray
        Bead of each atom, shape (n_atoms,), int64; every atom is in exactly one bead.
    weights : numpy.ndarray
        Weight of each atom in its bead's average, shape (n_atoms,), float64, > 0 (the atom
        mass in amu for ``weighting="mass"``, 1 for ``"geometry"``).
    bead_names : list[str]
        Name of each bead (<= 4 characters, used as PDB atom name), length n_beads.
    bead_types : numpy.ndarray
        Type of each bead, index into ``type_names``, shape (n_beads,), int64. Beads of the
        same chemistry (same multiset of atom labels and same bonding) share a type.
    type_names : list[str]
        Name of each bead type, length n_types.
    bead_masses : numpy.ndarray
        Mass of each bead (sum of its atoms' masses), amu, shape (n_beads,), float64.
    bead_charges : numpy.ndarray
        Charge of each bead (sum of its atoms' charges), e, shape (n_beads,), float64.
    bonds : numpy.ndarray
        Bonded bead pairs ``i < j`` (any atom of one bonded to any atom of the other),
        sorted and unique, shape (n_bonds, 2), int64.
    bead_molecule : numpy.ndarray
        Molecule of each bead, shape (n_beads,), int64, non-decreasing.
    molecule_names : list[str]
        Name of each molecule, length n_molecules.
    weighting : {"mass", "geometry"}
        Centre of mass or centre of geometry.
    scheme : str
        How it was built (``molecule``, ``residue``, ``metis``, ``file``).
    options : dict
        The builder's options (for provenance).
    atom_labels : list[str] or None
        Fine-level type label of each atom (force-field type or element), length n_atoms:
        with ``atom_bonds`` the fine topology the model's chemistry embedding reads.
    atom_bonds : numpy.ndarray or None
        Fine-level bonds ``i < j``, shape (n_atom_bonds, 2), int64.
    """

    atom_bead: np.ndarray
    weights: np.ndarray
    bead_names: list[str]
    bead_types: np.ndarray
    type_names: list[str]
    bead_masses: np.ndarray
    bead_charges: np.ndarray
    bonds: np.ndarray
    bead_molecule: np.ndarray
    molecule_names: list[str]
    weighting: str = "mass"
    scheme: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    atom_labels: list[str] | None = None
    atom_bonds: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.atom_labels is not None:
            self.atom_labels = [str(x) for x in self.atom_labels]
        if self.atom_bonds is not None:
            self.atom_bonds = np.sort(np.asarray(self.atom_bonds, dtype=np.int64).reshape(-1, 2), axis=1)
        self.atom_bead = np.asarray(self.atom_bead, dtype=np.int64)
        self.weights = np.asarray(self.weights, dtype=np.float64)
        self.bead_types = np.asarray(self.bead_types, dtype=np.int64)
        self.bead_masses = np.asarray(self.bead_masses, dtype=np.float64)
        self.bead_charges = np.asarray(self.bead_charges, dtype=np.float64)
        self.bonds = np.asarray(self.bonds, dtype=np.int64).reshape(-1, 2)
        self.bead_molecule = np.asarray(self.bead_molecule, dtype=np.int64)
        self.bead_names = [str(x) for x in self.bead_names]
        self.type_names = [str(x) for x in self.type_names]
        self.molecule_names = [str(x) for x in self.molecule_names]

    # -- sizes ---------------------------------------------------------------------------
    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return int(len(self.atom_bead))

    @property
    def n_beads(self) -> int:
        """Number of beads."""
        return int(len(self.bead_names))

    @property
    def n_types(self) -> int:
        """Number of bead types."""
        return len(self.type_names)

    @property
    def n_molecules(self) -> int:
        """Number of molecules."""
        return len(self.molecule_names)

    def bead_atoms(self) -> list[np.ndarray]:
        """Atom indices of each bead, ascending (list of n_beads int64 arrays)."""
        order = np.argsort(self.atom_bead, kind="stable")
        bounds = np.searchsorted(self.atom_bead[order], np.arange(self.n_beads + 1))
        return [order[bounds[b]:bounds[b + 1]] for b in range(self.n_beads)]

    def bead_sizes(self) -> np.ndarray:
        """Number of atoms in each bead, shape (n_beads,), int64."""
        return np.bincount(self.atom_bead, minlength=self.n_beads).astype(np.int64)

    def matrix(self) -> csr_matrix:
        """The averaging matrix ``W``, shape (n_beads, n_atoms), sparse: bead = W @ atoms.

        ``W[b, a] = w_a / sum(w over bead b)`` for the atoms ``a`` of bead ``b``; rows sum to 1.
        """
        totals = np.bincount(self.atom_bead, weights=self.weights, minlength=self.n_beads)
        values = self.weights / totals[self.atom_bead]
        return csr_matrix((values, (self.atom_bead, np.arange(self.n_atoms))), shape=(self.n_beads, self.n_atoms))

    # -- checks and identity ----------------------------------------------------------------
    def validate(self, where: str = "mapping") -> None:
        """Check internal consistency; raise :class:`CgsimInputError` naming the bad field."""
        n_b = self.n_beads
        if self.n_atoms == 0 or n_b == 0:
            raise CgsimInputError(where, "mapping has no atoms or no beads")
        if self.weighting not in WEIGHTINGS:
            raise CgsimInputError(where, f"field 'weighting' is {self.weighting!r}; expected one of {WEIGHTINGS}")
        if self.atom_bead.min() < 0 or self.atom_bead.max() >= n_b:
            raise CgsimInputError(where, f"an atom is assigned to a bead outside 0..{n_b - 1}")
        empty = np.flatnonzero(self.bead_sizes() == 0)
        if len(empty):
            raise CgsimInputError(where, f"bead {int(empty[0])} ({self.bead_names[int(empty[0])]}) has no atoms")
        if self.weights.shape != self.atom_bead.shape or not np.isfinite(self.weights).all() or (self.weights < 0).any():
            raise CgsimInputError(where, f"field 'weights' must hold one finite non-negative weight per atom ({self.n_atoms})")
        zero = np.flatnonzero(~(np.bincount(self.atom_bead, weights=self.weights, minlength=n_b) > 0))
        if len(zero):
            raise CgsimInputError(where, f"bead {int(zero[0])} ({self.bead_names[int(zero[0])]}) has weights summing to 0; "
                                         "expected a positive total weight per bead (its centre is undefined otherwise)")
        for name, arr in (("bead_types", self.bead_types), ("bead_masses", self.bead_masses),
                          ("bead_charges", self.bead_charges), ("bead_molecule", self.bead_molecule)):
            if arr.shape != (n_b,):
                raise CgsimInputError(where, f"field '{name}' has shape {arr.shape}; expected ({n_b},)")
        if self.bead_types.min() < 0 or self.bead_types.max() >= self.n_types:
            raise CgsimInputError(where, f"a bead type is outside 0..{self.n_types - 1}")
        if len(self.bonds) and (self.bonds.min() < 0 or self.bonds.max() >= n_b or (self.bonds[:, 0] >= self.bonds[:, 1]).any()):
            raise CgsimInputError(where, f"field 'bonds' must hold bead pairs i < j within 0..{n_b - 1}")
        if self.bead_molecule.min() < 0 or self.bead_molecule.max() >= self.n_molecules:
            raise CgsimInputError(where, f"a bead's molecule is outside 0..{self.n_molecules - 1}")
        if np.any(np.diff(self.bead_molecule) < 0):
            raise CgsimInputError(where, "beads must be ordered by molecule (field 'molecule' non-decreasing)")
        if self.atom_labels is not None and len(self.atom_labels) != self.n_atoms:
            raise CgsimInputError(where, f"field 'atoms.labels' has {len(self.atom_labels)} entries; expected {self.n_atoms}")
        if self.atom_bonds is not None and len(self.atom_bonds) and (
                self.atom_bonds.min() < 0 or self.atom_bonds.max() >= self.n_atoms):
            raise CgsimInputError(where, f"field 'atoms.bonds' must hold atom pairs within 0..{self.n_atoms - 1}")
        for b, name in enumerate(self.bead_names):
            if not 0 < len(name) <= 4:
                raise CgsimInputError(where, f"bead {b} name {name!r} must have 1 to 4 characters (PDB atom name)")

    def content_hash(self) -> str:
        """``sha256:<hex>`` of everything that changes a mapped trajectory."""
        h = hashlib.sha256()

        def add(tag: str, data: bytes) -> None:
            h.update(tag.encode())
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)

        add("atom_bead", self.atom_bead.astype("<i8").tobytes())
        add("weights", self.weights.astype("<f8").tobytes())
        add("bead_names", "\x00".join(self.bead_names).encode())
        add("bead_types", self.bead_types.astype("<i8").tobytes())
        add("type_names", "\x00".join(self.type_names).encode())
        add("bead_masses", self.bead_masses.astype("<f8").tobytes())
        add("bead_charges", self.bead_charges.astype("<f8").tobytes())
        add("bonds", self.bonds.astype("<i8").tobytes())
        add("bead_molecule", self.bead_molecule.astype("<i8").tobytes())
        add("molecule_names", "\x00".join(self.molecule_names).encode())
        add("weighting", self.weighting.encode())
        return f"sha256:{h.hexdigest()}"

    def summary(self) -> dict[str, Any]:
        """Small description for logs and metadata."""
        sizes = self.bead_sizes()
        return {"scheme": self.scheme, "weighting": self.weighting, "n_atoms": self.n_atoms, "n_beads": self.n_beads,
                "n_types": self.n_types, "n_molecules": self.n_molecules, "n_bonds": int(len(self.bonds)),
                "atoms_per_bead": {"mean": float(sizes.mean()), "min": int(sizes.min()), "max": int(sizes.max())},
                "total_mass": float(self.bead_masses.sum()), "total_charge": float(self.bead_charges.sum()),
                "hash": self.content_hash()}


# ------------------------------------------------------------------------------------------
# the file
# ------------------------------------------------------------------------------------------
def format_ranges(indices: np.ndarray) -> str:
    """Ascending integers -> compact ranges, e.g. ``[0, 1, 2, 5, 7, 8]`` -> ``"0-2 5 7-8"``."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        return ""
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], [idx[-1]]])
    return " ".join(str(s) if s == e else f"{s}-{e}" for s, e in zip(starts.tolist(), ends.tolist(), strict=True))


def parse_ranges(text: Any, where: str) -> np.ndarray:
    """Inverse of :func:`format_ranges` (also accepts a single int or a list of ints)."""
    if isinstance(text, bool):
        raise CgsimInputError(where, f"expected atom indices like '0-6 9', got {text!r}")
    if isinstance(text, int):
        return np.array([text], dtype=np.int64)
    if isinstance(text, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in text):
        return np.array(text, dtype=np.int64)
    if not isinstance(text, str):
        raise CgsimInputError(where, f"expected atom indices like '0-6 9', got {text!r}")
    out: list[np.ndarray] = []
    for part in text.replace(",", " ").split():
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                out.append(np.arange(lo, hi + 1, dtype=np.int64))
            else:
                out.append(np.array([int(part)], dtype=np.int64))
        except ValueError:
            raise CgsimInputError(where, f"bad atom range {part!r}; expected e.g. '0-6 9 12-14'") from None
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _flow_list(values: list[Any]) -> str:
    return "[" + ", ".join(values) + "]"


def mapping_to_yaml(mapping: CGMapping) -> str:
    """The text of ``mapping.yaml`` (see the module docstring)."""
    mapping.validate()
    head = {
        "format": MAPPING_FORMAT,
        "version": MAPPING_VERSION,
        "hash": mapping.content_hash(),
        "scheme": mapping.scheme,
        "options": mapping.options,
        "weighting": mapping.weighting,
        "units": {"mass": "amu", "charge": "e"},
        "n_atoms": mapping.n_atoms,
        "n_beads": mapping.n_beads,
    }
    lines = [yaml.safe_dump(head, sort_keys=False, default_flow_style=None).rstrip()]
    dump1 = lambda v: yaml.safe_dump(v, default_flow_style=True, width=10**9).strip().removesuffix("\n...")  # noqa: E731
    lines.append("types: " + dump1(mapping.type_names))
    lines.append("molecules: " + dump1(mapping.molecule_names))
    lines.append("beads:")
    geometry = mapping.weighting == "geometry"
    for b, atoms in enumerate(mapping.bead_atoms()):
        fields = [f"name: {dump1(mapping.bead_names[b])}", f"type: {int(mapping.bead_types[b])}",
                  f"molecule: {int(mapping.bead_molecule[b])}", f"mass: {float(mapping.bead_masses[b])!r}",
                  f"charge: {float(mapping.bead_charges[b])!r}", f"atoms: '{format_ranges(atoms)}'"]
        if not geometry:
            fields.append("weights: " + _flow_list([repr(float(w)) for w in mapping.weights[atoms]]))
        lines.append("- {" + ", ".join(fields) + "}")
    lines.append("bonds: " + _flow_list([f"[{int(i)}, {int(j)}]" for i, j in mapping.bonds]))
    if mapping.atom_labels is not None:
        # the fine topology (not part of the hash: it does not change the mapped trajectory)
        lines.append("atoms:")
        lines.append("  labels: " + dump1(mapping.atom_labels))
        bonds = mapping.atom_bonds if mapping.atom_bonds is not None else np.zeros((0, 2), dtype=np.int64)
        lines.append("  bonds: " + _flow_list([f"[{int(i)}, {int(j)}]" for i, j in bonds]))
    return "\n".join(lines) + "\n"


def save_mapping(mapping: CGMapping, path: str | Path) -> Path:
    """Write ``mapping`` to ``path`` (YAML, atomically); returns the path."""
    path = Path(path)
    write_text_atomic(path, mapping_to_yaml(mapping))
    return path


def _loader() -> type:
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def is_mapping_file(data: Any) -> bool:
    """Whether parsed YAML is a saved :class:`CGMapping` (rather than a user mapping spec)."""
    return isinstance(data, dict) and data.get("format") == MAPPING_FORMAT


def mapping_from_dict(data: dict[str, Any], where: str) -> CGMapping:
    """A :class:`CGMapping` from the parsed content of ``mapping.yaml``; checks its hash."""
    if not is_mapping_file(data):
        raise CgsimInputError(where, f"field 'format' is {data.get('format') if isinstance(data, dict) else None!r}; expected {MAPPING_FORMAT!r}")
    if data.get("version") != MAPPING_VERSION:
        raise CgsimInputError(where, f"field 'version' is {data.get('version')!r}; this cgsim reads version {MAPPING_VERSION}")
    for key in ("n_atoms", "beads", "types", "molecules", "weighting"):
        if key not in data:
            raise CgsimInputError(where, f"field '{key}' is missing")
    n_atoms = data["n_atoms"]
    beads = data["beads"]
    if not isinstance(n_atoms, int) or n_atoms <= 0 or not isinstance(beads, list) or not beads:
        raise CgsimInputError(where, "fields 'n_atoms' (positive int) and 'beads' (non-empty list) are required")
    geometry = data["weighting"] == "geometry"
    atom_bead = np.full(n_atoms, -1, dtype=np.int64)
    weights = np.ones(n_atoms, dtype=np.float64)
    names, types, mols, masses, charges = [], [], [], [], []
    for b, bead in enumerate(beads):
        bw = f"{where}: beads[{b}]"
        if not isinstance(bead, dict):
            raise CgsimInputError(bw, "expected a mapping with name, type, molecule, mass, charge, atoms")
        try:
            atoms = parse_ranges(bead["atoms"], bw)
            names.append(str(bead["name"]))
            types.append(int(bead["type"]))
            mols.append(int(bead["molecule"]))
            masses.append(float(bead["mass"]))
            charges.append(float(bead["charge"]))
        except KeyError as exc:
            raise CgsimInputError(bw, f"field {exc} is missing") from None
        except (TypeError, ValueError) as exc:
            raise CgsimInputError(bw, f"bad value ({exc})") from None
        if len(atoms) == 0:
            raise CgsimInputError(bw, "field 'atoms' lists no atoms")
        if atoms.min() < 0 or atoms.max() >= n_atoms:
            raise CgsimInputError(bw, f"atom index outside 0..{n_atoms - 1}")
        twice = atoms[atom_bead[atoms] >= 0]
        if len(twice) or len(np.unique(atoms)) != len(atoms):
            a = int(twice[0]) if len(twice) else int(atoms[np.flatnonzero(np.diff(np.sort(atoms)) == 0)[0]])
            raise CgsimInputError(bw, f"atom {a} is assigned to more than one bead")
        atom_bead[atoms] = b
        if not geometry:
            w = bead.get("weights")
            if not isinstance(w, list) or len(w) != len(atoms):
                raise CgsimInputError(bw, f"field 'weights' must list {len(atoms)} numbers (one per atom) for mass weighting")
            weights[atoms] = np.asarray(w, dtype=np.float64)
    missing = np.flatnonzero(atom_bead < 0)
    if len(missing):
        raise CgsimInputError(where, f"atom {int(missing[0])} is in no bead ({len(missing)} unassigned); every atom must be in exactly one bead")
    bonds = np.asarray(data.get("bonds") or [], dtype=np.int64).reshape(-1, 2)
    mapping = CGMapping(atom_bead=atom_bead, weights=weights, bead_names=names, bead_types=np.array(types),
                        type_names=list(data["types"]), bead_masses=np.array(masses), bead_charges=np.array(charges),
                        bonds=bonds, bead_molecule=np.array(mols), molecule_names=list(data["molecules"]),
                        weighting=str(data["weighting"]), scheme=str(data.get("scheme", "")),
                        options=dict(data.get("options") or {}),
                        atom_labels=(data.get("atoms") or {}).get("labels"),
                        atom_bonds=(data.get("atoms") or {}).get("bonds") if data.get("atoms") else None)
    mapping.validate(where)
    stored = data.get("hash")
    if stored is not None and stored != mapping.content_hash():
        raise CgsimInputError(where, f"content does not match its hash {stored} (edited by hand?); "
                                     "delete the 'hash' line to accept the edit")
    return mapping


def load_mapping(path: str | Path) -> CGMapping:
    """Read a ``mapping.yaml`` written by :func:`save_mapping`.

    Raises
    ------
    CgsimInputError
        Missing file, malformed YAML, a field out of range, atoms unassigned or assigned
        twice, or content that does not match the stored hash.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise CgsimInputError(where, "mapping file not found")
    try:
        data = yaml.load(path.read_text(), Loader=_loader())  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise CgsimInputError(where, f"not valid YAML{at}") from None
    return mapping_from_dict(data, where)
