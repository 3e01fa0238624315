"""Model properties: shapes, invariances, batching, periodic images, learning."""

import pytest
import torch

from cgsim.model import MultiScaleDynamics, SystemGraph, collate

H = 4


def _chain_system(n_beads: int, box: torch.Tensor | None, seed: int) -> tuple[SystemGraph, torch.Tensor]:
    """A linear chain of beads, 2 fine particles per bead, with a random-walk history (n, H, 3)."""
    g = torch.Generator().manual_seed(seed)
    n_atoms = 2 * n_beads
    atom_type = torch.randint(0, 3, (n_atoms,), generator=g)
    a = torch.arange(n_atoms - 1)
    atom_bonds = torch.cat([torch.stack([a, a + 1]), torch.stack([a + 1, a])], dim=1)
    b = torch.arange(n_beads - 1)
    bead_bonds = torch.cat([torch.stack([b, b + 1]), torch.stack([b + 1, b])], dim=1)
    steps = torch.randn(n_beads, 3, generator=g) * 0.3
    x0 = torch.cumsum(steps, 0) + (box / 2 if box is not None else 0)
    hist = [x0]
    for _ in range(H - 1):
        hist.append(hist[-1] + 0.05 * torch.randn(n_beads, 3, generator=g))
    sys = SystemGraph(atom_type=atom_type, atom_bonds=atom_bonds, atom_to_bead=torch.arange(n_atoms) // 2,
                      bead_bonds=bead_bonds, n_beads=n_beads, box=box)
    return sys, torch.stack(hist, dim=1).double()


def _model(seed=0, **kw) -> MultiScaleDynamics:
    torch.manual_seed(seed)
    args = dict(n_atom_types=3, history=H, cutoff=1.0, hidden_dim=16, fine_layers=2, bead_layers=2, n_rbf=8)
    args.update(kw)
    return MultiScaleDynamics(**args).double().eval()


BOX = torch.tensor([6.0, 6.0, 6.0], dtype=torch.float64)


def assert_batched_equals_single(m, systems, **tol) -> None:
    """Each system's mean and std from one disjoint batch equal those of a lone forward."""
    batched = m(collate([s for s, _ in systems], [p for _, p in systems]))
    offset = 0
    for s, p in systems:
        single = m(collate([s], [p]))
        torch.testing.assert_close(batched.mean[offset:offset + s.n_beads], single.mean, **tol)
        torch.testing.assert_close(batched.std[offset:offset + s.n_beads], single.std, **tol)
        offset += s.n_beads


def overfit_one_batch(m, steps: int = 300) -> tuple[float, float, float, float]:
    """Train ``m`` on one 20-bead window; return (first loss, last loss, mean error of the
    deterministic step, mean norm of the target), the last two in nm."""
    sys, pos = _chain_system(20, BOX, 5)
    g = torch.Generator().manual_seed(9)
    nxt = pos[:, -1] + 0.05 * torch.randn(20, 3, generator=g, dtype=torch.float64)
    m.train()
    m.fit_normalization(torch.cat([pos, nxt[:, None]], dim=1))
    batch = collate([sys], [pos])
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = m.loss(batch, nxt).item()
    for _ in range(steps):
        opt.zero_grad()
        loss = m.loss(batch, nxt)
        loss.backward()
        opt.step()
    m.eval()
    err = (m.step(batch, temperature=0.0) - nxt).norm(dim=-1).mean().item()
    scale = m.target_from_positions(torch.cat([pos, nxt[:, None]], dim=1)).norm(dim=-1).mean().item()
    return first, loss.item(), err, scale


@pytest.mark.parametrize("box", [None, BOX])
def test_shapes(box):
    sys, pos = _chain_system(30, box, 0)
    out = _model()(collate([sys], [pos]))
    assert out.mean.shape == out.std.shape == (30, 3)
    assert torch.all(out.std > 0)


@pytest.mark.parametrize("box", [None, BOX])
def test_translation_invariance(box):
    sys, pos = _chain_system(30, box, 1)
    m = _model()
    a = m(collate([sys], [pos]))
    b = m(collate([sys], [pos + torch.tensor([1.7, -3.2, 0.45], dtype=torch.float64)]))
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(a.std, b.std)


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
    torch.testing.assert_close(a.mean[perm], b.mean)
    torch.testing.assert_close(a.std[perm], b.std)


@pytest.mark.parametrize("box", [None, BOX])
def test_batched_equals_single(box):
    systems = [_chain_system(n, box, s) for s, n in enumerate([12, 30, 7])]
    assert_batched_equals_single(_model(), systems)


def test_wrapped_and_unwrapped_images_give_same_prediction():
    sys, pos = _chain_system(40, BOX, 3)
    m = _model()
    images = torch.randint(-2, 3, (40, 1, 3), generator=torch.Generator().manual_seed(1)).double() * BOX
    a = m(collate([sys], [pos]))
    b = m(collate([sys], [pos + images]))  # each bead's whole history moved by a box vector
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(a.std, b.std)


def test_step_returns_positions_and_zero_temperature_is_mean():
    sys, pos = _chain_system(10, None, 4)
    m = _model()
    batch = collate([sys], [pos])
    x1 = m.step(batch, temperature=0.0)
    pred = m(batch)
    expected = 2 * pos[:, -1] - pos[:, -2] + pred.mean * m.target_scale
    torch.testing.assert_close(x1, expected)


@pytest.mark.parametrize("target", ["acceleration", "displacement"])
def test_overfits_one_batch(target):
    first, last, err, scale = overfit_one_batch(_model(target=target))
    # memorised: the NLL fell far and the mean prediction lands on the target
    assert last < first - 1.5, (first, last)
    assert err < 0.25 * scale


def test_rejects_short_history_and_bad_args():
    sys, pos = _chain_system(10, None, 6)
    with pytest.raises(ValueError, match="reads 4 frames of history"):
        _model()(collate([sys], [pos[:, :2]]))
    with pytest.raises(ValueError, match="history must be >= 2"):
        MultiScaleDynamics(n_atom_types=2, history=1, cutoff=1.0)
    with pytest.raises(ValueError, match="target must be one of"):
        MultiScaleDynamics(n_atom_types=2, history=3, cutoff=1.0, target="force")
