"""`cgsim demo`: the shipped chain model, a held-out chain, rollout + evaluate, printed commands."""

from __future__ import annotations

import json
import shlex

import pytest

from cgsim.demo import case_overrides, headline, reference_md_rate, run, speed_line
from cgsim.errors import CgsimInputError


def _cfg(compose_cfg, out, *extra):
    return compose_cfg("demo", [f"output={out}", "progress=false", "cases.chain.steps=12",
                                "cases.chain.initial=data/chain/mapped/test/seq_000",
                                "cases.chain.reference=data/chain/mapped/test/seq_000_long",
                                "cases.chain.rollout_overrides=['refine.levels=6','guard.redraws=3']",
                                "cases.chain.evaluate_overrides=['observables=[rdf,bond_lengths,rg]']",
                                "cases.electrolyte.steps=6", "cases.electrolyte.replicas=1",
                                "cases.electrolyte.evaluate_overrides=['observables=[rdf,msd]']",
                                "cases.chain.reference_md=data/chain/test/seq_000.xtc", "speed_seconds=0.5", *extra])


def test_demo_rolls_out_evaluates_and_prints_the_commands(compose_cfg, tmp_path, capsys):
    results = run(_cfg(compose_cfg, tmp_path / "demo"))
    text = capsys.readouterr().out
    res = results["chain"]
    assert res["summary"]["steps"] == 12
    report = tmp_path / "demo" / "chain" / "evaluate" / "report.md"
    assert res["report"] == str(report.resolve()) and report.is_file()
    metrics = json.loads((report.parent / "metrics.json").read_text())
    assert {"rdf", "bond_lengths", "rg"} <= set(metrics["observables"])
    # the printed command is the one that ran, and can be pasted into a shell
    line = next(ln for ln in text.splitlines() if ln.startswith("$ cgsim rollout "))
    args = shlex.split(line[2:])[2:]
    assert "checkpoint=data/checkpoints/chain.pt" in args and "evaluate=true" in args
    assert "initial='data/chain/mapped/test/seq_000'" in args  # hydra's quotes survive the shell
    names = [r[0] for r in res["headline"]]
    assert any(n.startswith("bond_lengths") for n in names) and all(err >= 0 for _, err, _ in res["headline"])
    assert f"report: {report.resolve()}" in text
    # then the electrolyte: its own model, box and observables (dynamics included: it finished)
    ely = results["electrolyte"]
    assert ely["summary"]["steps"] == 6 and ely["summary"]["n_stopped"] == 0
    ely_metrics = json.loads((tmp_path / "demo" / "electrolyte" / "evaluate" / "metrics.json").read_text())
    assert {"rdf", "msd"} <= set(ely_metrics["observables"])
    assert "checkpoint=data/checkpoints/electrolyte.pt" in text
    # the speed-up against the reference MD, timed in the same run, for each case
    speed = [ln for ln in text.splitlines() if ln.startswith("speed: ")]
    assert len(speed) == 2 and all("x faster" in ln for ln in speed)
    assert res["speedup"] > 0 and ely["speedup"] > 0
    assert f"{res['speedup']:.3g}x MD" in text.splitlines()[-1]
    # a second run continues the finished rollout (no error for the existing output) and re-evaluates
    again = run(_cfg(compose_cfg, tmp_path / "demo"))
    assert again["chain"]["summary"]["steps"] == 12 and again["chain"]["summary"]["steps_this_call"] == 0


def test_speed_line_divides_member_time_rates():
    summary = {"aggregate_simulated_time_per_second": 300.0, "time_unit": "ps", "calls_per_step": 3}
    line, ratio = speed_line(summary, {"members_time_per_second": 0.5, "label": "OpenMM CPU"})
    assert ratio == pytest.approx(600.0) and "600x faster" in line and "3 network call(s)" in line


def test_reference_md_of_the_wrong_kind_is_named(tmp_path):
    with pytest.raises(CgsimInputError, match="reference_md"):
        reference_md_rate(str(tmp_path / "nothing*.xtc"), 1, 0.1)


def test_missing_model_is_one_clear_line(compose_cfg, tmp_path):
    with pytest.raises(CgsimInputError, match=r"cases\.chain\.checkpoint.*not found"):
        run(_cfg(compose_cfg, tmp_path / "d", "cases.chain.checkpoint=data/checkpoints/none.pt"))
    assert not (tmp_path / "d").exists()


def test_headline_medians_and_overrides(compose_cfg, tmp_path):
    metrics = {"observables": {"rg": {"all": {"error": {"relative_error_mean": 0.2}, "noise_floor": {"relative_error_mean": 0.02}}},
                               "bond_lengths": {"A": {"error": {"jsd": 0.1}, "noise_floor": {"jsd": 0.0}},
                                                "B": {"error": {"jsd": 0.3}, "noise_floor": {"jsd": 0.01}}}}}
    assert headline(metrics) == [("rg (relative_error_mean)", 0.2, 0.02), ("bond_lengths (jsd)", 0.2, 0.005)]
    cfg = _cfg(compose_cfg, tmp_path / "x")
    ov = case_overrides(cfg.cases.chain, tmp_path / "x" / "chain", False)
    assert "steps=12" in ov and "guard.redraws=3" in ov and "reference='data/chain/mapped/test/seq_000_long'" in ov


def test_num_threads_is_passed_to_each_rollout(compose_cfg, tmp_path):
    cfg = _cfg(compose_cfg, tmp_path / "x")
    assert not any(o.startswith("num_threads=") for o in case_overrides(cfg.cases.chain, tmp_path / "c", False))
    assert case_overrides(cfg.cases.chain, tmp_path / "c", False, 1)[-1] == "num_threads=1"


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_bad_num_threads_is_named(compose_cfg, tmp_path, bad):
    cfg = _cfg(compose_cfg, tmp_path / "d", f"num_threads={bad}")
    with pytest.raises(CgsimInputError, match="num_threads"):
        run(cfg)
    assert not (tmp_path / "d").exists()
