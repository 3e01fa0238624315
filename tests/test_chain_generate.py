"""`cgsim generate system=chain`: files, resume after a crash, bad input, sanity physics."""

import json

import mdtraj as md
import numpy as np
import pytest

from cgsim.errors import CgsimInputError
from cgsim.metadata import read_sidecar
from cgsim.reference import runner as runner_mod
from cgsim.reference.chain_generate import radius_of_gyration
from cgsim.reference.generate import run
from tests.conftest import tiny_chain_overrides


def test_outputs_load_in_mdtraj_with_metadata(tmp_path, compose_cfg):
    out = tmp_path / "o"
    cfg = compose_cfg("generate", tiny_chain_overrides(out, **{"system.sparse_interval": 10.0,
                                                                  "system.dense_time": 20.0}))
    summary = run(cfg)
    assert summary["n_chains"] == 3
    index = json.loads((out / "dataset.json").read_text())
    assert [m["name"] for m in index["molecules"]] == ["seq_000", "seq_001", "seq_002"]
    for mol in index["molecules"]:
        traj = md.load(out / f"{mol['name']}.xtc", top=out / f"{mol['name']}.pdb")
        assert traj.n_atoms == 2 * len(mol["sequence"]) == mol["n_beads"]
        assert traj.topology.n_bonds == traj.n_atoms - 1
        np.testing.assert_allclose(traj.time, np.arange(0, 20.01, 5.0))
        long = md.load(out / f"{mol['name']}_long.xtc", top=out / f"{mol['name']}.pdb")
        np.testing.assert_allclose(long.time, np.arange(0, 50.01, 10.0))
        # frames shared by both files are identical
        np.testing.assert_array_equal(long.xyz[:3], traj.xyz[[0, 2, 4]])
        meta = read_sidecar(out / f"{mol['name']}.xtc")
        assert meta.kind == "reference_md" and meta.coordinates == "unwrapped"
        assert meta.n_frames == traj.n_frames and meta.save_interval == 5.0
        assert meta.extra["sequence"] == mol["sequence"]
        assert meta.system.units["system"] == "lj"
        assert 0.9 < meta.summary["mean_bond_length"] < 1.1
        assert meta.summary["mean_rg"] > 0
        assert "cgsim.reference.generate.run" in meta.provenance["command"]
        assert meta.provenance["config"]["system"]["n_chains"] == 3
    # only the small run-state files remain besides the products
    assert sorted(p.name for p in (out / ".run").iterdir()) == ["identity.json", "progress.json"]


class _Crash(RuntimeError):
    pass


@pytest.mark.parametrize("where", ["chunk", "commit"])
def test_resume_after_crash_has_no_duplicate_or_lost_frames(tmp_path, compose_cfg, monkeypatch, where):
    out = tmp_path / "o"
    cfg = compose_cfg("generate", tiny_chain_overrides(out))
    calls = {"n": 0}
    if where == "chunk":
        original = runner_mod.ChunkedRun._write_chunk

        def flaky(self, *a, **k):
            calls["n"] += 1
            if calls["n"] == 3:  # die half-way through writing the third chunk
                original(self, *a, **k)
                raise _Crash
            return original(self, *a, **k)

        monkeypatch.setattr(runner_mod.ChunkedRun, "_write_chunk", flaky)
    else:
        original = runner_mod.write_json_atomic

        def flaky(path, data):
            if str(path).endswith("progress.json"):
                calls["n"] += 1
                if calls["n"] == 4:  # state written, progress not yet: the worst moment
                    raise _Crash
            return original(path, data)

        monkeypatch.setattr(runner_mod, "write_json_atomic", flaky)
    with pytest.raises(_Crash):
        run(cfg)
    assert not (out / "dataset.json").exists()
    monkeypatch.undo()
    run(cfg)
    for i in range(3):
        traj = md.load(out / f"seq_{i:03d}.xtc", top=out / f"seq_{i:03d}.pdb")
        np.testing.assert_allclose(traj.time, np.arange(0, 50.01, 5.0))
        step = np.linalg.norm(np.diff(traj.xyz, axis=0), axis=-1).mean(axis=1)
        assert np.all(step > 0)  # no repeated frame


def test_rerun_same_config_recomputes_nothing(tmp_path, compose_cfg, capsys):
    out = tmp_path / "o"
    cfg = compose_cfg("generate", tiny_chain_overrides(out))
    run(cfg)
    before = (out / "seq_000.xtc").read_bytes()
    run(cfg)
    assert "nothing recomputed" in capsys.readouterr().out
    assert (out / "seq_000.xtc").read_bytes() == before


def test_output_dir_with_different_run_is_refused(tmp_path, compose_cfg):
    out = tmp_path / "o"
    run(compose_cfg("generate", tiny_chain_overrides(out)))
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(CgsimInputError, match=r"different run \(differs in: system\.seed"):
        run(compose_cfg("generate", tiny_chain_overrides(out, **{"system.seed": 5})))
    assert sorted(p.name for p in out.iterdir()) == before


def test_output_dir_with_foreign_files_is_refused(tmp_path, compose_cfg):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(CgsimInputError, match="not empty and holds no cgsim run"):
        run(compose_cfg("generate", tiny_chain_overrides(out)))
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize(
    "override, message",
    [({"system.sequences": "[ABQA]"}, r"system\.sequences\[0\]: unknown monomer letter"),
     ({"system.n_monomers": "[0,5]"}, r"system\.n_monomers: expected \[min, max\]"),
     ({"system.n_chains": 0}, r"system\.n_chains: expected a positive"),
     ({"system.timestep": 0.0}, r"system\.timestep: expected a positive"),
     ({"system.timestep": -0.01}, r"system\.timestep: expected a positive"),
     ({"system.temperature": -1.0}, r"system\.temperature: expected a positive"),
     ({"system.production_time": 0.0}, r"system\.production_time: expected a positive"),
     ({"system.save_interval": 0.015}, r"system\.save_interval: 0\.015 is not a positive whole number"),
     ({"system.sparse_interval": 7.5}, r"system\.sparse_interval"),
     ({"platform": "Quantum"}, r"platform: OpenMM platform 'Quantum' is not available")],
)
def test_bad_input_one_clear_error_no_files(tmp_path, compose_cfg, override, message):
    out = tmp_path / "o"
    cfg = compose_cfg("generate", tiny_chain_overrides(out, **override))
    with pytest.raises(CgsimInputError, match=message) as exc:
        run(cfg)
    assert "\n" not in str(exc.value)
    # nothing half-written: no trajectory or dataset files
    assert not any(out.glob("*.xtc")) and not (out / "dataset.json").exists()


def test_temperature_within_two_percent(tmp_path, compose_cfg):
    out = tmp_path / "o"
    cfg = compose_cfg("generate", tiny_chain_overrides(
        out, **{"system.n_chains": 16, "system.n_monomers": "[20,20]", "system.equilibration_time": 20.0,
                "system.production_time": 150.0, "system.save_interval": 1.0, "frames_per_chunk": 200}))
    run(cfg)
    temps = [json.loads((out / f"seq_{i:03d}.json").read_text())["summary"]["mean_temperature"] for i in range(16)]
    assert np.mean(temps) == pytest.approx(1.0, rel=0.02)


def _mean_rg(out, n):
    rgs = []
    for i in range(n):
        t = md.load(out / f"seq_{i:03d}.xtc", top=out / f"seq_{i:03d}.pdb")
        rgs.append(radius_of_gyration(t.xyz[10:].astype(float), np.ones(t.n_atoms)).mean())
    return float(np.mean(rgs))


def test_good_solvent_chain_is_more_extended_than_poor_solvent(tmp_path, compose_cfg):
    common = {"system.sequences": "[" + ",".join(["A" * 30] * 4) + "]", "system.equilibration_time": 100.0,
              "system.production_time": 200.0, "system.save_interval": 5.0, "frames_per_chunk": 100,
              "system.epsilon": "{B1:1.0,B2:1.0,S1:1.0,S2:1.0}"}
    good, poor = tmp_path / "good", tmp_path / "poor"
    run(compose_cfg("generate", tiny_chain_overrides(good, **common, **{"system.nonbonded": "wca"})))
    run(compose_cfg("generate", tiny_chain_overrides(poor, **common, **{"system.nonbonded": "lj"})))
    rg_good, rg_poor = _mean_rg(good, 4), _mean_rg(poor, 4)
    assert rg_good > 1.3 * rg_poor, (rg_good, rg_poor)
