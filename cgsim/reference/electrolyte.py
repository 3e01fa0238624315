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

Molecule geometry is cgsim's own: PEO chains are grown with rotational-isomeric torsions
(O-C-C-O mostly gauche, C-O-C-C mostly trans) and kept compact enough to fit the box; TFSI-
is built from the force field's bond lengths and angles. Packing uses the ``packmol`` binary
(the PyPI package ``packmol`` ships it) with periodic boundaries, so molecules come out whole.

Atom order of a system: all PEO chains (residues PEH, n x PEO, PET), then all Li+ (LI), then
all TFSI- (TFS). Each molecule is one chain of the topology.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
import tempfile
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

# -- geometry used to build molecules (nm, degrees): the force field's equilibrium values --
_R_CC, _R_CO, _R_CH = 0.1529, 0.1410, 0.1090
_A_TET = 109.5
_TFSI = {"NS": 0.1570, "SO": 0.1437, "SC": 0.1818, "CF": 0.1323,
         "SNS": 125.6, "NSO": 113.6, "NSC": 103.5, "SCF": 111.7}


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
# geometry
# ------------------------------------------------------------------------------------------
def _place(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle: float, torsion: float) -> np.ndarray:
    """Position d with |cd| = bond, angle(b, c, d) = angle and dihedral(a, b, c, d) = torsion (deg)."""
    th, ph = math.radians(angle), math.radians(torsion)
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d2 = np.array([-bond * math.cos(th), bond * math.sin(th) * math.cos(ph), bond * math.sin(th) * math.sin(ph)])
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def _methylene_h(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two H of a CH2 group at ``x`` bonded to heavy atoms ``a`` and ``b`` (tetrahedral)."""
    ua, ub = (a - x) / np.linalg.norm(a - x), (b - x) / np.linalg.norm(b - x)
    bis = -(ua + ub)
    bis /= np.linalg.norm(bis)
    w = np.cross(ua, ub)
    w /= np.linalg.norm(w)
    half = math.radians(_A_TET / 2.0)
    return (x + _R_CH * (math.cos(half) * bis + math.sin(half) * w),
            x + _R_CH * (math.cos(half) * bis - math.sin(half) * w))


def _methyl_h(x: np.ndarray, a: np.ndarray, ref: np.ndarray) -> list[np.ndarray]:
    """The three H of a CH3 group at ``x`` bonded to ``a``, staggered with respect to ``ref``."""
    return [_place(ref, a, x, _R_CH, _A_TET, tor) for tor in (180.0, 60.0, -60.0)]


def chain_conformation(chain_length: int, rng: np.random.Generator, max_diameter: float,
                       max_tries: int = 1000) -> np.ndarray:
    """A self-avoiding, compact conformation of CH3-O-(CH2-CH2-O)n-CH3.

    Backbone torsions are drawn from rotational-isomeric states (about C-C bonds: g+ 0.4,
    g- 0.4, t 0.2; about C-O bonds: t 0.7, g+ 0.15, g- 0.15; +-10 deg noise), never g+ next
    to g- (the "pentane effect" clash). A growth step is rejected if the new heavy atom
    comes closer than 0.3 nm to a heavy atom five or more bonds away, or makes the chain
    wider than ``max_diameter``; once the chain's radius passes a third of that width, trial
    torsions are tried nearest-to-centre first. A finished chain is rejected if two atoms
    more than three bonds apart are closer than 0.15 nm (0.28 nm for two heavy atoms); the
    energy minimisation removes the remaining strain.

    Parameters
    ----------
    chain_length : int
        Number of CH2-CH2-O units, > 0.
    rng : numpy.random.Generator
        Source of randomness.
    max_diameter : float
        Largest allowed distance between two heavy atoms, nm.
    max_tries : int
        Restarts before giving up.

    Returns
    -------
    numpy.ndarray
        Positions in the atom order of :func:`build_topology`, shape (7 n + 9, 3), nm,
        centred at the origin.

    Raises
    ------
    CgsimInputError
        If no conformation fits ``max_diameter`` (chains too long for the packing box).
    """
    n_heavy = 3 * chain_length + 3
    # backbone: C(methyl) O [C C O]*n C(methyl)
    elem = ["C", "O"] + ["C", "C", "O"] * chain_length + ["C"]
    rot = {"CC": ([60.0, -60.0, 180.0], [0.4, 0.4, 0.2]), "CO": ([180.0, 60.0, -60.0], [0.7, 0.15, 0.15])}
    sign = {60.0: 1, -60.0: -1, 180.0: 0}
    backbone_of = _chain_backbone_index(chain_length)
    heavy = np.array([b >= 0 for b in backbone_of[1]])
    sep = np.abs(backbone_of[0][:, None] - backbone_of[0][None, :])
    n_h = (~heavy).astype(int)
    # bonds between two atoms: backbone index difference + 1 per hydrogen end
    bonds_apart = sep + n_h[:, None] + n_h[None, :]
    far = bonds_apart > 3
    limit = np.where(heavy[:, None] & heavy[None, :], 0.28, 0.15)
    for _attempt in range(max_tries):
        pos = np.zeros((n_heavy, 3))
        gauche = np.zeros(n_heavy, dtype=int)
        pos[1] = [_R_CO, 0.0, 0.0]
        pos[2] = _place(np.array([0.0, 1.0, 0.0]), pos[0], pos[1], _R_CO, _A_TET, 180.0)
        ok = True
        for i in range(3, n_heavy):
            bond = _R_CC if elem[i] == "C" and elem[i - 1] == "C" else _R_CO
            kind = "CC" if elem[i - 2] == "C" and elem[i - 1] == "C" else "CO"
            states, probs = rot[kind]
            order = [k for k in rng.choice(3, size=3, replace=False, p=probs)
                     if sign[states[k]] * gauche[i - 1] != -1]
            trials = [(states[k], _place(pos[i - 3], pos[i - 2], pos[i - 1], bond, _A_TET,
                                         states[k] + rng.uniform(-10.0, 10.0))) for k in order]
            centre = pos[:i].mean(axis=0)
            if np.linalg.norm(pos[:i] - centre, axis=1).max() > max_diameter / 3.0:
                trials.sort(key=lambda t: float(np.linalg.norm(t[1] - centre)))
            for state, trial in trials:
                d = np.linalg.norm(pos[:i] - trial, axis=1)
                if (i >= 5 and d[: i - 4].min() < 0.30) or d.max() > max_diameter:
                    continue
                pos[i] = trial
                gauche[i] = sign[state]
                break
            else:
                ok = False
                break
        if not ok:
            continue
        xyz = _add_chain_hydrogens(pos, chain_length)
        dist = np.linalg.norm(xyz[:, None] - xyz[None, :], axis=-1)
        if np.all(dist[far] >= limit[far]):
            return xyz
    raise CgsimInputError("system.chain_length", f"could not fit a chain of {chain_length} units into "
                          f"{max_diameter:.2f} nm; lower system.pack_density or use shorter chains")


def _chain_backbone_index(chain_length: int) -> tuple[np.ndarray, list[int]]:
    """For each chain atom (topology order): its backbone position (an H takes its carbon's),
    and its own backbone index or -1 for a hydrogen."""
    own: list[int] = [0, -1, -1, -1, 1]
    for k in range(chain_length):
        c1, c2, o = 2 + 3 * k, 3 + 3 * k, 4 + 3 * k
        own += [c1, -1, -1, c2, -1, -1, o]
    last = 3 * chain_length + 2
    own += [last, -1, -1, -1]
    carrier, current = [], 0
    for b in own:
        current = b if b >= 0 else current
        carrier.append(current)
    return np.asarray(carrier), own


def _add_chain_hydrogens(bb: np.ndarray, chain_length: int) -> np.ndarray:
    """All atoms (topology order) from the backbone heavy atoms ``bb`` (shape (3 n + 3, 3))."""
    out: list[np.ndarray] = []
    out.append(bb[0])
    out.extend(_methyl_h(bb[0], bb[1], bb[2]))
    out.append(bb[1])
    for k in range(chain_length):
        i1, i2, io = 2 + 3 * k, 3 + 3 * k, 4 + 3 * k
        out.append(bb[i1])
        out.extend(_methylene_h(bb[i1], bb[i1 - 1], bb[i2]))
        out.append(bb[i2])
        out.extend(_methylene_h(bb[i2], bb[i1], bb[io]))
        out.append(bb[io])
    last = len(bb) - 1
    out.append(bb[last])
    out.extend(_methyl_h(bb[last], bb[last - 1], bb[last - 2]))
    xyz = np.asarray(out)
    return xyz - xyz.mean(axis=0)


def tfsi_conformation() -> np.ndarray:
    """TFSI- in its trans (C2) form from the force field's bond lengths and angles.

    Returns
    -------
    numpy.ndarray
        Positions in the atom order N, S1, O11, O12, C1, F11-F13, S2, O21, O22, C2, F21-F23,
        shape (15, 3), nm, centred at the origin.
    """
    g = _TFSI
    n = np.zeros(3)
    s1 = np.array([g["NS"], 0.0, 0.0])
    a = math.radians(g["SNS"])
    s2 = g["NS"] * np.array([math.cos(a), math.sin(a), 0.0])
    out = [n]
    for s, other in ((s1, s2), (s2, s1)):
        c = _place(other, n, s, g["SC"], g["NSC"], 90.0)
        o1 = _place(other, n, s, g["SO"], g["NSO"], 90.0 + 120.0)
        o2 = _place(other, n, s, g["SO"], g["NSO"], 90.0 - 120.0)
        fs = [_place(n, s, c, g["CF"], g["SCF"], tor) for tor in (180.0, 60.0, -60.0)]
        out += [s, o1, o2, c, *fs]
    xyz = np.asarray(out)
    return xyz - xyz.mean(axis=0)


# ------------------------------------------------------------------------------------------
# packing
# ------------------------------------------------------------------------------------------
def find_packmol(path: str | None = None) -> Path:
    """The packmol executable: ``path`` if given, else the PyPI package's binary, else PATH.

    Raises
    ------
    CgsimInputError
        If no packmol binary can be found or ``path`` is not an executable file.
    """
    if path:
        p = Path(path).expanduser()
        if not (p.is_file() and p.stat().st_mode & 0o111):
            raise CgsimInputError("system.packmol", f"{p} is not an executable file; expected the packmol binary")
        return p
    try:
        from packmol.cli import get_binary_path

        return Path(get_binary_path())
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("packmol")
    if found:
        return Path(found)
    raise CgsimInputError("system.packmol", "packmol binary not found; `pip install packmol` (it ships the "
                          "binary) or set system.packmol=/path/to/packmol")


def _write_xyz(path: Path, symbols: list[str], xyz_nm: np.ndarray) -> None:
    lines = [str(len(symbols)), "cgsim"]
    lines += [f"{s} {x * 10:.5f} {y * 10:.5f} {z * 10:.5f}" for s, (x, y, z) in zip(symbols, xyz_nm, strict=True)]
    path.write_text("\n".join(lines) + "\n")


def pack_molecules(templates: list[tuple[list[str], np.ndarray, int]], box_length: float, packmol: Path,
                   seed: int, tolerance: float = 0.2, nloop: int | None = None,
                   timeout: float = 1800.0) -> np.ndarray:
    """Pack copies of molecules into a periodic cube with packmol.

    Parameters
    ----------
    templates : list of (symbols, positions, count)
        Each molecule: element symbols (n,), positions (n, 3) nm, number of copies.
        Copies come out in the given order, atoms in template order.
    box_length : float
        Cube edge, nm.
    packmol : pathlib.Path
        The packmol executable.
    seed : int
        Packmol's random seed (>= 0).
    tolerance : float
        Smallest distance between atoms of different molecules, nm.
    nloop : int, optional
        Packmol's ``nloop`` (optimisation cycles per molecule type); its default if None.
    timeout : float
        Seconds before packmol is stopped.

    Returns
    -------
    numpy.ndarray
        Positions, shape (n_atoms, 3), nm; molecules whole (they may stick out of the cube).

    Raises
    ------
    CgsimInputError
        If packmol cannot pack the box (no perfect packing, error or timeout).
    """
    with tempfile.TemporaryDirectory(prefix="cgsim_packmol_") as tmpdir:
        tmp = Path(tmpdir)
        L = box_length * 10.0
        lines = [f"tolerance {tolerance * 10.0:.4f}", "filetype xyz", "output packed.xyz",
                 f"seed {int(seed)}", f"pbc 0. 0. 0. {L:.5f} {L:.5f} {L:.5f}"]
        if nloop is not None:
            lines.append(f"nloop {int(nloop)}")
        n_atoms = 0
        for k, (symbols, xyz, count) in enumerate(templates):
            if count <= 0:
                continue
            _write_xyz(tmp / f"mol_{k:04d}.xyz", symbols, xyz)
            lines += [f"structure mol_{k:04d}.xyz", f"  number {int(count)}", "end structure"]
            n_atoms += len(symbols) * int(count)
        (tmp / "pack.inp").write_text("\n".join(lines) + "\n")
        try:
            with open(tmp / "pack.inp") as fin:
                res = subprocess.run([str(packmol)], stdin=fin, cwd=tmp, capture_output=True, text=True,
                                     timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CgsimInputError("system.pack_density", f"packmol did not finish in {timeout:.0f} s; "
                                  "lower system.pack_density") from None
        except OSError as exc:
            raise CgsimInputError("system.packmol", f"cannot run {packmol}: {exc}") from None
        out = tmp / "packed.xyz"
        if res.returncode != 0 or "Success!" not in res.stdout or not out.is_file():
            reason = "no perfect packing" if "WITHOUT PERFECT PACKING" in res.stdout else f"exit status {res.returncode}"
            raise CgsimInputError("system.pack_density", f"packmol could not pack {n_atoms} atoms into a "
                                  f"{box_length:.3f} nm box ({reason}); lower system.pack_density or "
                                  "system.pack_tolerance")
        rows = out.read_text().splitlines()[2:2 + n_atoms]
        xyz = np.array([[float(v) for v in r.split()[1:4]] for r in rows]) / 10.0
    if xyz.shape != (n_atoms, 3):
        raise CgsimInputError("system.packmol", f"packmol wrote {len(xyz)} atoms, expected {n_atoms}")
    return xyz


def initial_positions(comp: Composition, box_length: float, rng: np.random.Generator, packmol: Path,
                      tolerance: float = 0.2, nloop: int | None = None) -> np.ndarray:
    """Grow every molecule and pack them into the cube (topology atom order), nm, (n_atoms, 3)."""
    max_diameter = box_length - 2.0 * tolerance
    chain_syms = ["C", "H", "H", "H", "O"] + ["C", "H", "H", "C", "H", "H", "O"] * comp.chain_length + ["C", "H", "H", "H"]
    templates: list[tuple[list[str], np.ndarray, int]] = [
        (chain_syms, chain_conformation(comp.chain_length, rng, max_diameter), 1) for _ in range(comp.n_chains)
    ]
    tfsi_syms = ["N"] + ["S", "O", "O", "C", "F", "F", "F"] * 2
    templates.append((["Li"], np.zeros((1, 3)), comp.n_salt))
    templates.append((tfsi_syms, tfsi_conformation(), comp.n_salt))
    seed = int(rng.integers(0, 2**31 - 1))
    return pack_molecules(templates, box_length, packmol, seed=seed, tolerance=tolerance, nloop=nloop)


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

    # Coulomb only in the NonbondedForce
    for i in range(n):
        nb.setParticleParameters(i, q[i], sig[i], 0.0)
    nb.setUseDispersionCorrection(False)
    nb.setForceGroup(GROUP_COULOMB)
    p14 = pairs_14(topology)
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

    # LJ with geometric mixing of sigma and epsilon, computed per pair (on the CPU platform this
    # measured 2x faster than looking up a Discrete2DFunction table of type pairs)
    lj = openmm.CustomNonbondedForce("4*eps*(x^2 - x); x = (sig/r)^6; sig = sqrt(sigma1*sigma2); "
                                     "eps = sqrt(epsilon1*epsilon2)")
    lj.addPerParticleParameter("sigma")
    lj.addPerParticleParameter("epsilon")
    for i in range(n):
        lj.addParticle([float(sig[i]), float(eps[i])])
    for i, j in excluded:
        lj.addExclusion(i, j)
    if periodic:
        lj.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
        lj.setCutoffDistance(cutoff)
        lj.setUseLongRangeCorrection(bool(dispersion_correction))
    else:
        lj.setNonbondedMethod(openmm.CustomNonbondedForce.NoCutoff)
    lj.setName("LJ (OPLS geometric mixing)")
    lj.setForceGroup(GROUP_LJ)
    system.addForce(lj)
    for f in system.getForces():  # proxies: compare by type, not identity
        if not isinstance(f, openmm.NonbondedForce | openmm.CustomNonbondedForce):
            f.setForceGroup(GROUP_BONDED)
    return ElectrolyteSystem(system=system, topology=topology, atom_types=atom_types, charges=q, sigma=sig,
                             epsilon=eps, pairs_14=p14, charge_scale=float(charge_scale))


def mdtraj_topology(topology: app.Topology) -> md.Topology:
    """The mdtraj Topology (residues numbered within each molecule, bonds kept)."""
    return md.Topology.from_openmm(topology)
