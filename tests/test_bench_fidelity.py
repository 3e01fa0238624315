"""bench/bench_fidelity.py reads an evaluated rollout and checks it against the issue-9 targets."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import load_bench

bench_fidelity = load_bench("bench_fidelity")


def _write(tmp_path: Path) -> Path:
    members = [{"name": "a/r0", "status": "finished", "stop_step": None, "redraws": 3},
               {"name": "b/r0", "status": "stopped", "stop_step": 51, "redraws": 1}]
    (tmp_path / "evaluate").mkdir()
    (tmp_path / "summary.json").write_text(json.dumps({"members": members, "steps": 100, "learned_dt": 5.0,
                                                       "time_unit": "tau", "simulated_time": 500.0}))
    obs = {"rdf": {"A-A": {"error": {"mean_abs_dg": 0.1}, "noise_floor": {"mean_abs_dg": 0.2}},
                   "A-B": {"error": {"mean_abs_dg": 0.3}, "noise_floor": {"mean_abs_dg": 0.1}},
                   "B-B": {"error": {"mean_abs_dg": 0.5}, "noise_floor": {"mean_abs_dg": 0.1}}},
           "rg": {"all": {"error": {"relative_error_mean": 0.04}, "noise_floor": {"relative_error_mean": 0.01}}},
           "rg_acf": {"rg^2": {"error": {"relative_error_tau": 0.5}, "noise_floor": {"relative_error_tau": 0.1}}}}
    (tmp_path / "evaluate" / "metrics.json").write_text(json.dumps({"observables": obs, "reference": {"path": "ref"}}))
    return tmp_path


def test_rows_targets_and_stability(tmp_path):
    res = bench_fidelity.fidelity(_write(tmp_path))
    rows = {r["check"].split(",")[0].split(" (")[0]: r for r in res["rows"]}
    rdf = rows["RDF mean abs(dg)"]
    assert rdf["rollout"] == 0.3 and rdf["noise_floor"] == 0.1 and rdf["meets"] is False  # medians
    assert rows["mean Rg"]["meets"] is True and rows["Rg^2 relaxation time"]["meets"] is False
    assert rows["replicas finished"]["rollout"] == 0.5 and rows["replicas finished"]["meets"] is False
    assert abs(res["redraws_per_1000_steps"] - 1e3 * 4 / 150) < 1e-9  # 100 + 50 member-steps
    assert res["exclusion_pairs_per_1000_steps"] is None  # the rollout ran without pair exclusion
    table = bench_fidelity.markdown(res)
    assert table.count("\n") == len(res["rows"]) + 1 and all(line.count("|") == 6 for line in table.splitlines())


def test_pairs_pushed_apart_are_counted_per_member_step(tmp_path):
    out = _write(tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    for m, pairs in zip(summary["members"], (30, 6), strict=True):
        m["exclusion_pairs"] = pairs
    (out / "summary.json").write_text(json.dumps(summary))
    res = bench_fidelity.fidelity(out)
    assert abs(res["exclusion_pairs_per_1000_steps"] - 1e3 * 36 / 150) < 1e-9
