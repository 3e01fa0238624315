"""The E(3)-equivariant bead network: exact symmetries, batching, periodic images, learning, training."""

import pytest
import torch

from cgsim.model import collate
from cgsim.model.coarse import CoarseLevel
from cgsim.model.equivariant import EquivariantDynamics
from cgsim.model.refinement import ScoreRefiner
from cgsim.train.checkpoint import load_checkpoint
from cgsim.train.loop import build_model, model_from_checkpoint, train
from tests.conftest import (
    BOX,
    H,
    ModelSymmetryTests,
    chain_system,
    overfit_one_batch,
    tiny_model,
    train_overrides,
)


def _model(seed=0, **kw) -> EquivariantDynamics:
    """The tiny equivariant model: random output layer (a fresh one predicts a zero mean)."""
    return tiny_model(EquivariantDynamics, seed, **kw)


class TestEquivariantSymmetries(ModelSymmetryTests):
    """Rotations and reflections (O(3) in open space, the cube's 48 symmetries in a cubic box) on top
    of translation, relabelling, batching and periodic images, to round-off."""

    equivariant = True

    def make_model(self) -> EquivariantDynamics:
        return _model()


class TestEquivariantCoarseSymmetries(ModelSymmetryTests):
    """The coarse level reads distances only, so the prediction stays equivariant; it pools unwrapped
    positions and numbers segments from a chain's first end (see ModelSymmetryTests)."""

    equivariant = True
    per_bead_images = False
    any_relabelling = False

    def make_model(self) -> EquivariantDynamics:
        return _model(coarse=CoarseLevel(dim=16, beads_per_super=3, cutoff=2.0, layers=1, n_rbf=8).double())


def test_fresh_model_predicts_zero_mean():
    sys, pos = chain_system(12, None, 0)
    torch.manual_seed(0)
    m = EquivariantDynamics(n_atom_types=3, history=H, cutoff=1.0, hidden_dim=16, fine_layers=1, bead_layers=1,
                            n_rbf=8, vector_dim=4).double()
    out = m(collate([sys], [pos]))
    assert torch.equal(out.mean, torch.zeros_like(out.mean)) and torch.all(out.std > 0)


def test_std_is_isotropic_and_positive():
    sys, pos = chain_system(30, BOX, 0)
    out = _model()(collate([sys], [pos]))
    assert out.mean.shape == out.std.shape == (30, 3) and out.latent.shape == (30, 16)
    assert torch.all(out.std > 0)
    assert torch.equal(out.std, out.std[:, :1].expand(-1, 3))


def test_step_at_zero_temperature_is_the_mean_and_refiner_runs():
    sys, pos = chain_system(10, None, 4)
    m = _model()
    batch = collate([sys], [pos])
    expected = 2 * pos[:, -1] - pos[:, -2] + m(batch).mean * m.target_scale
    torch.testing.assert_close(m.step(batch, temperature=0.0), expected)
    r = _model(refinement=ScoreRefiner(cond_dim=16, cutoff=1.0, hidden_dim=8, layers=1, n_rbf=8, levels=2,
                                       steps_per_level=1))
    nxt = pos[:, -1] + 0.01
    terms = r.loss_terms(batch, nxt, torch.Generator().manual_seed(0))
    assert set(terms) == {"nll", "dsm"} and all(torch.isfinite(t) for t in terms.values())
    out = r.step(batch, generator=torch.Generator().manual_seed(1))
    assert out.shape == (10, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("target", ["acceleration", "displacement"])
def test_overfits_one_batch(target):
    first, last, err, scale = overfit_one_batch(_model(target=target))
    assert last < first - 1.0, (first, last)
    assert err < 0.5 * scale


def test_bad_arguments():
    with pytest.raises(ValueError, match="vector_dim must be >= 1"):
        _model(vector_dim=0)
    with pytest.raises(ValueError, match="history must be >= 2"):
        EquivariantDynamics(n_atom_types=2, history=1, cutoff=1.0)


def test_parameter_count_matches_the_plain_model_at_the_chain_size(compose_cfg):
    counts = {}
    for name in ("multiscale_gnn", "equivariant_gnn"):
        cfg = compose_cfg("train", ["experiment=chain", f"model={name}", "output=/tmp/unused"])
        model = build_model(cfg, n_atom_types=4)
        counts[name] = sum(p.numel() for p in model.parameters())
    assert isinstance(model, EquivariantDynamics)
    assert 0.9 <= counts["equivariant_gnn"] / counts["multiscale_gnn"] <= 1.1, counts


@pytest.mark.parametrize("refinement", [[], ["model/refinement=score"]], ids=["plain", "refinement"])
def test_tiny_training_and_checkpoint_reload(mapped_chains, tmp_path, compose_cfg, refinement):
    out = tmp_path / "run"
    cfg = compose_cfg("train", train_overrides(mapped_chains, out, "model=equivariant_gnn", *refinement))
    summary = train(cfg)
    assert summary["epochs_run"] == 2 and torch.isfinite(torch.tensor(summary["val_nll"]))
    model = model_from_checkpoint(load_checkpoint(out / "checkpoints" / "last.pt"))
    assert isinstance(model, EquivariantDynamics) and (model.refiner is not None) == bool(refinement)
    assert model.velocity_scale.item() > 0 and model.target_scale.item() > 0
