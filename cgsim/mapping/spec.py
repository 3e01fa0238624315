"""User mapping files: beads listed by atom names per residue type (``mapping=file``).

A mapping spec is YAML with one entry per residue name; each entry lists that residue's
beads, each with a name (<= 4 characters) and its atoms by name. ``+1:NAME`` (``-1:NAME``)
names an atom of the next (previous) residue of the same molecule, so a bead may span two
residues. The spec is applied to every residue of that name::

    # PEO chain CH3-[O-CH2-CH2]n-O-CH3 with beads centred on the C-C bond
    residues:
      HED:
        - {name: HD, atoms: [C1, H1, H2, H3, "+1:O1"]}
      EO:
        - {name: EO, atoms: [C1, H11, H12, C2, H21, H22, "+1:O1"]}
      TAL:
        - {name: TL, atoms: [C1, H1, H2, H3]}
      LI:
        - {name: LI, atoms: [LI]}

Every atom must end up in exactly one bead; a residue name missing from the file, an atom
name a residue does not have, an atom claimed twice or left out is an error that names the
file, the entry and the atom. LAMMPS inputs have one residue per molecule, named as in
:func:`cgsim.io.lammps.lammps_topology` (``LI``, ``M1``, ...; atoms ``C1``, ``H2``, ... by
position in the molecule).

A file that is a saved ``mapping.yaml`` (``format: cgsim-mapping``) is reused as it is.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cgsim.errors import CgsimInputError
from cgsim.mapping.assemble import finish_mapping
from cgsim.mapping.core import CGMapping, is_mapping_file, mapping_from_dict
from cgsim.mapping.system import AtomSystem

log = logging.getLogger(__name__)

_REF = re.compile(r"^([+-]\d+):(.+)$")


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise CgsimInputError(str(path), "mapping file not found")
    try:
        return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise CgsimInputError(str(path), f"not valid YAML{at}") from None


def _parse_spec(data: Any, where: str) -> dict[str, list[tuple[str, list[tuple[int, str]]]]]:
    """Check the spec's structure -> {resname: [(bead name, [(offset, atom name), ...]), ...]}."""
    if not isinstance(data, dict) or "residues" not in data:
        raise CgsimInputError(where, "expected a mapping spec with a 'residues' section (or a saved mapping.yaml)")
    extra = set(data) - {"residues", "description"}
    if extra:
        raise CgsimInputError(where, f"unknown field {sorted(extra)[0]!r}; expected 'residues' (and optional 'description')")
    residues = data["residues"]
    if not isinstance(residues, dict) or not residues:
        raise CgsimInputError(where, "field 'residues' must map residue names to lists of beads")
    out: dict[str, list[tuple[str, list[tuple[int, str]]]]] = {}
    for resname, beads in residues.items():
        key = f"residues.{resname}"
        if not isinstance(beads, list) or not beads:
            raise CgsimInputError(where, f"{key} must be a non-empty list of beads like {{name: B1, atoms: [C1, H1]}}")
        parsed = []
        for k, bead in enumerate(beads):
            bkey = f"{key}[{k}]"
            if not isinstance(bead, dict) or set(bead) - {"name", "atoms"} or "atoms" not in bead or "name" not in bead:
                raise CgsimInputError(where, f"{bkey} must have exactly the fields 'name' and 'atoms'")
            name = str(bead["name"])
            if not 0 < len(name) <= 4:
                raise CgsimInputError(where, f"{bkey}: bead name {name!r} must have 1 to 4 characters (PDB atom name)")
            atoms = bead["atoms"]
            if not isinstance(atoms, list) or not atoms:
                raise CgsimInputError(where, f"{bkey} ({name}): 'atoms' must be a non-empty list of atom names")
            refs = []
            for a in atoms:
                text = str(a)
                m = _REF.match(text)
                refs.append((int(m.group(1)), m.group(2)) if m else (0, text))
            parsed.append((name, refs))
        out[str(resname)] = parsed
    return out


def mapping_from_spec(system: AtomSystem, data: Any, weighting: str, where: str) -> CGMapping:
    """Apply a parsed mapping spec (module docstring) to every residue of ``system``."""
    spec = _parse_spec(data, where)
    top = system.topology
    residues = list(top.residues)
    res_mol = np.array([system.molecule[r.atom(0).index] if r.n_atoms else -1 for r in residues], dtype=np.int64)
    names_of: list[dict[str, int] | None] = [None] * len(residues)

    def atom_names(ri: int) -> dict[str, int]:
        if names_of[ri] is None:
            d: dict[str, int] = {}
            for a in residues[ri].atoms:
                d[a.name] = -1 if a.name in d else a.index  # -1 marks a duplicate name
            names_of[ri] = d
        return names_of[ri]  # type: ignore[return-value]

    def label(ri: int) -> str:
        r = residues[ri]
        return f"{r.name}{r.resSeq} (residue index {ri})"

    raw = np.full(system.n_atoms, -1, dtype=np.int64)
    bead_names: dict[int, str] = {}
    where_of: dict[int, str] = {}
    next_bead = 0
    for ri, res in enumerate(residues):
        beads = spec.get(res.name)
        if beads is None:
            raise CgsimInputError(where, f"residue type {res.name!r} ({label(ri)}) has no entry under 'residues'; "
                                         "expected beads for every residue type in the topology")
        for k, (bname, refs) in enumerate(beads):
            bkey = f"residues.{res.name}[{k}] ({bname})"
            idx = []
            for offset, aname in refs:
                rj = ri + offset
                if offset and (rj < 0 or rj >= len(residues) or res_mol[rj] != res_mol[ri]):
                    raise CgsimInputError(where, f"{bkey} names '{offset:+d}:{aname}', but {label(ri)} has no "
                                                 f"{'next' if offset > 0 else 'previous'} residue in its molecule")
                a = atom_names(rj).get(aname)
                if a is None:
                    have = ", ".join(atom_names(rj))
                    raise CgsimInputError(where, f"{bkey} names atom {aname!r}, but {label(rj)} has no such atom (its atoms: {have})")
                if a < 0:
                    raise CgsimInputError(where, f"{bkey} names atom {aname!r}, but {label(rj)} has two atoms of that name")
                if raw[a] >= 0:
                    raise CgsimInputError(where, f"atom {aname!r} of {label(rj)} is in two beads: {where_of[int(raw[a])]} and {bkey}")
                raw[a] = next_bead
                idx.append(a)
            bead_names[next_bead] = bname
            where_of[next_bead] = f"{bkey} of {label(ri)}"
            next_bead += 1
    left = np.flatnonzero(raw < 0)
    if len(left):
        a = top.atom(int(left[0]))
        raise CgsimInputError(where, f"atom {a.name!r} of {label(a.residue.index)} is in no bead ({len(left)} atoms unassigned); "
                                     f"list every atom of residue type {a.residue.name!r}")
    unused = sorted(set(spec) - {r.name for r in residues})
    if unused:
        log.info("%s: residue types %s do not occur in the topology", where, ", ".join(unused))
    bases = dict(bead_names)
    return finish_mapping(system, raw, bases, dict.fromkeys(bases, False), weighting, "file", {"path": where},
                          bead_names=bead_names, where=where)


def mapping_from_file(system: AtomSystem, path: str, weighting: str) -> CGMapping:
    """A mapping from a user spec file, or a saved ``mapping.yaml`` checked against ``system``.

    A saved mapping is reused as it is, except that when ``system`` knows its atom charges
    (``charges_known``) and they sum to other bead charges than the saved ones, the bead
    charges are taken from the atoms (logged; the mapping hash then changes).

    Raises
    ------
    CgsimInputError
        Anything wrong with the file, or a saved mapping made for other atoms (count or
        masses differ).
    """
    p = Path(path)
    data = _read_yaml(p)
    if is_mapping_file(data):
        mapping = mapping_from_dict(data, str(p))
        if mapping.n_atoms != system.n_atoms:
            raise CgsimInputError(str(p), f"mapping is for {mapping.n_atoms} atoms but the topology has {system.n_atoms}")
        if mapping.weighting == "mass" and not np.allclose(mapping.weights, system.masses, rtol=1e-3, atol=1e-3):
            a = int(np.flatnonzero(~np.isclose(mapping.weights, system.masses, rtol=1e-3, atol=1e-3))[0])
            raise CgsimInputError(str(p), f"mapping weight of atom {a} is {mapping.weights[a]:g} amu but its mass in the topology is "
                                          f"{system.masses[a]:g}; the mapping was made for other atoms")
        if mapping.weighting != weighting:
            log.warning("%s: saved mapping uses weighting=%s; mapping.weighting=%s is ignored", p, mapping.weighting, weighting)
        if system.charges_known:
            summed = np.bincount(mapping.atom_bead, weights=system.charges, minlength=mapping.n_beads)
            if not np.allclose(summed, mapping.bead_charges, rtol=0.0, atol=1e-6):
                log.warning("%s: bead charges recomputed from the atom charges of %s (total %.6g e, saved %.6g e); "
                            "the mapping hash changes", p, system.charges_source or system.source, summed.sum(),
                            mapping.bead_charges.sum())
                mapping.bead_charges = summed
        if mapping.atom_labels is None:  # older file without the fine topology: take it from the input
            mapping.atom_labels = [str(x) for x in system.atom_types]
            mapping.atom_bonds = np.sort(np.asarray(system.bonds, dtype=np.int64).reshape(-1, 2), axis=1)
        return mapping
    return mapping_from_spec(system, data, weighting, str(p))
