"""bench/bench_collective.py: molecule grouping and the MD side checked against a direct computation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cgsim.data.load import load_systems
from tests.conftest import SEQ, load_bench, make_checkpoint

bench_collective = load_bench("bench_collective")


@pytest.mark.parametrize("collective", [False, True])
def test_md_centre_steps_and_ratios(tmp_path, collective):
    ckpt = make_checkpoint(tmp_path / "tiny.pt", collective=collective)
    rows = bench_collective.main(["--checkpoint", str(ckpt), "--systems", str(SEQ), "--windows", "5", "--draws", "3",
                                  "--json", str(tmp_path / "c.json")])
    assert json.loads((tmp_path / "c.json").read_text())["rows"] == rows
    traj = load_systems([str(SEQ)], "t").trajectories[0]
    (row,) = rows  # one chain: one molecule kind, labelled with its bead types
    assert row["kind"].startswith(f"{traj.graph.n_beads} beads B")
    # MD side, directly: history 3 at stride 1 -> windows start at frame 2; 5 evenly spaced up to the last step
    starts = np.unique(np.linspace(2, traj.n_frames - 2, 5).round().astype(int))
    x = traj.positions.astype(np.float64)
    centre = np.stack([(x[t + 1] - x[t]).mean(0) for t in starts])
    bead = np.stack([x[t + 1] - x[t] for t in starts])
    np.testing.assert_allclose(row["centre_md"], (centre ** 2).sum(1).mean(), rtol=1e-5)
    np.testing.assert_allclose(row["bead_md"], (bead ** 2).sum(2).mean(), rtol=1e-5)
    assert row["molecules_x_draws"] == 3 * len(starts)
    np.testing.assert_allclose(row["centre_ratio_sample"], row["centre_sample"] / row["centre_md"])
    assert 0 < row["centre_noise_sample"] and 0 < row["centre_resid_md"]
