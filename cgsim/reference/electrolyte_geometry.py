"""Molecule geometry and packing of the PEO + LiTFSI system (:mod:`cgsim.reference.electrolyte`).

PEO chains are grown with rotational-isomeric torsions (O-C-C-O mostly gauche, C-O-C-C mostly
trans) and kept compact enough to fit the box (:func:`chain_conformation`); TFSI- is built from
the force field's bond lengths and angles (:func:`tfsi_conformation`). :func:`pack_molecules`
packs copies into a periodic cube with the ``packmol`` binary (:func:`find_packmol`), so
molecules come out whole; :func:`initial_positions` does both for a composition. Atom order is
that of :func:`cgsim.reference.electrolyte.build_topology`. Lengths nm, angles degrees.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cgsim.errors import CgsimInputError

if TYPE_CHECKING:
    from cgsim.reference.electrolyte import Composition

# -- geometry used to build molecules (nm, degrees): the force field's equilibrium values --
_R_CC, _R_CO, _R_CH = 0.1529, 0.1410, 0.1090
_A_TET = 109.5
_TFSI = {"NS": 0.1570, "SO": 0.1437, "SC": 0.1818, "CF": 0.1323,
         "SNS": 125.6, "NSO": 113.6, "NSC": 103.5, "SCF": 111.7}



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
