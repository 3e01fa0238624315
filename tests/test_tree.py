"""Bond-tree noise: the trees, the correlated draw against a dense Gaussian, the model with it."""

import math

import numpy as np
import pytest
import torch

from cgsim.model import MultiScaleDynamics, collate
from cgsim.model.graph import TopologyMemo
from cgsim.model.tree import (
    BondTree,
    TreeNoise,
    TreeParams,
    bent_draw,
    bent_innovations,
    bond_tree,
    bond_trees,
    link_vectors,
    make_tree,
    marginal_std,
    root_hops,
    tree_nll,
    tree_noise,
)
from tests.conftest import BOX, H, ModelSymmetryTests, both_directions, chain_system, tiny_model


def _tree(n: int, bonds: np.ndarray) -> BondTree:
    parent, mol = bond_tree(n, bonds)
    return make_tree(parent, torch.from_numpy(mol), int(mol.max()) + 1)


def _case():
    """A 7-bead chain (0-6), an ion (7), a branched molecule 8-9-10 with 11 on 9, a 4-ring 12-15."""
    bonds = both_directions([(i, i + 1) for i in range(6)] + [(8, 9), (9, 10), (9, 11), (12, 13), (13, 14),
                                                               (14, 15), (15, 12)])
    return 16, bonds


def test_trees_are_rooted_at_the_centre_and_span_every_molecule():
    n, bonds = _case()
    parent, mol = bond_tree(n, bonds)
    roots = np.flatnonzero(parent == np.arange(n))
    assert roots[:3].tolist() == [3, 7, 9] and 12 <= roots[3] <= 15
    np.testing.assert_array_equal(parent[:7], [1, 2, 3, 3, 3, 4, 5])  # the chain hangs from its middle bead
    np.testing.assert_array_equal(parent[[8, 10, 11]], [9, 9, 9])
    # every tree edge is a bond, and each molecule has one root
    edges = {(int(a), int(b)) for a, b in bonds.T}
    assert all((i, int(parent[i])) in edges for i in range(n) if parent[i] != i)
    assert np.bincount(mol[roots]).max() == 1 and len(roots) == mol.max() + 1
    hops, _ = root_hops(parent)
    tree = _tree(n, bonds)
    assert tree.depth == hops.max() == 3  # the 7-chain: root 3 to the ends 0 and 6
    np.testing.assert_array_equal(hops[:8], [3, 2, 1, 0, 1, 2, 3, 0])
    assert [sorted(lv.tolist()) for lv in tree.levels] == [np.flatnonzero(hops == k).tolist() for k in (1, 2, 3)]
    assert sorted(torch.cat(tree.levels).tolist()) == sorted(np.flatnonzero(parent != np.arange(n)).tolist())
    assert tree.levels[0].tolist()[:2] == [2, 4]  # the chain's beads one link below bead 3
    # bead 0's ancestors: 1, 2 and the root 3
    path = [0]
    while parent[path[-1]] != path[-1]:
        path.append(int(parent[path[-1]]))
    assert path == [0, 1, 2, 3]


def test_trees_of_beads_without_bonds_are_single_roots():
    parent, mol = bond_tree(3, np.zeros((2, 0), dtype=np.int64))
    np.testing.assert_array_equal(parent, [0, 1, 2])
    np.testing.assert_array_equal(mol, [0, 1, 2])


def _params(tree: BondTree, seed=0) -> tuple[torch.Generator, TreeParams]:
    g = torch.Generator().manual_seed(seed)
    n = tree.parent.numel()
    std = 0.2 + torch.rand(n, 2, generator=g, dtype=torch.float64)
    root_std = 0.5 + torch.rand(tree.n_molecules, generator=g, dtype=torch.float64)
    rho = 0.05 + 0.9 * torch.rand(n, 2, generator=g, dtype=torch.float64)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    vec = link_vectors(x, tree, torch.zeros(n, dtype=torch.long), None)
    u = torch.where(tree.root[:, None], torch.zeros_like(vec), vec / vec.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    return g, TreeParams(tree=tree, root_std=root_std, std=std, coupling=rho, direction=u)


def _dense_factor(p: TreeParams) -> torch.Tensor:
    """L (3N, 3N) with noise.flatten() = L eps.flatten(), built bead by bead from the recursion
    n_i = A_i n_parent + B_i eps_i, B_i = w_across I + (w_along - w_across) u u^T, A_i likewise
    from the couplings (an independent construction of the same Gaussian)."""
    t = p.tree
    n = t.parent.numel()
    parent = t.parent.tolist()
    rows: dict[int, torch.Tensor] = {}
    eye = torch.eye(3, dtype=torch.float64)

    def block(i):
        if i not in rows:
            r = torch.zeros(3, 3 * n, dtype=torch.float64)
            if parent[i] == i:
                r[:, 3 * i:3 * i + 3] = p.root_std[t.molecule[i]] * eye
            else:
                u = p.direction[i]
                r[:, 3 * i:3 * i + 3] = p.std[i, 1] * eye + (p.std[i, 0] - p.std[i, 1]) * torch.outer(u, u)
                a = p.coupling[i, 1] * eye + (p.coupling[i, 0] - p.coupling[i, 1]) * torch.outer(u, u)
                r = r + a @ block(parent[i])
            rows[i] = r
        return rows[i]

    return torch.cat([block(i) for i in range(n)])


def test_draw_and_likelihood_are_those_of_one_dense_gaussian():
    n, bonds = _case()
    tree = _tree(n, bonds)
    g, p = _params(tree)
    eps = torch.randn(n, 3, generator=g, dtype=torch.float64)
    L = _dense_factor(p)
    torch.testing.assert_close(tree_noise(eps, p).reshape(-1), L @ eps.reshape(-1))
    cov = L @ L.T
    torch.testing.assert_close(marginal_std(p).reshape(-1), cov.diagonal().sqrt())
    r = torch.randn(n, 3, generator=g, dtype=torch.float64)
    dense = torch.distributions.MultivariateNormal(torch.zeros(3 * n, dtype=torch.float64), cov)
    torch.testing.assert_close(tree_nll(r, p), -dense.log_prob(r.reshape(-1)) / (3 * n))


def test_bonded_beads_move_together_and_an_ion_alone():
    n, bonds = _case()
    tree = _tree(n, bonds)
    g, p = _params(tree, 1)
    p = TreeParams(tree=tree, root_std=torch.ones_like(p.root_std), std=torch.tensor([0.02, 0.2]).double().expand(n, 2),
                   coupling=torch.full_like(p.coupling, 0.99), direction=p.direction)
    eps = torch.randn(4000, n, 3, generator=g, dtype=torch.float64)
    noise = torch.stack([tree_noise(e, p) for e in eps])
    rel = noise[:, 0] - noise[:, 1]
    along = (rel * p.direction[0]).sum(-1)
    assert along.std() < 0.05 and (rel - along[:, None] * p.direction[0]).norm(dim=-1).mean() > 0.2
    assert (noise[:, 0].std(0) > 0.8).all()
    torch.testing.assert_close(noise[:, 7], p.root_std[1] * eps[:, 7])  # the ion is its own root


def test_tree_cache_recomputes_for_a_new_topology_only():
    cache = TopologyMemo(bond_trees, size=2)
    a = collate(*zip(chain_system(9, BOX, 0)))
    b = collate(*zip(chain_system(5, BOX, 0)))
    ta = cache(a)
    assert cache(a) is ta
    tb = cache(b)
    assert tb is not ta and tb.parent.numel() == 5
    assert int(ta.root.sum()) == 1 and int(ta.parent[ta.root].item()) == 4


class TestTreeNoiseSymmetries(ModelSymmetryTests):
    """Translation, relabelling, batching, periodic images: mean, stds and the tree coupling."""

    def make_model(self) -> MultiScaleDynamics:
        torch.manual_seed(0)
        return tiny_model(collective=TreeNoise(16, min_std=1e-3).double())


def _chain_step() -> tuple:
    """A 20-bead chain's batch, its history (20, H, 3) and a next frame 0.05 nm away (float64)."""
    sys_, pos = chain_system(20, BOX, 5)
    nxt = pos[:, -1] + 0.05 * torch.randn(20, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return collate([sys_], [pos]), pos, nxt


def test_model_trains_on_the_tree_likelihood_and_draws_along_it():
    m = tiny_model(collective=TreeNoise(16, min_std=1e-3).double())
    batch, pos, nxt = _chain_step()
    m.train()
    loss = m.loss(batch, nxt)
    loss.backward()
    grads = [p.grad for p in m.collective.parameters()]
    assert all(gr is not None and gr.abs().sum() > 0 for gr in grads)  # root std and coupling heads learn
    m.eval()
    pred = m(batch)
    assert pred.tree is not None and pred.tree.coupling.shape == (20, 2) and pred.tree.std.shape == (20, 2)
    assert ((pred.tree.coupling > 0) & (pred.tree.coupling < 1)).all()
    eps = torch.randn(20, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    want = tree_noise(eps, pred.tree)
    torch.testing.assert_close(pred.value(eps), (pred.mean + want) * pred.scale)
    # the model's NLL is the tree likelihood of the target (no separate centre term)
    z = m.target_from_positions(torch.cat([pos, nxt[:, None]], dim=1)) / pred.scale
    assert "centre_nll" not in m.loss_terms(batch, nxt)
    torch.testing.assert_close(m.nll(batch, nxt, pred), tree_nll(z - pred.mean, pred.tree))
    assert math.isfinite(loss.item())


# -- ions hung onto their contacts ------------------------------------------------------------------

def _ion_system(box: torch.Tensor | None) -> tuple:
    """A 4-bead chain (2 fine particles per bead) along x, then: a 1-particle ion 0.3 nm from chain
    bead 1 (and 0.5 nm from bead 2), a 3-particle ion 0.4 nm from chain bead 3, a 1-particle ion
    0.25 nm from the 3-particle ion (and > 0.6 nm from the chain; no distance near the model cutoff), a far 1-particle ion and a
    1-particle ion 0.3 nm from that one (same size: neither hangs onto the other)."""
    from cgsim.model.batch import SystemGraph

    chain = [[0.0, 0, 0], [0.4, 0, 0], [0.8, 0, 0], [1.2, 0, 0]]
    ions = [[0.4, 0.3, 0], [1.2, -0.4, 0], [1.2, -0.65, 0.0], [3.0, 3.0, 3.0], [3.0, 3.3, 3.0]]
    x = torch.tensor(chain + ions, dtype=torch.float64) + 1.0
    sizes = [2, 2, 2, 2, 1, 3, 1, 1, 1]
    atom_to_bead = torch.repeat_interleave(torch.arange(9), torch.tensor(sizes))
    a = torch.arange(7)
    atom_bonds = torch.cat([torch.stack([a, a + 1]), torch.stack([a + 1, a])], dim=1)
    atom_bonds = torch.cat([atom_bonds, torch.tensor([[9, 10, 10, 11], [10, 9, 11, 10]])], dim=1)  # the 3-particle ion
    b = torch.arange(3)
    bead_bonds = torch.cat([torch.stack([b, b + 1]), torch.stack([b + 1, b])], dim=1)
    sys_ = SystemGraph(atom_type=torch.zeros(len(atom_to_bead), dtype=torch.long), atom_bonds=atom_bonds,
                       atom_to_bead=atom_to_bead, bead_bonds=bead_bonds, n_beads=9, box=box)
    g = torch.Generator().manual_seed(0)
    hist = torch.stack([x + 0.01 * k * torch.randn(9, 3, generator=g, dtype=torch.float64) for k in range(H)], dim=1)
    hist[:, -1] = x
    return sys_, hist


def _contact_model(cutoff=0.45):
    torch.manual_seed(0)
    return tiny_model(collective=TreeNoise(16, min_std=1e-3, contact_cutoff=cutoff).double())


@pytest.mark.parametrize("box", [None, BOX], ids=["open", "periodic"])
def test_ions_hang_onto_the_nearest_bead_of_a_larger_molecule(box):
    model = _contact_model()
    sys_, hist = _ion_system(box)
    pred = model(collate([sys_], [hist]))
    parent = pred.tree.tree.parent.tolist()
    assert parent[:4] == [1, 1, 1, 2] or parent[:4] == [1, 2, 2, 2]  # the chain's own tree
    assert parent[4] == 1            # 0.3 nm from chain bead 1 (bead 2 is further)
    assert parent[5] == 3            # the 3-particle ion onto the chain
    assert parent[6] == 5            # the small ion onto the 3-particle ion, not onto a smaller or equal one
    assert parent[7] == 7 and parent[8] == 8  # equal sizes: both stay roots
    assert pred.tree.tree.depth >= 3      # chain root -> bead 3 -> 3-particle ion -> small ion
    # the draw: the small ion moves with its partner (a shared ancestor noise)
    eps = torch.zeros(9, 3, dtype=torch.float64)
    eps[3] = 1.0                     # only chain bead 3's own noise
    noise = pred.value(eps) / pred.scale - pred.mean
    assert (noise[5].abs() > 0).all() and (noise[6].abs() > 0).all() and (noise[4] == 0).all()


def test_contacts_beyond_the_cutoff_leave_ions_free():
    model = _contact_model(cutoff=0.15)
    pred = model(collate(*zip(_ion_system(BOX))))
    assert pred.tree.tree.parent.tolist()[4:] == [4, 5, 6, 7, 8]


def test_contact_trees_move_with_the_system_and_batch_per_system():
    model = _contact_model()
    sys_, hist = _ion_system(BOX)
    a = model(collate([sys_], [hist]))
    shift = torch.tensor([2.5, -7.0, 0.3], dtype=torch.float64)
    images = torch.randint(-1, 2, (9, 1, 3), generator=torch.Generator().manual_seed(3)).double() * BOX
    for moved in (hist + shift, hist + images):
        b = model(collate([sys_], [moved]))
        assert torch.equal(b.tree.tree.parent, a.tree.tree.parent)
        torch.testing.assert_close(b.tree.coupling, a.tree.coupling, **{"rtol": 1e-9, "atol": 1e-10})
    other, oh = chain_system(7, BOX, 1)
    both = model(collate([other, sys_], [oh, hist]))
    torch.testing.assert_close(both.tree.tree.parent[7:] - 7, a.tree.tree.parent)
    torch.testing.assert_close(both.mean[7:], a.mean, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(both.tree.coupling[7:], a.tree.coupling, rtol=1e-9, atol=1e-10)


def test_contact_cutoff_is_checked():
    with pytest.raises(ValueError, match="contact_cutoff"):
        TreeNoise(16, contact_cutoff=-1.0)


# -- links that turn instead of stretching ------------------------------------------------------------

def _bend_params(seed=0) -> tuple[torch.Generator, TreeParams]:
    n, bonds = _case()
    tree = _tree(n, bonds)
    g, p = _params(tree, seed)
    x = 2.0 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    links = link_vectors(x, tree, torch.zeros(n, dtype=torch.long), None)
    u = torch.where(tree.root[:, None], torch.zeros_like(links), links / links.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    return g, TreeParams(tree=tree, root_std=p.root_std, std=p.std, coupling=p.coupling, direction=u, links=links)


def test_bent_draw_turns_links_keeps_their_length_change_and_inverts():
    g, p = _bend_params()
    t = p.tree
    n = t.parent.numel()
    scale = torch.tensor(0.8, dtype=torch.float64)
    mean = 0.3 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 3, generator=g, dtype=torch.float64)
    out = bent_draw(eps, mean, scale, p)
    nonroot = ~t.root
    # each bead's linear displacement: conditional mean given its parent's drawn one + innovation
    own = torch.where(t.root[:, None], p.root_std[t.molecule][:, None] * eps,
                      p.std[:, 1:] * eps + (p.std[:, :1] - p.std[:, 1:]) * (eps * p.direction).sum(-1, keepdim=True) * p.direction)
    par = out[t.parent] / scale - mean[t.parent]
    along_c, across_c = p.coupling[:, :1], p.coupling[:, 1:]
    lin = (mean + across_c * par + (along_c - across_c) * (par * p.direction).sum(-1, keepdim=True) * p.direction
           + own) * scale
    change = (lin - out[t.parent])[nonroot]
    u, r = p.direction[nonroot], p.links.norm(dim=-1)[nonroot]
    new_links = (out - out[t.parent] + p.links)[nonroot]
    # the new link's length is the old one plus the change's component along it, exactly
    torch.testing.assert_close(new_links.norm(dim=-1), r + (change * u).sum(-1))
    # and it is turned by |across| / r (radians) towards the change's across part
    across = change - (change * u).sum(-1, keepdim=True) * u
    cos = (new_links * p.links[nonroot]).sum(-1) / (new_links.norm(dim=-1) * r)
    torch.testing.assert_close(torch.arccos(cos.clamp(-1, 1)), across.norm(dim=-1) / r)
    torch.testing.assert_close(out[t.root], ((mean + own) * scale)[t.root])  # roots move as drawn
    d, _ = bent_innovations(out, mean, scale, p)
    torch.testing.assert_close(d, own)  # the inverse recovers the innovations
    # temperature 0: every bead at its conditional mean, turned
    torch.testing.assert_close(bent_draw(eps, mean, scale, p, temperature=0.0),
                               bent_draw(torch.zeros_like(eps), mean, scale, p))


@pytest.mark.parametrize("radial", ["linear", "log"])
def test_bent_likelihood_is_normalised(radial):
    """A bonded bead's conditional density (its root held), integrated over a grid of its new
    link, is 1: the turn's Jacobian enters the NLL with the right sign (an independent check)."""
    from cgsim.model.simulator import GaussianStep

    m = 4000  # copies of a 2-bead molecule (root 0, child 1), one grid point each
    grid_h = 0.1
    # cell centres, never on the x axis: the density has integrable singularities at r' = 0 and
    # alpha = pi (every change of one length / one angle maps there), far out in the tails here
    ax = torch.arange(-2.0, 3.0, grid_h, dtype=torch.float64) + grid_h / 2
    grid = torch.stack(torch.meshgrid(ax, ax - 0.5, ax - 0.5, indexing="ij"), -1).reshape(-1, 3)
    w = torch.tensor([0.2, 0.35], dtype=torch.float64)
    link = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    mean = torch.tensor([[0.1, -0.05, 0.0], [0.05, 0.1, 0.02]], dtype=torch.float64)
    root_d = torch.tensor([0.2, 0.1, -0.1], dtype=torch.float64)
    scale = torch.tensor(1.0, dtype=torch.float64)
    total = 0.0
    for chunk in grid.split(m):
        k = chunk.shape[0]
        parent = np.repeat(np.arange(k) * 2, 2)
        tree = make_tree(parent, torch.arange(k).repeat_interleave(2), k)
        links = torch.zeros(2 * k, 3, dtype=torch.float64)
        links[1::2] = link
        p = TreeParams(tree=tree, root_std=torch.full((k,), 0.5, dtype=torch.float64), std=w.expand(2 * k, 2),
                       coupling=torch.full((2 * k, 2), 0.6, dtype=torch.float64), direction=links.clone(), links=links,
                       radial=radial)
        target = torch.zeros(2 * k, 3, dtype=torch.float64)
        target[0::2] = root_d
        target[1::2] = root_d + chunk - link          # the child's new link is the grid point
        d, _ = bent_innovations(target, mean.repeat(k, 1), scale, p)
        dc = d[1::2]
        along = dc[:, 0]
        gauss = 0.5 * (along / w[0]) ** 2 + 0.5 * (dc[:, 1:] ** 2).sum(-1) / w[1] ** 2 + torch.log(w[0]) \
            + 2 * torch.log(w[1]) + 1.5 * math.log(2 * math.pi)
        # the turn's log|det| from spherical coordinates, r = 1: (r')^2 sin(alpha)/alpha, times
        # dr'/da = r' for the log radial map
        r = chunk.norm(dim=-1)
        alpha = torch.atan2(chunk[:, 1:].norm(dim=-1), chunk[:, 0])
        logdet = (2 if radial == "linear" else 3) * torch.log(r) + torch.log(torch.sinc(alpha / math.pi))
        total += float(torch.exp(-(gauss + logdet)).sum()) * grid_h ** 3
    assert abs(total - 1.0) < 0.01, total
    # and the model's NLL is exactly that: root + child terms, per dimension
    tree = make_tree(np.array([0, 0]), torch.zeros(2, dtype=torch.long), 1)
    links = torch.stack([torch.zeros(3, dtype=torch.float64), link])
    p = TreeParams(tree=tree, root_std=torch.tensor([0.5], dtype=torch.float64), std=w.expand(2, 2),
                   coupling=torch.tensor([[0.8, 0.3]] * 2, dtype=torch.float64), direction=links.clone(), links=links,
                   radial=radial)
    c = torch.tensor([1.2, 0.4, -0.3], dtype=torch.float64)
    target = torch.stack([root_d, root_d + c - link])
    step = GaussianStep(mean=mean, std=torch.ones(2, 3, dtype=torch.float64), scale=scale, tree=p)
    d, _ = bent_innovations(target, mean, scale, p)
    root_nll = 0.5 * (((root_d - mean[0]) / 0.5) ** 2).sum() + 3 * math.log(0.5) + 1.5 * math.log(2 * math.pi)
    child = 0.5 * (d[1, 0] / w[0]) ** 2 + 0.5 * (d[1, 1:] ** 2).sum() / w[1] ** 2 + torch.log(w[0]) + 2 * torch.log(w[1]) \
        + 1.5 * math.log(2 * math.pi)
    alpha = torch.atan2(c[1:].norm(), c[0])
    child = child + (2 if radial == "linear" else 3) * torch.log(c.norm()) + torch.log(torch.sinc(alpha / math.pi))
    torch.testing.assert_close(step.nll(target) * 6, root_nll + child)


@pytest.mark.parametrize("radial", ["linear", "log"])
def test_turn_log_determinant_is_that_of_its_jacobian_and_inverts(radial):
    from cgsim.model.tree import _turn, _unturn

    g = torch.Generator().manual_seed(5)
    link = torch.randn(6, 3, generator=g, dtype=torch.float64)
    change = 0.4 * torch.randn(6, 3, generator=g, dtype=torch.float64)
    new, logdet = _turn(link, change, radial)
    for k in range(6):
        jac = torch.autograd.functional.jacobian(lambda c, k=k: _turn(link[k:k + 1], c[None], radial)[0][0], change[k])
        torch.testing.assert_close(logdet[k], torch.linalg.slogdet(jac)[1])
    back, logdet_back = _unturn(link, new, radial)
    torch.testing.assert_close(back, change)
    torch.testing.assert_close(logdet_back, logdet)
    r, r_new = link.norm(dim=-1), new.norm(dim=-1)
    along = (change * link).sum(-1) / r
    torch.testing.assert_close(r_new, r + along if radial == "linear" else r * torch.exp(along / r))


def test_bend_needs_the_displacement_target():
    with pytest.raises(ValueError, match="displacement"):
        tiny_model(collective=TreeNoise(16, bend=True).double(), target="acceleration")
    m = tiny_model(collective=TreeNoise(16, bend=True).double(), target="displacement")
    sys_, pos = chain_system(12, BOX, 4)
    pred = m(collate([sys_], [pos]))
    assert pred.tree.links is not None
    step = pred.value(torch.randn(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert torch.isfinite(step).all() and torch.isfinite(pred.nll(step))


def test_model_card_names_the_tree_noise_and_its_options():
    from cgsim.model.card import sampler_card

    card = sampler_card({"target": "displacement", "collective": {"_target_": "cgsim.model.tree.TreeNoise", "bend": True,
                                                                  "radial": "log", "contact_cutoff": 0.4}})
    assert card.calls_per_step == 1
    assert card.parameters["gaussian"] == {"target": "displacement", "collective": True, "noise": "bond tree",
                                           "bend": True, "radial": "log", "contact_cutoff": 0.4,
                                           "centred": False, "drift": True,
                                           "shape_temperature": 1.0, "pair_score": 0.0,
                                           "contact_links": 0.0, "core_samples": 0, "learn_core_strength": False,
                                           "core_terms": "nonbonded"}
    plain = sampler_card({"target": "displacement", "collective": {"_target_": "cgsim.model.collective.CentreNoise"}})
    assert "noise" not in plain.parameters["gaussian"]


# -- the molecule's centre drawn on its own (centred) ------------------------------------------------

def _centring(tree: BondTree) -> torch.Tensor:
    """(3N, 3N): each bead's vector minus its tree's mean, built from the parent pointers alone."""
    parent = tree.parent.tolist()
    n = len(parent)

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    roots = [root(i) for i in range(n)]
    P = torch.eye(3 * n, dtype=torch.float64)
    for i in range(n):
        members = [j for j in range(n) if roots[j] == roots[i]]
        for j in members:
            P[3 * i:3 * i + 3, 3 * j:3 * j + 3] -= torch.eye(3, dtype=torch.float64) / len(members)
    return P, roots


def test_centred_draw_and_likelihood_are_those_of_one_dense_gaussian():
    """Centred: the tree's shape with the root held, recentred, plus a centre step of ``root_std``
    drawn with the root's noise. As a dense (3N, 3N) map of the draw this is P L0 + C; its
    Gaussian's density must equal the tree NLL (the unit-Jacobian claim, checked independently)."""
    from dataclasses import replace

    n, bonds = _case()
    tree = _tree(n, bonds)
    g, p = _params(tree, 4)
    pc = replace(p, centred=True)
    L0 = _dense_factor(replace(p, root_std=torch.zeros_like(p.root_std)))
    P, roots = _centring(tree)
    C = torch.zeros(3 * n, 3 * n, dtype=torch.float64)
    for i in range(n):
        r = roots[i]
        C[3 * i:3 * i + 3, 3 * r:3 * r + 3] = p.root_std[tree.molecule[r]] * torch.eye(3, dtype=torch.float64)
    M = P @ L0 + C
    eps = torch.randn(n, 3, generator=g, dtype=torch.float64)
    noise = tree_noise(eps, pc)
    torch.testing.assert_close(noise.reshape(-1), M @ eps.reshape(-1))
    # each tree's centre moves by its root's draw alone
    for r in set(roots):
        members = [j for j in range(n) if roots[j] == r]
        torch.testing.assert_close(noise[members].mean(0), p.root_std[tree.molecule[r]] * eps[r])
    cov = M @ M.T
    dense = torch.distributions.MultivariateNormal(torch.zeros(3 * n, dtype=torch.float64), cov)
    res = torch.randn(n, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(tree_nll(res, pc), -dense.log_prob(res.reshape(-1)) / (3 * n))
    # the marginal std (an approximation: the tree's about its root plus the centre's) is at least
    # the centre's at every bead and the tree's own away from the roots
    m = marginal_std(pc)
    assert (m >= pc.root_std[tree.molecule[roots]][:, None] - 1e-12).all()
    assert (m[~tree.root] > marginal_std(replace(p, root_std=torch.zeros_like(p.root_std)))[~tree.root]).all()


def _check_change_of_variables(g: torch.Generator, p: TreeParams) -> tuple:
    """Draw a bent step and check its NLL against -log N(eps) + log|det d step / d eps| (the whole
    draw's Jacobian by autograd, in normalised units nm / scale); returns (step, eps, mean, scale)."""
    from cgsim.model.simulator import GaussianStep

    n = p.tree.parent.numel()
    scale = torch.tensor(0.7, dtype=torch.float64)
    mean = 0.3 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    eps = 0.5 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    step = bent_draw(eps, mean, scale, p)
    jac = torch.autograd.functional.jacobian(lambda e: bent_draw(e.reshape(n, 3), mean, scale, p).reshape(-1),
                                             eps.reshape(-1))
    want = 0.5 * (eps ** 2).sum() + 1.5 * n * math.log(2 * math.pi) + torch.linalg.slogdet(jac / scale)[1]
    got = GaussianStep(mean=mean, std=torch.ones(n, 3, dtype=torch.float64), scale=scale, tree=p).nll(step) * 3 * n
    torch.testing.assert_close(got, want)
    return step, eps, mean, scale


@pytest.mark.parametrize("centred", [False, True], ids=["root", "centred"])
@pytest.mark.parametrize("radial", ["linear", "log"])
def test_bent_nll_is_the_change_of_variables_of_the_draw(centred, radial):
    """The step's NLL equals -log N(eps) + log|det d step / d eps| with the Jacobian of the whole
    draw (every tree, the centre included) taken by autograd: an independent check of the
    flow's likelihood, centred or not."""
    from dataclasses import replace


    g, p = _bend_params(2)
    p = replace(p, centred=centred, radial=radial)
    step, eps, mean, scale = _check_change_of_variables(g, p)
    d, _ = bent_innovations(step, mean, scale, p)
    if centred:  # the root row is the centre's innovation, the tree's mean step is the centre draw
        torch.testing.assert_close(d[p.tree.root], (p.root_std[p.tree.molecule][:, None] * eps)[p.tree.root])
        from cgsim.model.tree import component_mean
        torch.testing.assert_close(component_mean(step, p.tree)[p.tree.root],
                                   (component_mean(mean, p.tree) * scale + p.root_std[p.tree.molecule][:, None] * eps
                                    * scale)[p.tree.root])


def test_centred_model_trains_and_moves_each_molecule_by_its_centre_std():
    m = tiny_model(collective=TreeNoise(16, min_std=1e-3, bend=True, centred=True).double(), target="displacement")
    batch, pos, nxt = _chain_step()
    m.train()
    loss = m.loss(batch, nxt)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.collective.parameters())
    m.eval()
    pred = m(batch)
    assert pred.tree.centred
    eps = torch.randn(20, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    step = pred.value(eps)
    root = int(torch.nonzero(pred.tree.tree.root)[0, 0])
    torch.testing.assert_close(step.mean(0), (pred.mean.mean(0) + pred.tree.root_std[0] * eps[root]) * pred.scale)
    # the same draw with only the root's noise changed moves every bead by the same vector
    eps2 = eps.clone()
    eps2[root] += 1.0
    shift = pred.value(eps2) - step
    torch.testing.assert_close(shift, (pred.tree.root_std[0] * pred.scale).expand(20, 3).clone())


def test_without_drift_each_centre_takes_a_zero_mean_step():
    with pytest.raises(ValueError, match="drift=false needs centred"):
        TreeNoise(16, drift=False)
    with pytest.raises(ValueError, match="drift=false needs target='displacement'"):
        tiny_model(collective=TreeNoise(16, centred=True, drift=False).double(), target="acceleration")
    torch.manual_seed(0)
    m = tiny_model(collective=TreeNoise(16, min_std=1e-3, bend=True, centred=True, drift=False).double(),
                   target="displacement").eval()
    torch.manual_seed(0)
    with_drift = tiny_model(collective=TreeNoise(16, min_std=1e-3, bend=True, centred=True).double(),
                            target="displacement").eval()
    other, oh = chain_system(7, BOX, 1)
    sys_, pos = chain_system(20, BOX, 5)
    batch = collate([other, sys_], [oh, pos])
    pred, ref = m(batch), with_drift(batch)
    mol = pred.tree.tree.molecule
    for k in range(2):  # every molecule's mean step averages to zero; the beads' relative means are kept
        torch.testing.assert_close(pred.mean[mol == k].mean(0), torch.zeros(3, dtype=torch.float64))
        rel = ref.mean[mol == k] - ref.mean[mol == k].mean(0)
        torch.testing.assert_close(pred.mean[mol == k], rel)
    assert ref.mean[mol == 1].mean(0).abs().max() > 1e-6  # the untrained drift model has a centre mean
    eps = torch.randn(27, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    step = pred.value(eps)
    roots = torch.nonzero(pred.tree.tree.root)[:, 0]
    for k in range(2):
        r = roots[mol[roots] == k][0]
        torch.testing.assert_close(step[mol == k].mean(0), pred.tree.root_std[k] * eps[r] * pred.scale)


def test_shape_temperature_scales_the_draws_innovations_and_is_fitted_to_md_steps():
    """The shape temperature scales the innovations of a draw only (not the centre, not the
    likelihood); fitting it on a trajectory makes one drawn step move beads about their centre
    as far as the trajectory's next frame does, and a model without tree noise is refused."""
    from cgsim.data.windows import BeadTrajectory
    from cgsim.errors import CgsimInputError
    from cgsim.train.prior_fit import fit_shape_temperature, internal_msd

    with pytest.raises(ValueError, match="shape_temperature"):
        TreeNoise(16, shape_temperature=0.0)
    m = tiny_model(collective=TreeNoise(16, min_std=1e-3, bend=True, centred=True, drift=False).double(),
                   target="displacement").eval()
    sys_, pos = chain_system(12, BOX, 5)
    batch = collate([sys_], [pos])
    eps = torch.randn(12, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    nxt = pos[:, -1] + 0.05 * eps
    base = m(batch)
    m.collective.shape_temperature = 0.5
    half = m(batch)
    assert half.tree.shape_temperature == 0.5
    torch.testing.assert_close(half.nll(nxt - pos[:, -1]), base.nll(nxt - pos[:, -1]))  # likelihood unchanged
    torch.testing.assert_close(half.value(eps).mean(0), base.value(eps).mean(0))  # centre step unchanged
    mol = np.zeros(12, dtype=np.int64)
    assert internal_msd(half.value(eps), mol) < internal_msd(base.value(eps), mol)
    m.train()
    assert m(batch).tree.shape_temperature == 1.0  # training always draws (and scores) at 1
    m.eval()
    # a trajectory whose beads jiggle by 0.3 nm per frame about a drifting chain
    g = torch.Generator().manual_seed(7)
    frames = [pos[:, -1]]
    for _ in range(40):
        frames.append(frames[-1] + 0.3 * torch.randn(12, 3, generator=g, dtype=torch.float64) + 0.01)
    traj = BeadTrajectory("jiggle", sys_, torch.stack(frames).numpy(), save_interval=1.0)
    m.collective.shape_temperature = 1.0
    temperature, ratios = fit_shape_temperature(m, [traj], stride=1, iterations=4, windows=16, progress=False)
    assert m.collective.shape_temperature == temperature and len(ratios) == 4
    assert abs(ratios[-1] - 1.0) < 0.1 < abs(ratios[0] - 1.0), ratios
    plain = tiny_model(target="displacement")
    with pytest.raises(CgsimInputError, match="bond-tree"):
        fit_shape_temperature(plain, [traj], stride=1)


def test_pair_score_adds_an_energy_score_of_close_pairs_in_two_draws():
    with pytest.raises(ValueError, match="pair_score"):
        TreeNoise(16, pair_score=-1.0)
    torch.manual_seed(0)
    m = tiny_model(collective=TreeNoise(16, min_std=1e-3, bend=True, centred=True, drift=False, pair_score=2.0,
                                        pair_cutoff=0.8).double(), target="displacement")
    batch, pos, nxt = _chain_step()
    m.train()
    terms = m.loss_terms(batch, nxt, torch.Generator().manual_seed(4))
    assert set(terms) == {"nll", "pair_es"} and terms["pair_es"] > 0
    loss = m.loss(batch, nxt, torch.Generator().manual_seed(4))
    torch.testing.assert_close(loss, terms["nll"] + 2.0 * terms["pair_es"])
    loss.backward()
    assert m.collective.link_head.net[0].weight.grad.abs().sum() > 0  # the draw's shape learns from the score
    # a draw that were the true next frame would score 0 on average; drawn from a model, the score
    # is that of energy_score_terms on the same draws (same generator)
    from cgsim.model.scoring import energy_score_terms

    m.eval()
    pred = m(batch)
    g = torch.Generator().manual_seed(9)
    xs = [pos[:, -1] + pred.value(torch.randn(20, 3, generator=g, dtype=torch.float64)) for _ in range(2)]
    want = energy_score_terms(xs[0], xs[1], nxt, batch, pred.scale, 0.8).pair
    torch.testing.assert_close(m._pair_score(batch, pred, nxt, torch.Generator().manual_seed(9)), want)


def _contact_params(seed: int = 3, centred: bool = False) -> tuple[torch.Generator, TreeParams]:
    """:func:`_bend_params` plus three contact links of the 7-chain (root 3): 2 -> 5, 1 -> 6, 4 -> 0
    (each from a bead nearer the root, none a parent)."""
    from dataclasses import replace

    g, p = _bend_params(seed)
    contacts = torch.tensor([[2, 1, 4], [5, 6, 0]])
    weights = 0.1 + 0.4 * torch.rand(3, generator=g, dtype=torch.float64)
    return g, replace(p, contacts=contacts, contact_coupling=weights, centred=centred)


@pytest.mark.parametrize("centred", [False, True], ids=["root", "centred"])
def test_contact_links_keep_the_draw_invertible_and_its_likelihood_exact(centred):

    g, p = _contact_params(centred=centred)
    t = p.tree
    assert (t.hops[p.contacts[0]] < t.hops[p.contacts[1]]).all()
    step, eps, mean, scale = _check_change_of_variables(g, p)
    # the contacts change the draw: bead 5 follows bead 2, bead 6 follows bead 1
    from dataclasses import replace

    plain = bent_draw(eps, mean, scale, replace(p, contacts=None, contact_coupling=None))
    moved = (step - plain).norm(dim=-1)
    if centred:  # recentring spreads the change over the whole chain
        assert moved[:7].max() > 1e-6
    else:  # only the followers (and nothing above them) move
        assert moved[[5, 6, 0]].min() > 1e-6 and moved[[1, 2, 3, 4]].max() < 1e-12


def test_contact_links_of_the_model_follow_the_rules():
    with pytest.raises(ValueError, match="contact_links"):
        TreeNoise(16, contact_links=0.5)  # needs bend
    torch.manual_seed(0)
    m = tiny_model(collective=TreeNoise(16, min_std=1e-3, bend=True, centred=True, drift=False,
                                        contact_links=0.9).double(), target="displacement")
    from cgsim.geometry.pbc import minimum_image

    other, oh = chain_system(9, BOX, 2)
    chain, pos = chain_system(20, BOX, 5)
    _, _, nxt = _chain_step()
    both = collate([other, chain], [oh, pos])
    pred = m(both)
    t, (j, i) = pred.tree.tree, pred.tree.contacts
    assert j.numel() > 0
    x = both.pos[:, -1]
    d = minimum_image(x[i] - x[j], BOX.expand(1, 3)).norm(dim=-1)
    assert (d < 0.9).all() and (t.root_of[i] == t.root_of[j]).all() and (t.hops[j] < t.hops[i]).all()
    assert (t.parent[i] != j).all()
    totals = torch.zeros(both.n_beads, dtype=torch.float64).index_add(0, i, pred.tree.contact_coupling)
    assert (pred.tree.contact_coupling > 0).all() and (totals < 1).all()
    m.train()
    nxt2 = torch.cat([oh[:, -1], nxt])
    m.loss(both, nxt2).backward()
    assert m.collective.contact_head.net[0].weight.grad.abs().sum() > 0
