"""RDF and coordination number: ideal gas, lattice, mdtraj.compute_rdf, bad input."""

from __future__ import annotations

import mdtraj as md
import numpy as np
import pytest

from cgsim.errors import CgsimInputError
from cgsim.observables.rdf import combine_rdfs, coordination_number, rdf, rdf_by_type


def _mdtraj(xyz: np.ndarray, box: np.ndarray | None) -> md.Trajectory:
    top = md.Topology()
    res = top.add_residue("X", top.add_chain())
    for _ in range(xyz.shape[1]):
        top.add_atom("C", md.element.carbon, res)
    if box is None:
        return md.Trajectory(xyz, top)
    return md.Trajectory(xyz, top, unitcell_lengths=box, unitcell_angles=np.full_like(box, 90.0))


@pytest.fixture(scope="module")
def gas() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    box = np.tile([3.0, 3.2, 3.4], (40, 1))
    return rng.uniform(0, 1, (40, 300, 3)) * box[:, None, :], box


def test_ideal_gas_is_one(gas):
    xyz, box = gas
    r = rdf(xyz, box, r_max=1.4, r_min=0.4, n_bins=10)
    # Poisson noise per bin is ~1/sqrt(counts); counts here are >= 10^4 per bin
    assert np.abs(r.g - 1).max() < 0.05
    assert r.units == {"r": "nm", "g": "1", "local_density": "nm^-3"}
    assert np.allclose(r.local_density, r.g * 299 / (3.0 * 3.2 * 3.4), rtol=1e-12)


def test_matches_mdtraj_all_pairs(gas):
    xyz, box = gas
    ours = rdf(xyz.astype(np.float32), box, r_max=1.5, n_bins=30)
    traj = _mdtraj(xyz.astype(np.float32), box)
    r, g = md.compute_rdf(traj, traj.topology.select_pairs("all", "all"), r_range=(0.0, 1.5), n_bins=30)
    assert np.allclose(r, ours.r, atol=1e-6)
    # float32 distances can move a pair across a bin edge: allow a few counts per bin
    one_pair = 1.0 / ours.norm
    assert np.all(np.abs(g - ours.g) <= 3 * one_pair + 1e-9)


def test_type_pairs_match_mdtraj_and_selections(gas):
    xyz, box = gas
    types = np.array(["A", "B", "C"])[np.arange(300) % 3]
    res = rdf_by_type(xyz, types, box, r_max=1.2, n_bins=24)
    assert set(res) == {("A", "A"), ("A", "B"), ("A", "C"), ("B", "B"), ("B", "C"), ("C", "C")}
    traj = _mdtraj(xyz.astype(np.float32), box)
    for a, b in [("A", "A"), ("A", "C")]:
        sel_a, sel_b = np.flatnonzero(types == a), np.flatnonzero(types == b)
        pairs = traj.topology.select_pairs(sel_a, sel_b)
        _, g = md.compute_rdf(traj, pairs, r_range=(0.0, 1.2), n_bins=24)
        assert np.allclose(g, res[(a, b)].g, atol=0.02)
        single = rdf(xyz, box, selection_a=sel_a, selection_b=sel_b, r_max=1.2, n_bins=24)
        assert np.allclose(single.g, res[(a, b)].g, rtol=1e-12, atol=1e-12)
    # g_AB = g_BA for disjoint selections
    ba = rdf(xyz, box, selection_a=types == "C", selection_b=types == "A", r_max=1.2, n_bins=24)
    assert np.allclose(ba.g, res[("A", "C")].g)


def test_periodic_images_do_not_change_g(gas):
    xyz, box = gas
    shifts = np.random.default_rng(9).integers(-3, 4, xyz.shape) * box[:, None, :]
    types = np.array(["A", "B"])[np.arange(300) % 2]
    a = rdf_by_type(xyz, types, box, r_max=1.2, n_bins=24)
    b = rdf_by_type(xyz + shifts, types, box, r_max=1.2, n_bins=24)
    assert all(np.abs(a[k].counts - b[k].counts).sum() <= 2 for k in a)  # rounding at a bin edge at most


def test_minimum_image_sees_pairs_across_the_boundary():
    box = np.array([4.0, 4.0, 4.0])
    xyz = np.array([[[0.05, 2.0, 2.0], [3.90, 2.0, 2.0]]])  # 0.15 nm apart through the wall
    r = rdf(xyz, box, r_max=1.0, n_bins=10)
    assert r.counts[1] == 2 and r.counts.sum() == 2  # one pair, both orders, in [0.1, 0.2)


def test_simple_cubic_lattice_coordination():
    a, n = 0.5, 6
    grid = np.stack(np.meshgrid(*[np.arange(n) * a] * 3, indexing="ij"), -1).reshape(-1, 3)
    box = np.full(3, n * a)
    r = rdf(grid[None] + 0.01, box, r_max=1.4, n_bins=140)
    assert coordination_number(r, 0.6) == pytest.approx(6.0)  # faces
    assert coordination_number(r, 0.75) == pytest.approx(18.0)  # + edges at a*sqrt(2)
    assert coordination_number(r, 0.9) == pytest.approx(26.0)  # + corners at a*sqrt(3)


def test_coordination_number_equals_density_integral_of_g(gas):
    xyz, box = gas
    types = np.array(["A", "B"])[np.arange(300) % 2]
    r = rdf_by_type(xyz, types, box, r_max=1.0, n_bins=50)[("A", "B")]
    rho_b = 150 * np.mean(1 / box.prod(-1))
    shell = 4 / 3 * np.pi * np.diff(r.edges**3)
    assert coordination_number(r, 1.0) == pytest.approx(rho_b * (r.g * shell).sum(), rel=1e-3)
    assert coordination_number(r, 1.0) == pytest.approx(rho_b * 4 / 3 * np.pi, rel=0.05)


def test_nonperiodic_two_beads_and_normalisation():
    xyz = np.zeros((5, 2, 3))
    xyz[:, 1, 0] = 1.05
    r = rdf(xyz, None, r_max=2.0, n_bins=20, periodic=False)
    k = 10  # bin [1.0, 1.1)
    assert r.counts[k] == 10 and r.counts.sum() == 10
    shell = 4 / 3 * np.pi * (1.1**3 - 1.0**3)
    assert r.local_density[k] == pytest.approx(1.0 / shell)  # one partner in that shell
    # g averages to 1 over the sphere, volume weighted
    vol = 4 / 3 * np.pi * np.diff(r.edges**3)
    assert (r.g * vol).sum() / vol.sum() == pytest.approx(1.0)
    assert coordination_number(r, 2.0) == pytest.approx(1.0)


def test_threads_give_identical_counts(gas):
    xyz, box = gas
    types = np.array(["A", "B"])[np.arange(300) % 2]
    one = rdf_by_type(xyz, types, box, r_max=1.2, n_bins=12)
    three = rdf_by_type(xyz, types, box, r_max=1.2, n_bins=12, workers=3)
    assert all(np.array_equal(one[k].counts, three[k].counts) for k in one)
    with pytest.raises(CgsimInputError, match="positive number of threads"):
        rdf(xyz, box, r_max=1.2, workers=0)


def test_combine_equals_concatenated_frames(gas):
    xyz, box = gas
    whole = rdf(xyz, box, r_max=1.2, n_bins=12)
    parts = combine_rdfs([rdf(xyz[:15], box[:15], r_max=1.2, n_bins=12), rdf(xyz[15:], box[15:], r_max=1.2, n_bins=12)])
    assert np.allclose(parts.g, whole.g) and parts.n_frames == 40


@pytest.mark.parametrize("kwargs, match", [
    ({"r_max": 2.0}, "exceeds half the smallest box"),
    ({"box": np.array([[3.0, 0, 0], [0.5, 3.0, 0], [0, 0, 3.0]])}, "triclinic"),
    ({"box": None}, "no box"),
    ({"selection_a": np.zeros(300, bool)}, "empty selection"),
    ({"n_bins": 0}, "whole number of bins"),
    ({"r_min": 1.3, "r_max": 1.2}, "r_min"),
])
def test_bad_input(gas, kwargs, match):
    xyz, box = gas
    args = {"box": box, "r_max": 1.2, **kwargs}
    with pytest.raises(CgsimInputError, match=match):
        rdf(xyz, **args)


def test_bad_types_and_positions(gas):
    xyz, box = gas
    with pytest.raises(CgsimInputError, match="one entry per particle"):
        rdf_by_type(xyz, ["A"] * 10, box, r_max=1.0)
    with pytest.raises(CgsimInputError, match="not present"):
        rdf_by_type(xyz, ["A"] * 300, box, r_max=1.0, pairs=[("A", "Z")])
    with pytest.raises(CgsimInputError, match=r"n_frames, n_particles, 3"):
        rdf(xyz[..., :2], box, r_max=1.0)
    r = rdf(xyz[:2], box[:2], r_max=1.0, n_bins=5)
    with pytest.raises(CgsimInputError, match="within the RDF range"):
        coordination_number(r, 1.5)


def _brute_force_counts(xyz: np.ndarray, box: np.ndarray | None, a: np.ndarray, b: np.ndarray,
                        edges: np.ndarray) -> np.ndarray:
    """Ordered pairs (i in a, j in b, i != j) per bin, by loops over frames and particles (float64)."""
    counts = np.zeros(edges.size - 1)
    for f in range(xyz.shape[0]):
        for i in a:
            d = xyz[f, b] - xyz[f, i]
            if box is not None:
                d -= box[f] * np.round(d / box[f])
            r = np.sqrt((d * d).sum(-1))[b != i]
            counts += np.histogram(r, edges)[0]
    return counts


@pytest.mark.parametrize("method", ["dense", "tree"])
def test_both_methods_match_brute_force_loops(method):
    rng = np.random.default_rng(3)
    box = np.array([2.6, 2.9, 3.1]) * rng.uniform(0.97, 1.03, (4, 1))  # NPT-like: non-cubic, varying
    xyz = rng.uniform(-4, 7, (4, 90, 3))  # far outside the box: wrapping is the method's job
    a, b = np.arange(0, 60), np.arange(30, 90)  # overlapping selections
    r = rdf(xyz, box, selection_a=a, selection_b=b, r_min=0.3, r_max=1.25, n_bins=19, method=method)
    expected = _brute_force_counts(xyz, box, a, b, r.edges)
    assert np.abs(r.counts - expected).max() <= 2  # float rounding at a bin edge, both orders of a pair
    assert r.counts.sum() == pytest.approx(expected.sum(), abs=2)
    iso = rdf(xyz + 500.0, None, periodic=False, r_max=4.0, n_bins=20, method=method)  # far from the origin
    expected = _brute_force_counts(xyz, None, np.arange(90), np.arange(90), iso.edges)
    assert np.abs(iso.counts - expected).max() <= 2
    flung = xyz.copy()
    flung[:, :3] *= 1e7  # a rollout that blew up: distances far beyond r_max must not cost memory
    iso = rdf(flung, None, periodic=False, r_max=4.0, n_bins=20, method=method)
    expected = _brute_force_counts(flung, None, np.arange(90), np.arange(90), iso.edges)
    assert np.abs(iso.counts - expected).max() <= 2


@pytest.mark.parametrize("method", ["dense", "tree"])
def test_system_smaller_than_r_max_gives_every_bin(method):
    """A small free cluster (extent 0.5 nm) with r_max = 5 nm: all 100 bins come back, counts as by loops."""
    rng = np.random.default_rng(5)
    xyz = rng.uniform(0.0, 0.5, (3, 12, 3))
    types = ["A"] * 6 + ["B"] * 6
    res = rdf_by_type(xyz, types, None, periodic=False, r_max=5.0, n_bins=100, method=method)
    for (ta, tb), r in res.items():
        assert r.counts.shape == (100,) and r.g.shape == (100,)
        a = np.flatnonzero(np.array(types) == ta)
        b = np.flatnonzero(np.array(types) == tb)
        assert np.abs(r.counts - _brute_force_counts(xyz, None, a, b, r.edges)).max() <= 2


def test_dense_and_tree_agree_per_type_pair(gas):
    xyz, box = gas
    types = np.array(["A", "B", "C", "D"])[np.random.default_rng(4).integers(0, 4, 300)]
    dense = rdf_by_type(xyz, types, box, r_max=1.5, n_bins=50, method="dense")
    tree = rdf_by_type(xyz, types, box, r_max=1.5, n_bins=50, method="tree")
    assert dense.keys() == tree.keys()
    for k in dense:
        assert np.abs(dense[k].counts - tree[k].counts).max() <= 2, k
        assert np.allclose(dense[k].g, tree[k].g, atol=2 / dense[k].norm.min() + 1e-12)
    threads = rdf_by_type(xyz, types, box, r_max=1.5, n_bins=50, method="dense", workers=2)
    assert all(np.array_equal(threads[k].counts, dense[k].counts) for k in dense)


def test_auto_method_follows_the_cost_model():
    from cgsim.observables.rdf import _choose_method

    rng = np.random.default_rng(5)
    big = rng.uniform(0, 40, (1, 20000, 3))
    box = np.full((1, 3), 40.0)
    assert _choose_method(big, box, 20000, 1.0) == "tree"  # few pairs within r_max
    assert _choose_method(big, box, 20000, 20.0) == "dense"  # r_max = L/2: half of all pairs
    assert _choose_method(big[:, :200], None, 200, 5.0) == "dense"  # one small chain
    with pytest.raises(CgsimInputError, match="rdf.method"):
        rdf(big[:, :50], box, r_max=1.0, method="fast")


def test_coordination_number_matches_neighbour_counting(gas):
    xyz, box = gas
    types = np.array(["A", "B"])[np.arange(300) % 2]
    r = rdf_by_type(xyz[:5], types, box[:5], r_max=1.0, n_bins=20)[("A", "B")]
    a, b = np.flatnonzero(types == "A"), np.flatnonzero(types == "B")
    for r_cut in (0.35, 0.6, 1.0):  # on bin edges: the count is exact, no interpolation
        n = 0
        for f in range(5):
            d = xyz[f, b][None, :, :] - xyz[f, a][:, None, :]
            d -= box[f] * np.round(d / box[f])
            n += int((np.sqrt((d * d).sum(-1)) < r_cut).sum())
        assert coordination_number(r, r_cut) == pytest.approx(n / (a.size * 5), abs=2 / (a.size * 5))
