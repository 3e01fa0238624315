"""Rg, end-to-end distance, contact map: rods, random walks, mdtraj, brute force, bad input."""

from __future__ import annotations

import mdtraj as md
import numpy as np
import pytest

from cgsim.errors import CgsimInputError
from cgsim.observables.distributions import histogram
from cgsim.observables.polymer import (
    chain_ends,
    contact_map,
    end_to_end_distance,
    molecule_centres,
    radius_of_gyration,
)


def _rod(n: int, length: float) -> np.ndarray:
    xyz = np.zeros((1, n, 3))
    xyz[0, :, 0] = np.linspace(0, length, n)
    return xyz


@pytest.mark.parametrize("n", [2, 5, 40])
def test_rigid_rod_rg_exact(n):
    length = 3.0
    rg = radius_of_gyration(_rod(n, length)).values[0, 0]
    assert rg == pytest.approx(length * np.sqrt((n + 1) / (12 * (n - 1))))


def test_rigid_rod_continuum_limit_and_rotation_invariance():
    xyz = _rod(4001, 2.0)
    rot, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    rg = radius_of_gyration(xyz @ rot.T + 5.0).values[0, 0]
    assert rg == pytest.approx(2.0 / np.sqrt(12), rel=1e-3)


def test_mass_weighted_two_beads():
    xyz = np.array([[[0.0, 0, 0], [1.0, 0, 0]]])
    # masses 1 and 3: centre at 0.75, Rg^2 = (1 * 0.75^2 + 3 * 0.25^2) / 4
    rg = radius_of_gyration(xyz, masses=np.array([1.0, 3.0])).values[0, 0]
    assert rg == pytest.approx(np.sqrt(0.1875))


def test_several_chains_match_mdtraj_and_loops():
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(6, 30, 3)) * 2
    masses = rng.uniform(1, 20, 30)
    ids = np.repeat([7, 3, 9], 10)  # arbitrary ids, sorted to 3, 7, 9
    res = radius_of_gyration(xyz, masses, ids).values
    assert res.shape == (6, 3)
    for c, cid in enumerate([3, 7, 9]):
        sel = ids == cid
        top = md.Topology()
        r = top.add_residue("X", top.add_chain())
        for _ in range(10):
            top.add_atom("C", md.element.carbon, r)
        # mdtraj centres on the unweighted mean, so compare it with equal masses only
        ref = md.compute_rg(md.Trajectory(xyz[:, sel], top))
        assert np.allclose(radius_of_gyration(xyz, None, ids).values[:, c], ref, rtol=1e-5)
        m = masses[sel]
        for f in range(6):
            com = sum(m[i] * xyz[f, sel][i] for i in range(10)) / m.sum()
            brute = np.sqrt(sum(m[i] * ((xyz[f, sel][i] - com) ** 2).sum() for i in range(10)) / m.sum())
            assert res[f, c] == pytest.approx(brute)
    centres = molecule_centres(xyz, masses, ids)
    assert np.allclose(centres[:, 0], np.einsum("p,fpk->fk", masses[ids == 3] / masses[ids == 3].sum(), xyz[:, ids == 3]))


def test_random_walk_end_to_end():
    rng = np.random.default_rng(2)
    n_bonds, b, n_chains = 20, 0.5, 4000
    steps = rng.normal(size=(n_chains, n_bonds, 3))
    steps *= b / np.linalg.norm(steps, axis=-1, keepdims=True)
    xyz = np.concatenate([np.zeros((n_chains, 1, 3)), np.cumsum(steps, 1)], 1).reshape(1, -1, 3)
    ids = np.repeat(np.arange(n_chains), n_bonds + 1)
    ends = chain_ends(ids)
    ree = end_to_end_distance(xyz, ends)
    # freely jointed chain: <R^2> = n b^2; the sample mean has ~2.2% standard error here
    assert ree.mean_square() == pytest.approx(n_bonds * b**2, rel=0.07)
    # and <Rg^2> = b^2 (n+1)(n+2) / (6 n) ... for N = n+1 beads: <Rg^2> = b^2 (N^2 - 1) / (6 N)
    rg = radius_of_gyration(xyz, chain_ids=ids)
    big_n = n_bonds + 1
    assert rg.mean_square() == pytest.approx(b**2 * (big_n**2 - 1) / (6 * big_n), rel=0.07)
    d = rg.distribution(np.linspace(0, 3, 31))
    assert d.n_samples == n_chains


def test_rod_end_to_end_and_ends_by_type():
    xyz = _rod(6, 5.0)
    types = ["S", "B", "B", "S", "B", "S"]
    assert end_to_end_distance(xyz, chain_ends(np.zeros(6, int))).values[0, 0] == pytest.approx(5.0)
    ends = chain_ends(np.zeros(6, int), types, ["B"])
    assert ends.tolist() == [[1, 4]]
    assert end_to_end_distance(xyz, ends).values[0, 0] == pytest.approx(3.0)


def test_contact_map_of_a_rod_is_tridiagonal():
    cm = contact_map(_rod(8, 7.0), cutoff=1.5)
    expected = np.eye(8, k=1) + np.eye(8, k=-1)
    assert np.array_equal(cm.frequency, expected)
    assert cm.units["cutoff"] == "nm"


def test_contact_map_matches_loops_with_pbc():
    rng = np.random.default_rng(4)
    box = np.array([2.0, 2.5, 3.0])
    xyz = rng.uniform(0, 1, (9, 12, 3)) * box
    cm = contact_map(xyz, 0.8, box=box, selection=np.arange(2, 12))
    brute = np.zeros((10, 10))
    for f in range(9):
        for a, i in enumerate(range(2, 12)):
            for c, j in enumerate(range(2, 12)):
                d = xyz[f, i] - xyz[f, j]
                d -= box * np.round(d / box)
                brute[a, c] += (i != j) and np.linalg.norm(d) < 0.8
    assert np.allclose(cm.frequency, brute / 9)


def test_histogram_matches_numpy():
    v = np.random.default_rng(5).normal(size=1000)
    edges = np.linspace(-1, 1, 11)
    d = histogram(v, edges, "nm")
    ref, _ = np.histogram(v[(v >= -1) & (v < 1)], edges)
    assert np.array_equal(d.counts, ref)
    assert d.n_below == (v < -1).sum() and d.n_above == (v >= 1).sum()
    assert d.mean == pytest.approx(v.mean()) and d.std == pytest.approx(v.std())


def test_bad_input():
    xyz = np.zeros((2, 4, 3))
    with pytest.raises(CgsimInputError, match="positive finite masses"):
        radius_of_gyration(xyz, masses=np.array([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(CgsimInputError, match="one integer id per particle"):
        radius_of_gyration(xyz, chain_ids=[0, 1])
    with pytest.raises(CgsimInputError, match="positive number"):
        contact_map(xyz, cutoff=0.0)
    with pytest.raises(CgsimInputError, match="empty selection"):
        contact_map(xyz, cutoff=1.0, selection=[])
    with pytest.raises(CgsimInputError, match="fewer than two beads"):
        chain_ends(np.zeros(4, int), ["A", "B", "B", "B"], ["A"])
    with pytest.raises(CgsimInputError, match="empty selection"):
        radius_of_gyration(np.zeros((2, 0, 3)))


def test_end_to_end_matches_mdtraj_distances():
    rng = np.random.default_rng(8)
    xyz = np.cumsum(rng.normal(0, 0.3, (5, 24, 3)), axis=1).astype(np.float32)
    ids = np.repeat([0, 1, 2], 8)
    ends = chain_ends(ids)
    top = md.Topology()
    res = top.add_residue("X", top.add_chain())
    for _ in range(24):
        top.add_atom("C", md.element.carbon, res)
    ref = md.compute_distances(md.Trajectory(xyz, top), ends, periodic=False)
    assert np.allclose(end_to_end_distance(xyz, ends).values, ref, rtol=1e-6)
