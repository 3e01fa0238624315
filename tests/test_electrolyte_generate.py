"""`cgsim generate system=electrolyte`: files, resume after kills, bad input (tiny boxes, seconds)."""

import json

import mdtraj as md
import numpy as np
import openmm.unit as unit
import pytest
from hydra.errors import ConfigCompositionException

from cgsim.errors import CgsimInputError
from cgsim.metadata import read_sidecar
from cgsim.reference import electrolyte as el
from cgsim.reference import electrolyte_generate as eg
from cgsim.reference import runner as runner_mod
from cgsim.reference.electrolyte_generate import settings_from_config
from cgsim.reference.generate import run
from tests.conftest import tiny_electrolyte_overrides

#: tests/test_bad_inputs.py imports it by this name
tiny_overrides = tiny_electrolyte_overrides


class _Kill(RuntimeError):
    pass


def test_build_run_resume_after_kills_and_outputs(tmp_path, compose_cfg, monkeypatch):
    out = tmp_path / "o"
    cfg = compose_cfg("generate", tiny_electrolyte_overrides(out))

    # 1) killed during NPT equilibration, right after its 4th commit (minimise, 2 x compress, 1 x npt)
    original_commit = eg.Equilibration._commit
    calls = {"eq": 0, "chunk": 0}

    def flaky_commit(self, progress, state):
        original_commit(self, progress, state)
        calls["eq"] += 1
        if calls["eq"] == 4:
            raise _Kill

    monkeypatch.setattr(eg.Equilibration, "_commit", flaky_commit)
    with pytest.raises(_Kill):
        run(cfg)
    monkeypatch.setattr(eg.Equilibration, "_commit", original_commit)
    eq_progress = json.loads((out / ".run" / "equilibration" / "progress.json").read_text())
    assert eq_progress["stage"] == "npt" and len(eq_progress["blocks"]) == 3

    # 2) killed in production, half-way through writing the second chunk
    original_chunk = runner_mod.ChunkedRun._write_chunk

    def flaky_chunk(self, *a, **k):
        calls["chunk"] += 1
        original_chunk(self, *a, **k)
        if calls["chunk"] == 2:
            raise _Kill

    monkeypatch.setattr(runner_mod.ChunkedRun, "_write_chunk", flaky_chunk)
    with pytest.raises(_Kill):
        run(cfg)
    monkeypatch.setattr(runner_mod.ChunkedRun, "_write_chunk", original_chunk)
    assert not (out / "dataset.json").exists()

    # 2b) a partial export: readable files from the committed frames only; the run stays resumable
    part = run(compose_cfg("generate", tiny_electrolyte_overrides(out, export_partial=True)))
    assert part["complete"] is False and part["frames"] == 2
    assert md.load(out / "peo2x4_litfsi2.xtc", top=out / "peo2x4_litfsi2.pdb").n_frames == 2
    partial_meta = read_sidecar(out / "peo2x4_litfsi2.xtc")
    assert partial_meta.summary["complete"] is False and partial_meta.n_frames == 2
    assert partial_meta.summary["production_time"] == pytest.approx(1.0)
    assert not (out / "dataset.json").exists()

    # 3) resumed to the end
    summary = run(cfg)
    name = "peo2x4_litfsi2"
    assert summary["name"] == name and summary["n_atoms"] == 106 and summary["frames"] == 5

    # equilibration history continuous: no repeated or missing blocks
    eq_progress = json.loads((out / ".run" / "equilibration" / "progress.json").read_text())
    times = {st: [b["time"] for b in eq_progress["blocks"] if b["stage"] == st] for st in ("compress", "npt")}
    assert times["compress"] == pytest.approx([0.5, 1.0])
    assert times["npt"] == pytest.approx(list(np.arange(1, len(times["npt"]) + 1) * 0.5))
    assert 2 <= len(times["npt"]) <= 4

    # trajectory: every frame once, unwrapped with molecules whole, box and bonds in the PDB
    traj = md.load(out / f"{name}.xtc", top=out / f"{name}.pdb")
    np.testing.assert_allclose(traj.time, [0.0, 1.0, 2.0, 3.0, 4.0])
    assert traj.n_atoms == 106
    assert all(np.abs(traj.xyz[k + 1] - traj.xyz[k]).max() > 1e-3 for k in range(traj.n_frames - 1))
    pdb = md.load(out / f"{name}.pdb")
    top = pdb.topology
    assert top.n_bonds == 2 * 36 + 2 * 14
    assert [r.name for r in top.residues] == (["PEH"] + ["PEO"] * 4 + ["PET"]) * 2 + ["LI"] * 2 + ["TFS"] * 2
    bonds = np.array([[b[0].index, b[1].index] for b in top.bonds])
    lengths = np.linalg.norm(traj.xyz[:, bonds[:, 0]] - traj.xyz[:, bonds[:, 1]], axis=-1)
    assert lengths.max() < 0.2 and lengths.min() > 0.09
    box = traj.unitcell_lengths
    np.testing.assert_allclose(box, box[:1].repeat(traj.n_frames, 0), rtol=1e-6)
    np.testing.assert_allclose(pdb.unitcell_lengths[0], box[0], atol=2e-3)

    # sidecar: units, charge scaling, zero total charge, provenance
    meta = read_sidecar(out / f"{name}.xtc")
    assert meta.system.name == "electrolyte" and meta.system.units["system"] == "md"
    assert meta.coordinates == "unwrapped" and meta.n_frames == 5 and meta.save_interval == pytest.approx(1.0)
    assert meta.summary["complete"] is True and meta.summary["production_time"] == pytest.approx(4.0)
    assert meta.system.box[:3] == pytest.approx(list(box[0]), abs=1e-3)
    ff = meta.extra["forcefield"]
    assert ff["charge_scale"] == 0.8 and "0.8" in ff["charge_scale_note"] and ff["lj_mixing"].startswith("geometric")
    assert ff["scale_14"] == {"coulomb": 0.5, "lj": 0.5}
    charges = np.array(meta.extra["particle_charges"])
    assert abs(charges.sum()) < 1e-10 and abs(meta.summary["total_charge"]) < 1e-10
    assert charges[np.array([a.residue.name == "LI" for a in top.atoms])] == pytest.approx([0.8, 0.8])
    assert len(meta.system.particle_types) == 106 and "li_aqvist" in meta.system.particle_types
    assert meta.extra["composition"]["n_salt"] == 2 and meta.extra["composition"]["eo_li_ratio"] == 4.0
    assert 0.2 < meta.summary["density"] < 1.5
    assert set(meta.summary["temperature"]) == {"peo", "li", "tfsi"}
    assert meta.provenance["config"]["system"]["charge_scale"] == 0.8
    index = json.loads((out / "dataset.json").read_text())
    assert index["system"] == "electrolyte" and index["molecules"][0]["files"][0]["n_frames"] == 5
    # only the small run records remain
    assert sorted(p.name for p in (out / ".run").iterdir()) == ["equilibration", "identity.json", "progress.json"]
    assert [p.name for p in (out / ".run" / "equilibration").iterdir()] == ["progress.json"]

    # finished: a rerun recomputes nothing; a different run in the same directory is refused
    assert run(cfg)["wall_seconds"] == 0.0
    with pytest.raises(CgsimInputError, match="different run"):
        run(compose_cfg("generate", tiny_electrolyte_overrides(out, **{"system.temperature": 350.0})))


@pytest.mark.parametrize("override, where", [
    ("system.chain_length=0", "system.chain_length"),
    ("system.chain_length=-2", "system.chain_length"),
    ("system.n_chains=0", "system.n_chains"),
    ("system.n_salt=-1", "system.n_salt"),
    ("system.temperature=0", "system.temperature"),
    ("system.temperature=-300", "system.temperature"),
    ("system.charge_scale=1.5", "system.charge_scale"),
    ("system.save_interval=0.003", "system.save_interval"),
    ("system.production_time=4.5", "system.production_time"),
    ("system.constraints=AllBonds", "system.constraints"),
    ("system.cutoff=1.0", "system.cutoff"),
    ("system.pack_density=3.0", "system.pack_density"),
    ("system.npt_max_time=0.5", "system.npt_max_time"),
    ("system.compress_time=0.75", "system.compress_time"),
])
def test_bad_input_is_one_line_error(tmp_path, compose_cfg, override, where):
    cfg = compose_cfg("generate", [*tiny_electrolyte_overrides(tmp_path / "o"), override])
    with pytest.raises(CgsimInputError) as err:
        run(cfg)
    assert err.value.where == where and "\n" not in str(err.value)
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_salt_from_ratio_or_explicit(compose_cfg, tmp_path):
    cfg = compose_cfg("generate", [*tiny_electrolyte_overrides(tmp_path / "o"), "system.n_salt=null", "system.eo_li_ratio=4"])
    assert settings_from_config(cfg.system).composition.n_salt == 2
    cfg = compose_cfg("generate", [*tiny_electrolyte_overrides(tmp_path / "o"), "system.n_salt=null", "system.eo_li_ratio=null"])
    with pytest.raises(CgsimInputError, match="n_salt"):
        settings_from_config(cfg.system)
    default = compose_cfg("generate", ["system=electrolyte"]).system
    s = settings_from_config(default)
    assert (s.composition.n_atoms, s.composition.n_salt, s.temperature, s.charge_scale) == (1352, 10, 400.0, 0.8)
    assert s.timestep == 0.002 and s.save_steps == 1000 and s.cutoff == 1.0


def test_hydrogen_mass_repartitioning_4fs(compose_cfg, tmp_path):
    """HMR overrides (BENCHMARKS.md): whole step counts at 4 fs, masses moved, recorded in identity and sidecar."""
    hmr = {"system.hydrogen_mass": 3.0, "system.timestep": 0.004}
    # the production settings: every interval a whole number of 4 fs steps (2 ps frames = 500 steps)
    s = settings_from_config(compose_cfg("generate", ["system=electrolyte", *(f"{k}={v}" for k, v in hmr.items())]).system)
    assert (s.hydrogen_mass, s.timestep) == (3.0, 0.004)
    assert (s.save_steps, s.production_steps, s.nvt_steps, s.block_steps, s.sample_steps) == (500, 500_000, 5000, 2500, 250)
    assert s.system_kwargs()["hydrogen_mass"] == 3.0

    # OpenMM moves the added hydrogen mass from the bonded heavy atom: molecules keep their mass
    top = el.build_topology(el.Composition(1, 2, 1), box_length=3.0)

    def system_masses(hydrogen_mass):
        system = el.create_system(top, hydrogen_mass=hydrogen_mass).system
        return np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())])

    natural, m = system_masses(None), system_masses(3.0)
    is_h = np.array([a.element.symbol == "H" for a in top.atoms()])
    assert m[is_h] == pytest.approx(3.0) and m.sum() == pytest.approx(natural.sum())
    methyl_c = 0  # CH3 carbon: 12.011 - 3 x (3.0 - 1.008)
    assert m[methyl_c] == pytest.approx(natural[methyl_c] - 3 * (3.0 - natural[1]))
    no_h = np.array([a.residue.name in ("LI", "TFS") for a in top.atoms()])
    assert m[no_h] == pytest.approx(natural[no_h])  # ions carry no hydrogen

    # a whole tiny run at 4 fs: the identity and the sidecar record both options
    out = tmp_path / "o"
    tiny_hmr = {**hmr, "system.npt_sample": 0.5}  # tiny_electrolyte_overrides' 0.25 ps is not a whole number of 4 fs steps
    summary = run(compose_cfg("generate", tiny_electrolyte_overrides(out, **tiny_hmr)))
    assert summary["frames"] == 5
    identity = json.loads((out / ".run" / "identity.json").read_text())
    assert identity["system"]["hydrogen_mass"] == 3.0 and identity["system"]["timestep"] == 0.004
    assert identity["plan"]["save_steps"] == 250
    meta = read_sidecar(out / "peo2x4_litfsi2.xtc")
    assert meta.extra["forcefield"]["hydrogen_mass"] == 3.0
    assert meta.system.md_timestep == 0.004 and meta.save_interval == pytest.approx(1.0)
    assert meta.provenance["config"]["system"]["hydrogen_mass"] == 3.0
    # the sidecar's masses are the physical (element) masses, not the repartitioned ones
    h = [i for i, t in enumerate(md.load(out / "peo2x4_litfsi2.pdb").topology.atoms) if t.element.symbol == "H"]
    assert np.array(meta.system.particle_masses)[h] == pytest.approx(1.008, abs=1e-3)
    # changing the time step of an existing run directory is refused, not silently mixed
    with pytest.raises(CgsimInputError, match="different run"):
        run(compose_cfg("generate", tiny_electrolyte_overrides(out, **{**tiny_hmr, "system.timestep": 0.002})))


def test_unknown_option_is_rejected_by_hydra(compose_cfg, tmp_path):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("generate", [*tiny_electrolyte_overrides(tmp_path / "o"), "system.no_such_option=1"])
    assert "no_such_option" in str(err.value.__cause__ or err.value)


def test_missing_packmol_is_one_line_error(tmp_path, compose_cfg):
    out = tmp_path / "o"
    cfg = compose_cfg("generate", [*tiny_electrolyte_overrides(out), f"system.packmol={tmp_path / 'no_packmol'}"])
    with pytest.raises(CgsimInputError) as err:
        run(cfg)
    assert err.value.where == "system.packmol" and "\n" not in str(err.value)
    assert not (out / "dataset.json").exists() and not list(out.glob("*.xtc"))


def test_unpackable_box_is_one_line_error():
    syms = ["N"] + ["S", "O", "O", "C", "F", "F", "F"] * 2
    with pytest.raises(CgsimInputError) as err:
        el.pack_molecules([(syms, el.tfsi_conformation(), 6)], 0.8, el.find_packmol(), seed=1, nloop=1)
    assert "packmol could not pack" in str(err.value) and "\n" not in str(err.value)


def test_blow_up_during_equilibration_is_one_line_error(tmp_path, compose_cfg):
    out = tmp_path / "o"
    cfg = compose_cfg("generate", tiny_electrolyte_overrides(out, **{"system.timestep": 0.01, "system.constraints": "null",
                                                          "system.compress_time": 5.0, "system.npt_block": 2.5,
                                                          "system.npt_sample": 0.5, "system.npt_window": 2.5,
                                                          "system.npt_min_time": 0.0, "system.npt_max_time": 5.0,
                                                          "system.save_interval": 2.0, "system.minimize_max_iterations": 1}))
    with pytest.raises(CgsimInputError) as err:
        run(cfg)
    assert err.value.where.startswith("equilibration.") and "blew up" in str(err.value)
    assert "\n" not in str(err.value) and not (out / "dataset.json").exists()


def test_export_partial_needs_production_frames(tmp_path, compose_cfg):
    with pytest.raises(CgsimInputError, match="equilibration is not finished"):
        run(compose_cfg("generate", tiny_electrolyte_overrides(tmp_path / "o", export_partial=True)))
