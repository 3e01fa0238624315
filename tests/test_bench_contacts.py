"""bench/bench_contacts.py: non-local contacts and distances along the bond graph, analytic cases."""

import mdtraj as md
import numpy as np
import pytest

from tests.conftest import load_bench

contacts = load_bench("bench_contacts")
bond_hops, contact_stats = contacts.bond_hops, contacts.contact_stats


def _chains(xyz: np.ndarray, lengths: list[int]) -> md.Trajectory:
    """Linear chains of the given lengths (consecutive beads bonded), frames ``xyz`` (F, N, 3) nm."""
    top = md.Topology()
    element = md.element.carbon
    for n in lengths:
        chain = top.add_chain()
        res = top.add_residue("BEA", chain)
        atoms = [top.add_atom(f"B{k}", element, res) for k in range(n)]
        for a, b in zip(atoms[:-1], atoms[1:], strict=True):
            top.add_bond(a, b)
    return md.Trajectory(xyz.astype(np.float32), top)


def test_a_straight_chain_has_no_contacts_and_distances_equal_to_its_hops():
    x = np.zeros((2, 12, 3))
    x[:, :, 0] = np.arange(12) * 1.0
    stats = contact_stats(_chains(x, [12]), [1.2, 1.6], 3)
    assert stats["contacts_per_bead"] == {"1.2": 0.0, "1.6": 0.0}
    for k in ("1", "2", "3", "5", "10"):
        assert stats["distance_at_bonds"][k] == pytest.approx(float(k), rel=1e-6)


def test_a_hairpin_counts_its_facing_beads_and_other_molecules_do_not_count():
    # 8 beads: 0-3 along x at y = 0, 4-7 back along x at y = 1.0 (bead 4 above bead 3):
    # facing pairs (3,4) bonded, (2,5) 3 bonds apart at 1.0 nm, (1,6) 5 apart, (0,7) 7 apart
    x = np.zeros((1, 10, 3))
    x[0, :4, 0] = np.arange(4)
    x[0, 4:8, 0] = np.arange(3, -1, -1)
    x[0, 4:8, 1] = 1.0
    x[0, 8:, 0] = [0.0, 0.0]  # a second 2-bead molecule right on bead 0 and 1 nm above it
    x[0, 8:, 1] = [0.0, 1.0]
    x[0, 8:, 2] = [0.5, 0.5]
    traj = _chains(x, [8, 2])
    hops = bond_hops(traj.topology)
    assert hops[2, 5] == 3 and np.isinf(hops[0, 8])
    stats = contact_stats(traj, [1.2], 3)
    # within the hairpin, >= 3 bonds apart and < 1.2 nm: (2,5), (1,6), (0,7) = 3 pairs over 10 beads
    assert stats["contacts_per_bead"]["1.2"] == pytest.approx(0.3)
    assert contact_stats(traj, [1.2], 6)["contacts_per_bead"]["1.2"] == pytest.approx(0.1)  # (0,7) only
