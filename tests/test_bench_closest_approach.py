"""bench/bench_closest_approach.py: closest approach per type pair, rollouts against the reference."""

from __future__ import annotations

import json
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest

from cgsim.data.load import load_systems
from tests.conftest import ROOT, load_bench

REF = ROOT / "data" / "electrolyte" / "mapped" / "train" / "peo7x20_eoli8"
bench = load_bench("bench_closest_approach")


def _fake_rollout(out: Path, xyz: np.ndarray) -> Path:
    top = md.load_topology(str(REF / "beads.pdb"))
    traj = load_systems([str(REF)], "t").trajectories[0]
    edge = traj.graph.box.numpy()
    d = out / "sys" / "replica_000"
    d.mkdir(parents=True)
    frames = md.Trajectory(xyz.astype(np.float32), top, unitcell_lengths=np.tile(edge, (len(xyz), 1)),
                           unitcell_angles=np.full((len(xyz), 3), 90.0))
    frames.save_hdf5(str(d / "rollout.h5"))
    return out


def test_reference_frames_give_ratio_one_and_a_moved_pair_its_own_ratio(tmp_path):
    traj = load_systems([str(REF)], "t").trajectories[0]
    types = json.loads((REF / "beads.json").read_text())["system"]["particle_types"]
    idx = np.unique(np.linspace(0, traj.n_frames - 1, 10).round().astype(int))
    frames = traj.positions[idx].astype(np.float64)
    same = _fake_rollout(tmp_path / "same", np.concatenate([frames[:1], frames]))
    moved = frames.copy()
    li = [i for i, t in enumerate(types) if t == "LI"]
    moved[3, li[1]] = moved[3, li[0]] + np.array([0.3, 0.0, 0.0])  # two Li+ 0.3 nm apart in one frame
    close = _fake_rollout(tmp_path / "close", np.concatenate([frames[:1], moved]))
    result = bench.closest_table(str(REF), [str(same), str(close)], cutoff=0.8, scan_frames=10)
    names = result["types"]
    ref = np.array(result["reference_closest"])
    ratio_same = np.array(result["rollouts"][str(same)]["ratio"])
    finite = np.isfinite(ref)
    np.testing.assert_allclose(ratio_same[finite], 1.0, atol=1e-5)  # float32 frames on disk
    k = names.index("LI")
    ratio_close = np.array(result["rollouts"][str(close)]["ratio"])
    assert ratio_close[k, k] == pytest.approx(0.3 / ref[k, k], abs=1e-4)
    table = bench.markdown(result)
    assert "| LI-LI |" in table and f"{0.3 / ref[k, k]:.2f}" in table


def test_not_a_rollout_directory(tmp_path):
    with pytest.raises(SystemExit, match="not a cgsim rollout output"):
        bench.closest_table(str(REF), [str(tmp_path)])
