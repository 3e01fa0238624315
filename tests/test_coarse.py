"""The coarser (super-bead) level: segmentation, invariances, and reach beyond the bead cutoff."""

import numpy as np
import pytest
import torch

from cgsim.model import MultiScaleDynamics, SystemGraph, collate
from cgsim.model.coarse import CoarseLevel, segment_assignment
from tests.conftest import H, ModelSymmetryTests, both_directions, tiny_model


def test_linear_chain_cut_into_consecutive_runs():
    bonds = both_directions([(i, i + 1) for i in range(9)])
    np.testing.assert_array_equal(segment_assignment(10, bonds, 4), [0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    # numbering starts from the end of lower degree, whatever the bond order
    np.testing.assert_array_equal(segment_assignment(10, bonds[:, ::-1], 4), [0, 0, 0, 0, 1, 1, 1, 1, 2, 2])


def test_segments_never_span_molecules_and_ions_stand_alone():
    # molecule A: beads 0-5 (chain), ion 6, molecule B: beads 7-9 (chain), ion 10
    bonds = both_directions([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (7, 8), (8, 9)])
    sup = segment_assignment(11, bonds, 4)
    mol = np.array([0] * 6 + [1] + [2] * 3 + [3])
    for s in np.unique(sup):
        assert len(set(mol[sup == s])) == 1
    assert sup[6] not in sup[np.arange(11) != 6] and sup[10] not in sup[np.arange(11) != 10]
    assert len(np.unique(sup)) == 2 + 1 + 1 + 1
    assert np.all(np.diff(sup[[0, 6, 7, 10]]) > 0)  # numbered in order of first bead
    with pytest.raises(ValueError):
        segment_assignment(3, bonds[:, :0], 0)


def test_branched_segments_are_compact():
    # graft: backbone 0-1-2-3-4-5, side bead on each backbone bead (6..11)
    bonds = both_directions([(i, i + 1) for i in range(5)] + [(i, 6 + i) for i in range(6)])
    sup = segment_assignment(12, bonds, 3)
    assert np.bincount(sup).max() <= 3 and len(np.unique(sup)) == 4
    hops = np.full((12, 12), 99)
    np.fill_diagonal(hops, 0)
    for a, b in bonds.T:
        hops[a, b] = 1
    for k in range(12):  # Floyd-Warshall on 12 nodes
        hops = np.minimum(hops, hops[:, k:k + 1] + hops[k:k + 1, :])
    for s in np.unique(sup):
        idx = np.flatnonzero(sup == s)
        assert hops[np.ix_(idx, idx)].max() <= 3  # beads of one super-bead are close along the graph


def _model(coarse: bool, seed=0, bead_layers=2, cutoff=1.0) -> MultiScaleDynamics:
    c = CoarseLevel(dim=16, beads_per_super=3, cutoff=3.0, layers=2, n_rbf=8) if coarse else None
    return tiny_model(seed=seed, cutoff=cutoff, fine_layers=1, bead_layers=bead_layers, coarse=c)


class TestCoarseSymmetries(ModelSymmetryTests):
    """Translation, batching, relabelling that keeps each chain's first end (segments are numbered
    from it) and whole-molecule images (super-bead centres pool unwrapped positions)."""

    per_bead_images = False
    any_relabelling = False

    def make_model(self) -> MultiScaleDynamics:
        return _model(True)


def test_coarse_level_reaches_beyond_the_bead_cutoff():
    """Perturbing a far bead's velocity changes bead 0's prediction only with the coarse level."""
    n = 30
    g = torch.Generator().manual_seed(0)
    x0 = torch.stack([torch.arange(n) * 0.9, torch.zeros(n), torch.zeros(n)], dim=1).double()  # straight rod, 0.9 nm bonds
    hist = torch.stack([x0 + 0.02 * torch.randn(n, 3, generator=g, dtype=torch.float64) for _ in range(H)], dim=1)
    b = torch.arange(n - 1)
    sys = SystemGraph(atom_type=torch.zeros(n, dtype=torch.long), atom_bonds=torch.zeros(2, 0, dtype=torch.long),
                      atom_to_bead=torch.arange(n), bead_bonds=torch.cat([torch.stack([b, b + 1]), torch.stack([b + 1, b])], 1),
                      n_beads=n, box=None)
    far = hist.clone()
    # bead 7 (6.3 nm away): out of reach of 2 bead layers (bonds + 1 nm radius edges reach bead 2), within
    # reach of 2 super-bead layers (3 beads per super-bead: centres 2.7 nm apart, coarse cutoff 3 nm)
    far[7, -1] += torch.tensor([0.3, 0.2, -0.1], dtype=torch.float64)
    for coarse, changes in ((False, False), (True, True)):
        m = _model(coarse, bead_layers=2)
        a = m(collate([sys], [hist])).mean[0]
        c = m(collate([sys], [far])).mean[0]
        assert (not torch.allclose(a, c, atol=1e-12)) == changes, coarse


def test_coarse_config_composes(compose_cfg):
    from cgsim.train.loop import build_model

    cfg = compose_cfg("train", ["experiment=chain", "model/coarse=segments", "debug=tiny", "output=/tmp/unused"])
    model = build_model(cfg, n_atom_types=4)
    assert isinstance(model.coarse, CoarseLevel) and model.coarse.beads_per_super == 4
