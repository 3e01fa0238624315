"""The E(3)-equivariant bead network: exact symmetries, batching, periodic images, learning, training."""

import itertools

import pytest
import torch

from cgsim.model import SystemGraph, collate
from cgsim.model.equivariant import EquivariantDynamics
from cgsim.model.refinement import ScoreRefiner
from cgsim.train.checkpoint import load_checkpoint
from cgsim.train.loop import build_model, model_from_checkpoint, train
from tests.test_model import BOX, H, _chain_system, assert_batched_equals_single, overfit_one_batch
from tests.test_train import _train_overrides, mapped_chains  # noqa: F401 - session fixture

#: float64 tolerance of the exact symmetries (only round-off separates the two sides)
TOL = dict(rtol=1e-9, atol=1e-10)


def _model(seed=0, **kw) -> EquivariantDynamics:
    torch.manual_seed(seed)
    args = dict(n_atom_types=3, history=H, cutoff=1.0, hidden_dim=16, fine_layers=2, bead_layers=2, n_rbf=8,
                vector_dim=6)
    args.update(kw)
    m = EquivariantDynamics(**args).double().eval()
    m.velocity_scale.fill_(0.05)  # the histories of _chain_system move ~0.05 nm per frame
    with torch.no_grad():  # a fresh model predicts mean 0: randomise its output layer so the mean is not trivial
        last = [mod for mod in m.decoder.modules() if isinstance(mod, torch.nn.Linear)][-1]
        last.weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(seed))
    return m


def _orthogonal(seed: int, reflect: bool) -> torch.Tensor:
    """A random 3x3 orthogonal matrix (float64) with determinant -1 if ``reflect`` else +1."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


def _signed_permutations() -> list[torch.Tensor]:
    """The 48 symmetries of a cube (signed axis permutations), float64 3x3."""
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product([1.0, -1.0], repeat=3):
            m = torch.zeros(3, 3, dtype=torch.float64)
            m[range(3), perm] = torch.tensor(signs, dtype=torch.float64)
            mats.append(m)
    return mats


@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "rotoreflection"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prediction_rotates_with_the_input(seed, reflect):
    systems = [_chain_system(n, None, s) for s, n in enumerate([20, 9])]
    m = _model(target="acceleration" if seed % 2 else "displacement")
    batch = collate([s for s, _ in systems], [p for _, p in systems])
    rot = _orthogonal(seed, reflect)
    origin = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    a = m(batch)
    b = m(batch.with_pos((batch.pos - origin) @ rot.T))
    assert a.mean.abs().max() > 1e-3  # a non-trivial prediction
    torch.testing.assert_close(b.mean, a.mean @ rot.T, **TOL)
    torch.testing.assert_close(b.std, a.std, **TOL)
    torch.testing.assert_close(b.latent, a.latent, **TOL)  # the refiner's conditioning is invariant


def test_periodic_prediction_follows_the_symmetries_of_a_cubic_box():
    sys, pos = _chain_system(40, BOX, 3)
    m = _model()
    a = m(collate([sys], [pos]))
    mats = _signed_permutations()
    for k in torch.randperm(48, generator=torch.Generator().manual_seed(0))[:8].tolist():
        rot = mats[k]
        b = m(collate([sys], [pos @ rot.T]))  # unwrapped coordinates may leave the box: minimum image
        torch.testing.assert_close(b.mean, a.mean @ rot.T, **TOL)
        torch.testing.assert_close(b.std, a.std, **TOL)


@pytest.mark.parametrize("box", [None, BOX])
def test_translation_invariance(box):
    sys, pos = _chain_system(30, box, 1)
    m = _model()
    a = m(collate([sys], [pos]))
    b = m(collate([sys], [pos + torch.tensor([1.7, -3.2, 0.45], dtype=torch.float64)]))
    torch.testing.assert_close(a.mean, b.mean, **TOL)
    torch.testing.assert_close(a.std, b.std, **TOL)


def test_fresh_model_predicts_zero_mean():
    sys, pos = _chain_system(12, None, 0)
    torch.manual_seed(0)
    m = EquivariantDynamics(n_atom_types=3, history=H, cutoff=1.0, hidden_dim=16, fine_layers=1, bead_layers=1,
                            n_rbf=8, vector_dim=4).double()
    out = m(collate([sys], [pos]))
    assert torch.equal(out.mean, torch.zeros_like(out.mean)) and torch.all(out.std > 0)


def test_std_is_isotropic_and_positive():
    sys, pos = _chain_system(30, BOX, 0)
    out = _model()(collate([sys], [pos]))
    assert out.mean.shape == out.std.shape == (30, 3) and out.latent.shape == (30, 16)
    assert torch.all(out.std > 0)
    assert torch.equal(out.std, out.std[:, :1].expand(-1, 3))


def test_permutation_equivariance():
    sys, pos = _chain_system(25, BOX, 2)
    m = _model()
    perm = torch.randperm(25, generator=torch.Generator().manual_seed(0))
    inv = torch.argsort(perm)  # new index of old bead k is inv[k]
    aperm = torch.cat([2 * perm[:, None], 2 * perm[:, None] + 1], dim=1).reshape(-1)  # atoms follow their beads
    ainv = torch.argsort(aperm)
    psys = SystemGraph(atom_type=sys.atom_type[aperm], atom_bonds=ainv[sys.atom_bonds],
                       atom_to_bead=inv[sys.atom_to_bead[aperm]], bead_bonds=inv[sys.bead_bonds],
                       n_beads=25, box=BOX)
    a = m(collate([sys], [pos]))
    b = m(collate([psys], [pos[perm]]))
    torch.testing.assert_close(a.mean[perm], b.mean, **TOL)
    torch.testing.assert_close(a.std[perm], b.std, **TOL)


@pytest.mark.parametrize("box", [None, BOX])
def test_batched_equals_single(box):
    systems = [_chain_system(n, box, s) for s, n in enumerate([12, 30, 7])]
    assert_batched_equals_single(_model(), systems, **TOL)


def test_wrapped_and_unwrapped_images_give_same_prediction():
    sys, pos = _chain_system(40, BOX, 3)
    m = _model()
    images = torch.randint(-2, 3, (40, 1, 3), generator=torch.Generator().manual_seed(1)).double() * BOX
    a = m(collate([sys], [pos]))
    b = m(collate([sys], [pos + images]))  # each bead's whole history moved by a box vector
    torch.testing.assert_close(a.mean, b.mean, **TOL)
    torch.testing.assert_close(a.std, b.std, **TOL)


def test_step_at_zero_temperature_is_the_mean_and_refiner_runs():
    sys, pos = _chain_system(10, None, 4)
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
def test_tiny_training_and_checkpoint_reload(mapped_chains, tmp_path, compose_cfg, refinement):  # noqa: F811
    out = tmp_path / "run"
    cfg = compose_cfg("train", _train_overrides(mapped_chains, out, "model=equivariant_gnn", *refinement))
    summary = train(cfg)
    assert summary["epochs_run"] == 2 and torch.isfinite(torch.tensor(summary["val_nll"]))
    model = model_from_checkpoint(load_checkpoint(out / "checkpoints" / "last.pt"))
    assert isinstance(model, EquivariantDynamics) and (model.refiner is not None) == bool(refinement)
    assert model.velocity_scale.item() > 0 and model.target_scale.item() > 0


def test_coarse_level_keeps_the_prediction_equivariant():
    from cgsim.model.coarse import CoarseLevel

    systems = [_chain_system(n, None, s) for s, n in enumerate([20, 9])]
    m = _model(coarse=CoarseLevel(dim=16, beads_per_super=3, cutoff=2.0, layers=1, n_rbf=8).double())
    batch = collate([s for s, _ in systems], [p for _, p in systems])
    rot = _orthogonal(7, True)
    a = m(batch)
    b = m(batch.with_pos(batch.pos @ rot.T))
    torch.testing.assert_close(b.mean, a.mean @ rot.T, **TOL)
    torch.testing.assert_close(b.std, a.std, **TOL)
