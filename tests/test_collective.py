"""Collective (molecule-centre) noise: molecules, the noise split, the model with it, its loss."""

import math

import numpy as np
import pytest
import torch

from cgsim.model import MultiScaleDynamics, collate
from cgsim.model.collective import CentreNoise, collective_noise
from cgsim.model.equivariant import EquivariantDynamics
from cgsim.model.graph import molecule_index
from tests.conftest import H, ModelSymmetryTests, both_directions, chain_system, tiny_model


def test_molecules_are_bond_components_numbered_by_first_bead():
    # ion 0, chain 1-2-3, ion 4, chain 5-6 given with its bond listed first
    bonds = both_directions([(5, 6), (1, 2), (2, 3)])
    np.testing.assert_array_equal(molecule_index(7, bonds), [0, 1, 1, 1, 2, 3, 3])
    np.testing.assert_array_equal(molecule_index(3, np.zeros((2, 0), int)), [0, 1, 2])


def _split_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    mol = torch.tensor([0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2])  # a 4-bead molecule, an ion, a 6-bead molecule
    std = 0.5 + torch.rand(11, 3, generator=g, dtype=torch.float64)
    centre_std = torch.tensor([0.7, 1.3, 0.2], dtype=torch.float64)
    return g, mol, std, centre_std


def test_noise_split_is_exact_per_draw():
    g, mol, std, centre_std = _split_case()
    eps = torch.randn(11, 3, generator=g, dtype=torch.float64)
    out = collective_noise(eps, std, mol, 3, centre_std)
    counts = torch.tensor([4.0, 1.0, 6.0], dtype=torch.float64)
    eps_bar = torch.stack([eps[mol == m].mean(0) for m in range(3)])
    centre = torch.stack([out[mol == m].mean(0) for m in range(3)])
    # each molecule's centre moves by exactly its own centre noise: s_m sqrt(n_m) mean(eps)
    torch.testing.assert_close(centre, centre_std[:, None] * counts.sqrt()[:, None] * eps_bar)
    # an ion's noise is its centre noise alone
    torch.testing.assert_close(out[4], centre_std[1] * eps[4])
    # the internal part follows the bead std: sigma_i (eps_i - eps_bar), minus its own molecule mean
    internal = std * (eps - eps_bar[mol])
    internal = internal - torch.stack([internal[mol == m].mean(0) for m in range(3)])[mol]
    torch.testing.assert_close(out - centre[mol], internal)


def test_centre_variance_is_the_predicted_one_and_beads_keep_theirs():
    """Over many draws: centre step variance = s_m^2 per dimension (independent beads: sigma^2 / n)."""
    g, mol, _, centre_std = _split_case(1)
    std = torch.full((11, 3), 0.8, dtype=torch.float64)
    eps = torch.randn(20000, 11, 3, generator=g, dtype=torch.float64)
    out = torch.stack([collective_noise(e, std, mol, 3, centre_std) for e in eps])
    for m, n in ((0, 4), (2, 6)):
        centre = out[:, mol == m].mean(1)
        np.testing.assert_allclose(centre.var(0).numpy(), centre_std[m].item() ** 2, rtol=0.05)
        independent = (std[mol == m] * eps[:, mol == m]).mean(1)
        np.testing.assert_allclose(independent.var(0).numpy(), 0.8 ** 2 / n, rtol=0.05)
        # a bead: internal sigma^2 (1 - 1/n) + centre s^2
        np.testing.assert_allclose(out[:, mol == m].var(0).mean().item(), 0.8 ** 2 * (1 - 1 / n) + centre_std[m].item() ** 2,
                                   rtol=0.05)


def _model(cls=MultiScaleDynamics, seed=0) -> MultiScaleDynamics:
    kw = {"vector_dim": 4} if cls is EquivariantDynamics else {}
    return tiny_model(cls, seed, fine_layers=1, collective=CentreNoise(16), **kw)


class TestCollectiveSymmetries(ModelSymmetryTests):
    """The molecule-centre std is invariant like the bead std, and a system's is as if it were alone."""

    def make_model(self) -> MultiScaleDynamics:
        return _model()


class TestEquivariantCollectiveSymmetries(ModelSymmetryTests):
    """Collective noise on the equivariant model: the centre std is invariant under rotations too."""

    equivariant = True

    def make_model(self) -> EquivariantDynamics:
        return _model(EquivariantDynamics)


def test_sampled_step_moves_the_centre_by_the_centre_noise():
    sys, pos = chain_system(15, None, 2)
    m = _model()
    pred = m(collate([sys], [pos]))
    eps = torch.randn(15, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    step = pred.value(eps) / pred.scale - pred.mean
    torch.testing.assert_close(step.mean(0), pred.centre_std[0] * math.sqrt(15) * eps.mean(0))
    torch.testing.assert_close(pred.value(eps, temperature=0.0), pred.mean * pred.scale)


def test_centre_loss_fits_the_centre_std_only_and_learns_it():
    """The centre NLL reaches the head, not the bead means; minimising it finds the centre spread."""
    sys, pos = chain_system(10, None, 4)
    m = _model().train()
    batch = collate([sys], [pos])
    next_pos = pos[:, -1] + 0.1
    terms = m.loss_terms(batch, next_pos)
    assert set(terms) == {"nll", "centre_nll"}
    terms["centre_nll"].backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in m.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in m.collective.head.parameters())
    # many molecules whose centres move by N(0, 0.3^2) around a zero mean: the fitted s -> 0.3
    torch.manual_seed(0)
    noise = CentreNoise(dim=4, mlp_layers=1)
    opt = torch.optim.Adam(noise.parameters(), lr=0.05)
    mol = torch.arange(400).repeat_interleave(5)
    z = (0.3 * torch.randn(400, 3))[mol] + 0.01 * torch.randn(2000, 3)
    h = torch.ones(2000, 4)
    for _ in range(300):
        raw = torch.zeros(400).index_add_(0, mol, noise.head(h)[:, 0]) / 5
        s = torch.nn.functional.softplus(raw) + noise.min_std
        loss = CentreNoise.nll(z, torch.zeros_like(z), mol, 400, s)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(float(s[0].detach()) - 0.3) < 0.03


def test_loss_weight_and_min_std_are_checked():
    with pytest.raises(ValueError):
        CentreNoise(8, min_std=0.0)
    with pytest.raises(ValueError):
        CentreNoise(8, loss_weight=-1.0)


def test_refinement_keeping_centres_changes_only_internal_coordinates():
    from cgsim.model.collective import remove_centre_shift
    from cgsim.model.refinement import ScoreRefiner

    sys, pos = chain_system(12, None, 5)
    ion_bonds = sys.bead_bonds[:, (sys.bead_bonds < 8).all(0)]  # beads 8-11 become four single beads
    sys = type(sys)(**{**sys.__dict__, "bead_bonds": ion_bonds})
    torch.manual_seed(0)
    m = MultiScaleDynamics(n_atom_types=3, history=H, cutoff=1.0, hidden_dim=16, fine_layers=1, bead_layers=1, n_rbf=8,
                           refinement=ScoreRefiner(cond_dim=16, cutoff=1.0, hidden_dim=16, layers=1, n_rbf=8,
                                                   levels=3, steps_per_level=1)).double().eval()
    batch = collate([sys], [pos])
    pred = m(batch)
    y = pos[:, -1] + 0.05

    def run(keep: bool) -> torch.Tensor:
        m.refiner.set_schedule(keep_centres=keep)
        g = torch.Generator().manual_seed(1)
        return m.refine(batch, pred, y, lambda: torch.randn(y.shape, generator=g, dtype=y.dtype))

    free, kept = run(False), run(True)
    assert not torch.allclose(free[:8].mean(0), y[:8].mean(0))  # the refiner moves the chain's centre
    torch.testing.assert_close(kept[:8].mean(0), y[:8].mean(0))  # ... unless told to keep it
    torch.testing.assert_close(kept[:8] - kept[:8].mean(0), free[:8] - free[:8].mean(0))  # same internal change
    torch.testing.assert_close(kept[8:], free[8:])  # single beads move freely either way
    mol = torch.tensor([0] * 8 + [1, 2, 3, 4])
    torch.testing.assert_close(remove_centre_shift(y, free, mol, 5), kept)
