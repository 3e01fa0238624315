"""``cgsim screen`` (issue 24, parts 3-4): a tiny composition end to end with the shipped model.

The end-to-end screening (4 chains of 10 EO, EO:Li 5, a 0.5 nm MD cutoff so that the box may be
small, a few ps of NPT, the 60 ps of NVT the model's history needs, 7 learned steps x 2 replicas)
runs once per module (~40-70 s on one thread); the table over two compositions adds a second
MD and is marked slow. Outside the shipped model's single training composition, so
``allow_extrapolation=true``; the refusal without it is checked too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cgsim.cli import call_verb
from cgsim.errors import CgsimInputError
from cgsim.screen.coordination import plateau
from cgsim.screen.training import (
    CompositionRanges,
    composition_ranges,
    interpolated_density,
    outside_ranges,
    training_runs,
)
from tests.conftest import compose_root

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "data" / "checkpoints" / "electrolyte.pt"
TINY = ["eo_li=5", "chain_length=10", "n_chains=4"]
FAST = ["allow_extrapolation=true", "md.cutoff=0.5", "md.compress_time=6", "md.npt_time=2", "md.npt_block=2",
        "md.nvt_equilibration_time=2", "time_ns=0.1", "burn_in_ns=0.04", "replicas=2", "num_threads=1",
        "progress=false"]


def screen(out: Path, *extra: str) -> dict:
    return call_verb("screen", compose_root("screen", [f"checkpoint={MODEL}", f"output={out}", *FAST, *extra]))


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    out = tmp_path_factory.mktemp("screen") / "out"
    mp = pytest.MonkeyPatch()
    mp.chdir(ROOT)  # the model card lists its training systems relative to the repository root
    result = screen(out, *TINY)
    yield out, result, mp
    mp.undo()


def test_training_facts_of_the_shipped_model():
    from cgsim.model.card import ModelCard
    from cgsim.model.checkpoint import load_checkpoint

    card = ModelCard.from_checkpoint(load_checkpoint(MODEL), str(MODEL))
    runs = training_runs(card)
    assert [(r.n_chains, r.chain_length, r.n_salt) for r in runs] == [(7, 20, 18)]
    assert runs[0].system_config["hydrogen_mass"] == 3.0 and runs[0].system_config["timestep"] == 0.004
    assert runs[0].temperature == 400.0 and 1.2 < runs[0].density < 1.35
    ranges = composition_ranges(runs)
    assert ranges.eo_li == pytest.approx((140 / 18, 140 / 18)) and ranges.chain_length == (20, 20)
    assert outside_ranges(8.0, 20, ranges, "") is None  # the nominal ratio of the training run
    assert outside_ranges(12.0, 20, ranges, "")[0] == "eo_li"
    assert outside_ranges(8.0, 30, ranges, "compositions[1]")[0] == "compositions[1].chain_length"


def test_density_is_interpolated_in_salt_molality_and_not_extrapolated():
    from dataclasses import replace

    from cgsim.model.card import ModelCard
    from cgsim.model.checkpoint import load_checkpoint

    run = training_runs(ModelCard.from_checkpoint(load_checkpoint(MODEL), str(MODEL)))[0]
    a, b = replace(run, molality=1.0, density=1.1), replace(run, molality=3.0, density=1.3)
    assert interpolated_density([a, b], 2.0) == pytest.approx(1.2)
    assert interpolated_density([a, b], 5.0) == pytest.approx(1.3)
    assert interpolated_density([b, a], 0.5) == pytest.approx(1.1)
    assert outside_ranges(2.0, 10, CompositionRanges((5.0, 30.0), (10, 40)), "") is not None


def test_plateau_tells_a_drift_from_a_flat_series():
    flat = [np.full(20, 4.0) + 0.01 * np.sin(np.arange(20))]
    drifting = [np.linspace(2.0, 4.0, 20)]
    assert plateau(flat, 0.05)["plateaued"]
    assert not plateau(drifting, 0.05)["plateaued"]


def test_refused_outside_the_training_range_without_the_switch(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    over = [f"checkpoint={MODEL}", f"output={tmp_path / 'out'}", *TINY, "progress=false"]
    with pytest.raises(CgsimInputError) as exc:
        call_verb("screen", compose_root("screen", over))
    assert str(exc.value) == ("eo_li: 5 is outside the model's training range EO:Li 7.78-7.78; give a composition "
                              "inside it, or allow_extrapolation=true to screen it knowingly")
    assert not (tmp_path / "out").exists()


def test_one_composition_end_to_end(screened):
    out, result, _ = screened
    comp = out / "peo4x10_eoli5"
    for name in ("report.md", "results.json", "msd.png", "coordination.png", "stages.json", "identity.json"):
        assert (comp / name).is_file(), name
    r = json.loads((comp / "results.json").read_text())
    assert r["composition"]["n_salt"] == 8 and r["temperature"] == 400.0
    assert r["md"]["hydrogen_mass"] == 3.0 and r["md"]["timestep"] == 0.004
    assert r["md"]["nvt_density"] == pytest.approx(r["md"]["interpolated_density"], rel=1e-3)
    assert r["mapping"]["scheme"] == "metis" and r["mapping"]["n_beads"] == 60
    assert r["rollout"]["steps"] == 7 and r["rollout"]["burn_in_steps"] == 2 and r["rollout"]["members"] == 2
    for key in ("D_li", "D_tfsi", "D_peo", "sigma_ne", "sigma_eh", "t_li_ne", "coordination"):
        entry = r["transport"][key]
        assert len(entry["per_replica"]) == 2 and np.isfinite(entry["mean"]) and np.isfinite(entry["error"]), key
    assert r["transport"]["D_li"]["mean"] > 0 and r["transport"]["sigma_ne"]["mean"] > 0
    assert 0 < r["transport"]["t_li_ne"]["mean"] < 1
    assert r["coordination_cutoff"] == pytest.approx(0.3875, abs=0.03)  # training g(r) first minimum
    assert isinstance(r["plateau"]["plateaued"], bool)
    t = r["timing"]
    assert set(t["stages"]) == {"md", "map", "rollout", "analysis"} and t["total"] > t["stages"]["md"] > 0
    assert r["cost"]["speedup_end_to_end"] == pytest.approx(r["cost"]["all_atom_seconds"] / t["total"])
    assert "eo_li=5 is outside" in r["extrapolation"]
    report = (comp / "report.md").read_text()
    assert "D(Li+)" in report and "Einstein-Helfand" in report and "plateau" in report
    table = (out / "table.csv").read_text().splitlines()
    assert len(table) == 2 and table[1].startswith("peo4x10_eoli5,5.0,10,4,")
    assert (out / "table.md").is_file() and (out / "conductivity.png").is_file()
    assert set(result["results"]) == {"peo4x10_eoli5"}


def test_rerun_skips_finished_stages(screened, capsys):
    out, _, _ = screened
    comp = out / "peo4x10_eoli5"
    stamps = {p: p.stat().st_mtime_ns for p in [comp / "md" / "peo4x10_eoli5.xtc", comp / "mapped" / "beads.xtc",
                                                 comp / "rollout" / "summary.json", comp / "results.json"]}
    records = json.loads((comp / "stages.json").read_text())
    screen(out, *TINY)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((comp / "stages.json").read_text()) == records
    assert "generate electrolyte" not in capsys.readouterr().out
    # an analysis option reruns the analysis only
    screen(out, *TINY, "plateau_tolerance=0.5")
    r = json.loads((comp / "results.json").read_text())
    assert r["plateau"]["tolerance"] == 0.5 and r["timing"]["skipped"] == ["md", "map", "rollout"]
    assert (comp / "md" / "peo4x10_eoli5.xtc").stat().st_mtime_ns == stamps[comp / "md" / "peo4x10_eoli5.xtc"]


def test_other_settings_in_the_same_directory_are_refused(screened):
    out, _, _ = screened
    with pytest.raises(CgsimInputError, match="holds a screening with other settings .*replicas"):
        screen(out, *TINY, "replicas=3")


@pytest.mark.slow
def test_two_compositions_give_one_table(screened):
    out, _, _ = screened
    screen(out, "compositions=[{eo_li: 5, chain_length: 10, n_chains: 4}, {eo_li: 10, chain_length: 10, n_chains: 6}]")
    rows = (out / "table.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["peo6x10_eoli10", "peo4x10_eoli5"]  # by salt molality
    md = (out / "table.md").read_text()
    assert "peo6x10_eoli10" in md and "peo4x10_eoli5" in md
