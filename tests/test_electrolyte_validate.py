"""Physical validation of electrolyte runs: analytic oracles, a tiny generated run, bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cgsim.errors import CgsimInputError
from cgsim.reference import electrolyte as el
from cgsim.reference import electrolyte_generate as eg
from cgsim.reference import electrolyte_validate as ev
from cgsim.reference import runner as runner_mod
from cgsim.reference.generate import run as generate
from tests.conftest import compose_root, tiny_electrolyte_overrides


class _Kill(RuntimeError):
    pass


def _strict_json(path: Path) -> dict:
    """Load JSON refusing NaN / Infinity (validation.json must be strict JSON)."""
    def bad(token):
        raise AssertionError(f"non-strict JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=bad)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """One tiny run (106 atoms) captured in NPT, part-way through production, and finished."""
    base = tmp_path_factory.mktemp("el_validate")
    out = base / "run"
    cfg = compose_root("generate", tiny_electrolyte_overrides(
        out, **{"system.production_time": 10.0, "system.save_interval": 0.5, "frames_per_chunk": 5}))
    calls = {"eq": 0, "chunk": 0}
    with pytest.MonkeyPatch.context() as mp:
        original_commit = eg.Equilibration._commit

        def kill_in_npt(self, progress, state):
            original_commit(self, progress, state)
            calls["eq"] += 1
            if calls["eq"] == 4:  # minimise, 2 x compress, first NPT block
                raise _Kill

        mp.setattr(eg.Equilibration, "_commit", kill_in_npt)
        with pytest.raises(_Kill):
            generate(cfg)
    shutil.copytree(out, base / "npt")
    with pytest.MonkeyPatch.context() as mp:
        original_chunk = runner_mod.ChunkedRun._write_chunk

        def kill_in_chunk(self, *a, **k):
            calls["chunk"] += 1
            original_chunk(self, *a, **k)
            if calls["chunk"] == 3:  # third chunk on disk but not committed
                raise _Kill

        mp.setattr(runner_mod.ChunkedRun, "_write_chunk", kill_in_chunk)
        with pytest.raises(_Kill):
            generate(cfg)
    shutil.copytree(out, base / "partial")
    generate(cfg)
    return {"npt": base / "npt", "partial": base / "partial", "finished": out, "base": base}


# ------------------------------------------------------------------------------------------
# analytic oracles
# ------------------------------------------------------------------------------------------
def _unit_vectors(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_first_shell_on_constructed_configuration():
    """8 Li+ on a 2 nm grid, each with 5 ether O at 0.2125 nm and 2 TFSI O at 0.2375 nm, more O beyond."""
    rng = np.random.default_rng(0)
    L, n_frames = 4.0, 20
    centres = np.array([[x, y, z] for x in (0.5, 2.5) for y in (0.5, 2.5) for z in (0.5, 2.5)])
    frames = []
    for _ in range(n_frames):
        pos = [centres]
        pos += [c + 0.2125 * _unit_vectors(rng, 5) for c in centres]                  # ether O, first shell
        pos += [c + rng.uniform(0.45, 0.9, (6, 1)) * _unit_vectors(rng, 6) for c in centres]  # ether O, beyond
        pos += [c + 0.2375 * _unit_vectors(rng, 2) for c in centres]                  # TFSI O, first shell
        frames.append(np.concatenate([p.reshape(-1, 3) for p in pos]))
    xyz = np.stack(frames)
    li = np.arange(8)
    o_eth = np.arange(8, 8 + 8 * 11)
    o_tfsi = np.arange(8 + 8 * 11, xyz.shape[1])
    res = ev.first_shell(xyz, L, li, o_eth, names=("Li+", "O(ether)"), bin_width=0.005)
    assert res["peak_r"] == pytest.approx(0.2125, abs=0.0026)
    assert 0.2125 < res["min_r"] <= 0.45
    assert res["cn"] == pytest.approx(5.0, abs=1e-9)
    assert res["n_frames"] == n_frames and res["n_a"] == 8 and res["r_max"] == pytest.approx(1.0)
    res_t = ev.first_shell(xyz, L, li, o_tfsi, names=("Li+", "O(TFSI)"))
    assert res_t["peak_r"] == pytest.approx(0.2375, abs=0.0026) and res_t["cn"] == pytest.approx(2.0, abs=1e-9)


def test_first_peak_and_minimum_on_analytic_g():
    r = np.arange(0.0025, 1.0, 0.005)
    g = 12.0 * np.exp(-((r - 0.2) / 0.015) ** 2) + 1.5 * np.exp(-((r - 0.45) / 0.06) ** 2)
    i_peak, i_min = ev.first_peak_and_minimum(r, g)
    assert r[i_peak] == pytest.approx(0.2, abs=0.003)
    # analytic minimum of the two Gaussians lies where g' = 0 between them
    fine = np.linspace(0.21, 0.4, 20001)
    gf = 12.0 * np.exp(-((fine - 0.2) / 0.015) ** 2) + 1.5 * np.exp(-((fine - 0.45) / 0.06) ** 2)
    assert r[i_min] == pytest.approx(fine[np.argmin(gf)], abs=0.006)
    with pytest.raises(CgsimInputError, match="no first shell"):
        ev.first_peak_and_minimum(r, np.where(r < 0.5, 0.0, 1.0))


def test_ion_diffusion_on_random_walks_with_known_D():
    """Gaussian random walks: MSD = 6 D t exactly in expectation (Li+ atoms; rigid 6-atom anions)."""
    rng = np.random.default_rng(1)
    n_frames, dt, n_li, n_tf, n_at = 1001, 1.0, 200, 200, 6
    d_li, d_tf = 2.0e-3, 5.0e-4  # nm^2/ps
    li_path = np.cumsum(rng.normal(0, np.sqrt(2 * d_li * dt), (n_frames, n_li, 3)), axis=0)
    tf_path = np.cumsum(rng.normal(0, np.sqrt(2 * d_tf * dt), (n_frames, n_tf, 1, 3)), axis=0)
    shape = rng.normal(0, 0.15, (1, 1, n_at, 3))
    tf_atoms = (tf_path + shape).reshape(n_frames, n_tf * n_at, 3)
    xyz = np.concatenate([li_path, tf_atoms], axis=1)
    masses = np.concatenate([np.full(n_li, 6.94), np.tile(rng.uniform(1, 32, n_at), n_tf)])
    molecules = [n_li + n_at * k + np.arange(n_at) for k in range(n_tf)]
    res = ev.ion_self_diffusion(xyz, dt, masses, np.arange(n_li), molecules, remove_drift=False)
    assert res["fit_window_ps"] == [50.0, 250.0] and res["n_blocks"] == 3
    for key, d_true in (("li", d_li), ("tfsi", d_tf)):
        v = res[key]
        assert v["D_nm2_ps"] == pytest.approx(d_true, rel=0.1)
        assert v["D_cm2_s"] == pytest.approx(v["D_nm2_ps"] * 1e-2)
        assert np.isfinite(v["D_err_cm2_s"]) and v["D_err_cm2_s"] > 0
        assert v["msd_exponent"] == pytest.approx(1.0, abs=0.1)
        assert v["n"] == 200
    # removing the (tiny) centre-of-mass motion of all atoms changes nothing material
    res2 = ev.ion_self_diffusion(xyz, dt, masses, np.arange(n_li), molecules, fit_window=(20.0, 300.0))
    assert res2["li"]["D_nm2_ps"] == pytest.approx(d_li, rel=0.1) and res2["fit_window_ps"] == [20.0, 300.0]


def test_default_fit_window():
    assert ev.default_fit_window(1001, 2.0, 3) == (100.0, 500.0)
    assert ev.default_fit_window(21, 0.5, 3) == (0.5, 2.5)
    with pytest.raises(CgsimInputError, match="too few"):
        ev.default_fit_window(5, 2.0, 3)


def test_density_summary():
    blocks = [{"stage": "compress", "time": 10.0, "density": 0.9}]
    blocks += [{"stage": "npt", "time": 10.0 * (k + 1), "density": d} for k, d in enumerate([1.0, 1.1, 1.2, 1.22, 1.18])]
    res = ev.density_summary(blocks, 3)
    assert res["mean"] == pytest.approx(1.2) and res["std"] == pytest.approx(0.02)
    assert res["n_blocks"] == 3 and res["window_ps"] == [20.0, 50.0] and res["in_target"]
    assert ev.density_summary(blocks, 50)["n_blocks"] == 5 and ev.density_summary(blocks, 50)["window_ps"] == [0.0, 50.0]
    with pytest.raises(CgsimInputError, match="no NPT block"):
        ev.density_summary(blocks[:1], 3)


def test_density_target_is_ideal_mixing_of_its_brackets():
    # salt-free: the PEO bracket itself
    assert ev.density_target(None) == (1.0, 1.2)
    # EO:Li 8: salt mass fraction 287.08 / (287.08 + 8 * 44.053) = 0.4489, computed by hand
    w = 287.08 / (287.08 + 8 * 44.053)
    lo, hi = ev.density_target(8)
    assert lo == pytest.approx(1 / ((1 - w) / 1.0 + w / 1.7), abs=1e-3)
    assert hi == pytest.approx(1 / ((1 - w) / 1.2 + w / 2.1), abs=1e-3)
    # more salt, denser box; the old fixed range is inside the dilute bracket
    assert ev.density_target(5)[0] > ev.density_target(40)[0]
    assert ev.density_target(30)[0] < 1.1 and ev.density_target(30)[1] < 1.3
    with pytest.raises(CgsimInputError, match="eo_li_ratio"):
        ev.density_target(0)


def test_energy_drift_fit_linear():
    t = np.linspace(0.0, 10.0, 501)
    rng = np.random.default_rng(2)
    kin = 1000.0 + 5.0 * rng.normal(size=t.size)
    tot = -500.0 + 0.3 * t + 0.1 * rng.normal(size=t.size)  # 0.3 kJ/mol/ps = 300 kJ/mol/ns
    res = ev.energy_drift_fit(t, tot, kin, n_atoms=100, dof=297, temperature=400.0)
    assert res["drift_kj_mol_ns"] == pytest.approx(300.0, rel=0.01)
    assert res["drift_per_atom"] == pytest.approx(3.0, rel=0.01)
    assert res["drift_per_dof"] == pytest.approx(300.0 / 297, rel=0.01)
    assert res["relative_fluctuation"] == pytest.approx(0.1 / 5.0, rel=0.2)


@pytest.mark.parametrize("scale", [0.8, 1.0])
def test_total_charge_zero_on_the_real_force_field(scale):
    comp = el.Composition(2, 4, 3)
    top = el.build_topology(comp, box_length=2.5)
    es = el.create_system(top, cutoff=0.9, charge_scale=scale)
    res = ev.charge_summary(es.system, top, scale)
    assert abs(res["total"]) < 1e-10 and res["neutral"]
    assert res["li"] == {"n": 3, "charge_each_min": pytest.approx(scale), "charge_each_max": pytest.approx(scale)}
    assert res["tfsi"]["charge_each_min"] == pytest.approx(-scale) and res["tfsi"]["charge_each_max"] == pytest.approx(-scale)
    assert res["peo"]["n"] == 2 and abs(res["peo"]["charge_each_min"]) < 1e-10
    np.testing.assert_allclose(ev.system_charges(es.system), es.charges, atol=1e-12)


# ------------------------------------------------------------------------------------------
# a real (tiny) run: NPT-only, partial production, finished
# ------------------------------------------------------------------------------------------
def test_validate_run_in_npt_has_density_and_charge_only(tiny_runs):
    d = tiny_runs["npt"]
    out = tiny_runs["base"] / "npt_validation.json"
    res = ev.validate_run(d, out)
    assert res["run"]["stage"] == "equilibration" and res["run"]["composition"]["n_atoms"] == 106
    assert res["density"]["n_blocks"] == 1 and 0.1 < res["density"]["mean"] < 1.5
    assert res["charge"]["neutral"]
    for key in ("li_o_ether", "li_o_tfsi", "diffusion"):
        assert res[key]["available"] is False and "no production frames yet" in res[key]["reason"]
    saved = _strict_json(out)
    assert saved["density"]["std"] is None and saved["checks"]["li_o_ether_cn_in_target"] is None
    assert not (d / ev.VALIDATION_FILE).exists()
    with pytest.raises(CgsimInputError, match="no production frames yet") as info:
        ev.validate_run(d, out, require_production=True)
    assert "\n" not in str(info.value)
    with pytest.raises(CgsimInputError, match="no production frames yet"):
        ev.production_frames(ev.open_run(d))


def test_validate_partial_then_finished_run(tiny_runs):
    part = ev.validate_run(tiny_runs["partial"], tiny_runs["base"] / "partial.json")
    assert part["run"]["stage"] == "production"
    fr = part["frames"]
    assert fr["partial"] and fr["n_frames"] == 10 and fr["dt_ps"] == pytest.approx(0.5) and "chunks" in fr["source"]
    for key in ("li_o_ether", "li_o_tfsi"):
        sh = part[key]
        assert 0.15 < sh["peak_r"] < 0.35 and sh["cn"] >= 0 and sh["min_r"] > sh["peak_r"]
    for key in ("li", "tfsi"):
        assert np.isfinite(part["diffusion"][key]["D_cm2_s"])
    _strict_json(tiny_runs["base"] / "partial.json")

    fin = ev.validate_run(tiny_runs["finished"])  # default output: beside the run
    assert fin["run"]["stage"] == "finished" and not fin["frames"]["partial"] and fin["frames"]["n_frames"] == 21
    assert fin["output"] == str(tiny_runs["finished"] / ev.VALIDATION_FILE)
    saved = _strict_json(tiny_runs["finished"] / ev.VALIDATION_FILE)
    assert saved["diffusion"]["fit_window_ps"] == [0.5, 2.5]
    assert saved["li_o_ether"]["cn"] == pytest.approx(fin["li_o_ether"]["cn"])
    # the committed chunks of the partial run are the first frames of the finished trajectory
    a = ev.production_frames(ev.open_run(tiny_runs["partial"]))
    b = ev.production_frames(ev.open_run(tiny_runs["finished"]))
    np.testing.assert_allclose(a.xyz, b.xyz[:10], atol=1e-6)
    np.testing.assert_allclose(a.times, b.times[:10])
    assert a.box_length == pytest.approx(b.box_length, abs=1e-3)


def test_nve_energy_drift_on_tiny_run(tiny_runs):
    res = ev.nve_energy_drift(tiny_runs["partial"], 0.2, progress=False)
    assert res["velocities"] == "from state" and res["state"].startswith(".run/state_")
    assert res["steps"] == 100 and res["timestep"] == pytest.approx(0.002) and res["integrator"] == "VerletIntegrator"
    assert res["dof"] == 3 * 106 - res["n_constraints"] - 3 and res["n_constraints"] > 0
    for key in ("drift_kj_mol_ns", "drift_per_atom", "drift_per_dof", "relative_fluctuation", "mean_temperature"):
        assert np.isfinite(res[key])
    fin = ev.nve_energy_drift(tiny_runs["finished"], 0.1, progress=False)  # no state kept: last frame
    assert fin["velocities"] == "drawn at T" and "last frame" in fin["state"] and np.isfinite(fin["drift_per_dof"])


def test_command_line(tiny_runs, capsys):
    out = tiny_runs["base"] / "cli.json"
    assert ev.main([str(tiny_runs["partial"]), "--output", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "PARTIAL" in text and "Li-O(ether)" in text and "D(Li+)" in text and "cm2/s" in text
    assert _strict_json(out)["frames"]["n_frames"] == 10
    assert ev.main([str(tiny_runs["base"] / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such directory" in err


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
def test_bad_directories(tmp_path):
    with pytest.raises(CgsimInputError, match="no such directory"):
        ev.validate_run(tmp_path / "missing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    with pytest.raises(CgsimInputError, match="not an electrolyte run directory"):
        ev.open_run(tmp_path / "other")
    chain = tmp_path / "chain"
    (chain / ".run").mkdir(parents=True)
    (chain / ".run" / "identity.json").write_text(json.dumps({"system": {"name": "chain"}}))
    with pytest.raises(CgsimInputError, match="'chain' run"):
        ev.nve_energy_drift(chain)
    for exc_dir in (tmp_path / "missing", tmp_path / "other", chain):
        with pytest.raises(CgsimInputError) as info:
            ev.open_run(exc_dir)
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------
# the shipped reference data: every finished run under data/electrolyte/{train,test}
# ------------------------------------------------------------------------------------------
DATA = Path(__file__).resolve().parent.parent / "data" / "electrolyte"
FINISHED = sorted(p.parent for p in DATA.glob("*/*/dataset.json"))


def test_shipped_data_has_finished_runs():
    # the parametrised check below must not pass by having nothing to check
    assert len(FINISHED) >= 2, FINISHED


@pytest.mark.parametrize("run_dir", FINISHED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_run_is_physical(tmp_path, run_dir):
    """Issue 3's acceptance criteria on each finished shipped run (every 10th frame for the RDFs).

    The Li+ first shell must hold 4-7 oxygens in all: ether oxygens alone where salt is dilute
    (EO:Li >= 12), ether + TFSI oxygens where it is concentrated, because at EO:Li 8 there are too
    few ether oxygens per Li+ and TFSI- shares the shell (measured: 3.9 ether + 1.9 TFSI O).
    """
    res = ev.validate_run(run_dir, tmp_path / "validation.json", stride=10)
    eo_li = json.loads((run_dir / ".run" / "identity.json").read_text())["system"]["eo_li_ratio"]
    lo, hi = ev.density_target(eo_li)
    assert lo <= res["density"]["mean"] <= hi
    ether, tfsi = res["li_o_ether"], res["li_o_tfsi"]
    assert 0.19 <= ether["peak_r"] <= 0.23
    assert 4.0 <= ether["cn"] + tfsi["cn"] <= 7.0
    if eo_li >= 12:
        assert 4.0 <= ether["cn"] <= 7.0
    assert res["charge"]["neutral"]
    for key in ("li", "tfsi"):  # reported, not held to the literature range
        assert res["diffusion"][key]["D_cm2_s"] > 0
