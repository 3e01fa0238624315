"""Bead-spring model of sequence-defined graft copolymer chains in implicit solvent.

Modelled on the single-chain data set of Fu et al. (TMLR 2023), itself from Webb, Jackson,
Gil & de Pablo, "Targeted sequence design within the coarse-grained polymer genome",
Sci. Adv. 6, eabc6216 (2020). Each monomer is one backbone bead and one side-chain bead.
Potentials (Kremer & Grest, J. Chem. Phys. 92, 5057 (1990) for FENE + WCA):

- bonds (backbone-backbone and backbone-side chain): FENE
  ``U = -1/2 k R0^2 ln(1 - (r/R0)^2)`` with k = 30 epsilon/sigma^2, R0 = 1.5 sigma, plus the
  WCA repulsion ``4 eps [(s/r)^12 - (s/r)^6] + eps`` for r < 2^(1/6) sigma;
- non-bonded beads of the same chain: Lennard-Jones with well depth
  ``eps_ij = sqrt(eps_i eps_j)`` from per-type depths (solvophobic types deep, solvophilic
  shallow), truncated and shifted at 2.5 sigma; or, with ``nonbonded="wca"``, the purely
  repulsive WCA potential for every pair (good solvent);
- beads of different chains do not interact: each chain is an independent single-chain
  simulation, many of them integrated together as one OpenMM System for speed.

Units: reduced LJ units declared in the metadata, with sigma = 1 nm, epsilon = 1 kJ/mol,
m = 1 amu, so tau = 1 ps and T* = 1 is 120.27 K (see :class:`cgsim.units.LJUnits`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import mdtraj as md
import numpy as np
import openmm

from cgsim.errors import CgsimInputError
from cgsim.reference.sequence import validate_sequence
from cgsim.units import LJUnits

#: Bead radius of a virtual element, so PDB/HDF5 files carry a sane element column.
_ELEMENT = md.element.virtual


@dataclass(frozen=True)
class ChainModel:
    """Force-field parameters of the bead-spring chain model (reduced units).

    Attributes
    ----------
    monomers : dict[str, tuple[str, str]]
        Monomer letter -> (backbone bead type, side-chain bead type).
    epsilon : dict[str, float]
        LJ well depth of each bead type, epsilon.
    mass : dict[str, float]
        Mass of each bead type, m.
    nonbonded : {"lj", "wca"}
        ``lj``: truncated-shifted LJ with per-type depths; ``wca``: purely repulsive.
    lj_cutoff : float
        LJ cutoff, sigma (used when ``nonbonded == "lj"``).
    fene_k : float
        FENE spring constant, epsilon / sigma^2.
    fene_r0 : float
        FENE maximum extension, sigma.
    """

    monomers: dict[str, tuple[str, str]] = field(
        default_factory=lambda: {"A": ("B1", "S1"), "B": ("B2", "S2")}
    )
    epsilon: dict[str, float] = field(
        default_factory=lambda: {"B1": 0.8, "B2": 0.5, "S1": 1.2, "S2": 0.1}
    )
    mass: dict[str, float] = field(default_factory=lambda: {"B1": 1.0, "B2": 1.0, "S1": 1.0, "S2": 1.0})
    nonbonded: str = "lj"
    lj_cutoff: float = 2.5
    fene_k: float = 30.0
    fene_r0: float = 1.5

    def __post_init__(self) -> None:
        if self.nonbonded not in ("lj", "wca"):
            raise CgsimInputError("system.nonbonded", f"expected 'lj' or 'wca', got {self.nonbonded!r}")
        for letter, beads in self.monomers.items():
            if len(letter) != 1:
                raise CgsimInputError("system.monomers", f"monomer names must be single letters, got {letter!r}")
            if len(beads) != 2:
                raise CgsimInputError(f"system.monomers.{letter}", "expected [backbone_type, side_chain_type]")
            for bead in beads:
                if bead not in self.epsilon or bead not in self.mass:
                    raise CgsimInputError(f"system.monomers.{letter}", f"bead type {bead!r} has no epsilon/mass entry")
        for name, value in (*self.epsilon.items(), *(("mass." + k, v) for k, v in self.mass.items())):
            if not np.isfinite(value) or value < 0 or (name.startswith("mass.") and value <= 0):
                raise CgsimInputError(f"system.{name if name.startswith('mass.') else 'epsilon.' + name}",
                                      f"expected a positive number, got {value!r}")
        for name in ("lj_cutoff", "fene_k", "fene_r0"):
            if not getattr(self, name) > 0:
                raise CgsimInputError(f"system.{name}", f"expected a positive number, got {getattr(self, name)!r}")

    @property
    def bead_types(self) -> list[str]:
        """All bead types, sorted."""
        return sorted({b for pair in self.monomers.values() for b in pair})


@dataclass
class ChainTopology:
    """Beads and bonds of one chain.

    Attributes
    ----------
    sequence : str
        Monomer letters.
    types : list[str]
        Bead type of each bead, length n_beads = 2 * len(sequence). Bead ``2i`` is the
        backbone bead of monomer ``i`` and bead ``2i + 1`` its side chain.
    bonds : numpy.ndarray
        Bonded bead pairs, shape (n_bonds, 2), int64, indices within the chain.
    """

    sequence: str
    types: list[str]
    bonds: np.ndarray

    @property
    def n_beads(self) -> int:
        """Number of beads."""
        return len(self.types)

    @property
    def backbone(self) -> np.ndarray:
        """Indices of backbone beads, shape (n_monomers,)."""
        return np.arange(0, self.n_beads, 2)


def chain_topology(sequence: str, model: ChainModel, where: str = "system.sequence") -> ChainTopology:
    """Beads and bonds of a graft copolymer with the given monomer sequence."""
    validate_sequence(sequence, model.monomers, where)
    types: list[str] = []
    bonds: list[tuple[int, int]] = []
    for i, letter in enumerate(sequence):
        backbone, side = model.monomers[letter]
        types += [backbone, side]
        bonds.append((2 * i, 2 * i + 1))
        if i > 0:
            bonds.append((2 * (i - 1), 2 * i))
    return ChainTopology(sequence, types, np.asarray(sorted(bonds), dtype=np.int64).reshape(-1, 2))


def mdtraj_topology(chain: ChainTopology, monomer_names: Mapping[str, str] | None = None) -> md.Topology:
    """An mdtraj Topology of one chain: one residue per monomer, bead names = bead types.

    Residue names are ``M`` + monomer letter (``MA``, ``MB``) unless ``monomer_names`` maps
    letters to other names. Bonds are those of the chain.
    """
    top = md.Topology()
    md_chain = top.add_chain()
    atoms = []
    for i, letter in enumerate(chain.sequence):
        name = (monomer_names or {}).get(letter, f"M{letter}")
        res = top.add_residue(name, md_chain, resSeq=i + 1)
        atoms.append(top.add_atom(chain.types[2 * i], _ELEMENT, res))
        atoms.append(top.add_atom(chain.types[2 * i + 1], _ELEMENT, res))
    for a, b in chain.bonds:
        top.add_bond(atoms[a], atoms[b])
    return top


def initial_conformation(chain: ChainTopology, rng: np.random.Generator, bond: float = 0.97,
                         min_dist: float = 0.9, max_tries: int = 200) -> np.ndarray:
    """A self-avoiding random-walk conformation of one chain.

    Parameters
    ----------
    chain : ChainTopology
        The chain.
    rng : numpy.random.Generator
        Source of randomness.
    bond : float
        Bond length, sigma (0.97 is the FENE + WCA minimum).
    min_dist : float
        Smallest allowed distance between non-bonded beads, sigma.
    max_tries : int
        Attempts per bead before the walk restarts.

    Returns
    -------
    numpy.ndarray
        Positions, shape (n_beads, 3), float64, sigma, centred at the origin.
    """
    n = chain.n_beads
    for _attempt in range(100):
        pos = np.zeros((n, 3))
        ok = True
        for i in range(1, n):
            anchor = i - 2 if i % 2 == 0 else i - 1  # backbone follows backbone; side chain its backbone
            for _ in range(max_tries):
                v = rng.normal(size=3)
                trial = pos[anchor] + bond * v / np.linalg.norm(v)
                d = np.linalg.norm(pos[:i] - trial, axis=1)
                d[anchor] = np.inf
                if d.min() >= min_dist:
                    pos[i] = trial
                    break
            else:
                ok = False
                break
        if ok:
            return pos - pos.mean(axis=0)
    raise RuntimeError(f"could not grow a self-avoiding conformation for a chain of {n} beads")


def build_system(chains: Sequence[ChainTopology], model: ChainModel, units: LJUnits) -> openmm.System:
    """One OpenMM System holding independent chains (no inter-chain interactions).

    Parameters
    ----------
    chains : sequence of ChainTopology
        The chains; particles are numbered chain after chain.
    model : ChainModel
        Force-field parameters, reduced units.
    units : LJUnits
        Reduced units in MD units (OpenMM works in nm, ps, amu, kJ/mol).

    Returns
    -------
    openmm.System
        Non-periodic system with a FENE+WCA bond force and a chain-local non-bonded force.
    """
    sig, eps = units.sigma, units.epsilon
    system = openmm.System()
    for chain in chains:
        for t in chain.types:
            system.addParticle(model.mass[t] * units.mass)

    wca_cut = 2.0 ** (1.0 / 6.0) * sig
    bond_force = openmm.CustomBondForce(
        "-0.5*kf*r0^2*log(1-(r/r0)^2) + step(rc-r)*(4*eb*((sb/r)^12-(sb/r)^6)+eb)"
    )
    bond_force.addGlobalParameter("kf", model.fene_k * eps / sig**2)
    bond_force.addGlobalParameter("r0", model.fene_r0 * sig)
    bond_force.addGlobalParameter("rc", wca_cut)
    bond_force.addGlobalParameter("eb", eps)
    bond_force.addGlobalParameter("sb", sig)
    bond_force.setName("FENE+WCA bonds")

    if model.nonbonded == "lj":
        cutoff = model.lj_cutoff * sig
        shift = 4.0 * ((sig / cutoff) ** 12 - (sig / cutoff) ** 6)
        expr = (
            "select(c1-c2, 0, sqrt(e1*e2)*(4*((sg/r)^12-(sg/r)^6) - shift))"
        )
    else:
        cutoff = wca_cut
        shift = -1.0
        expr = "select(c1-c2, 0, ew*(4*((sg/r)^12-(sg/r)^6) - shift))"
    nb = openmm.CustomNonbondedForce(expr)
    nb.addGlobalParameter("sg", sig)
    nb.addGlobalParameter("shift", shift)
    if model.nonbonded == "wca":
        nb.addGlobalParameter("ew", eps)
    nb.addPerParticleParameter("e")
    nb.addPerParticleParameter("c")
    nb.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffNonPeriodic)
    nb.setCutoffDistance(cutoff)
    nb.setUseLongRangeCorrection(False)
    nb.setName("chain-local LJ" if model.nonbonded == "lj" else "chain-local WCA")

    offset = 0
    for ci, chain in enumerate(chains):
        for t in chain.types:
            nb.addParticle([model.epsilon[t] * eps, float(ci)])
        for a, b in chain.bonds:
            bond_force.addBond(int(a) + offset, int(b) + offset, [])
            nb.addExclusion(int(a) + offset, int(b) + offset)
        offset += chain.n_beads
    system.addForce(bond_force)
    system.addForce(nb)
    return system


def place_chains(conformations: Sequence[np.ndarray], spacing: float) -> np.ndarray:
    """Put conformations on a cubic grid ``spacing`` apart; returns (n_total, 3) positions."""
    n = len(conformations)
    side = int(np.ceil(n ** (1.0 / 3.0)))
    out = []
    for i, conf in enumerate(conformations):
        ix, iy, iz = i % side, (i // side) % side, i // (side * side)
        out.append(conf + spacing * np.array([ix, iy, iz], dtype=float))
    return np.concatenate(out, axis=0)
