"""The bead-spring chain model: topology and energies against the analytic potentials."""

import numpy as np
import openmm
import openmm.unit as u
import pytest

from cgsim.errors import CgsimInputError
from cgsim.reference.chain import (
    ChainModel,
    build_system,
    chain_topology,
    initial_conformation,
    mdtraj_topology,
)
from cgsim.reference.sequence import draw_sequences, validate_sequence
from cgsim.units import LJUnits

LJ = LJUnits()


def _energy(system: openmm.System, pos: np.ndarray) -> float:
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos * u.nanometer)
    return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)


def _lj(r, eps, rc=2.5):
    shift = 4 * (rc**-12 - rc**-6)
    return eps * (4 * (r**-12 - r**-6) - shift) if r < rc else 0.0


def _fene_wca(r, k=30.0, r0=1.5):
    e = -0.5 * k * r0**2 * np.log(1 - (r / r0) ** 2)
    if r < 2 ** (1 / 6):
        e += 4 * (r**-12 - r**-6) + 1
    return e


def test_topology_of_graft_chain():
    model = ChainModel()
    chain = chain_topology("ABA", model)
    assert chain.types == ["B1", "S1", "B2", "S2", "B1", "S1"]
    assert chain.bonds.tolist() == [[0, 1], [0, 2], [2, 3], [2, 4], [4, 5]]
    top = mdtraj_topology(chain)
    assert top.n_atoms == 6 and top.n_residues == 3 and top.n_bonds == 5
    assert [r.name for r in top.residues] == ["MA", "MB", "MA"]


def test_sequence_validation():
    assert validate_sequence("ABBA", {"A": 1, "B": 2}, "x") == "ABBA"
    with pytest.raises(CgsimInputError, match="unknown monomer letter.*'CZ'"):
        validate_sequence("ACZB", {"A": 1, "B": 2}, "system.sequences[2]")
    with pytest.raises(CgsimInputError, match="non-empty"):
        validate_sequence("", {"A": 1}, "x")


def test_draw_sequences_distinct_and_in_range():
    seqs = draw_sequences(20, (5, 9), "AB", np.random.default_rng(0))
    assert len(set(seqs)) == 20
    assert all(5 <= len(s) <= 9 and set(s) <= {"A", "B"} for s in seqs)
    assert seqs == draw_sequences(20, (5, 9), "AB", np.random.default_rng(0))


def test_bond_energy_is_fene_plus_wca():
    model = ChainModel()
    chain = chain_topology("A", model)  # one bond B1-S1, no non-bonded pair
    system = build_system([chain], model, LJ)
    for r in (0.85, 0.97, 1.1, 1.4):
        pos = np.array([[0.0, 0.0, 0.0], [r, 0.0, 0.0]])
        assert _energy(system, pos) == pytest.approx(_fene_wca(r), rel=1e-6)


def test_nonbonded_lj_geometric_depths_and_cutoff():
    model = ChainModel()
    chain = chain_topology("AB", model)  # beads B1 S1 B2 S2; bonds 0-1, 0-2, 2-3
    system = build_system([chain], model, LJ)
    # place bonded beads at 0.97, measure the pair S1 (1) - S2 (3) at distance d
    base = np.array([[0, 0, 0], [0, 0.97, 0], [0.97, 0, 0], [0.97, 0.97, 0]], dtype=float)
    e_bonds = 3 * _fene_wca(0.97)
    # non-bonded pairs: (0,3) (1,2) (1,3)
    eps = model.epsilon
    def pair(i, j, r):
        return _lj(r, np.sqrt(eps[chain.types[i]] * eps[chain.types[j]]))
    diag = np.hypot(0.97, 0.97)
    expected = e_bonds + pair(0, 3, diag) + pair(1, 2, diag) + pair(1, 3, 0.97)
    assert _energy(system, base) == pytest.approx(expected, rel=1e-6)


def test_chains_do_not_interact():
    model = ChainModel()
    chains = [chain_topology("A", model), chain_topology("A", model)]
    system = build_system(chains, model, LJ)
    one = np.array([[0.0, 0, 0], [0.97, 0, 0]])
    pos = np.concatenate([one, one + [0.0, 1.05, 0.0]])  # second chain at LJ well distance
    assert _energy(system, pos) == pytest.approx(2 * _fene_wca(0.97), rel=1e-6)


def test_wca_mode_is_purely_repulsive():
    model = ChainModel(nonbonded="wca")
    chain = chain_topology("AA", model)
    system = build_system([chain], model, LJ)
    pos = np.array([[0, 0, 0], [0, 0.97, 0], [0.97, 0, 0], [0.97, 0.97, 0]], dtype=float)
    e_bonds = 3 * _fene_wca(0.97)
    # the pair (1,3) at 0.97 < 2^(1/6): WCA; the diagonals at 1.37 > 2^(1/6): zero
    assert _energy(system, pos) == pytest.approx(e_bonds + 4 * (0.97**-12 - 0.97**-6) + 1, rel=1e-6)


def test_initial_conformation_is_self_avoiding():
    model = ChainModel()
    chain = chain_topology("AB" * 15, model)
    pos = initial_conformation(chain, np.random.default_rng(3))
    b = np.linalg.norm(pos[chain.bonds[:, 0]] - pos[chain.bonds[:, 1]], axis=1)
    assert np.allclose(b, 0.97)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    bonded = np.zeros_like(d, dtype=bool)
    bonded[chain.bonds[:, 0], chain.bonds[:, 1]] = bonded[chain.bonds[:, 1], chain.bonds[:, 0]] = True
    np.fill_diagonal(bonded, True)
    assert d[~bonded].min() >= 0.9 - 1e-9


@pytest.mark.parametrize(
    "kwargs, field",
    [({"nonbonded": "soft"}, "system.nonbonded"),
     ({"monomers": {"A": ("B1", "X9")}}, "system.monomers.A"),
     ({"fene_r0": 0.0}, "system.fene_r0"),
     ({"epsilon": {"B1": -1.0, "B2": 0.5, "S1": 1.2, "S2": 0.1}}, "system.epsilon.B1")],
)
def test_bad_model_parameters(kwargs, field):
    with pytest.raises(CgsimInputError, match=field.replace(".", r"\.")):
        ChainModel(**kwargs)
