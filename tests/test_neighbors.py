"""Cell-list radius graph against brute force and scipy's periodic KD-tree."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

from cgsim.errors import CgsimInputError
from cgsim.geometry import brute_force_radius_graph, radius_graph


def _pairs(g):
    return set(map(tuple, g.edge_index.T.tolist()))


def _assert_same(g, ref):
    assert _pairs(g) == _pairs(ref)
    # same vectors for the same pairs
    order_g = torch.argsort(g.edge_index[1] * 10**6 + g.edge_index[0])
    order_r = torch.argsort(ref.edge_index[1] * 10**6 + ref.edge_index[0])
    torch.testing.assert_close(g.vec[order_g], ref.vec[order_r], atol=1e-9, rtol=0)


METHODS = ["cells", "kdtree"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("box", [None, (3.0, 3.0, 3.0), (2.2, 5.0, 7.3), (10.0, 2.05, 4.0)])
@pytest.mark.parametrize("n", [1, 2, 50, 400])
def test_matches_brute_force(box, n, method):
    g = torch.Generator().manual_seed(n)
    L = torch.tensor(box if box else (4.0, 4.0, 4.0), dtype=torch.float64)
    pos = torch.rand(n, 3, generator=g, dtype=torch.float64) * L
    box_t = None if box is None else torch.tensor(box, dtype=torch.float64)
    _assert_same(radius_graph(pos, 1.0, box_t, method=method), brute_force_radius_graph(pos, 1.0, box_t))


@pytest.mark.parametrize("method", METHODS)
def test_pairs_across_box_edges_and_symmetry(method):
    box = torch.tensor([5.0, 5.0, 5.0], dtype=torch.float64)
    pos = torch.tensor([[0.1, 2.5, 2.5], [4.9, 2.5, 2.5], [2.5, 0.05, 4.95], [2.5, 4.95, 0.05]], dtype=torch.float64)
    gr = radius_graph(pos, 0.5, box, method=method)
    assert _pairs(gr) == {(0, 1), (1, 0), (2, 3), (3, 2)}
    d01 = gr.vec[(gr.edge_index[0] == 1) & (gr.edge_index[1] == 0)]
    torch.testing.assert_close(d01, torch.tensor([[-0.2, 0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(gr.dist, torch.tensor([0.2, 0.2, 0.1414213562373, 0.1414213562373],
                                                     dtype=torch.float64), atol=1e-9, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_wrapped_and_unwrapped_give_same_graph(method):
    g = torch.Generator().manual_seed(0)
    box = torch.tensor([4.0, 5.0, 6.0], dtype=torch.float64)
    pos = torch.rand(300, 3, generator=g, dtype=torch.float64) * box
    shift = torch.randint(-3, 4, (300, 3), generator=g).double() * box  # unwrapped images
    a, b = radius_graph(pos, 1.2, box, method=method), radius_graph(pos + shift, 1.2, box, method=method)
    assert torch.equal(a.edge_index, b.edge_index)
    torch.testing.assert_close(a.vec, b.vec, atol=1e-9, rtol=0)


def test_cell_list_matches_scipy_periodic_kdtree():
    rng = np.random.default_rng(1)
    box = np.array([6.0, 6.0, 6.0])
    pos = rng.random((2000, 3)) * box
    ref = cKDTree(pos, boxsize=box).query_pairs(1.0, output_type="ndarray")
    gr = radius_graph(torch.from_numpy(pos), 1.0, torch.from_numpy(box), method="cells")
    mine = {tuple(sorted(p)) for p in gr.edge_index.T.tolist()}
    assert mine == set(map(tuple, np.sort(ref, axis=1).tolist()))


@pytest.mark.parametrize("method", METHODS)
def test_batched_systems_never_connect_and_match_single(method):
    g = torch.Generator().manual_seed(2)
    sizes, boxes = [120, 80, 200], torch.tensor([[4.0, 4, 4], [3.0, 3.5, 5], [6.0, 6, 3]], dtype=torch.float64)
    pos = torch.cat([torch.rand(n, 3, generator=g, dtype=torch.float64) * boxes[k] for k, n in enumerate(sizes)])
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    gr = radius_graph(pos, 1.0, boxes, batch, method=method)
    assert torch.all(batch[gr.edge_index[0]] == batch[gr.edge_index[1]])
    offset = 0
    for k, n in enumerate(sizes):
        single = radius_graph(pos[offset:offset + n], 1.0, boxes[k], method=method)
        sel = batch[gr.edge_index[1]] == k
        assert torch.equal(gr.edge_index[:, sel] - offset, single.edge_index)
        offset += n
    # non-periodic batched, systems overlapping in space
    gf = radius_graph(pos, 1.0, None, batch, method=method)
    _assert_same(gf, brute_force_radius_graph(pos, 1.0, None, batch))


@pytest.mark.parametrize("method", METHODS)
def test_spread_out_non_periodic_chain(method):
    # a long straight chain: huge bounding box, few particles
    pos = torch.zeros(1000, 3, dtype=torch.float64)
    pos[:, 0] = torch.arange(1000) * 0.97
    gr = radius_graph(pos, 1.0, method=method)
    assert gr.n_edges == 2 * 999


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 60), cutoff=st.floats(0.3, 1.4), seed=st.integers(0, 10**6),
       periodic=st.booleans(), method=st.sampled_from(METHODS))
def test_property_matches_brute_force(n, cutoff, seed, periodic, method):
    g = torch.Generator().manual_seed(seed)
    box = torch.tensor([3.0, 2.9, 4.1], dtype=torch.float64)
    pos = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 3 * box  # outside the box too
    b = box if periodic else None
    if n == 0:
        assert radius_graph(pos, cutoff, b, method=method).n_edges == 0
        return
    _assert_same(radius_graph(pos, cutoff, b, method=method), brute_force_radius_graph(pos, cutoff, b))


@pytest.mark.parametrize("box", [None, torch.tensor([5.0, 4.0, 6.0], dtype=torch.float64)])
def test_cells_and_kdtree_agree_exactly(box):
    g = torch.Generator().manual_seed(4)
    pos = torch.rand(1500, 3, generator=g, dtype=torch.float64) * 5.0
    a, b = radius_graph(pos, 1.1, box, method="cells"), radius_graph(pos, 1.1, box, method="kdtree")
    assert torch.equal(a.edge_index, b.edge_index)
    assert torch.equal(a.vec, b.vec)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"cutoff": 0.0}, "cutoff: expected a positive"),
     ({"cutoff": 2.6}, "not below half the smallest box length"),
     ({"box": torch.tensor([[[5.0, 0, 0], [1.0, 5, 0], [0, 0, 5]]])}, "box: triclinic box"),
     ({"box": torch.tensor([5.0, -5, 5])}, "box lengths must be positive"),
     ({"pos": torch.full((3, 3), float("nan"))}, "pos: positions contain NaN"),
     ({"pos": torch.zeros(4, 2)}, r"pos: expected positions of shape \(N, 3\)"),
     ({"method": "octree"}, "method: expected 'auto', 'cells' or 'kdtree'")],
)
def test_bad_input(kwargs, match):
    args = {"pos": torch.rand(10, 3), "cutoff": 1.0, "box": torch.tensor([5.0, 5.0, 5.0])}
    args.update(kwargs)
    with pytest.raises(CgsimInputError, match=match):
        radius_graph(**args)
