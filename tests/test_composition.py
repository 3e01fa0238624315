"""Composition features (cgsim/model/composition.py): densities, fit, and the model that reads them."""

import pytest
import torch

from cgsim.model import MultiScaleDynamics, collate
from cgsim.model.batch import SystemGraph
from cgsim.model.composition import CompositionFeatures, type_densities
from tests.conftest import BOX, ModelSymmetryTests, chain_system, tiny_model


def composition_model(seed: int = 0) -> MultiScaleDynamics:
    m = tiny_model(seed=seed, composition=True)
    # a fitted reference that is not all ones, so the division is exercised
    m.composition.reference.copy_(torch.tensor([0.8, 1.3, 0.5], dtype=torch.float64))
    return m


class TestCompositionModelSymmetries(ModelSymmetryTests):
    """Translation, relabelling, batching (systems of different densities), periodic images."""

    periodic_only = True

    def make_model(self) -> MultiScaleDynamics:
        return composition_model()


def _system(types: list[int], box: list[float]) -> SystemGraph:
    n = len(types)
    return SystemGraph(atom_type=torch.tensor(types), atom_bonds=torch.zeros((2, 0), dtype=torch.long),
                       atom_to_bead=torch.arange(n), bead_bonds=torch.zeros((2, 0), dtype=torch.long), n_beads=n,
                       box=torch.tensor(box, dtype=torch.float64))


def test_type_densities_count_particles_per_volume():
    # system 0: types [0, 0, 2] in 2x2x2 nm; system 1: types [1, 2, 2, 2] in 1x2x3 nm
    atom_type = torch.tensor([0, 0, 2, 1, 2, 2, 2])
    atom_system = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    box = torch.tensor([[2.0, 2.0, 2.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    got = type_densities(atom_type, atom_system, box, 4)
    want = torch.tensor([[2 / 8, 0, 1 / 8, 0], [0, 1 / 6, 3 / 6, 0]], dtype=torch.float64)
    torch.testing.assert_close(got, want)


def test_fit_sets_the_mean_density_and_leaves_absent_types_at_one():
    feats = CompositionFeatures(3).double()
    feats.fit([_system([0, 0, 1], [1.0, 1.0, 2.0]), _system([0, 1, 1, 1], [2.0, 1.0, 1.0])])
    # type 0: (2/2 + 1/2) / 2; type 1: (1/2 + 3/2) / 2; type 2 absent -> 1
    torch.testing.assert_close(feats.reference, torch.tensor([0.75, 1.0, 1.0], dtype=torch.float64))


def test_features_are_per_system_and_relative_to_the_reference():
    feats = CompositionFeatures(3).double()
    feats.reference.copy_(torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64))
    a, b = _system([0, 1], [1.0, 1.0, 1.0]), _system([2, 2, 2], [1.0, 1.0, 3.0])
    batch = collate([a, b], [torch.zeros(2, 2, 3, dtype=torch.float64), torch.zeros(3, 2, 3, dtype=torch.float64)])
    got = feats(batch)
    want = torch.tensor([[2.0, 0.5, 0.0]] * 2 + [[0.0, 0.0, 1.0]] * 3, dtype=torch.float64)
    torch.testing.assert_close(got, want)


def test_the_model_reads_the_composition():
    sys_, pos = chain_system(30, BOX, 0)
    m = composition_model()
    batch = collate([sys_], [pos])
    before = m(batch).mean
    m.composition.reference.mul_(2.0)  # the same box now reads as half as dense
    after = m(batch).mean
    assert (before - after).abs().max() > 1e-6


def test_open_systems_are_refused_and_fit_needs_boxes():
    sys_, pos = chain_system(10, None, 1)
    with pytest.raises(ValueError, match="need a periodic box"):
        composition_model()(collate([sys_], [pos]))
    with pytest.raises(ValueError, match="periodic training systems"):
        CompositionFeatures(3).fit([sys_])


def test_fit_composition_is_a_no_op_without_the_features():
    m = tiny_model()
    assert m.composition is None
    m.fit_composition([chain_system(10, None, 1)[0]])  # open systems are fine: nothing is read
