"""``cgsim map``: config composition, output files (PDB/HDF5/XTC/DCD + sidecar + mapping.yaml),
reuse of a saved mapping, and bad inputs that must leave nothing half-written."""

from __future__ import annotations

from pathlib import Path

import mdtraj as md
import numpy as np
import pytest

from cgsim.cli import usage
from cgsim.errors import CgsimInputError
from cgsim.io.lammps import read_data
from cgsim.mapping import apply_mapping, load_mapping
from cgsim.metadata import read_sidecar
from tests.conftest import (
    MAPPING_BOX,
    MAPPING_DATA,
    MAPPING_PDB,
    run_cgsim,
    run_map,
    wrapped_md,
    write_mapping_dump,
)

BOX = np.eye(3) * MAPPING_BOX
#: names tests/test_bad_inputs.py imports from here
PDB, DATA, write_dump = MAPPING_PDB, MAPPING_DATA, write_mapping_dump


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_map_verb_is_registered():
    assert "map" in usage()


def test_map_xtc_with_metis_writes_standard_files(tmp_path):
    traj = wrapped_md()
    traj.save_xtc(str(tmp_path / "md.xtc"))
    out = tmp_path / "cg"
    summary = run_map(f"input.trajectory={tmp_path / 'md.xtc'}", f"input.topology={PDB}", "mapping=metis",
                      f"output={out}", "input.chunk=3", "temperature=353")
    assert leftovers(out) == ["beads.h5", "beads.json", "beads.pdb", "mapping.yaml"]  # no temporary files
    mapping = load_mapping(out / "mapping.yaml")
    assert summary["n_beads"] == mapping.n_beads == 11 and summary["n_frames"] == 8
    beads = md.load(str(out / "beads.h5"))
    assert beads.n_atoms == mapping.n_beads and beads.n_frames == 8
    assert np.allclose(beads.time, np.arange(8) * 2.0)
    assert np.allclose(beads.unitcell_vectors, BOX, atol=1e-5)
    # same numbers as the Python API on the same input
    expected = apply_mapping(md.load(str(tmp_path / "md.xtc"), top=str(PDB)), mapping)
    assert np.allclose(beads.xyz, expected.xyz, atol=1e-5)
    # the PDB opens in mdtraj with bead names, molecules as residues and CONECT bonds
    top = md.load(str(out / "beads.pdb")).topology
    assert [a.name for a in top.atoms] == mapping.bead_names
    assert top.n_bonds == len(mapping.bonds) == 6
    assert [r.name for r in top.residues] == ["M1", "LI", "LI", "TFS", "TFS"]
    meta = read_sidecar(out / "beads.h5")
    assert meta.kind == "mapped" and meta.n_frames == 8 and meta.save_interval == pytest.approx(2.0)
    assert meta.extra["mapping"]["hash"] == mapping.content_hash() == summary["mapping_hash"]
    assert meta.system.temperature == 353 and meta.system.units["length"] == "nm"
    assert meta.system.particle_masses == pytest.approx(mapping.bead_masses.tolist())
    assert meta.provenance["source"]["trajectory"] == str((tmp_path / "md.xtc").resolve())
    assert meta.coordinates == "unwrapped" and meta.extra["pbc"]["used"] == "bonds"


@pytest.mark.parametrize("fmt", ["xtc", "dcd"])
def test_map_lammps_dump_and_reuse_saved_mapping(tmp_path, fmt):
    data = read_data(DATA)
    traj = wrapped_md(5, seed=1)
    write_dump(tmp_path / "run.lammpstrj", traj.xyz.astype(np.float64), data)
    out = tmp_path / "cg"
    run_map(f"input.trajectory={tmp_path / 'run.lammpstrj'}", f"input.topology={DATA}", "input.lammps_timestep=2.0",
            "mapping=molecule", f"output={out}", f"trajectory_format={fmt}")
    beads = md.load(str(out / f"beads.{fmt}"), top=str(out / "beads.pdb"))
    assert beads.n_atoms == 5 and beads.n_frames == 5
    meta = read_sidecar(out / f"beads.{fmt}")
    assert meta.save_interval == pytest.approx(1.0)  # 500 steps x 2 fs
    assert meta.system.md_timestep == pytest.approx(0.002)
    assert meta.summary["total_charge_e"] == pytest.approx(data.charges.sum())
    # the saved mapping is reused as it is (same hash), here on the PDB/XTC form of the system
    traj.save_xtc(str(tmp_path / "md.xtc"))
    again = run_map(f"input.trajectory={tmp_path / 'md.xtc'}", f"input.topology={PDB}", "mapping=file",
                    f"mapping.path={out / 'mapping.yaml'}", f"output={tmp_path / 'cg2'}")
    assert again["mapping_hash"] == load_mapping(out / "mapping.yaml").content_hash()
    b2 = md.load(str(tmp_path / "cg2" / "beads.h5"))
    assert np.allclose(b2.xyz, beads.xyz, atol=2e-3 if fmt == "xtc" else 1e-3)


def test_refuses_existing_outputs_and_leaves_nothing_half_written(tmp_path):
    traj = wrapped_md(4)
    traj.save_xtc(str(tmp_path / "md.xtc"))
    common = [f"input.trajectory={tmp_path / 'md.xtc'}", f"input.topology={PDB}", "mapping=residue"]
    out = tmp_path / "cg"
    run_map(*common, f"output={out}")
    before = (out / "beads.h5").read_bytes()
    with pytest.raises(CgsimInputError, match="already holds"):
        run_map(*common, f"output={out}")
    assert (out / "beads.h5").read_bytes() == before
    run_map(*common, f"output={out}", "overwrite=true", "mapping=molecule")
    assert md.load(str(out / "beads.h5")).n_atoms == 5

    # an error in the last frame, after earlier chunks were written: no output at all
    data = read_data(DATA)
    xyz = traj.xyz.astype(np.float64)
    xyz[-1, 7, 0] = np.nan
    write_dump(tmp_path / "nan.lammpstrj", xyz, data)
    bad = tmp_path / "bad"
    with pytest.raises(CgsimInputError, match="non-finite coordinates"):
        run_map(f"input.trajectory={tmp_path / 'nan.lammpstrj'}", f"input.topology={DATA}", "input.chunk=1",
                "input.dt=1.0", "mapping=residue", f"output={bad}")
    assert leftovers(bad) == []


def test_bad_inputs_get_one_line_errors(tmp_path):
    traj = wrapped_md(3)
    traj.atom_slice(range(80)).save_xtc(str(tmp_path / "short.xtc"))
    with pytest.raises(CgsimInputError, match=r"has 80 atoms per frame but topology .* has 83"):
        run_map(f"input.trajectory={tmp_path / 'short.xtc'}", f"input.topology={PDB}", f"output={tmp_path / 'a'}")
    traj.save_dcd(str(tmp_path / "md.dcd"))
    with pytest.raises(CgsimInputError, match="set input.dt"):
        run_map(f"input.trajectory={tmp_path / 'md.dcd'}", f"input.topology={PDB}", f"output={tmp_path / 'b'}")
    res = run_map(f"input.trajectory={tmp_path / 'md.dcd'}", f"input.topology={PDB}", "input.dt=0.5",
                  "input.stride=2", f"output={tmp_path / 'b'}")
    assert res["n_frames"] == 2 and read_sidecar(tmp_path / "b" / "beads.h5").save_interval == pytest.approx(1.0)
    with pytest.raises(CgsimInputError, match="selects no atoms"):
        run_map(f"input.trajectory={tmp_path / 'md.dcd'}", f"input.topology={PDB}", "input.dt=1",
                "input.selection=resname XYZ", f"output={tmp_path / 'c'}")
    (tmp_path / "x.lammpstrj").write_text("")
    with pytest.raises(CgsimInputError, match="needs its LAMMPS data file"):
        run_map(f"input.trajectory={tmp_path / 'x.lammpstrj'}", f"output={tmp_path / 'd'}")
    assert not any((tmp_path / n).exists() for n in ("a", "c", "d"))


def test_command_line_exit_status_and_message(tmp_path):
    proc = run_cgsim("map", f"input.trajectory={tmp_path / 'missing.xtc'}", f"input.topology={PDB}",
                     f"output={tmp_path / 'out'}", "progress=false", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"cgsim map: error: {tmp_path / 'missing.xtc'}: trajectory file not found"


def test_lammps_data_with_an_mdtraj_trajectory(tmp_path):
    """LAMMPS can write DCD/XTC; the data file is then the topology of an mdtraj-read trajectory."""
    traj = wrapped_md(4, seed=2)
    traj.save_dcd(str(tmp_path / "run.dcd"))
    a = run_map(f"input.trajectory={tmp_path / 'run.dcd'}", f"input.topology={DATA}", "input.dt=1.0", "mapping=metis",
                f"output={tmp_path / 'lmp'}")
    b = run_map(f"input.trajectory={tmp_path / 'run.dcd'}", f"input.topology={PDB}", "input.dt=1.0", "mapping=metis",
                f"output={tmp_path / 'pdb'}")
    assert a["n_beads"] == b["n_beads"] == 11
    xa, xb = (md.load(str(tmp_path / d / "beads.h5")).xyz for d in ("lmp", "pdb"))
    assert np.allclose(xa, xb, atol=1e-5)
    assert read_sidecar(tmp_path / "lmp" / "beads.h5").summary["charges_known"] is True


def test_chain_reference_md_with_sidecar(tmp_path):
    """Bead-spring chains as `cgsim generate` writes them: virtual elements (no masses) in the
    PDB, masses and reduced units in the JSON sidecar; non-periodic, already unwrapped."""
    from cgsim.metadata import SystemInfo, TrajectoryMetadata, write_sidecar
    from cgsim.units import LJUnits, units_block

    top = md.Topology()
    chain = top.add_chain()
    atoms = []
    seq = "ABBABAABAB"
    for i, letter in enumerate(seq):
        res = top.add_residue(f"M{letter}", chain, resSeq=i + 1)
        atoms.append(top.add_atom("B1" if letter == "A" else "B2", md.element.virtual, res))
        atoms.append(top.add_atom("S1" if letter == "A" else "S2", md.element.virtual, res))
        top.add_bond(atoms[-2], atoms[-1])
        if i:
            top.add_bond(atoms[-4], atoms[-2])
    rng = np.random.default_rng(0)
    xyz = np.cumsum(rng.normal(0, 0.55, (6, 20, 3)), axis=1) + np.arange(6)[:, None, None] * 0.1
    md.Trajectory(xyz[:1].astype(np.float32), top).save_pdb(str(tmp_path / "seq_000.pdb"))
    with md.formats.XTCTrajectoryFile(str(tmp_path / "seq_000.xtc"), "w") as fh:
        fh.write(xyz.astype(np.float32), time=np.arange(6, dtype=np.float32) * 5.0)
    lj = LJUnits()
    info = SystemInfo(name="chain", units=units_block("lj", lj), temperature=1.0, md_timestep=0.01, periodic=False,
                      particle_types=[a.name for a in top.atoms], particle_masses=[1.0] * 20)
    write_sidecar(TrajectoryMetadata(kind="reference_md", trajectory="seq_000.xtc", topology="seq_000.pdb", system=info,
                                     save_interval=5.0, n_frames=6), tmp_path / "seq_000.xtc")
    out = tmp_path / "cg"
    res = run_map(f"input.trajectory={tmp_path / 'seq_000.xtc'}", f"input.topology={tmp_path / 'seq_000.pdb'}",
                  "mapping=residue", f"output={out}")
    assert res["n_beads"] == 10 and res["pbc"] == "none"
    meta = read_sidecar(out / "beads.h5")
    assert meta.system.units["system"] == "lj" and meta.save_interval == pytest.approx(5.0)
    assert meta.system.md_timestep == 0.01 and meta.system.particle_masses == [2.0] * 10
    assert meta.system.particle_types == ["MA", "MB", "MB", "MA", "MB", "MA", "MA", "MB", "MA", "MB"]
    beads = md.load(str(out / "beads.h5"))
    assert np.allclose(beads.xyz, xyz.reshape(6, 10, 2, 3).mean(axis=2), atol=1e-3)  # equal masses: midpoints


def test_missing_required_options(tmp_path):
    with pytest.raises(CgsimInputError, match=r"^input.trajectory: is required"):
        run_map(f"output={tmp_path / 'x'}")
    with pytest.raises(CgsimInputError, match=r"^mapping.path: is required"):
        run_map(f"input.trajectory={PDB}", "mapping=file", f"output={tmp_path / 'x'}")


def test_unwrapped_reference_md_is_not_unwrapped_again(tmp_path):
    """A cgsim sidecar that declares unwrapped coordinates switches pbc=auto to none: a Li+ that
    moves more than half a box between frames must not be folded back."""
    from cgsim.metadata import SystemInfo, TrajectoryMetadata, write_sidecar
    from cgsim.units import units_block

    ref = md.load(str(PDB))
    xyz = np.repeat(ref.xyz, 3, axis=0)
    xyz[:, 51] += np.array([[0.0, 0, 0], [1.6, 0, 0], [3.2, 0, 0]], dtype=np.float32)  # Li+ jumps 1.6 nm > L/2
    t = md.Trajectory(xyz, ref.topology, time=[0.0, 10.0, 20.0])
    t.unitcell_vectors = np.broadcast_to(BOX, (3, 3, 3)).astype(np.float32)
    t.save_xtc(str(tmp_path / "ref.xtc"))
    info = SystemInfo(name="electrolyte", units=units_block("md"), temperature=353.0, md_timestep=0.002, periodic=True,
                      particle_types=[a.element.symbol for a in ref.topology.atoms],
                      particle_masses=[a.element.mass for a in ref.topology.atoms], box=[2.5, 2.5, 2.5, 90, 90, 90])
    write_sidecar(TrajectoryMetadata(kind="reference_md", trajectory="ref.xtc", topology="ref.pdb", system=info,
                                     save_interval=10.0, n_frames=3, coordinates="unwrapped"), tmp_path / "ref.xtc")
    res = run_map(f"input.trajectory={tmp_path / 'ref.xtc'}", f"input.topology={PDB}", "mapping=molecule",
                  f"output={tmp_path / 'cg'}")
    assert res["pbc"] == "none"
    li = md.load(str(tmp_path / "cg" / "beads.h5")).xyz[:, 1]
    assert np.allclose(li[:, 0] - li[0, 0], [0.0, 1.6, 3.2], atol=2e-3)
    meta = read_sidecar(tmp_path / "cg" / "beads.h5")
    assert meta.coordinates == "unwrapped" and meta.system.temperature == 353.0 and meta.system.md_timestep == 0.002
    # forcing pbc=bonds folds the jump (this is why the sidecar is trusted)
    forced = run_map(f"input.trajectory={tmp_path / 'ref.xtc'}", f"input.topology={PDB}", "mapping=molecule",
                     "pbc=bonds", f"output={tmp_path / 'cg2'}")
    assert forced["pbc"] == "bonds"
    li2 = md.load(str(tmp_path / "cg2" / "beads.h5")).xyz[:, 1]
    assert not np.allclose(li2[:, 0] - li2[0, 0], [0.0, 1.6, 3.2], atol=2e-3)
