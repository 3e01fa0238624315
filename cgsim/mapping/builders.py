"""Ways to build a :class:`~cgsim.mapping.core.CGMapping` for an :class:`AtomSystem`.

========== ==================================================================================
scheme     beads
========== ==================================================================================
molecule   one bead per molecule (ions, small solvent molecules)
residue    one bead per residue (per monomer)
metis      each molecule's bond graph cut into connected beads of about ``atoms_per_bead``
           atoms by METIS (pymetis), never across molecules; molecules of at most
           ``keep_whole_max_atoms`` atoms stay one bead; deterministic for a given ``seed``,
           and identical molecules (same atom labels and bonds in the same order) are cut
           identically
file       beads listed by atom names per residue type in a YAML file
           (:mod:`cgsim.mapping.spec`), or a saved ``mapping.yaml`` reused as it is
========== ==================================================================================

Bead types are assigned by chemistry for every scheme: two beads share a type when their
atoms carry the same multiset of labels (:attr:`AtomSystem.atom_types`) bonded the same way
inside the bead (compared by a Weisfeiler-Lehman hash of the bead's bond graph;
:func:`cgsim.mapping.assemble.finish_mapping` does that for every scheme).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cgsim.errors import CgsimInputError
from cgsim.mapping.assemble import finish_mapping
from cgsim.mapping.core import CGMapping
from cgsim.mapping.spec import mapping_from_file
from cgsim.mapping.system import AtomSystem, ChargesLike

SCHEMES = ("molecule", "residue", "metis", "file")


# ------------------------------------------------------------------------------------------
# schemes
# ------------------------------------------------------------------------------------------
def _molecule_scheme(system: AtomSystem) -> tuple[np.ndarray, dict[int, str], dict[int, bool]]:
    raw = system.molecule
    return raw, {m: system.molecule_names[m] for m in range(system.n_molecules)}, dict.fromkeys(range(system.n_molecules), False)


def _residue_scheme(system: AtomSystem) -> tuple[np.ndarray, dict[int, str], dict[int, bool]]:
    raw = np.array([a.residue.index for a in system.topology.atoms], dtype=np.int64)
    bases = {r.index: r.name[:4] for r in system.topology.residues}
    return raw, bases, dict.fromkeys(bases, False)


def _partition(n: int, local_bonds: np.ndarray, nparts: int, seed: int) -> np.ndarray:
    """METIS partition of a connected graph on ``n`` nodes into ``nparts`` connected parts,
    relabelled by first node; shape (n,), int64."""
    import pymetis

    if nparts <= 1:
        return np.zeros(n, dtype=np.int64)
    if nparts >= n:
        return np.arange(n, dtype=np.int64)
    graph = coo_matrix((np.ones(2 * len(local_bonds)),
                        (np.concatenate([local_bonds[:, 0], local_bonds[:, 1]]),
                         np.concatenate([local_bonds[:, 1], local_bonds[:, 0]]))), shape=(n, n)).tocsr()
    graph.sum_duplicates()
    graph.sort_indices()
    opts = pymetis.Options(seed=int(seed), contig=1)
    starts, adjacent = graph.indptr.astype(np.int64), graph.indices.astype(np.int64)
    if hasattr(pymetis, "CSRAdjacency"):
        result = pymetis.part_graph(nparts, adjacency=pymetis.CSRAdjacency(starts, adjacent), options=opts)
    else:  # pragma: no cover - pymetis < 2025.2
        result = pymetis.part_graph(nparts, xadj=starts, adjncy=adjacent, options=opts)
    parts = np.asarray(result[1], dtype=np.int64)
    _, first, inv = np.unique(parts, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inv]


def _metis_scheme(system: AtomSystem, atoms_per_bead: float, keep_whole_max_atoms: int, seed: int,
                  ) -> tuple[np.ndarray, dict[int, str], dict[int, bool]]:
    if not atoms_per_bead > 0:
        raise CgsimInputError("mapping.atoms_per_bead", f"expected a positive number, got {atoms_per_bead}")
    if keep_whole_max_atoms < 0:
        raise CgsimInputError("mapping.keep_whole_max_atoms", f"expected a number >= 0, got {keep_whole_max_atoms}")
    n = system.n_atoms
    raw = np.empty(n, dtype=np.int64)
    bases: dict[int, str] = {}
    numbered: dict[int, bool] = {}
    bonds = system.bonds
    bond_mol = system.molecule[bonds[:, 0]] if len(bonds) else np.zeros(0, dtype=np.int64)
    border = np.argsort(bond_mol, kind="stable")
    bbounds = np.searchsorted(bond_mol[border], np.arange(system.n_molecules + 1))
    cache: dict[tuple, np.ndarray] = {}
    next_label = 0
    for m, atoms in enumerate(system.molecule_atoms()):
        size = len(atoms)
        local = np.searchsorted(atoms, bonds[border[bbounds[m]:bbounds[m + 1]]]).reshape(-1, 2)
        nparts = 1 if size <= keep_whole_max_atoms else max(1, int(round(size / atoms_per_bead)))
        key = (tuple(system.atom_types[atoms].tolist()), local.tobytes(), nparts)
        parts = cache.get(key)
        if parts is None:
            if nparts > 1:
                g = coo_matrix((np.ones(len(local)), (local[:, 0], local[:, 1])), shape=(size, size))
                n_comp, _ = connected_components(g, directed=False)
                if n_comp != 1:
                    raise CgsimInputError("mapping=metis", f"molecule {m} ({system.molecule_names[m]}, {size} atoms) is not connected by bonds; "
                                                           "METIS cuts bond graphs, so use a topology with bonds (PDB with CONECT, "
                                                           "LAMMPS data file) or mapping=residue")
            parts = _partition(size, local, nparts, seed)
            cache[key] = parts
        n_parts = int(parts.max()) + 1
        raw[atoms] = next_label + parts
        for p in range(n_parts):
            whole = n_parts == 1
            bases[next_label + p] = system.molecule_names[m] if whole else "B"
            numbered[next_label + p] = not whole
        next_label += n_parts
    return raw, bases, numbered


def build_mapping(system: AtomSystem, scheme: str, weighting: str = "mass", *,
                  charges: ChargesLike | None = None, **options: Any) -> CGMapping:
    """Build a mapping of ``system`` with one of :data:`SCHEMES`.

    Parameters
    ----------
    system : AtomSystem
        The fine system (see :func:`cgsim.mapping.system.system_from_topology`).
    scheme : {"molecule", "residue", "metis", "file"}
        How to group atoms into beads (module docstring).
    weighting : {"mass", "geometry"}
        Bead position = centre of mass or centre of geometry of its atoms.
    charges : numpy.ndarray or path-like, optional
        Atom charges, e, shape (n_atoms,), or a charges file (``.npy``, ``.txt``/``.dat``/
        ``.csv``, OpenMM System ``.xml``; :func:`cgsim.mapping.charges.read_charges`) that
        replace ``system.charges``; bead charges are the sums over their atoms. Default: the
        system's own charges (zeros when ``system.charges_known`` is False).
    **options
        ``metis``: ``atoms_per_bead`` (float, default 7), ``keep_whole_max_atoms`` (int,
        default 15), ``seed`` (int, default 0). ``file``: ``path`` (the YAML file).

    Returns
    -------
    CGMapping
        Validated mapping; beads numbered by molecule then first atom.

    Raises
    ------
    CgsimInputError
        Unknown scheme or option, bad option value, beads crossing molecules, a mapping file
        naming missing atoms or leaving atoms unassigned or assigned twice, bad ``charges``
        (missing or unreadable file, wrong count, non-finite values).
    """
    allowed = {"molecule": set(), "residue": set(), "metis": {"atoms_per_bead", "keep_whole_max_atoms", "seed"},
               "file": {"path"}}
    if scheme not in allowed:
        raise CgsimInputError("mapping.scheme", f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
    extra = set(options) - allowed[scheme]
    if extra:
        raise CgsimInputError(f"mapping.{sorted(extra)[0]}", f"not an option of scheme {scheme!r}; expected {sorted(allowed[scheme]) or 'none'}")
    if charges is not None:
        system = system.with_charges(charges)
    if scheme == "molecule":
        raw, bases, numbered = _molecule_scheme(system)
        return finish_mapping(system, raw, bases, numbered, weighting, scheme, options)
    if scheme == "residue":
        raw, bases, numbered = _residue_scheme(system)
        return finish_mapping(system, raw, bases, numbered, weighting, scheme, options)
    if scheme == "metis":
        opts = {"atoms_per_bead": float(options.get("atoms_per_bead", 7)),
                "keep_whole_max_atoms": int(options.get("keep_whole_max_atoms", 15)),
                "seed": int(options.get("seed", 0))}
        raw, bases, numbered = _metis_scheme(system, **opts)
        return finish_mapping(system, raw, bases, numbered, weighting, scheme, opts)
    if "path" not in options or not options["path"]:
        raise CgsimInputError("mapping.path", "scheme 'file' needs mapping.path=FILE.yaml")
    return mapping_from_file(system, str(options["path"]), weighting)
