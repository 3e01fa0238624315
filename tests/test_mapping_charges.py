"""Atom charges from a file (``input.charges``): .npy, text and OpenMM System XML readers, bead
charges as sums over atoms (API and ``cgsim map``), LAMMPS override, and one-line errors.

Expected bead charges are computed here independently: a plain loop over the topology's
molecules (mdtraj ``find_molecules``) or over the mapping's beads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mdtraj as md
import numpy as np
import openmm
import pytest

from cgsim.errors import CgsimInputError
from cgsim.io.lammps import read_data
from cgsim.mapping import (
    build_mapping,
    load_mapping,
    read_charges,
    save_mapping,
    system_from_lammps,
    system_from_topology,
)
from cgsim.metadata import read_sidecar
from tests.conftest import MAPPING_DATA as DATA
from tests.conftest import MAPPING_PDB as PDB
from tests.conftest import run_cgsim, run_map, wrapped_md, write_mapping_dump

N_ATOMS = 83


@pytest.fixture(scope="module")
def topology() -> md.Topology:
    return md.load_topology(str(PDB))


@pytest.fixture(scope="module")
def charges() -> np.ndarray:
    """The fixture's force-field charges (e), in topology (= LAMMPS atom id) order; total -0.02 e."""
    return read_data(DATA).charges.astype(np.float64)


def molecule_charges(top: md.Topology, q: np.ndarray) -> np.ndarray:
    """Charge of each molecule, molecules ordered by first atom (plain loop)."""
    mols = sorted(([a.index for a in m] for m in top.find_molecules()), key=min)
    return np.array([sum(q[i] for i in atoms) for atoms in mols])


def bead_sums(mapping, q: np.ndarray) -> np.ndarray:
    """Charge of each bead of ``mapping`` by a plain loop over its atoms."""
    out = np.zeros(mapping.n_beads)
    for atom, bead in enumerate(mapping.atom_bead):
        out[bead] += q[atom]
    return out


def openmm_system_xml(path: Path, q: np.ndarray, masses: np.ndarray | None = None, nonbonded: bool = True) -> Path:
    """A tiny OpenMM System (one particle per atom) serialized to ``path``."""
    system = openmm.System()
    for m in (np.ones(len(q)) if masses is None else masses):
        system.addParticle(float(m))
    if nonbonded:
        nb = openmm.NonbondedForce()
        for qi in q:
            nb.addParticle(float(qi), 0.3, 0.5)
        system.addForce(nb)
    else:
        system.addForce(openmm.HarmonicBondForce())
    path.write_text(openmm.XmlSerializer.serialize(system))
    return path


def write_format(tmp_path: Path, fmt: str, q: np.ndarray) -> Path:
    """Write ``q`` in one of the supported layouts; return the file."""
    if fmt == "npy":
        np.save(tmp_path / "q.npy", q)
        return tmp_path / "q.npy"
    if fmt == "txt":  # one per line, full precision, with comments
        text = "# atom charges, e\n" + "".join(f"{float(x)!r}  # atom {i}\n" for i, x in enumerate(q))
        (tmp_path / "q.txt").write_text(text)
        return tmp_path / "q.txt"
    if fmt == "csv":  # comma separated, several per line, blank lines
        rows = [", ".join(repr(float(x)) for x in q[k:k + 10]) for k in range(0, len(q), 10)]
        (tmp_path / "q.csv").write_text("# q\n\n" + ",\n".join(rows) + "\n")
        return tmp_path / "q.csv"
    if fmt == "dat":  # whitespace separated on one line
        (tmp_path / "q.dat").write_text(" ".join(repr(float(x)) for x in q) + "\n")
        return tmp_path / "q.dat"
    return openmm_system_xml(tmp_path / "system.xml", q)


FORMATS = ["npy", "txt", "csv", "dat", "xml"]


# ------------------------------------------------------------------------------------------
# readers and the Python API
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_round_trips_to_bead_charges(tmp_path, topology, charges, fmt):
    path = write_format(tmp_path, fmt, charges)
    assert np.allclose(read_charges(path, N_ATOMS), charges, rtol=0, atol=1e-12)
    system = system_from_topology(topology, charges=path, source=str(PDB))
    assert system.charges_known and system.charges_source == str(path)
    mol = build_mapping(system, "molecule")
    expected = molecule_charges(topology, charges)
    assert mol.bead_charges == pytest.approx(expected, abs=1e-12)
    assert mol.bead_charges[1:3] == pytest.approx([1.0, 1.0]) and mol.bead_charges[3:] == pytest.approx([-1.0, -1.0])
    metis = build_mapping(system, "metis", atoms_per_bead=7)
    assert metis.bead_charges == pytest.approx(bead_sums(metis, charges), abs=1e-12)
    for m in (mol, metis):  # total charge conserved
        assert m.bead_charges.sum() == pytest.approx(charges.sum(), abs=1e-12)
    # the mapping file records the bead charges
    save_mapping(metis, tmp_path / "mapping.yaml")
    assert load_mapping(tmp_path / "mapping.yaml").bead_charges == pytest.approx(metis.bead_charges, abs=1e-12)


def test_build_mapping_and_with_charges_take_files_or_arrays(tmp_path, topology, charges):
    system = system_from_topology(topology)
    assert not system.charges_known and not system.charges.any()
    assert not build_mapping(system, "residue").bead_charges.any()
    xml = openmm_system_xml(tmp_path / "system.xml", charges)
    a = build_mapping(system, "residue", charges=xml)
    b = build_mapping(system.with_charges(charges), "residue")
    assert np.array_equal(a.bead_charges, b.bead_charges)
    assert a.bead_charges == pytest.approx(bead_sums(a, charges), abs=1e-12)
    assert not system.charges_known  # the given system is not changed
    # a selection keeps the selected atoms' charges
    ions = system.with_charges(charges).subset(topology.select("resname LI or resname TFS"))
    assert ions.charges_known and ions.charges.sum() == pytest.approx(0.0, abs=1e-12)


def test_openmm_charges_are_read_in_elementary_charges(tmp_path):
    system = openmm.System()
    nb = openmm.NonbondedForce()
    for q in (0.8, -0.8):
        system.addParticle(1.0)
        nb.addParticle(q * openmm.unit.elementary_charge, 0.3 * openmm.unit.nanometer, 0.1)
    system.addForce(openmm.HarmonicBondForce())
    system.addForce(nb)  # not the first force
    (tmp_path / "s.xml").write_text(openmm.XmlSerializer.serialize(system))
    assert read_charges(tmp_path / "s.xml").tolist() == pytest.approx([0.8, -0.8])


def test_lammps_charges_are_overridden_with_a_log_line(tmp_path, charges, caplog):
    data = read_data(DATA)
    new = np.linspace(-0.5, 0.5, N_ATOMS)
    np.save(tmp_path / "q.npy", new)
    with caplog.at_level(logging.INFO, logger="cgsim.mapping.system"):
        system = system_from_lammps(data, charges=tmp_path / "q.npy")
    assert np.array_equal(system.charges, new) and system.charges_known
    assert any("replace those of the LAMMPS data file" in r.getMessage() and str(tmp_path / "q.npy") in r.getMessage()
               for r in caplog.records)
    assert np.array_equal(system_from_lammps(data).charges, charges)  # default: the data file's


def bad_files(tmp_path: Path, charges: np.ndarray) -> list[tuple[Path, str]]:
    """(file, expected message) pairs for bad charges files."""
    cases = []
    np.save(tmp_path / "short.npy", charges[:80])
    cases.append((tmp_path / "short.npy", f"expected {N_ATOMS} atom charges .*got 80$"))
    (tmp_path / "long.txt").write_text("\n".join(map(str, [*charges, 0.0])))
    cases.append((tmp_path / "long.txt", f"expected {N_ATOMS} atom charges .*got 84$"))
    q = charges.copy()
    q[5] = np.nan
    (tmp_path / "nan.txt").write_text("\n".join(map(str, q)))
    cases.append((tmp_path / "nan.txt", "charge of atom 5 is nan; expected finite"))
    q[5], q[7] = np.inf, -np.inf
    np.save(tmp_path / "inf.npy", q)
    cases.append((tmp_path / "inf.npy", "charge of atom 5 is inf; expected finite charges .*2 non-finite values"))
    (tmp_path / "word.csv").write_text("0.1, 0.2\n0.3, oops\n")
    cases.append((tmp_path / "word.csv", "line 2: 'oops' is not a number"))
    np.save(tmp_path / "matrix.npy", np.zeros((N_ATOMS, 2)))
    cases.append((tmp_path / "matrix.npy", r"expected a 1-D array .*got shape \(83, 2\)"))
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    cases.append((tmp_path / "broken.npy", "cannot be read as a .npy array"))
    (tmp_path / "garbage.xml").write_text("<System><Particles>")
    cases.append((tmp_path / "garbage.xml", "is not an OpenMM System serialized by openmm.XmlSerializer"))
    (tmp_path / "ff.xml").write_text("<ForceField><AtomTypes/></ForceField>\n")
    cases.append((tmp_path / "ff.xml", "is not an OpenMM System serialized by openmm.XmlSerializer"))
    (tmp_path / "integrator.xml").write_text(openmm.XmlSerializer.serialize(openmm.VerletIntegrator(0.002)))
    cases.append((tmp_path / "integrator.xml", "holds an OpenMM VerletIntegrator, not a System"))
    openmm_system_xml(tmp_path / "nonb.xml", charges, nonbonded=False)
    cases.append((tmp_path / "nonb.xml", "has no NonbondedForce .*HarmonicBondForce"))
    openmm_system_xml(tmp_path / "few.xml", charges[:10])
    cases.append((tmp_path / "few.xml", f"expected {N_ATOMS} atom charges .*got 10$"))
    (tmp_path / "q.pkl").write_text("1\n")
    cases.append((tmp_path / "q.pkl", "unknown charges file type '.pkl'; expected one of .npy"))
    cases.append((tmp_path / "missing.npy", "charges file not found"))
    return cases


def test_bad_charges_files_raise_one_line_naming_the_file(tmp_path, topology, charges):
    for path, message in bad_files(tmp_path, charges):
        with pytest.raises(CgsimInputError) as info:
            system_from_topology(topology, charges=path, source=str(PDB))
        assert info.value.where == str(path), path
        assert "\n" not in str(info.value)
        assert info.match(message), (path, str(info.value))
    bad = np.zeros(N_ATOMS)
    bad[3] = np.nan
    with pytest.raises(CgsimInputError, match="charge of atom 3 is nan"):
        system_from_topology(topology, charges=bad)
    with pytest.raises(CgsimInputError, match=r"expected 83 atom charges .*got shape \(4,\)"):
        system_from_topology(topology).with_charges(np.zeros(4))


# ------------------------------------------------------------------------------------------
# cgsim map
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["xml", "csv"])
def test_map_with_input_charges(tmp_path, topology, charges, fmt):
    path = write_format(tmp_path, fmt, charges)
    wrapped_md(4).save_xtc(str(tmp_path / "md.xtc"))
    out = tmp_path / "cg"
    run_map(f"input.trajectory={tmp_path / 'md.xtc'}", f"input.topology={PDB}", f"input.charges={path}",
            "mapping=molecule", f"output={out}")
    mapping = load_mapping(out / "mapping.yaml")
    expected = molecule_charges(topology, charges)
    assert mapping.bead_charges == pytest.approx(expected, abs=1e-12)
    meta = read_sidecar(out / "beads.h5")
    assert meta.summary["charges_known"] is True
    assert meta.summary["total_charge_e"] == pytest.approx(charges.sum(), abs=1e-12)
    assert meta.extra["particle_charges"] == pytest.approx(expected.tolist(), abs=1e-12)
    assert meta.provenance["source"]["charges"] == str(path.resolve())


def test_map_without_charges_keeps_them_unknown(tmp_path):
    wrapped_md(3).save_xtc(str(tmp_path / "md.xtc"))
    run_map(f"input.trajectory={tmp_path / 'md.xtc'}", f"input.topology={PDB}", "mapping=molecule", f"output={tmp_path / 'cg'}")
    meta = read_sidecar(tmp_path / "cg" / "beads.h5")
    assert meta.summary["charges_known"] is False and meta.extra["particle_charges"] is None
    assert not load_mapping(tmp_path / "cg" / "mapping.yaml").bead_charges.any()


def test_map_charges_with_selection_and_saved_mapping(tmp_path, charges):
    """Charges are per atom of the whole topology; a selection keeps its atoms' charges. A saved
    mapping made without charges takes the bead charges from input.charges when reused."""
    wrapped_md(3).save_xtc(str(tmp_path / "md.xtc"))
    np.save(tmp_path / "q.npy", charges)
    common = [f"input.trajectory={tmp_path / 'md.xtc'}", f"input.topology={PDB}"]
    run_map(*common, f"input.charges={tmp_path / 'q.npy'}", "input.selection=resname LI or resname TFS",
            "mapping=molecule", f"output={tmp_path / 'ions'}")
    assert load_mapping(tmp_path / "ions" / "mapping.yaml").bead_charges == pytest.approx([1.0, 1.0, -1.0, -1.0])
    run_map(*common, "mapping=metis", f"output={tmp_path / 'plain'}")
    saved = load_mapping(tmp_path / "plain" / "mapping.yaml")
    assert not saved.bead_charges.any()
    run_map(*common, f"input.charges={tmp_path / 'q.npy'}", "mapping=file", f"mapping.path={tmp_path / 'plain' / 'mapping.yaml'}",
            f"output={tmp_path / 'again'}")
    again = load_mapping(tmp_path / "again" / "mapping.yaml")
    assert np.array_equal(again.atom_bead, saved.atom_bead)
    assert again.bead_charges == pytest.approx(bead_sums(saved, charges), abs=1e-12)


def test_map_lammps_input_charges_override_the_data_file(tmp_path, caplog):
    data = read_data(DATA)
    write_mapping_dump(tmp_path / "run.lammpstrj", wrapped_md(3, seed=1).xyz.astype(np.float64), data)
    scaled = data.charges * np.where(np.abs(data.charges) > 0.9, 0.8, 1.0)  # another charge set
    (tmp_path / "q.txt").write_text("\n".join(repr(float(x)) for x in scaled))
    with caplog.at_level(logging.INFO, logger="cgsim.mapping.system"):
        run_map(f"input.trajectory={tmp_path / 'run.lammpstrj'}", f"input.topology={DATA}", "input.lammps_timestep=1.0",
                f"input.charges={tmp_path / 'q.txt'}", "mapping=molecule", f"output={tmp_path / 'cg'}")
    assert any("replace those of the LAMMPS data file" in r.getMessage() for r in caplog.records)
    mapping = load_mapping(tmp_path / "cg" / "mapping.yaml")
    assert mapping.bead_charges == pytest.approx(bead_sums(mapping, scaled), abs=1e-12)
    assert mapping.bead_charges.sum() == pytest.approx(scaled.sum(), abs=1e-12)
    assert read_sidecar(tmp_path / "cg" / "beads.h5").summary["charges_known"] is True


def test_map_reads_charges_from_a_cgsim_sidecar(tmp_path, charges):
    """cgsim's reference MD declares atom charges in its sidecar (extra.particle_charges)."""
    from cgsim.metadata import SystemInfo, TrajectoryMetadata, write_sidecar
    from cgsim.units import units_block

    t = wrapped_md(3)
    t.save_xtc(str(tmp_path / "ref.xtc"))
    info = SystemInfo(name="electrolyte", units=units_block("md"), temperature=353.0, md_timestep=0.002, periodic=True,
                      particle_types=[a.element.symbol for a in t.topology.atoms],
                      particle_masses=[a.element.mass for a in t.topology.atoms], box=[2.5, 2.5, 2.5, 90, 90, 90])
    write_sidecar(TrajectoryMetadata(kind="reference_md", trajectory="ref.xtc", topology="ref.pdb", system=info,
                                     save_interval=2.0, n_frames=3, extra={"particle_charges": charges.tolist()}),
                  tmp_path / "ref.xtc")
    run_map(f"input.trajectory={tmp_path / 'ref.xtc'}", f"input.topology={PDB}", "mapping=molecule", f"output={tmp_path / 'cg'}")
    meta = read_sidecar(tmp_path / "cg" / "beads.h5")
    assert meta.summary["charges_known"] is True
    assert meta.extra["particle_charges"][1:] == pytest.approx([1.0, 1.0, -1.0, -1.0])


def run_cli(tmp_path: Path, *overrides: str):
    return run_cgsim("map", *overrides, "progress=false", cwd=tmp_path, timeout=180)


def test_command_line_charges_errors_are_one_line(tmp_path, charges):
    wrapped_md(2).save_xtc(str(tmp_path / "md.xtc"))
    np.save(tmp_path / "short.npy", charges[:80])
    common = [f"input.trajectory={tmp_path / 'md.xtc'}", f"input.topology={PDB}", f"output={tmp_path / 'out'}"]
    proc = run_cli(tmp_path, *common, f"input.charges={tmp_path / 'short.npy'}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"cgsim map: error: {tmp_path / 'short.npy'}: expected {N_ATOMS} atom charges "
                                   "(one per atom of the topology), got 80")
    proc = run_cli(tmp_path, *common, f"input.charges={tmp_path / 'nope.xml'}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"cgsim map: error: {tmp_path / 'nope.xml'}: charges file not found"
    assert not (tmp_path / "out").exists()
