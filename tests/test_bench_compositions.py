"""bench/bench_compositions.py: one row per composition, MD against a real (short) rollout."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import load_bench

bench = load_bench("bench_compositions")
RUN = Path("data/electrolyte/mapped/test/peo6x25_eoli20")


def test_row_of_a_short_rollout_of_the_shipped_model(tmp_path):
    row = bench.composition_row("data/checkpoints/electrolyte.pt", RUN, tmp_path / "r", steps=3, replicas=1,
                                overrides=["use_recommended=false", "guard.redraws=10", "guard.by_type_pair=true"])
    assert row["run"] == RUN.name and row["split"] == "test"
    assert row["replicas"] == 1 and row["steps_done"] <= 3
    # MD: the held-out box's own frames (bench_onestep's and bench_li_pairs' figure: CN ~6.3, no Li+ pairs)
    assert row["md_li_cn"] == pytest.approx(6.28, abs=0.05) and row["md_li_li_close"] < 0.01
    assert 0.0 <= row["li_li_close"] <= 1.0 and row["li_cn_second_half"] > 0
    # a second call finds the finished rollout and measures it again, the same
    again = bench.composition_row("data/checkpoints/electrolyte.pt", RUN, tmp_path / "r", 3, 1, [])
    assert again == row
