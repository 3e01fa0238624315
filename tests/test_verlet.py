"""Verlet neighbour list: the same edges as a fresh radius graph, rebuilt exactly when due."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cgsim.errors import CgsimInputError
from cgsim.geometry import VerletList, radius_graph

METHODS = ["cells", "kdtree"]
BOXES = torch.tensor([[6.0, 6.5, 7.0], [7.5, 6.2, 6.8], [6.1, 8.0, 6.3]], dtype=torch.float64)
SIZES = [150, 90, 200]


def _sorted_edges(g) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge list (E, 2) and vectors (E, 3) in (target, source) order, whatever the input order."""
    n = int(g.edge_index.max()) + 1 if g.n_edges else 1
    order = torch.argsort(g.edge_index[1] * n + g.edge_index[0])
    return g.edge_index[:, order].T, g.vec[order]


def _assert_same(g, ref) -> None:
    e, v = _sorted_edges(g)
    e_ref, v_ref = _sorted_edges(ref)
    assert torch.equal(e, e_ref)
    torch.testing.assert_close(v, v_ref, atol=1e-12, rtol=0)
    # stronger than asked: the candidate list is sorted like radius_graph's output, and the filter
    # uses its arithmetic, so the result is the same edges in the same order, bitwise
    assert torch.equal(g.edge_index, ref.edge_index) and torch.equal(g.vec, ref.vec) and torch.equal(g.dist, ref.dist)


def _system(periodic: bool, seed: int = 0, dtype=torch.float64):
    """Three systems batched (overlapping in space when not periodic), beads spread over two box lengths."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.cat([(torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 0.5) * BOXES[k]
                     for k, n in enumerate(SIZES)]).to(dtype)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(SIZES))
    return pos, (BOXES.to(dtype) if periodic else None), batch, g


def _walk(nl: VerletList, pos, box, batch, g, steps: int, step_size: float, method: str) -> int:
    """Random walk of ``steps`` calls; checks every call against radius_graph; returns expected builds."""
    ref, expected = None, 0
    for _ in range(steps):
        if ref is None or ((pos - ref).norm(dim=1).max() > nl.skin / 2):
            ref, expected = pos.clone(), expected + 1
        _assert_same(nl(pos, box, batch), radius_graph(pos, nl.cutoff, box, batch, method=method))
        assert nl.n_builds == expected
        pos = pos + step_size * torch.randn(pos.shape, generator=g, dtype=torch.float64).to(pos.dtype)
    return expected


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("step_size, few_builds", [(0.02, True), (0.4, False)])  # skin/2 = 0.25 nm
def test_same_edges_as_radius_graph_under_random_moves(method, periodic, step_size, few_builds):
    pos, box, batch, g = _system(periodic)
    nl = VerletList(cutoff=1.5, skin=0.5, method=method)
    builds = _walk(nl, pos, box, batch, g, 40, step_size, method)
    assert nl.n_calls == 40
    if few_builds:  # steps of ~0.035 nm: a few builds in 40 calls
        assert 1 < builds < 20
    else:  # steps larger than skin/2: every call rebuilds
        assert builds == 40
    assert nl.rebuild_rate == builds / 40


@pytest.mark.parametrize("periodic", [True, False])
def test_float32_and_single_system(periodic):
    pos, box, batch, g = _system(periodic, seed=3, dtype=torch.float32)
    n0 = SIZES[0]
    nl = VerletList(1.2, 0.3)
    _walk(nl, pos[:n0], None if box is None else box[0], None, g, 25, 0.03, "auto")


def test_unwrapped_drift_over_many_boxes():
    pos, box, batch, g = _system(True, seed=5)
    nl = VerletList(1.5, 0.6)
    velocity = torch.randn(pos.shape, generator=g, dtype=torch.float64) * 0.05 + torch.tensor([0.9, -0.7, 0.8],
                                                                                             dtype=torch.float64)
    for k in range(120):  # a common drift of ~1.4 nm per call: ~20 boxes in all
        p = pos + k * velocity
        _assert_same(nl(p, box, batch), radius_graph(p, 1.5, box, batch))
    assert float((p - pos).norm(dim=1).min()) > 10 * float(BOXES.max())
    assert nl.n_builds == 120  # every call moves beads far more than skin / 2


def test_rebuild_counter_exactly_at_half_skin():
    pos, box, batch, _ = _system(True, seed=7)
    nl = VerletList(1.5, 0.4)
    nl(pos, box, batch)
    assert (nl.n_builds, nl.n_calls) == (1, 1)
    moved = pos.clone()
    moved[17, 0] += 0.19  # below skin/2 = 0.2
    moved[200, 1] -= 0.15
    _assert_same(nl(moved, box, batch), radius_graph(moved, 1.5, box, batch))
    assert nl.n_builds == 1
    moved[17, 0] += 0.02  # 0.21 from the build positions: rebuild
    _assert_same(nl(moved, box, batch), radius_graph(moved, 1.5, box, batch))
    assert nl.n_builds == 2
    moved[17, 0] += 0.1  # 0.1 since the new build: none
    nl(moved, box, batch)
    assert (nl.n_builds, nl.n_calls) == (2, 4)
    # a jump by a whole box (wrapped input) is a move too: rebuilt, still exact
    jumped = moved.clone()
    jumped[3, 2] += BOXES[0, 2]
    _assert_same(nl(jumped, box, batch), radius_graph(jumped, 1.5, box, batch))
    assert nl.n_builds == 3
    nl.reset()
    nl(jumped, box, batch)
    assert (nl.n_builds, nl.n_calls) == (4, 6)


def test_rebuilds_when_batch_box_or_size_change():
    pos, box, batch, _ = _system(True, seed=9)
    nl = VerletList(1.5, 0.5)
    nl(pos, box, batch)
    nl(pos, box, batch.clone())  # equal batch vector (another tensor): reused
    assert nl.n_builds == 1
    other = batch.clone()
    other[SIZES[0] - 5:SIZES[0]] = 1  # same N, five beads change system
    _assert_same(nl(pos, box, other), radius_graph(pos, 1.5, box, other))
    assert nl.n_builds == 2
    bigger = box.clone()
    bigger[1, 0] += 0.5
    _assert_same(nl(pos, bigger, other), radius_graph(pos, 1.5, bigger, other))
    assert nl.n_builds == 3
    _assert_same(nl(pos, None, other), radius_graph(pos, 1.5, None, other))  # periodic -> free
    assert nl.n_builds == 4
    keep = other != 1  # a member leaves the batch: fewer beads
    sub, sub_batch = pos[keep], torch.where(other[keep] == 2, 1, other[keep])
    _assert_same(nl(sub, box[[0, 2]], sub_batch), radius_graph(sub, 1.5, box[[0, 2]], sub_batch))
    assert nl.n_builds == 5
    nl(sub.float(), box[[0, 2]].float(), sub_batch)  # other dtype
    assert nl.n_builds == 6


def test_zero_skin_rebuilds_on_any_move():
    pos, box, batch, _ = _system(False, seed=11)
    nl = VerletList(1.5, 0.0)
    nl(pos, box, batch)
    nl(pos, box, batch)
    assert nl.n_builds == 1
    moved = pos.clone()
    moved[0, 0] += 1e-9
    _assert_same(nl(moved, box, batch), radius_graph(moved, 1.5, box, batch))
    assert nl.n_builds == 2


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 80), cutoff=st.floats(0.3, 1.2), skin=st.floats(0.0, 0.6), step=st.floats(0.0, 0.4),
       seed=st.integers(0, 10**6), periodic=st.booleans())
def test_property_walk_matches_radius_graph(n, cutoff, skin, step, seed, periodic):
    g = torch.Generator().manual_seed(seed)
    box = torch.tensor([3.7, 3.9, 4.1], dtype=torch.float64)
    pos = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 3 * box
    b = box if periodic else None
    nl = VerletList(cutoff, skin)
    for _ in range(6):
        got, ref = nl(pos, b), radius_graph(pos, cutoff, b)
        assert torch.equal(got.edge_index, ref.edge_index) and torch.equal(got.vec, ref.vec)
        pos = pos + step * torch.randn(pos.shape, generator=g, dtype=torch.float64)
    assert 1 <= nl.n_builds <= 6


@pytest.mark.parametrize(
    "kwargs, match",
    [({"skin": -0.1}, "skin: expected a non-negative, finite Verlet skin in nm, got -0.1"),
     ({"skin": float("nan")}, "skin: expected a non-negative"),
     ({"skin": "wide"}, "skin: expected a number in nm"),
     ({"cutoff": 0.0}, "cutoff: expected a positive"),
     ({"method": "octree"}, "method: expected 'auto', 'cells' or 'kdtree'")],
)
def test_bad_parameters(kwargs, match):
    args = {"cutoff": 1.0, "skin": 0.3}
    args.update(kwargs)
    with pytest.raises(CgsimInputError, match=match):
        VerletList(**args)


def test_bad_positions_and_box():
    box = torch.tensor([5.0, 5.0, 5.0])
    with pytest.raises(CgsimInputError, match="skin: cutoff \\+ skin = 2.6 nm is not below half"):
        VerletList(2.0, 0.6)(torch.rand(10, 3), box)
    nl = VerletList(1.0, 0.3)
    pos = torch.rand(10, 3) * 5
    nl(pos, box)
    bad = pos.clone()
    bad[4, 1] = float("nan")  # a NaN bead forces a rebuild, which refuses it
    with pytest.raises(CgsimInputError, match="pos: positions contain NaN"):
        nl(bad, box)
    with pytest.raises(CgsimInputError, match=r"pos: expected positions of shape \(N, 3\)"):
        nl(torch.zeros(4, 2))
    with pytest.raises(CgsimInputError, match=r"batch: expected a batch vector of shape \(10,\)"):
        nl(pos, box, torch.zeros(9, dtype=torch.long))


@pytest.mark.parametrize("periodic", [True, False])
def test_gradients_flow_like_radius_graph(periodic):
    pos, box, batch, _ = _system(periodic, seed=13)
    nl = VerletList(1.5, 0.5)
    nl(pos, box, batch)  # build on other positions, then reuse with autograd on
    x = (pos + 0.01).requires_grad_(True)
    y = (pos + 0.01).requires_grad_(True)
    g, ref = nl(x, box, batch), radius_graph(y, 1.5, box, batch)
    assert nl.n_builds == 1
    (g.dist ** 2 + g.vec[:, 0]).sum().backward()
    (ref.dist ** 2 + ref.vec[:, 0]).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, atol=1e-10, rtol=0)  # summed in another order
