"""``cgsim evaluate`` end to end on tiny data: generated chains and a synthetic electrolyte.

The chain set comes from ``cgsim generate`` itself (two short chains); the electrolyte is a
periodic box of random-walk Li+ and two-bead anions written here as H5 + sidecar.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
import pytest

from cgsim.errors import CgsimInputError
from cgsim.metadata import SystemInfo, TrajectoryMetadata, write_sidecar
from cgsim.units import units_block
from tests.conftest import SEQ, compose_root, run_evaluate


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cgsim.reference import generate

    out = tmp_path_factory.mktemp("chains")
    cfg = compose_root("generate", ["system.n_chains=2", "system.n_monomers=[6,8]", "system.equilibration_time=5",
                                    "system.production_time=100", f"output={out}", "progress=false"])
    generate.run(cfg)
    return out


def _write_electrolyte(path: Path, wrapped: bool = False, box: bool = True, seed: int = 0,
                       charges_in_sidecar: bool = False) -> Path:
    """20 Li+ beads and 20 two-bead anions (-0.5 e per bead) diffusing in a 3 nm box."""
    rng = np.random.default_rng(seed)
    n_ion, n_frames, length, dt = 20, 120, 3.0, 2.0
    top = md.Topology()
    for _ in range(n_ion):
        top.add_atom("Li", md.element.lithium, top.add_residue("LI", top.add_chain()))
    for _ in range(n_ion):
        res = top.add_residue("TFS", top.add_chain())
        a = top.add_atom("T", md.element.carbon, res)
        b = top.add_atom("T", md.element.carbon, res)
        top.add_bond(a, b)
    start = rng.uniform(0, length, (n_ion * 2, 3))
    walk = np.cumsum(rng.normal(0, math.sqrt(2 * 0.002 * dt), (n_frames, n_ion * 2, 3)), axis=0) + start
    beads = np.concatenate([walk[:, :n_ion], walk[:, n_ion:] - [0.1, 0, 0], walk[:, n_ion:] + [0.1, 0, 0]], axis=1)
    order = np.r_[np.arange(n_ion), np.ravel(np.stack([np.arange(n_ion, 2 * n_ion), np.arange(2 * n_ion, 3 * n_ion)], 1))]
    xyz = beads[:, order]
    if wrapped:
        xyz = xyz % length
    kw = {"unitcell_lengths": np.full((n_frames, 3), length), "unitcell_angles": np.full((n_frames, 3), 90.0)} if box else {}
    traj = md.Trajectory(xyz.astype(np.float32), top, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    traj.save_hdf5(str(path))
    types = ["Li"] * n_ion + ["T"] * (2 * n_ion)
    masses = [6.94] * n_ion + [140.0] * (2 * n_ion)
    info = SystemInfo(name="electrolyte", units=units_block("md"), temperature=353.0, md_timestep=0.002, periodic=True,
                      particle_types=types, particle_masses=masses, box=[length] * 3 + [90.0] * 3)
    extra = {"particle_charges": [1.0] * n_ion + [-0.5] * (2 * n_ion)} if charges_in_sidecar else {}
    meta = TrajectoryMetadata(kind="reference_md", trajectory=path.name, topology=path.name, system=info,
                              save_interval=dt, n_frames=n_frames, extra=extra)
    write_sidecar(meta, path)
    return path


@pytest.fixture(scope="module")
def electrolyte(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_electrolyte(tmp_path_factory.mktemp("el") / "el.h5")


def _numbers(d: Any) -> list[float]:
    if isinstance(d, dict):
        return [x for v in d.values() for x in _numbers(v)]
    if isinstance(d, (int, float)) and not isinstance(d, bool):
        return [float(d)]
    return []


def test_reference_against_itself_has_zero_error(chains, tmp_path):
    out = tmp_path / "eval"
    metrics = run_evaluate([f"reference={chains}", f"rollout={chains}", f"output={out}"])
    assert (out / "metrics.json").is_file() and (out / "report.md").is_file()
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["observables"].keys() == metrics["observables"].keys()
    expected = {"rdf", "bond_lengths", "bond_angles", "rg", "end_to_end", "contact_map", "msd", "diffusion", "rg_acf"}
    assert set(metrics["observables"]) == expected  # the chain preset, chosen from the sidecar's system name
    for obs, entries in metrics["observables"].items():
        for key, e in entries.items():
            errs = _numbers(e["error"])
            assert errs and all(x == 0.0 for x in errs), (obs, key, e["error"])
            floor = _numbers(e["noise_floor"])
            assert floor and all(x >= 0 for x in floor), (obs, key)
    # the two halves of a short MD run differ: the noise floor is not trivially zero
    assert metrics["observables"]["rg"]["all"]["noise_floor"]["jsd"] > 0
    rg = metrics["observables"]["rg"]["all"]["reference"]
    assert 0.3 < rg["mean_nm"] < 5.0  # a few sigma for 12-16 beads
    bonds = metrics["observables"]["bond_lengths"]
    assert all(0.85 < v["reference"]["mean_nm"] < 1.1 for v in bonds.values())  # FENE + WCA bond ~0.97 sigma
    d = metrics["observables"]["diffusion"]["com:chain"]["reference"]
    assert d["D_nm2_ps"] > 0 and d["D_cm2_s"] == pytest.approx(d["D_nm2_ps"] * 1e-2)
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["bond_angles.png", "bond_lengths.png", "chain_size.png", "contact_map.png", "msd.png",
                       "rdf.png", "rg_acf.png"]
    assert all((out / "figures" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    report = (out / "report.md").read_text()
    assert "![rdf](figures/rdf.png)" in report and "noise floor" in report.lower()


def test_electrolyte_reference_alone(electrolyte, tmp_path):
    out = tmp_path / "el"
    metrics = run_evaluate([f"reference={electrolyte}", f"output={out}", "figures=false", "conductivity.charges={Li: 1.0, T: -0.5}",
                    "dynamics.fit_window=[4,40]", "dynamics.n_blocks=2"])
    assert metrics["rollout"] is None
    assert set(metrics["observables"]) == {"rdf", "msd", "diffusion", "conductivity"}
    cond = metrics["observables"]["conductivity"]["system"]["reference"]
    assert cond["sigma_ne_S_cm"] > 0 and cond["temperature_K"] == 353.0
    assert cond["charge_e[TFS]"] == -1.0 and cond["charge_e[Li]"] == 1.0
    assert cond["transference_ne[Li]"] + cond["transference_ne[TFS]"] == pytest.approx(1.0)
    assert metrics["observables"]["conductivity"]["system"]["rollout"] is None
    assert metrics["settings"]["rdf_periodic"] is True and metrics["settings"]["rdf_r_max_nm"] == pytest.approx(1.5)
    assert "com:TFS" in metrics["observables"]["diffusion"]
    assert not (out / "figures").exists()


def test_charges_from_the_sidecar(electrolyte, tmp_path):
    with_charges = _write_electrolyte(tmp_path / "q" / "q.h5", charges_in_sidecar=True)
    common = ["figures=false", "observables=[conductivity]", "dynamics.fit_window=[4,40]", "dynamics.n_blocks=2",
              "noise_floor=false"]
    a = run_evaluate([f"reference={with_charges}", f"output={tmp_path / 'a'}", *common])
    b = run_evaluate([f"reference={electrolyte}", f"output={tmp_path / 'b'}", "conductivity.charges={Li: 1.0, T: -0.5}", *common])
    sa = a["observables"]["conductivity"]["system"]["reference"]
    sb = b["observables"]["conductivity"]["system"]["reference"]
    assert sa["sigma_eh_S_cm"] == pytest.approx(sb["sigma_eh_S_cm"]) and sa["sigma_ne_S_cm"] == pytest.approx(sb["sigma_ne_S_cm"])


def test_pooled_comparison_of_different_molecules(chains, tmp_path):
    ref, roll = chains / "seq_000.xtc", chains / "seq_001.xtc"
    with pytest.raises(CgsimInputError, match="bead types differ"):
        run_evaluate([f"reference={ref}", f"rollout={roll}", f"output={tmp_path / 'a'}", "figures=false"])
    metrics = run_evaluate([f"reference={ref}", f"rollout={roll}", f"output={tmp_path / 'b'}", "figures=false",
                    "match_topology=false", "noise_floor=false"])
    assert metrics["observables"]["rg"]["all"]["error"]["relative_error_mean"] > 0
    assert "contact_map" not in metrics["observables"]
    assert any("contact_map: skipped" in n for n in metrics["notes"])


def test_cli_subprocess(chains, tmp_path):
    out = tmp_path / "cli"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    script = shutil.which("cgsim", path=str(Path(sys.executable).parent))  # the installed console script
    launcher = [script] if script else [sys.executable, "-m", "cgsim"]
    cmd = [*launcher, "evaluate", f"reference={chains}", f"output={out}", "figures=false",
           f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "evaluate:" in proc.stdout and (out / "metrics.json").is_file()
    bad = subprocess.run(cmd[:-3] + [f"output={tmp_path / 'x'}", "observables=[rdf,viscosity]",
                                     f"hydra.run.dir={tmp_path / 'hydra2'}"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("cgsim evaluate: error: observables: unknown observables")


def test_bad_inputs(chains, electrolyte, tmp_path):
    base = [f"output={tmp_path / 'o'}", "figures=false"]
    with pytest.raises(CgsimInputError, match="molecules differ"):
        run_evaluate([f"reference={chains}", f"rollout={chains / 'seq_000.xtc'}", *base])
    with pytest.raises(CgsimInputError, match="beyond the longest lag"):
        run_evaluate([f"reference={chains}", "dynamics.fit_window=[1,1000000]", *base])
    with pytest.raises(CgsimInputError, match="conductivity.charges"):
        run_evaluate([f"reference={electrolyte}", *base])
    with pytest.raises(CgsimInputError, match="mapping of bead type to charge"):
        run_evaluate([f"reference={electrolyte}", "conductivity.charges={Li: 1, T: bad}", *base])
    with pytest.raises(CgsimInputError, match="rdf.method"):
        run_evaluate([f"reference={electrolyte}", "rdf.method=fast", *base])
    with pytest.raises(CgsimInputError, match="no preset for system"):
        run_evaluate([f"reference={electrolyte}", "observables_preset=melt", *base])
    with pytest.raises(CgsimInputError, match="empty selection"):
        run_evaluate([f"reference={chains}", "observables=[]", *base])
    with pytest.raises(CgsimInputError, match="no dataset.json"):
        run_evaluate([f"reference={tmp_path}", *base])
    with pytest.raises(CgsimInputError, match="does not exist"):
        run_evaluate([f"reference={tmp_path / 'nothing'}", *base])


def test_bad_trajectories(tmp_path):
    base = [f"output={tmp_path / 'o'}", "figures=false", "observables=[rdf,msd]"]
    wrapped = _write_electrolyte(tmp_path / "w" / "w.h5", wrapped=True)
    with pytest.raises(CgsimInputError, match="coordinates look wrapped"):
        run_evaluate([f"reference={wrapped}", "observables=[msd]", *base[:2]])
    side = json.loads(wrapped.with_suffix(".json").read_text())
    side["coordinates"] = "wrapped"
    wrapped.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(CgsimInputError, match="dynamics need unwrapped"):
        run_evaluate([f"reference={wrapped}", "observables=[msd]", *base[:2]])
    boxless = _write_electrolyte(tmp_path / "nb" / "nb.h5", box=False)
    with pytest.raises(CgsimInputError, match="no box"):
        run_evaluate([f"reference={boxless}", *base])
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(boxless, lonely / "nb.h5")
    with pytest.raises(CgsimInputError, match="sidecar not found"):
        run_evaluate([f"reference={lonely / 'nb.h5'}", *base])
    side = json.loads(boxless.with_suffix(".json").read_text())
    side["system"]["particle_types"] = side["system"]["particle_types"][:-1]
    boxless.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(CgsimInputError, match="expected 60"):
        run_evaluate([f"reference={boxless}", *base])


def test_noise_floor_is_skipped_with_a_note_when_halves_are_too_short(chains, tmp_path):
    metrics = run_evaluate([f"reference={chains}", f"output={tmp_path / 'nf'}", "figures=false", "observables=[diffusion]",
                    "dynamics.fit_window=[5,80]", "dynamics.n_blocks=1"])
    assert metrics["noise_floor"] is False
    assert any(n.startswith("noise floor skipped:") and "fit_window" in n for n in metrics["notes"])
    entry = metrics["observables"]["diffusion"]["com:chain"]
    assert entry["noise_floor"] is None and entry["reference"]["D_err_nm2_ps"] is None  # one block: no error bar
    assert "No noise floor" in (tmp_path / "nf" / "report.md").read_text()


# --- rollouts with replicas stopped early by the stability guard --------------------------------

MAPPED_SEQ = SEQ  # tests/test_bad_inputs.py imports it from here


def _fake_rollout(out: Path, frames: list[int], stopped: dict[int, int]) -> Path:
    """A `cgsim rollout` output directory of seq_000 with one replica per entry of ``frames``.

    Replica ``r`` holds the first ``frames[r]`` frames of the mapped reference (odd replicas run
    it backwards, so replicas differ); replicas in ``stopped`` carry the guard's verdict in
    their ``rollout.json`` and ``summary.json`` as the rollout writer records it (stopped at
    step ``stopped[r]``, frames up to the step before).
    """
    from dataclasses import replace

    from cgsim.metadata import read_sidecar
    from cgsim.rollout.command import _dataset_index

    src = md.load(str(MAPPED_SEQ / "beads.xtc"), top=str(MAPPED_SEQ / "beads.pdb"))
    meta = read_sidecar(MAPPED_SEQ / "beads.xtc")
    members = []
    for r, n in enumerate(frames):
        d = out / "seq_000" / f"replica_{r:03d}"
        d.mkdir(parents=True)
        shutil.copyfile(MAPPED_SEQ / "beads.pdb", d / "beads.pdb")
        traj = (src if r % 2 == 0 else src[::-1])[:n]
        traj.time = np.arange(n) * meta.save_interval
        traj.save_hdf5(str(d / "rollout.h5"))
        step = stopped.get(r)
        reason = f"bond 3-4 stretched to 9.1 nm > limit 2.5 nm at step {step}" if step is not None else None
        extra = {"source": str(MAPPED_SEQ), "replica": r, "learned_dt": meta.save_interval, "time_unit": "tau",
                 "steps_done": (step - 1) if step is not None else n - 1,
                 "status": "stopped" if step is not None else "finished", "stop_step": step, "stop_reason": reason}
        write_sidecar(replace(meta, kind="rollout", trajectory="rollout.h5", topology="beads.pdb", n_frames=n,
                              extra=extra), d / "rollout.h5")
        members.append({"name": f"seq_000/replica_{r:03d}", "frames": n, "status": extra["status"],
                        "stop_step": step, "stop_reason": reason})
    (out / "dataset.json").write_text(json.dumps(_dataset_index(["seq_000"], len(frames), "tau")))
    (out / "summary.json").write_text(json.dumps({"members": members, "n_stopped": len(stopped)}))
    return out


def test_replicas_stopped_early_are_left_out_of_dynamics(tmp_path):
    roll = _fake_rollout(tmp_path / "ro", frames=[201, 4, 201], stopped={1: 4})
    out = tmp_path / "eval"
    metrics = run_evaluate([f"reference={MAPPED_SEQ}", f"rollout={roll}", "file_index=-1", f"output={out}", "figures=false"])
    # the fit window comes from the full-length trajectories (1000 tau), not the 15-tau stopped one
    assert metrics["settings"]["fit_window_ps"] == pytest.approx([20.0, 200.0])
    obs = metrics["observables"]
    assert {"msd", "diffusion", "rg_acf"} <= set(obs)
    assert obs["msd"]["com:M1"]["rollout"]["max_lag_ps"] == pytest.approx(1000.0)
    assert obs["msd"]["com:M1"]["rollout"]["n_particles"] == 2  # the two full-length replicas
    assert "diffusion: errors from the spread of 2 replicas (not from blocks)" in metrics["notes"]
    assert obs["rg_acf"]["rg^2"]["rollout"]["tau_ps"] is not None
    # structural observables still pool every frame of every replica, the stopped one's too
    assert obs["rg"]["all"]["rollout"]["n_samples"] == 201 + 4 + 201
    assert obs["rg"]["all"]["error"]["jsd"] is not None
    excluded = metrics["rollout"]["excluded_from_dynamics"]
    assert excluded["n"] == 1 and excluded["of"] == 3
    (entry,) = excluded["trajectories"]
    assert entry["name"] == "seq_000" and entry["replica"] == 1 and entry["stop_step"] == 4
    assert "stretched" in entry["stop_reason"]
    assert metrics["reference"]["excluded_from_dynamics"]["n"] == 0
    note = next(n for n in metrics["notes"] if "excluded from the dynamical observables" in n)
    assert note.startswith("rollout: 1 of 3 trajectories") and "stability guard" in note and "step 4" in note
    report = (out / "report.md").read_text()
    assert "1 of 3 trajectories stopped early by the stability guard" in report


def test_replica_with_a_single_frame_still_counts_for_structure(tmp_path):
    roll = _fake_rollout(tmp_path / "ro", frames=[201, 1, 201], stopped={1: 3})
    metrics = run_evaluate([f"reference={MAPPED_SEQ}", f"rollout={roll}", "file_index=-1", f"output={tmp_path / 'e'}",
                    "figures=false", "noise_floor=false", "observables=[bond_lengths,rg,diffusion]"])
    assert metrics["observables"]["rg"]["all"]["rollout"]["n_samples"] == 403
    assert metrics["rollout"]["excluded_from_dynamics"]["n"] == 1


def test_no_replica_left_for_dynamics_is_one_clear_error(tmp_path):
    roll = _fake_rollout(tmp_path / "ro", frames=[5, 4], stopped={0: 5, 1: 4})
    base = [f"reference={MAPPED_SEQ}", f"rollout={roll}", "file_index=-1", "figures=false", "noise_floor=false"]
    with pytest.raises(CgsimInputError, match="no replica left for the dynamical observables") as e:
        run_evaluate([*base, f"output={tmp_path / 'a'}", "observables=[rg,msd,rg_acf]"])
    text = str(e.value)
    assert "\n" not in text and text.startswith("rollout: ") and "all 2 trajectories" in text and "msd, rg_acf" in text
    assert not (tmp_path / "a").exists()  # refused before anything is computed or written
    # structure alone needs no full-length replica
    metrics = run_evaluate([*base, f"output={tmp_path / 'b'}", "observables=[bond_lengths,rg]"])
    assert metrics["observables"]["rg"]["all"]["rollout"]["n_samples"] == 9


def test_structure_only_with_a_one_frame_replica(tmp_path):
    # every replica stopped, one after its first frame: no dynamics asked, so no fit window is needed
    roll = _fake_rollout(tmp_path / "ro", frames=[1, 4], stopped={0: 1, 1: 4})
    metrics = run_evaluate([f"reference={MAPPED_SEQ}", f"rollout={roll}", "file_index=-1", "figures=false",
                    "noise_floor=false", f"output={tmp_path / 'e'}", "observables=[bond_lengths,rg]"])
    assert metrics["observables"]["rg"]["all"]["rollout"]["n_samples"] == 5


def test_topology_pairs_renamed_systems_in_order():
    from cgsim.report.loading import check_same_topology, load_set

    test = MAPPED_SEQ.parent
    short = load_set(str(test / "seq_00[0-1]"), 0, 50, "rollout")
    long = load_set(str(test / "seq_00[0-1]_long"), 0, 500, "reference")
    check_same_topology(long, short)  # seq_000 <-> seq_000_long, seq_001 <-> seq_001_long: same topologies
    swapped = load_set(str(test / "seq_00[1-2]"), 0, 50, "rollout")
    with pytest.raises(CgsimInputError, match="molecules differ"):
        check_same_topology(long, swapped)  # same count, other chains: refused
