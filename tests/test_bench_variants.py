"""bench/bench_variants.py: arms, nested data fractions, a tiny train-only run and its read-back."""

from __future__ import annotations

import pytest

from tests.conftest import load_bench

bench_variants = load_bench("bench_variants")


def test_arms_named_and_custom():
    assert bench_variants.parse_arm("equivariant") == ("equivariant", ["model=equivariant_gnn", "~model/coarse",
                                                                       "~model/collective"])
    assert bench_variants.parse_arm("wide=model.hidden_dim=96,model.bead_layers=3") == (
        "wide", ["model.hidden_dim=96", "model.bead_layers=3"])
    with pytest.raises(SystemExit, match="unknown arm 'nope'"):
        bench_variants.parse_arm("nope")


def test_fractions_are_nested_prefixes():
    systems = [f"s{i}" for i in range(30)]
    assert bench_variants.subset(systems, 0.25) == systems[:8]
    assert bench_variants.subset(systems, 0.5) == systems[:15]
    assert bench_variants.subset(systems, 1.0) == systems
    assert bench_variants.subset(systems[:2], 0.01) == ["s0"]
    with pytest.raises(SystemExit, match="not in"):
        bench_variants.subset(systems, 0.0)


def test_tiny_train_only_run_and_read_back(mapped_chains, tmp_path, capsys):
    common = ["--train-overrides", "debug=tiny", f"data.train=['{mapped_chains}/seq_00[0-2]']",
              f"data.val=['{mapped_chains}/seq_003']", "model.cutoff=2.0",
              "--arms", "plain", "coarse", "--fractions", "0.5", "1.0", "--epochs", "1", "--steps-per-epoch", "2",
              "--rollout-steps", "0", "--out", str(tmp_path)]
    rows = bench_variants.main(common)
    assert [(r["arm"], r["train_systems"]) for r in rows] == [("plain", 2), ("coarse", 2), ("plain", 3), ("coarse", 3)]
    assert all(r["optimizer_steps"] == 2 and r["n_parameters"] > 0 and r["val_nll"] == r["val_nll"] for r in rows)
    assert rows[1]["n_parameters"] > rows[0]["n_parameters"]  # the coarse level adds parameters
    assert (tmp_path / "variants.md").read_text().count("\n") == 6
    again = bench_variants.main(common)  # finished runs are read back, not retrained
    assert [r["val_nll"] for r in again] == [r["val_nll"] for r in rows]
    assert capsys.readouterr().out.count("finished (1 epochs), read back") == 4


def test_tiny_run_with_rollout_reports_errors_and_speed(mapped_chains, tmp_path):
    rows = bench_variants.main([
        "--train-overrides", "debug=tiny", f"data.train=['{mapped_chains}/seq_00[0-2]']",
        f"data.val=['{mapped_chains}/seq_003']", "model.cutoff=2.0",
        "--arms", "plain", "--epochs", "1", "--steps-per-epoch", "2", "--rollout-steps", "12", "--save-every", "1",
        "--redraws", "0", "--initial", f"{mapped_chains}/seq_003", "--reference", f"{mapped_chains}/seq_003",
        "--out", str(tmp_path)])
    (row,) = rows
    assert 0.0 <= row["finished"] <= 1.0 and row["bead_steps_per_second"] > 0
    assert row["rg_err"] is not None and row["bond_jsd"] is not None  # structure is compared in every case
    assert (row["finished"] == 1.0) == (row["evaluate_note"] is None)
