"""Hard-core pair exclusion of rollout steps: analytic cases, an independent sweep, the command."""

from __future__ import annotations

import json

import mdtraj as md
import numpy as np
import pytest
import torch

from cgsim.errors import CgsimInputError
from cgsim.rollout.command import rollout
from cgsim.rollout.exclusion import exclusion_table, merge_pair_tables, remove_overlaps
from tests.conftest import SEQ, rollout_cfg

ONE = torch.tensor([[0.5]], dtype=torch.float64)  # one bead type, exclusion distance 0.5 nm


def _two(x0, x1):
    return torch.tensor([x0, x1], dtype=torch.float64)


def test_a_close_pair_ends_exactly_at_its_exclusion_distance_around_its_midpoint():
    x = _two([1.0, 1.0, 1.0], [1.06, 1.08, 1.0])  # 0.1 nm apart
    new, pairs = remove_overlaps(x, torch.zeros(2, dtype=torch.long), ONE, None, torch.zeros(2, dtype=torch.long), 5)
    assert float((new[1] - new[0]).norm()) == pytest.approx(0.5, abs=1e-12)
    assert torch.allclose(new.mean(0), x.mean(0), atol=1e-12)
    # along the line joining them
    assert torch.allclose((new[1] - new[0]) / 0.5, (x[1] - x[0]) / 0.1, atol=1e-12)
    assert pairs.tolist() == [1, 1]
    assert float((x[1] - x[0]).norm()) == pytest.approx(0.1)  # the input is not modified


def test_periodic_pair_across_the_boundary_moves_outwards_through_it():
    box = torch.tensor([3.0, 3.0, 3.0], dtype=torch.float64)
    x = _two([0.05, 1.0, 1.0], [2.95, 1.0, 1.0])  # 0.1 nm apart through the x = 0 face
    new, _ = remove_overlaps(x, torch.zeros(2, dtype=torch.long), ONE, box, torch.zeros(2, dtype=torch.long), 5)
    assert new[0, 0].item() == pytest.approx(0.25) and new[1, 0].item() == pytest.approx(2.75)
    assert torch.equal(new[:, 1:], x[:, 1:])


def test_pairs_outside_their_limit_or_without_one_are_not_touched():
    table = torch.tensor([[0.5, 0.0], [0.0, 0.0]], dtype=torch.float64)  # only type 0 ... type 0 excluded
    x = torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.1]], dtype=torch.float64)
    ty = torch.tensor([0, 0, 1, 1])
    new, pairs = remove_overlaps(x, ty, table, None, torch.zeros(4, dtype=torch.long), 5)
    assert torch.equal(new, x) and int(pairs.sum()) == 0


def test_systems_in_a_batch_do_not_push_each_other():
    x = _two([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    new, pairs = remove_overlaps(x, torch.zeros(2, dtype=torch.long), ONE, None, torch.tensor([0, 1]), 5)
    assert torch.equal(new, x) and int(pairs.sum()) == 0


def test_a_crowded_cluster_converges_and_keeps_its_centroid():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(0.0, 0.4, size=(6, 3)))  # six beads inside 0.4 nm, limit 0.5
    ty = torch.zeros(6, dtype=torch.long)
    new, pairs = remove_overlaps(x, ty, ONE, None, torch.zeros(6, dtype=torch.long), 200)
    d = torch.cdist(new, new) + torch.eye(6) * 10
    assert float(d.min()) > 0.5 - 1e-3
    assert torch.allclose(new.mean(0), x.mean(0), atol=1e-12)
    d0 = torch.cdist(x, x) + torch.eye(6) * 10
    assert pairs.tolist() == (d0 < 0.5).sum(1).tolist()  # partners each bead overlapped at the first sweep


def _one_sweep_numpy(x: np.ndarray, ty: np.ndarray, table: np.ndarray, box: np.ndarray) -> np.ndarray:
    """All pairs by brute force, minimum image: the same half-overlap move, written independently."""
    out = x.copy()
    for i in range(len(x)):
        for j in range(len(x)):
            if i == j:
                continue
            v = x[j] - x[i]
            v -= box * np.round(v / box)
            r = np.linalg.norm(v)
            lim = table[ty[i], ty[j]]
            if 0 < r < lim:
                out[i] -= 0.5 * (lim - r) * v / r
    return out


def test_one_sweep_matches_a_brute_force_computation():
    rng = np.random.default_rng(1)
    box = np.array([2.0, 2.2, 2.4])
    x = rng.uniform(0.0, 1.0, size=(40, 3)) * box
    ty = rng.integers(0, 3, size=40)
    table = np.array([[0.3, 0.2, 0.0], [0.2, 0.45, 0.25], [0.0, 0.25, 0.35]])
    new, _ = remove_overlaps(torch.from_numpy(x), torch.from_numpy(ty), torch.from_numpy(table), torch.from_numpy(box),
                             torch.zeros(40, dtype=torch.long), 1)
    expected = _one_sweep_numpy(x, ty, table, box)
    assert not np.allclose(expected, x)  # the case has overlaps to remove
    np.testing.assert_allclose(new.numpy(), expected, atol=1e-12)


def test_correction_is_translation_invariant_in_a_periodic_box():
    rng = np.random.default_rng(2)
    box = torch.tensor([2.0, 2.0, 2.0], dtype=torch.float64)
    x = torch.from_numpy(rng.uniform(0.0, 2.0, size=(30, 3)))
    ty, sys = torch.zeros(30, dtype=torch.long), torch.zeros(30, dtype=torch.long)
    shift = torch.tensor([0.73, -1.31, 5.2], dtype=torch.float64)
    a, _ = remove_overlaps(x, ty, ONE * 0.6, box, sys, 3)
    b, _ = remove_overlaps(x + shift, ty, ONE * 0.6, box, sys, 3)
    diff = (b - shift) - a
    diff -= box * torch.round(diff / box)
    assert float(diff.abs().max()) < 1e-10


def test_exclusion_table_and_merged_tables():
    closest = np.array([[0.6, np.inf], [np.inf, 0.2]])
    np.testing.assert_allclose(exclusion_table(closest, 0.5), [[0.3, 0.0], [0.0, 0.1]])
    with pytest.raises(ValueError, match="factor"):
        exclusion_table(closest, 1.5)
    types, table = merge_pair_tables([(torch.tensor([0, 1, 1]), torch.ones(2, 2)),
                                      (torch.tensor([0, 0]), 2 * torch.ones(1, 1))])
    assert [t.tolist() for t in types] == [[0, 1, 1], [2, 2]]
    assert table.tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 2]]


# -- the rollout command ----------------------------------------------------------------------

def test_rollout_with_exclusion_keeps_pairs_apart_and_counts_them(compose_cfg, ckpt, tmp_path):
    from cgsim.data.load import load_systems
    from cgsim.rollout.command import closest_by_type_pair

    summary = rollout(rollout_cfg(compose_cfg, ckpt, tmp_path / "o", "exclusion.enabled=true", "exclusion.factor=1.0",
                           "exclusion.iterations=100", "temperature=3.0", "guard.enabled=false",
                           "divergence_factor=1000"))
    traj = load_systems([str(SEQ)], "t").trajectories[0]
    _, _, closest = closest_by_type_pair(traj, ["all"] * traj.graph.n_beads, 2.0, 50)
    limit = float(closest.min())
    xyz = md.load(str(tmp_path / "o" / "seq_000" / "replica_000" / "rollout.h5")).xyz[1:].astype(np.float64)
    d = np.linalg.norm(xyz[:, :, None] - xyz[:, None], axis=-1) + np.eye(xyz.shape[1]) * 10
    assert d.min() > limit - 1e-4  # float32 output
    member = summary["members"][0]
    assert member["exclusion_pairs"] > 0 and summary["exclusion_pairs"] == member["exclusion_pairs"]
    saved = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert saved["exclusion_pairs"] == summary["exclusion_pairs"]
    # the same rollout without it brings pairs closer than that
    rollout(rollout_cfg(compose_cfg, ckpt, tmp_path / "p", "temperature=3.0", "guard.enabled=false", "divergence_factor=1000"))
    raw = md.load(str(tmp_path / "p" / "seq_000" / "replica_000" / "rollout.h5")).xyz[1:].astype(np.float64)
    d = np.linalg.norm(raw[:, :, None] - raw[:, None], axis=-1) + np.eye(raw.shape[1]) * 10
    assert d.min() < limit - 1e-3
    # resuming needs the same exclusion settings
    with pytest.raises(CgsimInputError, match="exclusion"):
        rollout(rollout_cfg(compose_cfg, ckpt, tmp_path / "o", "resume=true", "steps=8", "temperature=3.0",
                     "guard.enabled=false"))


@pytest.mark.parametrize("bad, field", [("exclusion.factor=1.5", "exclusion.factor"),
                                        ("exclusion.factor=0", "exclusion.factor"),
                                        ("exclusion.iterations=0", "exclusion.iterations")])
def test_bad_exclusion_settings_are_named(compose_cfg, ckpt, tmp_path, bad, field):
    with pytest.raises(CgsimInputError, match=field.replace(".", r"\.")):
        rollout(rollout_cfg(compose_cfg, ckpt, tmp_path / "o", "exclusion.enabled=true", bad))
    assert not (tmp_path / "o").exists()
