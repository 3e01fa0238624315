"""Mapping: building (molecule, residue, metis, file), bead types, the mapping file, and
applying a mapping to periodic trajectories (orthorhombic and triclinic boxes).

Reference values are computed here independently: bead centres by a plain loop over beads on
the *unwrapped* positions the test generates, wrapping by fractional coordinates and floor.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cgsim.errors import CgsimInputError
from cgsim.mapping import (
    BeadMapper,
    CGMapping,
    apply_mapping,
    build_mapping,
    load_mapping,
    save_mapping,
    system_from_topology,
)

FIX = Path(__file__).parent / "fixtures" / "mapping"
ORTHO = np.diag([2.5, 2.5, 2.5])
TRICLINIC = np.array([[2.5, 0.0, 0.0], [0.8, 2.4, 0.0], [-0.6, 0.7, 2.3]])


# ------------------------------------------------------------------------------------------
# helpers (independent of the code under test)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pdb() -> md.Trajectory:
    return md.load(str(FIX / "electrolyte.pdb"))


@pytest.fixture(scope="module")
def system(pdb):
    return system_from_topology(pdb.topology, source="electrolyte.pdb")


def molecules_of(top: md.Topology) -> np.ndarray:
    mol = np.zeros(top.n_atoms, dtype=int)
    for m, atoms in enumerate(top.find_molecules()):
        for a in atoms:
            mol[a.index] = m
    return mol


def moving_frames(xyz0: np.ndarray, mol: np.ndarray, box: np.ndarray, n_frames: int, seed: int) -> np.ndarray:
    """Unwrapped trajectory: each molecule drifts rigidly (steps up to 0.35 nm) from a random
    offset, atoms jitter by 0.01 nm; shape (n_frames, n_atoms, 3)."""
    rng = np.random.default_rng(seed)
    n_mol = mol.max() + 1
    start = rng.uniform(0, 1, (n_mol, 3)) @ box
    steps = rng.uniform(-0.2, 0.2, (n_frames, n_mol, 3))
    steps[0] = 0
    shift = start[None] + np.cumsum(steps, axis=0)
    jitter = rng.normal(0, 0.01, (n_frames, len(xyz0), 3))
    return xyz0[None] + shift[:, mol] + jitter


def wrap(u: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Put every atom into the cell spanned by the rows of ``box``."""
    frac = u @ np.linalg.inv(box)
    return (frac - np.floor(frac)) @ box


def brute_force_beads(u: np.ndarray, mapping: CGMapping, masses: np.ndarray, geometry: bool = False) -> np.ndarray:
    out = np.zeros((len(u), mapping.n_beads, 3))
    for b in range(mapping.n_beads):
        atoms = [a for a in range(mapping.n_atoms) if mapping.atom_bead[a] == b]
        w = np.ones(len(atoms)) if geometry else masses[atoms]
        out[:, b] = (u[:, atoms] * w[None, :, None]).sum(axis=1) / w.sum()
    return out


def traj_of(xyz: np.ndarray, top: md.Topology, box: np.ndarray | None) -> md.Trajectory:
    t = md.Trajectory(xyz.astype(np.float32), top, time=np.arange(len(xyz)) * 2.0)
    if box is not None:
        t.unitcell_vectors = np.broadcast_to(box, (len(xyz), 3, 3)).astype(np.float32)
    return t


def assert_lattice_shift_per_molecule(got: np.ndarray, want: np.ndarray, mapping: CGMapping, box: np.ndarray) -> None:
    """``got - want`` is one lattice vector per molecule, the same in every frame."""
    diff = got - want
    n = np.linalg.solve(box.T, diff.reshape(-1, 3).T).T.reshape(diff.shape)  # fractional
    assert np.allclose(n, np.rint(n), atol=2e-4), "bead differs from the true centre by a non-lattice vector"
    n = np.rint(n)
    assert (n == n[:1]).all(), "a bead jumps by a box vector between frames"
    for m in range(mapping.n_molecules):
        sel = mapping.bead_molecule == m
        assert (n[:, sel] == n[:, sel][:, :1]).all(), f"molecule {m} is broken across the box"


def no_bond_topology(top: md.Topology) -> md.Topology:
    new = md.Topology()
    for chain in top.chains:
        c = new.add_chain()
        for res in chain.residues:
            r = new.add_residue(res.name, c, res.resSeq)
            for a in res.atoms:
                new.add_atom(a.name, a.element, r)
    return new


# ------------------------------------------------------------------------------------------
# building
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["molecule", "residue", "metis"])
def test_every_atom_in_exactly_one_bead_and_totals_conserved(system, scheme):
    m = build_mapping(system, scheme)
    assert m.atom_bead.shape == (system.n_atoms,)
    assert set(np.unique(m.atom_bead)) == set(range(m.n_beads))
    assert sum(len(a) for a in m.bead_atoms()) == system.n_atoms
    assert m.bead_masses.sum() == pytest.approx(system.masses.sum(), rel=1e-12)
    assert m.bead_charges.sum() == pytest.approx(system.charges.sum(), abs=1e-12)
    # beads never cross molecules, and bead_molecule says which
    for b, atoms in enumerate(m.bead_atoms()):
        assert set(system.molecule[atoms]) == {m.bead_molecule[b]}
    assert np.all(np.diff(m.bead_molecule) >= 0)


def test_molecule_and_residue_schemes(system):
    mol = build_mapping(system, "molecule")
    assert mol.n_beads == 5 and mol.bead_sizes().tolist() == [51, 1, 1, 15, 15]
    assert mol.bead_names == ["M1", "LI", "LI", "TFS", "TFS"]
    assert len(mol.bonds) == 0
    res = build_mapping(system, "residue")
    assert res.bead_sizes().tolist() == [4, 7, 7, 7, 7, 7, 7, 5, 1, 1, 15, 15]
    assert res.bead_names[:3] == ["HED", "EO", "EO"]
    # the chain's residues are bonded in sequence, nothing else
    assert res.bonds.tolist() == [[i, i + 1] for i in range(7)]


def test_bead_types_follow_chemistry(system):
    res = build_mapping(system, "residue")
    t = res.bead_types
    assert len(set(t[1:7])) == 1  # all EO monomers
    assert len({t[0], t[1], t[7], t[8], t[10]}) == 5  # HED, EO, TAL, LI, TFS differ
    assert t[8] == t[9] and t[10] == t[11]
    assert res.type_names == ["HED", "EO", "TAL", "LI", "TFS"]


def test_bead_types_see_bonding_not_atom_order():
    """Same atoms, same bonding in another order -> same type; other bonding -> other type."""
    top = md.Topology()
    c = top.add_chain()
    el = md.element
    residues = []
    for k, (names, bonds) in enumerate([(("C1", "C2", "O1"), [(0, 1), (1, 2)]),   # C-C-O
                                        (("O1", "C1", "C2"), [(0, 1), (1, 2)]),   # O-C-C (same chemistry)
                                        (("C1", "O1", "C2"), [(0, 1), (1, 2)])]):  # C-O-C (ether)
        r = top.add_residue("XYZ", c, k + 1)
        atoms = [top.add_atom(n, el.get_by_symbol(n[0]), r) for n in names]
        for i, j in bonds:
            top.add_bond(atoms[i], atoms[j])
        residues.append(r)
    m = build_mapping(system_from_topology(top), "residue")
    assert m.bead_types[0] == m.bead_types[1]
    assert m.bead_types[2] != m.bead_types[0]
    assert m.type_names == ["XYZ", "XYZ1"]


def test_metis_is_deterministic_connected_and_stays_in_molecules(system):
    a = build_mapping(system, "metis", atoms_per_bead=7, seed=3)
    b = build_mapping(system, "metis", atoms_per_bead=7, seed=3)
    assert np.array_equal(a.atom_bead, b.atom_bead) and a.content_hash() == b.content_hash()
    sizes = a.bead_sizes()
    # Li+ and TFSI- (15 atoms <= keep_whole_max_atoms=15) stay whole
    assert sizes[-4:].tolist() == [1, 1, 15, 15]
    # the 51-atom chain: round(51/7) = 7 beads of 7 +- 50%
    chain = sizes[a.bead_molecule == 0]
    assert len(chain) == 7 and chain.sum() == 51
    assert np.all((chain >= 3.5) & (chain <= 10.5))
    # every bead is connected by bonds inside it
    bonds = system.bonds
    for atoms in a.bead_atoms():
        if len(atoms) == 1:
            continue
        local = {x: i for i, x in enumerate(atoms)}
        e = np.array([(local[i], local[j]) for i, j in bonds if i in local and j in local])
        g = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(len(atoms),) * 2)
        assert connected_components(g, directed=False)[0] == 1


def test_metis_threshold_splits_small_molecules_identically(system):
    m = build_mapping(system, "metis", atoms_per_bead=5, keep_whole_max_atoms=10)
    tfsi = [np.flatnonzero(system.molecule == k) for k in (3, 4)]
    parts = [m.atom_bead[atoms] - m.atom_bead[atoms].min() for atoms in tfsi]
    assert parts[0].max() == 2  # 15 atoms / 5 -> 3 beads
    assert np.array_equal(parts[0], parts[1])  # identical molecules, identical cut
    chain = m.bead_sizes()[m.bead_molecule == 0]
    assert len(chain) == 10 and np.all((chain >= 2.5) & (chain <= 7.5))


def test_metis_refuses_unbonded_molecule(pdb):
    sys_nb = system_from_topology(no_bond_topology(pdb.topology))
    with pytest.raises(CgsimInputError, match="not connected by bonds"):
        build_mapping(sys_nb, "metis", keep_whole_max_atoms=3)


def test_bad_options(system):
    with pytest.raises(CgsimInputError, match="unknown scheme"):
        build_mapping(system, "atoms")
    with pytest.raises(CgsimInputError, match="atoms_per_bead"):
        build_mapping(system, "metis", atoms_per_bead=0)
    with pytest.raises(CgsimInputError, match="not an option"):
        build_mapping(system, "residue", seed=1)
    with pytest.raises(CgsimInputError, match="weighting"):
        build_mapping(system, "residue", weighting="charge")


def test_mass_weighting_needs_masses():
    top = md.Topology()
    r = top.add_residue("BD", top.add_chain())
    top.add_atom("A", md.element.virtual, r)
    top.add_atom("B", md.element.virtual, r)
    s = system_from_topology(top, source="beads.pdb")
    with pytest.raises(CgsimInputError, match="has mass 0"):
        build_mapping(s, "molecule")
    assert build_mapping(s, "molecule", weighting="geometry").n_beads == 1
    assert build_mapping(system_from_topology(top, masses=np.array([1.0, 3.0])), "molecule").n_beads == 1


# ------------------------------------------------------------------------------------------
# mapping files (user spec) and saved mappings
# ------------------------------------------------------------------------------------------
def test_file_mapping_by_residue_names_equals_residue_scheme(system):
    f = build_mapping(system, "file", path=str(FIX / "spec_residues.yaml"))
    r = build_mapping(system, "residue")
    assert np.array_equal(f.atom_bead, r.atom_bead)
    assert f.bead_names[:2] == ["HD", "EO"] and f.scheme == "file"
    assert np.array_equal(f.bead_types, r.bead_types)


def test_file_mapping_beads_span_residues(system, pdb):
    m = build_mapping(system, "file", path=str(FIX / "spec_span.yaml"))
    top = pdb.topology
    names = [(top.atom(a).residue.name, top.atom(a).name) for a in m.bead_atoms()[0]]
    assert names == [("HED", "C1"), ("HED", "H1"), ("HED", "H2"), ("HED", "H3"), ("EO", "O1")]
    assert m.bead_sizes()[:8].tolist() == [5, 7, 7, 7, 7, 7, 7, 4]
    # the two CF3SO2 halves of TFSI have different names but the same chemistry
    i = m.bead_names.index("SA")
    assert m.bead_names[i + 1] == "SB" and m.bead_types[i] == m.bead_types[i + 1]
    assert m.bead_masses.sum() == pytest.approx(system.masses.sum())


@pytest.mark.parametrize(("edit", "message"), [
    (("[C1, H1, H2, H3, \"+1:O1\"]", "[C1, H1, H2, H3, \"+1:O1\", Q7]"), r"names atom 'Q7', but HED1 .* has no such atom"),
    (("[C1, H1, H2, H3]}", "[C1, H1, H2, H3, \"-1:O1\"]}"), "is in two beads"),
    (("[C1, H1, H2, H3]}", "[C1, H1, H2]}"), r"atom 'H3' of TAL8 .* is in no bead"),
    (("  LI:\n    - {name: LI, atoms: [LI]}\n", ""), "residue type 'LI' .* has no entry"),
    (("[C1, H1, H2, H3]}", "[C1, H1, H2, H3, \"+1:O1\"]}"), "has no next residue in its molecule"),
    (("{name: N, atoms", "{name: NITRO, atoms"), "must have 1 to 4 characters"),
])
def test_file_mapping_errors_name_the_file_and_atom(system, tmp_path, edit, message):
    text = (FIX / "spec_span.yaml").read_text()
    assert edit[0] in text
    path = tmp_path / "spec.yaml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(CgsimInputError, match=message) as exc:
        build_mapping(system, "file", path=str(path))
    assert str(exc.value).startswith(str(path)) and "\n" not in str(exc.value)


def test_save_load_round_trip(system, tmp_path):
    m = build_mapping(system, "metis", atoms_per_bead=5, keep_whole_max_atoms=10, seed=1)
    path = save_mapping(m, tmp_path / "mapping.yaml")
    back = load_mapping(path)
    for field in ("atom_bead", "weights", "bead_types", "bead_masses", "bead_charges", "bonds", "bead_molecule"):
        assert np.array_equal(getattr(back, field), getattr(m, field)), field
    assert back.bead_names == m.bead_names and back.type_names == m.type_names
    assert back.molecule_names == m.molecule_names and back.options == m.options
    # the fine topology the model reads travels with the mapping
    assert back.atom_labels == [str(x) for x in system.atom_types]
    assert np.array_equal(back.atom_bonds, np.sort(system.bonds, axis=1))
    assert back.content_hash() == m.content_hash()
    assert f"hash: {m.content_hash()}" in path.read_text()
    # geometry mappings round-trip without per-atom weights
    g = build_mapping(system, "residue", weighting="geometry")
    gpath = save_mapping(g, tmp_path / "g.yaml")
    assert "weights" not in gpath.read_text() and load_mapping(gpath).content_hash() == g.content_hash()
    # a saved mapping is reused by mapping=file
    assert build_mapping(system, "file", path=str(path)).content_hash() == m.content_hash()


def test_load_refuses_edited_or_broken_files(system, tmp_path):
    m = build_mapping(system, "residue")
    path = save_mapping(m, tmp_path / "mapping.yaml")
    text = path.read_text()
    edited = tmp_path / "edited.yaml"
    edited.write_text(re.sub(r"mass: [0-9.]+", "mass: 15.5", text, count=1))
    assert edited.read_text() != text
    with pytest.raises(CgsimInputError, match="does not match its hash"):
        load_mapping(edited)
    # removing the hash accepts the edit
    edited.write_text("\n".join(x for x in edited.read_text().splitlines() if not x.startswith("hash:")) + "\n")
    assert load_mapping(edited).bead_masses[0] == 15.5
    twice = tmp_path / "twice.yaml"
    twice.write_text(text.replace("atoms: '4-10'", "atoms: '3-10'", 1).replace("hash:", "old_hash:"))
    with pytest.raises(CgsimInputError, match="atom 3 is assigned to more than one bead"):
        load_mapping(twice)
    gap = tmp_path / "gap.yaml"
    gap.write_text(text.replace("atoms: '0-3'", "atoms: '0-2'", 1).replace(
        "weights: [12.01078, 1.007947, 1.007947, 1.007947]", "weights: [12.01078, 1.007947, 1.007947]", 1))
    with pytest.raises(CgsimInputError, match="atom 3 is in no bead"):
        load_mapping(gap)
    other = tmp_path / "other.yaml"
    small = build_mapping(system_from_topology(md.load(str(FIX / "electrolyte.pdb")).topology.subset(range(10))), "residue")
    save_mapping(small, other)
    with pytest.raises(CgsimInputError, match="mapping is for 10 atoms but the topology has 83"):
        build_mapping(system, "file", path=str(other))


# ------------------------------------------------------------------------------------------
# applying
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("box", [ORTHO, TRICLINIC], ids=["orthorhombic", "triclinic"])
@pytest.mark.parametrize("scheme", ["residue", "metis"])
def test_wrapped_trajectory_maps_to_whole_continuous_beads(pdb, system, box, scheme):
    m = build_mapping(system, scheme)
    u = moving_frames(pdb.xyz[0].astype(np.float64), molecules_of(pdb.topology), box, 12, seed=1)
    w = wrap(u, box)
    # the test is meaningful only if molecules really are cut by the box edge
    assert np.abs(np.diff(w[:, 10:25], axis=1)).max() > 1.0
    beads = apply_mapping(traj_of(w, pdb.topology, box), m)
    want = brute_force_beads(u, m, system.masses)
    assert_lattice_shift_per_molecule(beads.xyz.astype(np.float64), want, m, box)
    # naive averaging of the wrapped positions is wrong (so the test can fail)
    naive = brute_force_beads(w, m, system.masses)
    assert np.abs(naive - want).max() > 0.5
    assert np.allclose(beads.unitcell_vectors[0], box, atol=1e-6)
    assert np.allclose(beads.time, np.arange(12) * 2.0)


def test_molecule_straddling_the_box_edge(pdb, system):
    """A TFSI centred on the corner of the box maps to its true centre of mass."""
    m = build_mapping(system, "molecule")
    tfsi = np.flatnonzero(system.molecule == 3)
    xyz = pdb.xyz[0].astype(np.float64).copy()
    xyz[tfsi] += -xyz[tfsi[0]] + np.array([0.02, 2.49, 0.01])  # N at a corner
    com = (xyz[tfsi] * system.masses[tfsi, None]).sum(0) / system.masses[tfsi].sum()
    w = wrap(xyz[None], ORTHO)
    assert np.ptp(w[0, tfsi], axis=0).max() > 2.0  # split across the box
    bead = apply_mapping(traj_of(w, pdb.topology, ORTHO), m).xyz[0, 3]
    assert np.allclose(wrap(bead[None, None].astype(np.float64), ORTHO), wrap(com[None, None], ORTHO), atol=1e-5)
    assert np.allclose(bead, com, atol=1e-5)  # the root atom (N) stays where it was given


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), triclinic=st.booleans())
def test_any_periodic_images_of_the_atoms_give_the_same_beads(pdb, system, seed, triclinic):
    """Moving any atom by any lattice vector moves whole molecules' beads by lattice vectors only."""
    box = TRICLINIC if triclinic else ORTHO
    m = build_mapping(system, "metis", atoms_per_bead=5, keep_whole_max_atoms=10)
    u = moving_frames(pdb.xyz[0].astype(np.float64), molecules_of(pdb.topology), box, 3, seed=seed % 1000)
    shifts = np.random.default_rng(seed).integers(-2, 3, u.shape)
    got = apply_mapping(traj_of(u + shifts @ box, pdb.topology, box), m).xyz.astype(np.float64)
    assert_lattice_shift_per_molecule(got, brute_force_beads(u, m, system.masses), m, box)


def test_unwrapped_input_and_chunking_change_nothing(pdb, system):
    m = build_mapping(system, "metis")
    u = moving_frames(pdb.xyz[0].astype(np.float64), molecules_of(pdb.topology), TRICLINIC, 9, seed=2)
    want = brute_force_beads(u, m, system.masses)
    whole = apply_mapping(traj_of(u, pdb.topology, TRICLINIC), m)
    assert np.allclose(whole.xyz, want, atol=2e-5)  # already unwrapped input comes back as it was
    w = traj_of(wrap(u, TRICLINIC), pdb.topology, TRICLINIC)
    one = apply_mapping(w, m)
    for chunk in (1, 4):
        assert np.allclose(apply_mapping(w, m, chunk=chunk).xyz, one.xyz, atol=1e-6)
    none = apply_mapping(w, m, pbc="none")  # pbc=none averages the positions as given
    assert np.allclose(none.xyz, brute_force_beads(wrap(u, TRICLINIC), m, system.masses), atol=2e-5)


def test_centre_of_geometry_and_non_periodic(pdb, system):
    m = build_mapping(system, "residue", weighting="geometry")
    u = moving_frames(pdb.xyz[0].astype(np.float64), molecules_of(pdb.topology), ORTHO, 3, seed=3)
    got = apply_mapping(traj_of(u, pdb.topology, None), m)
    assert got.unitcell_vectors is None
    assert np.allclose(got.xyz, brute_force_beads(u, m, system.masses, geometry=True), atol=2e-5)


def test_topology_without_bonds_makes_beads_whole_by_minimum_image(pdb, caplog):
    top = no_bond_topology(pdb.topology)
    s = system_from_topology(top)
    m = build_mapping(s, "residue")
    u = moving_frames(pdb.xyz[0].astype(np.float64), molecules_of(pdb.topology), ORTHO, 6, seed=4)
    with caplog.at_level(logging.WARNING, logger="cgsim.mapping"):
        got = apply_mapping(traj_of(wrap(u, ORTHO), top, ORTHO), m)
    assert "no bonds" in caplog.text
    want = brute_force_beads(u, m, s.masses)
    diff = np.linalg.solve(ORTHO.T, (got.xyz - want).reshape(-1, 3).T).T
    assert np.allclose(diff, np.rint(diff), atol=2e-4)  # each bead whole (shifted by a lattice vector)


def test_mapper_bad_input(pdb, system):
    m = build_mapping(system, "residue")
    mapper = BeadMapper(m, system.bonds, where="md.xtc")
    xyz = pdb.xyz.astype(np.float64).copy()
    xyz[0, 5, 1] = np.nan
    with pytest.raises(CgsimInputError, match=r"md.xtc: frame 0: non-finite coordinates \(atom 5\)"):
        mapper.map(xyz, ORTHO[None])
    with pytest.raises(CgsimInputError, match="frames have 80 atoms but the mapping is for 83"):
        mapper.map(pdb.xyz[:, :80], ORTHO[None])
    with pytest.raises(CgsimInputError, match="has 10 atoms but the mapping is for 83"):
        apply_mapping(pdb.atom_slice(range(10)), m)
    with pytest.raises(CgsimInputError, match="no image flags"):
        BeadMapper(m, system.bonds, pbc="images").map(pdb.xyz, ORTHO[None])
    with pytest.raises(CgsimInputError, match="unknown mode"):
        BeadMapper(m, system.bonds, pbc="wrap")
