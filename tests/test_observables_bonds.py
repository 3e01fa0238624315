"""Bond lengths and angles: exact geometries, mdtraj, brute-force enumeration, bad input."""

from __future__ import annotations

import itertools

import mdtraj as md
import numpy as np
import pytest

from cgsim.errors import CgsimInputError
from cgsim.observables.bonds import (
    angle_triplets,
    angle_type_names,
    bond_angle_distributions,
    bond_angles,
    bond_length_distributions,
    bond_lengths,
)


def _zigzag(n: int, b: float, theta: float) -> np.ndarray:
    """Planar chain of n beads, bond length b, every bond angle theta (rad)."""
    half = theta / 2
    x = np.arange(n) * b * np.sin(half)
    y = np.where(np.arange(n) % 2 == 0, 0.0, b * np.cos(half))
    return np.stack([x, y, np.zeros(n)], -1)[None]


def test_zigzag_has_one_length_and_one_angle():
    theta = np.deg2rad(112.0)
    xyz = _zigzag(12, 0.47, theta)
    bonds = np.stack([np.arange(11), np.arange(1, 12)], 1)
    assert np.allclose(bond_lengths(xyz, bonds), 0.47)
    ang = angle_triplets(bonds, 12)
    assert ang.shape == (10, 3)
    assert np.allclose(bond_angles(xyz, ang), theta)


def test_angles_near_zero_and_pi_are_accurate():
    xyz = np.array([[[1.0, 0, 0], [0, 0, 0], [-1.0, 1e-9, 0], [1.0, 1e-9, 0]]])
    a = bond_angles(xyz, [[0, 1, 2], [0, 1, 3]])[0]
    assert a[0] == pytest.approx(np.pi, abs=1e-8) and a[1] == pytest.approx(1e-9, rel=1e-6)


def test_against_mdtraj():
    rng = np.random.default_rng(3)
    xyz = rng.normal(size=(7, 9, 3)).astype(np.float32)
    top = md.Topology()
    res = top.add_residue("X", top.add_chain())
    for _ in range(9):
        top.add_atom("C", md.element.carbon, res)
    traj = md.Trajectory(xyz, top)
    bonds = np.array([[0, 1], [1, 2], [2, 3], [1, 4], [4, 5], [5, 6], [6, 7], [7, 8]])
    ang = angle_triplets(bonds, 9)
    assert np.allclose(bond_lengths(xyz, bonds), md.compute_distances(traj, bonds, periodic=False), atol=1e-5)
    assert np.allclose(bond_angles(xyz, ang), md.compute_angles(traj, ang, periodic=False), atol=1e-4)


def test_angle_triplets_match_brute_force_on_a_branched_graph():
    bonds = np.array([[0, 1], [1, 2], [1, 3], [3, 4], [4, 5], [4, 6], [4, 7], [2, 1]])  # duplicate on purpose
    ours = {tuple(a) for a in angle_triplets(bonds, 8)}
    und = {frozenset(b) for b in bonds.tolist()}
    brute = set()
    for i, j, k in itertools.permutations(range(8), 3):
        if i < k and frozenset((i, j)) in und and frozenset((j, k)) in und:
            brute.add((i, j, k))
    assert ours == brute


def test_minimum_image_bonds():
    xyz = np.array([[[0.1, 1, 1], [2.9, 1, 1]]])
    assert bond_lengths(xyz, [[0, 1]], box=[3.0, 3.0, 3.0])[0, 0] == pytest.approx(0.2)
    assert bond_lengths(xyz, [[0, 1]])[0, 0] == pytest.approx(2.8)


def test_distributions_per_type():
    xyz = _zigzag(6, 0.5, np.deg2rad(100.0))
    xyz = np.concatenate([xyz, xyz * 1.2])  # second frame: bonds 0.6
    types = ["A", "B", "A", "B", "B", "A"]
    bonds = np.stack([np.arange(5), np.arange(1, 6)], 1)
    d = bond_length_distributions(xyz, bonds, types, np.linspace(0.4, 0.7, 7))
    assert set(d) == {"A-B", "B-B"}
    assert d["A-B"].n_samples == 8 and d["B-B"].n_samples == 2
    assert d["A-B"].mean == pytest.approx(0.55) and d["A-B"].units == "nm"
    assert np.allclose((d["A-B"].density * np.diff(d["A-B"].edges)).sum(), 1.0)
    ang = angle_triplets(bonds, 6)
    names = angle_type_names(ang, types)
    assert names == ["A-B-A", "B-A-B", "A-B-B", "A-B-B"]
    da = bond_angle_distributions(xyz, ang, types)
    assert da["B-A-B"].mean == pytest.approx(np.deg2rad(100.0)) and da["B-A-B"].units == "rad"


def test_bad_input():
    xyz = np.zeros((2, 3, 3))
    with pytest.raises(CgsimInputError, match="out of range"):
        bond_lengths(xyz, [[0, 3]])
    with pytest.raises(CgsimInputError, match="empty selection"):
        bond_lengths(xyz, np.zeros((0, 2), int))
    with pytest.raises(CgsimInputError, match=r"shape \(n, 3\)"):
        bond_angles(xyz, [[0, 1]])
    with pytest.raises(CgsimInputError, match="one entry per particle"):
        bond_length_distributions(xyz, [[0, 1]], ["A"], np.linspace(0, 1, 3))
    with pytest.raises(CgsimInputError, match="NaN"):
        bond_lengths(np.full((1, 2, 3), np.nan), [[0, 1]])
