"""All-atom PEO + LiTFSI: composition, molecules, packing and the OPLS OpenMM System.

The force field is ``cgsim/reference/forcefields/peo_litfsi.xml`` (OPLS-AA poly(ethylene
oxide) CH3-O-(CH2-CH2-O)n-CH3, Canongia Lopes & Padua TFSI-, Aqvist Li+; sources in its
header). :func:`create_system` turns it into an OpenMM System with OPLS non-bonded rules:

- Lennard-Jones with **geometric** mixing, ``sigma_ij = sqrt(sigma_i sigma_j)`` and
  ``epsilon_ij = sqrt(epsilon_i epsilon_j)``, in a :class:`openmm.CustomNonbondedForce`,
  cut at ``cutoff`` with the long-range dispersion correction;
- Coulomb with PME in a :class:`openmm.NonbondedForce` whose own LJ is switched off;
- 1-2 and 1-3 pairs excluded; 1-4 pairs (three bonds apart) kept as exceptions of the
  NonbondedForce with Coulomb and LJ both scaled by 0.5 and the LJ sigma mixed geometrically;
- ionic charges (Li+ and TFSI-) scaled by ``charge_scale`` (0.8 by default), a common
  mean-field correction for the missing electronic polarisation.

Molecule geometry is cgsim's own (:mod:`cgsim.reference.electrolyte_geometry`, whose public
functions are importable from here): PEO chains are grown with rotational-isomeric torsions
(O-C-C-O mostly gauche, C-O-C-C mostly trans) and kept compact enough to fit the box; TFSI-
is built from the force field's bond lengths and angles. Packing uses the ``packmol`` binary
(the PyPI package ``packmol`` ships it) with periodic boundaries, so molecules come out whole.

Atom order of a system: all PEO chains (residues PEH, n x PEO, PET), then all Li+ (LI), then
all TFSI- (TFS). Each molecule is one chain of the topology.
"""

from __future__ import annotations

import hashlib
import math
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import mdtraj as md
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u

from cgsim.errors import CgsimInputError
from cgsim.reference.electrolyte_geometry import (  # noqa: F401 - re-exported
    chain_conformation,
    find_packmol,
    initial_positions,
    pack_molecules,
    tfsi_conformation,
)
from cgsim.units import AVOGADRO

#: The shipped force field.
FORCEFIELD_FILE = Path(__file__).resolve().parent / "forcefields" / "peo_litfsi.xml"
#: Residues whose charges are scaled by ``charge_scale``.
ION_RESIDUES = frozenset({"LI", "TFS"})
#: OPLS 1-4 scaling of Coulomb and Lennard-Jones.
COULOMB_14_SCALE = 0.5
LJ_14_SCALE = 0.5
#: amu / nm^3 in one g / cm^3.
AMU_PER_NM3_PER_G_CM3 = AVOGADRO * 1.0e-21
#: Force groups: bonded terms, Lennard-Jones (custom, geometric), Coulomb + 1-4 exceptions.
GROUP_BONDED, GROUP_LJ, GROUP_COULOMB = 0, 1, 2

_ELEMENTS = {"H": app.element.hydrogen, "C": app.element.carbon, "O": app.element.oxygen,
             "N": app.element.nitrogen, "S": app.element.sulfur, "F": app.element.fluorine,
             "Li": app.element.lithium}


@dataclass(frozen=True)
class Composition:
    """What is in the box.

    Attributes
    ----------
    n_chains : int
        Number of PEO chains, > 0.
    chain_length : int
        Ethylene-oxide units per chain, n in CH3-O-(CH2-CH2-O)n-CH3, > 0.
    n_salt : int
        Number of LiTFSI ion pairs, >= 0.
    """

    n_chains: int
    chain_length: int
    n_salt: int

    def __post_init__(self) -> None:
        for name, lo in (("n_chains", 1), ("chain_length", 1), ("n_salt", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
                what = "a positive integer" if lo else "an integer >= 0"
                raise CgsimInputError(f"system.{name}", f"expected {what}, got {value!r}")

    @classmethod
    def from_ratio(cls, n_chains: int, chain_length: int, eo_li_ratio: float) -> Composition:
        """Composition with ``n_salt = round(n_chains * chain_length / eo_li_ratio)``."""
        if not (isinstance(eo_li_ratio, int | float) and math.isfinite(eo_li_ratio) and eo_li_ratio > 0):
            raise CgsimInputError("system.eo_li_ratio", f"expected a positive number, got {eo_li_ratio!r}")
        probe = cls(n_chains, chain_length, 0)  # validates the chain numbers first
        return cls(probe.n_chains, probe.chain_length, int(round(n_chains * chain_length / eo_li_ratio)))

    @property
    def atoms_per_chain(self) -> int:
        """Atoms of one chain: 5 (CH3-O) + 7 n (CH2-CH2-O) + 4 (CH3)."""
        return 7 * self.chain_length + 9

    @property
    def n_atoms(self) -> int:
        """Atoms in the box."""
        return self.n_chains * self.atoms_per_chain + 16 * self.n_salt

    @property
    def eo_li_ratio(self) -> float:
        """Ether oxygens of the repeat units per Li+ (inf without salt)."""
        return self.n_chains * self.chain_length / self.n_salt if self.n_salt else math.inf

    @property
    def label(self) -> str:
        """Short name, e.g. ``peo8x20_litfsi10``."""
        return f"peo{self.n_chains}x{self.chain_length}_litfsi{self.n_salt}"


@dataclass
class ElectrolyteSystem:
    """An OpenMM System of a composition and the per-particle non-bonded parameters it uses.

    Attributes
    ----------
    system : openmm.System
        The System (units of OpenMM).
    topology : openmm.app.Topology
        Its topology (residues, bonds, box).
    atom_types : list[str]
        Force-field atom type of each particle (length n_particles).
    charges : numpy.ndarray
        Charge of each particle after ion scaling, e, shape (n_particles,).
    sigma : numpy.ndarray
        LJ sigma of each particle, nm, shape (n_particles,).
    epsilon : numpy.ndarray
        LJ epsilon of each particle, kJ/mol, shape (n_particles,).
    pairs_14 : numpy.ndarray
        Atom pairs three bonds apart (i < j), shape (n_pairs, 2), int64.
    charge_scale : float
        Factor applied to the charges of Li+ and TFSI-.
    """

    system: openmm.System
    topology: app.Topology
    atom_types: list[str]
    charges: np.ndarray
    sigma: np.ndarray
    epsilon: np.ndarray
    pairs_14: np.ndarray
    charge_scale: float

    @property
    def n_constraints(self) -> int:
        """Number of distance constraints."""
        return self.system.getNumConstraints()


# ------------------------------------------------------------------------------------------
# composition, topology and masses
# ------------------------------------------------------------------------------------------
def build_topology(comp: Composition, box_length: float | None = None) -> app.Topology:
    """OpenMM topology of a composition: one chain per molecule, residues and bonds.

    PEO chain residues: ``PEH`` (CH3-O), ``chain_length`` x ``PEO`` (CH2-CH2-O), ``PET`` (CH3).
    Ions: ``LI`` and ``TFS``. Atom order is that of :func:`chain_conformation` and
    :func:`tfsi_conformation`.

    Parameters
    ----------
    comp : Composition
        What to build.
    box_length : float, optional
        Cubic box edge, nm; sets the topology's periodic box.
    """
    top = app.Topology()

    def add(res: app.Residue, name: str, symbol: str) -> app.Atom:
        return top.addAtom(name, _ELEMENTS[symbol], res)

    for _ in range(comp.n_chains):
        chain = top.addChain()
        res = top.addResidue("PEH", chain, id="1")
        c = add(res, "C", "C")
        hs = [add(res, f"H{k}", "H") for k in (1, 2, 3)]
        o = add(res, "O", "O")
        for h in hs:
            top.addBond(c, h)
        top.addBond(c, o)
        prev_o = o
        for k in range(comp.chain_length):
            res = top.addResidue("PEO", chain, id=str(k + 2))
            c1 = add(res, "C1", "C")
            h11, h12 = add(res, "H11", "H"), add(res, "H12", "H")
            c2 = add(res, "C2", "C")
            h21, h22 = add(res, "H21", "H"), add(res, "H22", "H")
            o = add(res, "O", "O")
            for a, b in ((prev_o, c1), (c1, h11), (c1, h12), (c1, c2), (c2, h21), (c2, h22), (c2, o)):
                top.addBond(a, b)
            prev_o = o
        res = top.addResidue("PET", chain, id=str(comp.chain_length + 2))
        c = add(res, "C", "C")
        top.addBond(prev_o, c)
        for k in (1, 2, 3):
            top.addBond(c, add(res, f"H{k}", "H"))
    for _ in range(comp.n_salt):
        res = top.addResidue("LI", top.addChain(), id="1")
        add(res, "LI", "Li")
    for _ in range(comp.n_salt):
        res = top.addResidue("TFS", top.addChain(), id="1")
        n = add(res, "N", "N")
        for s_idx in (1, 2):
            s = add(res, f"S{s_idx}", "S")
            top.addBond(n, s)
            for k in (1, 2):
                top.addBond(s, add(res, f"O{s_idx}{k}", "O"))
            c = add(res, f"C{s_idx}", "C")
            top.addBond(s, c)
            for k in (1, 2, 3):
                top.addBond(c, add(res, f"F{s_idx}{k}", "F"))
    if box_length is not None:
        top.setPeriodicBoxVectors(np.eye(3) * box_length * u.nanometer)
    return top


def masses(topology: app.Topology) -> np.ndarray:
    """Element mass of each atom, amu, shape (n_atoms,)."""
    return np.array([a.element.mass.value_in_unit(u.dalton) for a in topology.atoms()])


def molecule_indices(topology: app.Topology) -> list[np.ndarray]:
    """Atom indices of each molecule (= topology chain), in order."""
    return [np.array([a.index for a in ch.atoms()], dtype=np.int64) for ch in topology.chains()]


def species_indices(topology: app.Topology) -> dict[str, np.ndarray]:
    """Atom indices of each species: ``{"peo": ..., "li": ..., "tfsi": ...}`` (non-empty only)."""
    groups: dict[str, list[int]] = {"peo": [], "li": [], "tfsi": []}
    key = {"PEH": "peo", "PEO": "peo", "PET": "peo", "LI": "li", "TFS": "tfsi"}
    for atom in topology.atoms():
        groups[key[atom.residue.name]].append(atom.index)
    return {k: np.asarray(v, dtype=np.int64) for k, v in groups.items() if v}


def box_length_for_density(total_mass: float, density: float) -> float:
    """Edge of the cube holding ``total_mass`` amu at ``density`` g/cm^3, nm."""
    return (total_mass / (density * AMU_PER_NM3_PER_G_CM3)) ** (1.0 / 3.0)


def density_g_cm3(total_mass: float, volume: float | np.ndarray) -> float | np.ndarray:
    """Mass density in g/cm^3 of ``total_mass`` amu in ``volume`` nm^3."""
    return total_mass / (np.asarray(volume) * AMU_PER_NM3_PER_G_CM3)


# ------------------------------------------------------------------------------------------
# force field -> System
# ------------------------------------------------------------------------------------------
def forcefield_path(path: str | None = None) -> Path:
    """The force-field XML to use: ``path`` or the shipped one."""
    p = Path(path).expanduser() if path else FORCEFIELD_FILE
    if not p.is_file():
        raise CgsimInputError("system.forcefield", f"force-field file {p} not found")
    return p


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file (identifies the force field in metadata)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def residue_atom_types(path: Path) -> dict[tuple[str, str], str]:
    """``{(residue name, atom name): atom type}`` from the Residues of a ForceField XML."""
    root = ET.parse(path).getroot()
    out = {}
    for res in root.iter("Residue"):
        for atom in res.iter("Atom"):
            out[(res.get("name"), atom.get("name"))] = atom.get("type")
    return out


def pairs_14(topology: app.Topology) -> np.ndarray:
    """Atom pairs whose shortest bond path has exactly three bonds, (n_pairs, 2), i < j."""
    n = topology.getNumAtoms()
    nbrs: list[list[int]] = [[] for _ in range(n)]
    for a, b in topology.bonds():
        nbrs[a.index].append(b.index)
        nbrs[b.index].append(a.index)
    out = []
    for start in range(n):
        dist = {start: 0}
        queue = deque([start])
        while queue:
            i = queue.popleft()
            if dist[i] == 3:
                continue
            for j in nbrs[i]:
                if j not in dist:
                    dist[j] = dist[i] + 1
                    queue.append(j)
        out += [(start, j) for j, d in dist.items() if d == 3 and j > start]
    return np.asarray(sorted(out), dtype=np.int64).reshape(-1, 2)


def _scale_14(nb: openmm.NonbondedForce, p14: np.ndarray, q: np.ndarray, sig: np.ndarray,
              eps: np.ndarray) -> list[tuple[int, int]]:
    """Set the exceptions of ``nb``: 1-4 pairs scaled (OPLS, geometric sigma), the rest excluded.

    Returns the pairs of every exception, ``(i, j)`` with ``i < j``, for the LJ force's exclusions.
    """
    set14 = {(int(a), int(b)) for a, b in p14}
    excluded = []
    n14 = 0
    for k in range(nb.getNumExceptions()):
        i, j, _qq, _s, _e = nb.getExceptionParameters(k)
        key = (min(i, j), max(i, j))
        excluded.append(key)
        if key in set14:
            nb.setExceptionParameters(k, i, j, COULOMB_14_SCALE * q[i] * q[j], math.sqrt(sig[i] * sig[j]),
                                      LJ_14_SCALE * math.sqrt(eps[i] * eps[j]))
            n14 += 1
        else:
            nb.setExceptionParameters(k, i, j, 0.0, 0.1, 0.0)
    if n14 != len(set14):
        raise RuntimeError(f"force field made {n14} 1-4 exceptions, topology has {len(set14)} 1-4 pairs")
    return excluded


def _lj_force(sig: np.ndarray, eps: np.ndarray, excluded: list[tuple[int, int]], cutoff: float | None,
              dispersion_correction: bool) -> openmm.CustomNonbondedForce:
    """Lennard-Jones with geometric mixing of sigma and epsilon, computed per pair (on the CPU platform
    this measured 2x faster than looking up a Discrete2DFunction table of type pairs); periodic with
    a cutoff (nm) or without one (``cutoff=None``)."""
    lj = openmm.CustomNonbondedForce("4*eps*(x^2 - x); x = (sig/r)^6; sig = sqrt(sigma1*sigma2); "
                                     "eps = sqrt(epsilon1*epsilon2)")
    lj.addPerParticleParameter("sigma")
    lj.addPerParticleParameter("epsilon")
    for i in range(len(sig)):
        lj.addParticle([float(sig[i]), float(eps[i])])
    for i, j in excluded:
        lj.addExclusion(i, j)
    if cutoff is not None:
        lj.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
        lj.setCutoffDistance(cutoff)
        lj.setUseLongRangeCorrection(bool(dispersion_correction))
    else:
        lj.setNonbondedMethod(openmm.CustomNonbondedForce.NoCutoff)
    lj.setName("LJ (OPLS geometric mixing)")
    lj.setForceGroup(GROUP_LJ)
    return lj


def create_system(topology: app.Topology, *, forcefield_file: Path | None = None, cutoff: float = 1.0,
                  charge_scale: float = 0.8, constraints: str | None = "HBonds",
                  hydrogen_mass: float | None = None, ewald_tolerance: float = 5.0e-4,
                  periodic: bool = True, dispersion_correction: bool = True) -> ElectrolyteSystem:
    """OpenMM System with OPLS non-bonded rules (geometric LJ mixing, 1-4 scaled by 0.5).

    Parameters
    ----------
    topology : openmm.app.Topology
        From :func:`build_topology` (with a box if ``periodic``).
    forcefield_file : pathlib.Path, optional
        ForceField XML (default: the shipped ``peo_litfsi.xml``).
    cutoff : float
        LJ and real-space Coulomb cutoff, nm (periodic only).
    charge_scale : float
        Factor applied to the charges of Li+ and TFSI- (PEO is unscaled), in (0, 1].
    constraints : {"HBonds", None}
        Bonds to hydrogen rigid, or no constraints.
    hydrogen_mass : float, optional
        Hydrogen mass for mass repartitioning, amu (None: natural masses).
    ewald_tolerance : float
        PME error tolerance.
    periodic : bool
        PME + cutoff LJ with dispersion correction if True; no cutoff and plain Coulomb if False.
    dispersion_correction : bool
        Long-range LJ correction (periodic only).

    Returns
    -------
    ElectrolyteSystem
        The System, with LJ in a CustomNonbondedForce (group 1) and Coulomb plus 1-4 terms in
        a NonbondedForce (group 2); bonded terms in group 0.
    """
    ff_path = forcefield_file or FORCEFIELD_FILE
    if not (0.0 < charge_scale <= 1.0):
        raise CgsimInputError("system.charge_scale", f"expected a number in (0, 1], got {charge_scale!r}")
    cons = {"HBonds": app.HBonds, None: None, "None": None, "none": None}
    if constraints not in cons:
        raise CgsimInputError("system.constraints", f"expected 'HBonds' or null, got {constraints!r}")
    ff = app.ForceField(str(ff_path))
    kwargs = {"nonbondedMethod": app.PME if periodic else app.NoCutoff, "constraints": cons[constraints],
              "rigidWater": False, "removeCMMotion": True}
    if periodic:
        if topology.getPeriodicBoxVectors() is None:
            raise CgsimInputError("topology", "a periodic system needs a box")
        kwargs["nonbondedCutoff"] = cutoff * u.nanometer
        kwargs["ewaldErrorTolerance"] = ewald_tolerance
    if hydrogen_mass is not None:
        kwargs["hydrogenMass"] = hydrogen_mass * u.amu
    try:
        system = ff.createSystem(topology, **kwargs)
    except ValueError as exc:
        raise CgsimInputError(str(ff_path), f"cannot parameterise the topology: {str(exc).splitlines()[0]}") from None

    types_by_name = residue_atom_types(ff_path)
    atom_types = [types_by_name.get((a.residue.name, a.name), "?") for a in topology.atoms()]
    nb = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    n = system.getNumParticles()
    q, sig, eps = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        qi, si, ei = nb.getParticleParameters(i)
        q[i] = qi.value_in_unit(u.elementary_charge)
        sig[i] = si.value_in_unit(u.nanometer)
        eps[i] = ei.value_in_unit(u.kilojoule_per_mole)
    ions = np.array([a.residue.name in ION_RESIDUES for a in topology.atoms()])
    q[ions] *= charge_scale
    total = float(q.sum())
    if abs(total) > 1e-6:
        raise CgsimInputError("composition", f"total charge is {total:.6f} e, expected 0")

    # Coulomb only in the NonbondedForce; LJ with geometric mixing in a CustomNonbondedForce
    for i in range(n):
        nb.setParticleParameters(i, q[i], sig[i], 0.0)
    nb.setUseDispersionCorrection(False)
    nb.setForceGroup(GROUP_COULOMB)
    p14 = pairs_14(topology)
    excluded = _scale_14(nb, p14, q, sig, eps)
    system.addForce(_lj_force(sig, eps, excluded, cutoff if periodic else None, dispersion_correction))
    for f in system.getForces():  # proxies: compare by type, not identity
        if not isinstance(f, openmm.NonbondedForce | openmm.CustomNonbondedForce):
            f.setForceGroup(GROUP_BONDED)
    return ElectrolyteSystem(system=system, topology=topology, atom_types=atom_types, charges=q, sigma=sig,
                             epsilon=eps, pairs_14=p14, charge_scale=float(charge_scale))


def mdtraj_topology(topology: app.Topology) -> md.Topology:
    """The mdtraj Topology (residues numbered within each molecule, bonds kept)."""
    return md.Topology.from_openmm(topology)
