"""Score-based refinement: schedule, invariances, identity at zero steps, and that it learns to denoise."""

import numpy as np
import pytest
import torch

from cgsim.data.load import load_systems
from cgsim.model import MultiScaleDynamics, collate
from cgsim.model.refinement import ScoreRefiner
from tests.conftest import BOX, ROOT, ModelSymmetryTests, chain_system, tiny_model


def _model(seed=0, **refine_kw) -> MultiScaleDynamics:
    torch.manual_seed(seed)
    kw = dict(cond_dim=16, cutoff=1.0, hidden_dim=16, layers=2, n_rbf=8)
    kw.update(refine_kw)
    return tiny_model(seed=seed, fine_layers=1, refinement=ScoreRefiner(**kw))


class TestRefinerSymmetries(ModelSymmetryTests):
    """The denoiser's predicted noise, for next positions moved with the input, is invariant under
    translation, follows relabelling, batching and periodic images like the dynamics outputs."""

    def make_model(self) -> MultiScaleDynamics:
        return _model()


def test_schedule_and_calls_per_step():
    r = ScoreRefiner(cond_dim=4, cutoff=1.0, sigma_min=0.01, sigma_max=1.0, sigma_start=0.64, levels=4,
                     steps_per_level=3, final_denoise=True)
    np.testing.assert_allclose(r.annealing_levels(), [0.64, 0.16, 0.04, 0.01])
    assert r.calls_per_step == 13
    assert ScoreRefiner(cond_dim=4, cutoff=1.0, levels=1, sigma_start=0.3).annealing_levels() == [0.3]
    assert ScoreRefiner(cond_dim=4, cutoff=1.0, levels=0, final_denoise=False).calls_per_step == 0
    d = ScoreRefiner(cond_dim=4, cutoff=1.0, levels=6, steps_per_level=1, final_denoise=True, sampler="diffusion")
    assert d.calls_per_step == 5 + 6 + 1  # predictor between levels + correctors + final denoise
    o = ScoreRefiner(cond_dim=4, cutoff=1.0, levels=6, steps_per_level=1, final_denoise=True, sampler="ode")
    assert o.calls_per_step == 2 * 5 + 6 + 1  # two Heun calls between levels + correctors + final denoise
    with pytest.raises(ValueError, match="sampler"):
        ScoreRefiner(cond_dim=4, cutoff=1.0, sampler="euler")
    with pytest.raises(ValueError, match="spacing"):
        ScoreRefiner(cond_dim=4, cutoff=1.0, spacing="linear")


def test_karras_ladder():
    r = ScoreRefiner(cond_dim=4, cutoff=1.0, sigma_min=0.02, sigma_max=2.0, sigma_start=2.0, levels=5,
                     spacing="karras")
    lv = np.array(r.annealing_levels())
    # ends as given, decreasing; rho = 7 (Karras et al. 2022): sigma^(1/7) evenly spaced
    np.testing.assert_allclose(lv[[0, -1]], [2.0, 0.02])
    np.testing.assert_allclose(np.diff(lv ** (1 / 7)), np.diff(lv ** (1 / 7))[0])
    assert np.all(np.diff(lv) < 0)
    # in log sigma the steps grow towards small noise, unlike the geometric ladder's equal ratios
    ratios = lv[:-1] / lv[1:]
    assert np.all(np.diff(ratios) > 0)
    r.set_schedule(spacing="geometric")
    assert lv[2] > r.annealing_levels()[2]


@pytest.mark.parametrize("sampler, predictor", [("diffusion", 1), ("ode", 2)])
def test_diffusion_sampler_counts_calls_and_is_reproducible(sampler, predictor):
    sys, pos = chain_system(15, BOX, 2)
    batch = collate([sys], [pos])
    m = _model(levels=3, steps_per_level=1, sampler=sampler)
    calls = {"n": 0}
    original = m.refiner.forward

    def counting(*a, **k):
        calls["n"] += 1
        return original(*a, **k)

    m.refiner.forward = counting
    a = m.step(batch, generator=torch.Generator().manual_seed(5))
    assert calls["n"] == m.refiner.calls_per_step == predictor * 2 + 3 + 1
    b = m.step(batch, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("kw", [dict(sigma_min=0.5, sigma_max=0.1), dict(sigma_start=2.0), dict(levels=-1),
                                dict(step_size=0.0)])
def test_bad_refiner_arguments(kw):
    with pytest.raises(ValueError):
        ScoreRefiner(cond_dim=4, cutoff=1.0, **kw)


def test_zero_steps_is_no_refinement():
    sys, pos = chain_system(15, BOX, 0)
    batch = collate([sys], [pos])
    m = _model(levels=0, final_denoise=False)
    refined = m.step(batch, generator=torch.Generator().manual_seed(3))
    pred = m(batch)
    noise = torch.randn((15, 3), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    plain = m.positions_from_target(batch.pos, (pred.mean + pred.std * noise) * pred.scale)
    torch.testing.assert_close(refined, plain)
    m2 = _model(levels=0, steps_per_level=5, final_denoise=False)
    torch.testing.assert_close(m2.step(batch, generator=torch.Generator().manual_seed(3)),
                               m2.step(batch.with_pos(batch.pos), generator=torch.Generator().manual_seed(3)))


def test_refinement_moves_positions_and_is_reproducible():
    sys, pos = chain_system(15, BOX, 1)
    batch = collate([sys], [pos])
    m = _model(levels=2, steps_per_level=2)
    a = m.step(batch, generator=torch.Generator().manual_seed(1))
    b = m.step(batch, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    m.refiner.levels = 0
    m.refiner.final_denoise = False
    c = m.step(batch, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(a, c)


def test_trained_denoiser_reduces_error_on_held_out_frames():
    """Train on one shipped chain, then denoise known perturbations of another chain's frames."""
    data = load_systems([str(ROOT / "data/chain/mapped/train/seq_000"), str(ROOT / "data/chain/mapped/train/seq_001")],
                        "data")
    train_t, test_t = data.trajectories
    torch.manual_seed(0)
    m = MultiScaleDynamics(n_atom_types=len(data.atom_types), history=3, cutoff=3.0, hidden_dim=32, fine_layers=1,
                           bead_layers=2, n_rbf=8, target="displacement",
                           refinement=ScoreRefiner(cond_dim=32, cutoff=3.0, hidden_dim=32, layers=2, n_rbf=8,
                                                   sigma_min=0.1, sigma_max=1.0))
    x = torch.from_numpy(train_t.positions).float()  # (T, N, 3)
    windows = torch.stack([x[k:k + 4] for k in range(0, 400)]).permute(0, 2, 1, 3).reshape(-1, 4, 3)
    m.fit_normalization(windows)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        starts = torch.randint(0, 900, (8,), generator=gen)
        graphs = [train_t.graph] * 8
        batch = collate(graphs, [x[s:s + 3].transpose(0, 1) for s in starts])
        nxt = torch.cat([x[s + 3] for s in starts])
        dsm = m.loss_terms(batch, nxt, gen)["dsm"]
        opt.zero_grad()
        dsm.backward()
        opt.step()
    m.eval()
    xt = torch.from_numpy(test_t.positions).float()
    sigma = 0.5  # 0.4 nm: the Bayes-optimal denoiser of independent beads would cut the error ~30 %
    errs_noisy, errs_denoised = [], []
    g = torch.Generator().manual_seed(1)
    for s in range(0, 900, 60):
        batch = collate([test_t.graph], [xt[s:s + 3].transpose(0, 1)])
        clean = xt[s + 3]
        y = clean + sigma * m.target_scale * torch.randn(clean.shape, generator=g)
        with torch.no_grad():
            den = m.refiner.denoise(batch, m(batch).latent, y, sigma, m.target_scale)
        errs_noisy.append(float((y - clean).pow(2).mean()))
        errs_denoised.append(float((den - clean).pow(2).mean()))
    assert np.mean(errs_denoised) < 0.8 * np.mean(errs_noisy), (np.mean(errs_denoised), np.mean(errs_noisy))
