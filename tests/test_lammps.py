"""LAMMPS data and dump reading, and mapping LAMMPS trajectories (image flags, unwrapped and
scaled coordinates, triclinic boxes), against the same system read from a PDB.

Dumps are written here by a small independent writer (Angstrom, real units), with atom lines
shuffled in every frame as LAMMPS writes them without ``dump_modify sort``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest

from cgsim.errors import CgsimInputError
from cgsim.io.lammps import element_from_mass, iter_dump, lammps_topology, read_data
from cgsim.mapping import BeadMapper, build_mapping, system_from_lammps, system_from_topology
from cgsim.mapping.inputs import open_input

FIX = Path(__file__).parent / "fixtures" / "mapping"
DATA = FIX / "electrolyte.data"
ORTHO = np.diag([2.5, 2.5, 2.5])
TRICLINIC = np.array([[2.5, 0.0, 0.0], [0.8, 2.4, 0.0], [-0.6, 0.7, 2.3]])


@pytest.fixture(scope="module")
def data():
    return read_data(DATA)


@pytest.fixture(scope="module")
def pdb():
    return md.load(str(FIX / "electrolyte.pdb"))


def unwrapped_frames(pdb: md.Trajectory, box: np.ndarray, n_frames: int, seed: int) -> np.ndarray:
    """Molecules drifting rigidly from random offsets (nm), shape (n_frames, n_atoms, 3)."""
    rng = np.random.default_rng(seed)
    mol = np.zeros(pdb.n_atoms, dtype=int)
    for m, atoms in enumerate(pdb.topology.find_molecules()):
        mol[[a.index for a in atoms]] = m
    start = rng.uniform(0, 1, (mol.max() + 1, 3)) @ box
    shift = start[None] + np.cumsum(rng.uniform(-0.2, 0.2, (n_frames, mol.max() + 1, 3)) * (np.arange(n_frames) > 0)[:, None, None], axis=0)
    return pdb.xyz[0].astype(np.float64)[None] + shift[:, mol]


def split_images(u: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    frac = u @ np.linalg.inv(box)
    img = np.floor(frac)
    return (frac - img) @ box, img.astype(int)


def com(u: np.ndarray, atom_bead: np.ndarray, masses: np.ndarray, n_beads: int) -> np.ndarray:
    out = np.zeros((len(u), n_beads, 3))
    for b in range(n_beads):
        sel = atom_bead == b
        out[:, b] = (u[:, sel] * masses[sel, None]).sum(1) / masses[sel].sum()
    return out


def write_dump(path: Path, xyz_nm: np.ndarray, box_nm: np.ndarray, columns: dict[str, np.ndarray] | None = None,
               coords: str = "x", images: np.ndarray | None = None, seed: int = 0, header_extra: str = "") -> None:
    """Text dump with ids 1..N in shuffled order; box given by rows a, b, c with origin 0."""
    rng = np.random.default_rng(seed)
    h = box_nm * 10.0
    names = {"x": "x y z", "xu": "xu yu zu", "xs": "xs ys zs", "xsu": "xsu ysu zsu"}[coords]
    cols = columns or {}
    out = []
    n = xyz_nm.shape[1]
    for f in range(len(xyz_nm)):
        xy, xz, yz = h[1, 0], h[2, 0], h[2, 1]
        out.append(f"ITEM: TIMESTEP\n{1000 * f}\n{header_extra}ITEM: NUMBER OF ATOMS\n{n}\n")
        if xy or xz or yz:
            out.append("ITEM: BOX BOUNDS xy xz yz pp pp pp\n")
            out.append(f"{min(0.0, xy, xz, xy + xz)} {h[0, 0] + max(0.0, xy, xz, xy + xz)} {xy}\n")
            out.append(f"{min(0.0, yz)} {h[1, 1] + max(0.0, yz)} {xz}\n")
            out.append(f"0.0 {h[2, 2]} {yz}\n")
        else:
            out.append("ITEM: BOX BOUNDS pp pp pp\n" + "".join(f"0.0 {h[k, k]}\n" for k in range(3)))
        out.append(" ".join(["ITEM: ATOMS id", *cols, names, *(["ix iy iz"] if images is not None else [])]) + "\n")
        pos = xyz_nm[f] * 10.0
        if coords in ("xs", "xsu"):
            pos = pos @ np.linalg.inv(h)
        for i in rng.permutation(n):
            vals = [str(i + 1), *(f"{c[i]:.10g}" for c in cols.values()), *(f"{v:.12g}" for v in pos[i])]
            if images is not None:
                vals += [str(v) for v in images[f, i]]
            out.append(" ".join(vals) + "\n")
    text = "".join(out)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)


# ------------------------------------------------------------------------------------------
# data files
# ------------------------------------------------------------------------------------------
def test_read_data_file(data, pdb):
    assert data.n_atoms == 83 and data.atom_style == "full"
    assert np.array_equal(data.atom_ids, np.arange(1, 84))  # sorted although the file is shuffled
    assert len(data.bonds) == 78
    assert np.allclose(data.box, ORTHO) and np.allclose(data.origin, 0)
    assert np.allclose(data.positions, pdb.xyz[0], atol=1e-5)  # Angstrom -> nm
    assert data.charges.sum() == pytest.approx(-0.02 - 2 * 1.0 + 2 * 1.0, abs=1e-9)
    assert data.type_labels[4] == "li" and data.type_masses[4] == pytest.approx(6.9412)
    pdb_bonds = {tuple(sorted((a.index, b.index))) for a, b in pdb.topology.bonds}
    assert {tuple(b) for b in data.bonds.tolist()} == pdb_bonds


def test_lammps_topology_guesses_elements_and_names(data, pdb):
    top = lammps_topology(data)
    assert [a.element.symbol for a in top.atoms] == [a.element.symbol for a in pdb.topology.atoms]
    assert [r.name for r in top.residues] == ["M1", "LI", "LI", "M2", "M2"]
    assert [a.name for a in top.residue(0).atoms][:5] == ["C1", "H2", "H3", "H4", "O5"]
    assert [element_from_mass(m).symbol for m in (1.0, 6.94, 12.011, 32.06)] == ["H", "Li", "C", "S"]
    assert element_from_mass(50.0) is md.element.virtual  # a bead or united atom: no element


def test_lammps_and_pdb_systems_map_alike(data, pdb):
    s_l = system_from_lammps(data)
    s_p = system_from_topology(pdb.topology)
    assert np.allclose(s_l.masses, s_p.masses)
    assert np.array_equal(s_l.molecule, s_p.molecule)
    assert s_l.charges_known and s_l.charges.sum() == pytest.approx(data.charges.sum())
    m_l, m_p = build_mapping(s_l, "metis"), build_mapping(s_p, "metis")
    assert np.array_equal(m_l.atom_bead, m_p.atom_bead)  # same graph, same seed -> same beads
    assert m_l.bead_charges.sum() == pytest.approx(data.charges.sum())
    assert m_l.bead_charges[-4:-2].tolist() == pytest.approx([1.0, 1.0])  # Li+
    assert m_l.bead_charges[-2:].tolist() == pytest.approx([-1.0, -1.0])  # TFSI-


@pytest.mark.parametrize(("edit", "message"), [
    (("Masses", "Xasses"), "unknown section 'Xasses'"),
    (("Atoms # full", "Atoms # sphere"), "atom style 'sphere' is not supported"),
    (("Atoms # full", "Atoms"), None),  # 10 columns = full with images: inferred
    (("\n1 1 1 2\n", "\n1 1 1 999\n"), "bond 1 names atom id 999"),
    (("83 atoms", "84 atoms"), "header says 84 atoms"),
])
def test_data_file_errors(tmp_path, edit, message):
    text = DATA.read_text()
    assert edit[0] in text
    bad = tmp_path / "bad.data"
    bad.write_text(text.replace(edit[0], edit[1], 1))
    if message is None:
        assert read_data(bad).atom_style == "full"
        return
    with pytest.raises(CgsimInputError, match=message) as exc:
        read_data(bad)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)


def test_data_file_without_masses_or_style(tmp_path):
    lines = DATA.read_text().splitlines()
    start = lines.index("Masses")
    no_masses = lines[:start] + lines[start + 12:]
    bad = tmp_path / "nomass.data"
    bad.write_text("\n".join(no_masses) + "\n")
    with pytest.raises(CgsimInputError, match="no 'Masses' section"):
        read_data(bad)
    # 6 columns without a style comment: molecular or charge? refuse to guess
    six = [" ".join(x.split()[:6]) if x.count(" ") >= 9 and x[0].isdigit() else x for x in lines]
    amb = tmp_path / "amb.data"
    amb.write_text("\n".join(six).replace("Atoms # full", "Atoms") + "\n")
    with pytest.raises(CgsimInputError, match="molecular|charge"):
        read_data(amb)


# ------------------------------------------------------------------------------------------
# dumps
# ------------------------------------------------------------------------------------------
def test_triclinic_box_bounds_are_converted():
    """A hand-written dump: cell lo=(0,0,0), hi=(10,9,8) A, tilts xy=1, xz=-0.5, yz=0.3."""
    text = ("ITEM: TIMESTEP\n0\nITEM: NUMBER OF ATOMS\n1\nITEM: BOX BOUNDS xy xz yz pp pp pp\n"
            "-0.5 11.0 1.0\n0.0 9.3 -0.5\n0.0 8.0 0.3\nITEM: ATOMS id xs ys zs\n1 0.5 0.5 0.5\n")
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".lammpstrj", delete=False) as fh:
        fh.write(text)
    (fr,) = list(iter_dump(fh.name))
    Path(fh.name).unlink()
    assert np.allclose(fr.box[0], [[1.0, 0, 0], [0.1, 0.9, 0], [-0.05, 0.03, 0.8]])
    assert np.allclose(fr.xyz[0, 0], 0.5 * np.array([1.0 + 0.1 - 0.05, 0.9 + 0.03, 0.8]))


@pytest.mark.parametrize("box", [ORTHO, TRICLINIC], ids=["orthorhombic", "triclinic"])
@pytest.mark.parametrize("coords", ["x", "xu", "xs", "xsu"])
def test_image_flags_and_unwrapped_columns_give_the_true_beads(tmp_path, data, pdb, box, coords):
    u = unwrapped_frames(pdb, box, 6, seed=7)
    wrapped, img = split_images(u, box)
    assert np.abs(img).max() >= 1  # the image flags matter
    xyz = wrapped if coords in ("x", "xs") else u
    path = tmp_path / "run.lammpstrj"
    cols = {"mol": data.molecule_ids, "type": data.types, "mass": data.masses, "q": data.charges}
    write_dump(path, xyz, box, cols, coords=coords, images=img if coords in ("x", "xs") else None)
    system = system_from_lammps(data)
    m = build_mapping(system, "residue")
    mapper = BeadMapper(m, system.bonds, where=str(path))
    got = np.concatenate([mapper.map(c.xyz, c.box, c.images, c.unwrapped)
                          for c in iter_dump(path, data.atom_ids, chunk=4, expected={"type": data.types})])
    assert mapper.mode == "images"
    assert np.allclose(got, com(u, m.atom_bead, system.masses, m.n_beads), atol=1e-8)


def test_wrapped_dump_without_images_uses_bonds(tmp_path, data, pdb):
    u = unwrapped_frames(pdb, TRICLINIC, 6, seed=8)
    wrapped, _ = split_images(u, TRICLINIC)
    path = tmp_path / "run.lammpstrj.gz"
    write_dump(path, wrapped, TRICLINIC)
    system = system_from_lammps(data)
    m = build_mapping(system, "metis")
    mapper = BeadMapper(m, system.bonds)
    got = np.concatenate([mapper.map(c.xyz, c.box, c.images) for c in iter_dump(path, data.atom_ids, chunk=2)])
    assert mapper.mode == "bonds"
    d = got - com(u, m.atom_bead, system.masses, m.n_beads)
    n = np.linalg.solve(TRICLINIC.T, d.reshape(-1, 3).T).T.reshape(d.shape)
    assert np.allclose(n, np.rint(n), atol=1e-6) and (np.rint(n) == np.rint(n[:1])).all()


def test_open_input_streams_with_times_stride_and_selection(tmp_path, data, pdb):
    u = unwrapped_frames(pdb, ORTHO, 5, seed=9)
    path = tmp_path / "run.dump"
    write_dump(path, u, ORTHO, coords="xu")
    inp = open_input(str(path), str(DATA), lammps_timestep=2.0)
    assert inp.kind == "lammps" and inp.md_timestep == pytest.approx(0.002)
    chunks = list(inp.chunks(chunk=2))
    assert [c.n_frames for c in chunks] == [2, 2, 1]
    assert np.allclose(np.concatenate([c.time for c in chunks]), np.arange(5) * 1000 * 2.0e-3)  # steps * 2 fs
    assert [c.n_frames for c in inp.chunks(chunk=10, stride=2)] == [3]
    sel = open_input(str(path), str(DATA), selection="resname LI")
    assert sel.system.n_atoms == 2 and sel.system.molecule.tolist() == [0, 1]
    (c,) = list(sel.chunks(chunk=10))
    assert c.xyz.shape == (5, 2, 3) and np.allclose(c.xyz, u[:, [51, 52]], atol=1e-9)
    with pytest.raises(CgsimInputError, match="selects no atoms"):
        open_input(str(path), str(DATA), selection="resname XX")


def _dump_text(tmp_path, pdb, **kw) -> str:
    path = tmp_path / "ok.lammpstrj"
    write_dump(path, pdb.xyz.astype(np.float64), ORTHO, **kw)
    return path.read_text()


@pytest.mark.parametrize(("edit", "message"), [
    (("ITEM: ATOMS id x y z", "ITEM: ATOMS id vx vy vz"), "dump has no coordinate columns"),
    (("ITEM: ATOMS id x y z", "ITEM: ATOMS ident x y z"), "dump has no 'id' column"),
    (("ITEM: NUMBER OF ATOMS\n83", "ITEM: NUMBER OF ATOMS\n82"), "has 82 atoms but the topology has 83"),
    (("BOX BOUNDS pp pp pp", "BOX BOUNDS pp pp ff"), "periodic in some directions only"),
    (("BOX BOUNDS pp pp pp", "BOX BOUNDS abc origin pp pp pp"), "general triclinic box"),
    (("ITEM: TIMESTEP\n0\n", "ITEM: TIMESTEP\n0\nITEM: COLOURS\n"), "unexpected 'ITEM: COLOURS'"),
])
def test_dump_errors(tmp_path, data, pdb, edit, message):
    text = _dump_text(tmp_path, pdb)
    assert edit[0] in text
    bad = tmp_path / "bad.lammpstrj"
    bad.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(CgsimInputError, match=message) as exc:
        list(iter_dump(bad, data.atom_ids))
    assert str(exc.value).startswith(str(bad)) and "\n" not in str(exc.value)


def test_dump_with_nan_truncated_or_other_system(tmp_path, data, pdb):
    xyz = pdb.xyz.astype(np.float64).copy()
    xyz[0, 10, 2] = np.nan
    nan = tmp_path / "nan.lammpstrj"
    write_dump(nan, xyz, ORTHO)
    with pytest.raises(CgsimInputError, match="non-finite coordinates for atom id 11"):
        list(iter_dump(nan, data.atom_ids))
    ok = _dump_text(tmp_path, pdb)
    cut = tmp_path / "cut.lammpstrj"
    cut.write_text(ok[: len(ok) - 200])
    with pytest.raises(CgsimInputError, match="truncated"):
        list(iter_dump(cut, data.atom_ids))
    wrong = tmp_path / "wrong.lammpstrj"
    write_dump(wrong, pdb.xyz.astype(np.float64), ORTHO, {"type": np.roll(data.types, 1)})
    with pytest.raises(CgsimInputError, match="column 'type' of atom id 1 .* different systems"):
        list(iter_dump(wrong, data.atom_ids, expected={"type": data.types}))
