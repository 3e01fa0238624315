"""``bench/bench_speed.py``: the pieces its speed ratios rest on, at tiny sizes (a few seconds).

- the periodic boxes of the scaling series keep the mapped electrolyte's density and whole
  molecules, and a k x k x k tiling keeps every bead;
- the OpenMM chain is rebuilt from the sidecar with the reference run's particles, and timed;
- the learned side runs through the rollout engine, continuously and as one-step restarts;
- the linear fit recovers a line.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))  # bench scripts import their siblings by name

bench_speed = pytest.importorskip("bench_speed")
bench_common = pytest.importorskip("bench_common")

MAPPED_EL = ROOT / "data" / "electrolyte" / "mapped" / "train" / "peo8x20_eoli16"


@pytest.fixture(scope="module")
def electrolyte():
    from cgsim.data.load import load_systems
    from cgsim.rollout.command import initial_history

    systems = load_systems([str(MAPPED_EL)], "test")
    traj = systems.trajectories[0]
    model, cfg = bench_common.untrained_model("electrolyte", len(systems.atom_types), torch.from_numpy(traj.positions),
                                              refine=False)
    return traj, model, initial_history(traj, model.history, int(cfg.data.stride))


def _molecules_whole(graph, hist, cutoff: float) -> bool:
    """Every bead bond shorter than the cutoff in every history frame (no molecule split over the box)."""
    b = graph.bead_bonds
    return bool(((hist[b[0]] - hist[b[1]]).norm(dim=-1) < cutoff).all())


def test_periodic_boxes_keep_density_and_whole_molecules(electrolyte):
    traj, model, hist0 = electrolyte
    n0 = traj.graph.n_beads
    rho0 = n0 / float(traj.graph.box[0]) ** 3
    tiled, hist = bench_speed.periodic_box(traj.graph, hist0, 8 * n0)  # exactly 2 x 2 x 2 tiles
    assert tiled.n_beads == 8 * n0 and float(tiled.box[0]) == pytest.approx(2 * float(traj.graph.box[0]))
    assert tiled.atom_type.shape[0] == 8 * traj.graph.atom_type.shape[0]
    assert tiled.bead_bonds.shape[1] == 8 * traj.graph.bead_bonds.shape[1]
    for n in (130, 1000):
        g, h = bench_speed.periodic_box(traj.graph, hist0, n)
        assert h.shape == (g.n_beads, hist0.shape[1], 3)
        assert abs(g.n_beads - n) < 0.3 * n and g.n_beads / float(g.box[0]) ** 3 == pytest.approx(rho0, rel=0.3)
        a2b = g.atom_to_bead.numpy()
        assert a2b.min() == 0 and a2b.max() == g.n_beads - 1 and np.unique(a2b).size == g.n_beads
        assert g.atom_bonds.max() < g.atom_type.shape[0] and g.bead_bonds.max() < g.n_beads
        assert _molecules_whole(g, h, 1.0)
        centres = h[:, -1].mean(0)  # beads sit (up to their molecule's extent) in the box
        assert bool((centres > -1.0).all()) and bool((centres < float(g.box[0]) + 1.0).all())


def test_learned_and_openmm_sides_run(electrolyte):
    traj, model, hist0 = electrolyte
    from cgsim.rollout.config import GuardConfig

    g, h = bench_speed.periodic_box(traj.graph, hist0, 130)
    from cgsim.data.windows import BeadTrajectory

    box = BeadTrajectory(name="box", graph=g, positions=h.permute(1, 0, 2).numpy(), save_interval=1.0)
    system = bench_speed.learned_system(box, model, 1, GuardConfig())
    for restart in (False, True):
        r = bench_speed.time_engine(model, [system], 0.0, 0.0, 10, restart=restart, warmup=1)
        assert r["steps"] == 3 and r["member_steps"] == 3 and r["n_stopped"] == 0 and r["wall_s"] > 0
        assert bench_speed.rates(r, 20.0)["sim_per_s"] == pytest.approx(60.0 / r["wall_s"])
    # a guard that every step fails (bonds longer than 1e-6 nm): redrawn in a continuous rollout
    # until the redraws run out, never redrawn when every step restarts (counted as "would stop")
    import dataclasses

    failing = dataclasses.replace(system, max_bond=1e-6)
    r = bench_speed.time_engine(model, [failing], 0.0, 0.0, 10, restart=False, warmup=1, redraws=2)
    assert r["redraws"] == 2 and r["n_stopped"] == 1
    r = bench_speed.time_engine(model, [failing], 0.0, 0.0, 10, restart=True, warmup=1, redraws=2)
    assert r["redraws"] == 0 and r["n_stopped"] == r["steps"] == 3
    chain = bench_speed.load_fine_chain(ROOT / "data" / "chain" / "test" / "seq_000.xtc")
    om = bench_speed.openmm_chains([chain], threads=1, warmup_s=0.05, seconds=0.1)
    assert om["beads"] == chain.n_beads == 118 and om["steps"] > 0 and om["sim_per_s"] > 0
    assert om["sim_per_s"] == pytest.approx(om["steps"] * 0.01 / om["wall_s"])


def test_linear_fit_recovers_a_line():
    n = np.array([100, 1000, 10_000, 100_000])
    fit = bench_speed.linear_fit(n, 0.002 + 3e-6 * n, n_min=1000)
    assert fit["sizes"] == 3 and fit["slope_us_per_bead"] == pytest.approx(3.0) and fit["r2"] == pytest.approx(1.0)
    assert fit["intercept_ms"] == pytest.approx(2.0) and fit["exponent"] < 1.0  # an offset bends the power law
    assert bench_speed.linear_fit(n, 3e-6 * n)["exponent"] == pytest.approx(1.0)
    assert bench_speed.linear_fit(n, 3e-9 * n**1.5)["exponent"] == pytest.approx(1.5)
    assert bench_speed.linear_fit(n[:1], n[:1]) == {}
