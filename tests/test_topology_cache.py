"""TopologyCache: labels keyed by the topology's content, never by where its bond tensor lives."""

import numpy as np
import pytest
import torch

from cgsim.model.batch import BeadBatch
from cgsim.model.coarse import CoarseLevel, segment_assignment
from cgsim.model.collective import CentreNoise
from cgsim.model.graph import TopologyCache, molecule_index
from tests.conftest import both_directions


def _both(pairs) -> torch.Tensor:
    return torch.from_numpy(both_directions(pairs))


def _batch(bonds: torch.Tensor, n_beads: int = 6) -> BeadBatch:
    empty = torch.zeros(0, dtype=torch.long)
    return BeadBatch(pos=torch.zeros(n_beads, 1, 3), batch=torch.zeros(n_beads, dtype=torch.long), n_systems=1,
                     box=None, bead_bonds=bonds, atom_type=empty, atom_bonds=empty.reshape(2, 0), atom_to_bead=empty)


# equal sizes (6 beads, 4 bonds x 2 directions), other molecules: 3 + 3 against 2 + 4 beads
FIRST = [(0, 1), (1, 2), (3, 4), (4, 5)]
SECOND = [(0, 1), (2, 3), (3, 4), (4, 5)]


def _counting(label):
    calls = []

    def wrapped(n, bonds):
        calls.append(n)
        return label(n, bonds)

    return wrapped, calls


def test_same_address_other_topology_gets_its_own_labels():
    label, calls = _counting(molecule_index)
    cache = TopologyCache(label)
    bonds = _both(FIRST)
    first = _batch(bonds)
    mol, n = cache(first)
    np.testing.assert_array_equal(mol.numpy(), [0, 0, 0, 1, 1, 1])
    assert n == 2
    # a new batch whose bonds sit at the same address, same sizes, another topology (as when the
    # allocator hands the freed block of the last batch's bonds to the next one)
    bonds.copy_(_both(SECOND))
    second = _batch(bonds)
    assert second.bead_bonds.data_ptr() == first.bead_bonds.data_ptr()
    assert second.bead_bonds.shape == _both(FIRST).shape
    mol, n = cache(second)
    np.testing.assert_array_equal(mol.numpy(), [0, 0, 1, 1, 1, 1])
    assert n == 2
    assert len(calls) == 2


def test_callers_follow_a_topology_rewritten_in_place():
    bonds = _both(FIRST)
    centre, coarse = CentreNoise(dim=4), CoarseLevel(dim=4, beads_per_super=2, layers=0)
    before = _batch(bonds)
    mol_before, _, _ = centre(torch.zeros(6, 4), before)
    sup_before = coarse.assignment(before)
    bonds.copy_(_both(SECOND))
    after = _batch(bonds)
    mol_after, _, _ = centre(torch.zeros(6, 4), after)
    np.testing.assert_array_equal(mol_before.numpy(), molecule_index(6, _both(FIRST).numpy()))
    np.testing.assert_array_equal(mol_after.numpy(), molecule_index(6, _both(SECOND).numpy()))
    np.testing.assert_array_equal(sup_before.numpy(), segment_assignment(6, _both(FIRST).numpy(), 2))
    np.testing.assert_array_equal(coarse.assignment(after).numpy(), segment_assignment(6, _both(SECOND).numpy(), 2))
    assert not np.array_equal(coarse.assignment(after).numpy(), sup_before.numpy())


def test_equal_content_is_one_entry_and_the_oldest_topology_is_dropped():
    label, calls = _counting(molecule_index)
    cache = TopologyCache(label, size=2)
    a, b, c = _both(FIRST), _both(SECOND), _both([(0, 1), (1, 2), (2, 3), (4, 5)])
    for _ in range(3):  # a rollout alternating between a full batch and a redraw batch
        cache(_batch(a))
        cache(_batch(b.clone()))  # another tensor, same content: a hit
    assert len(calls) == 2
    first = cache(_batch(a))[0]
    cache(_batch(c))  # evicts b, the least recently used
    assert len(calls) == 3
    assert cache(_batch(a))[0] is first  # still cached
    cache(_batch(b))
    assert len(calls) == 4
    # the bead count is part of the key: an isolated extra bead is another topology
    mol, n = cache(_batch(a, n_beads=7))
    np.testing.assert_array_equal(mol.numpy(), [0, 0, 0, 1, 1, 1, 2])
    assert n == 3
    with pytest.raises(ValueError):
        TopologyCache(molecule_index, size=0)
