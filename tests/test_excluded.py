"""Excluded volume inside a bond-tree draw (cgsim/model/excluded.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgsim.model.excluded import core_filter, core_pairs
from cgsim.model.prior_tables import PairTable, _stack, _table_value
from cgsim.model.tree import TreeParams, bent_draw, bond_tree, link_vectors, make_tree
from tests.conftest import both_directions

R_CORE = 1.0  # nm: the test core's range


def _core_tables(height: float) -> object:
    """One core table ``u(r) = height (1 - r / R_CORE)^2`` below R_CORE, 0 beyond (kT)."""
    r = np.arange(0.0, R_CORE + 0.5, 0.01)
    u = height * np.clip(1 - r / R_CORE, 0, None) ** 2
    return _stack([PairTable(r0=0.0, dr=0.01, u=u, lo=0.0, hi=R_CORE, k=1.0, n_samples=1, upper_wall=False)],
                  torch.device("cpu"), torch.float64)


def _chains(k: int, n: int) -> tuple:
    """``k`` copies of an ``n``-bead chain bent into a tight hairpin (ends ~0.6 nm apart, bonds
    0.5 nm), one system each; the bent-draw parameters of a fixed Gaussian step."""
    bonds = both_directions([(c * n + i, c * n + i + 1) for c in range(k) for i in range(n - 1)])
    parent, mol = bond_tree(k * n, bonds)
    tree = make_tree(parent, torch.from_numpy(mol), k)
    angle = torch.linspace(0, 1.7 * np.pi, n, dtype=torch.float64)
    one = torch.stack([0.5 * n / (1.7 * np.pi) * torch.cos(angle), 0.5 * n / (1.7 * np.pi) * torch.sin(angle),
                       torch.zeros(n, dtype=torch.float64)], dim=1)
    x0 = one.repeat(k, 1)
    batch = torch.arange(k).repeat_interleave(n)
    links = link_vectors(x0, tree, batch, None)
    u = torch.where(tree.root[:, None], torch.zeros_like(links), links / links.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    std = torch.full((k * n, 2), 0.3, dtype=torch.float64)
    coupling = torch.full((k * n, 2), 0.5, dtype=torch.float64)
    p = TreeParams(tree=tree, root_std=torch.full((k,), 0.2, dtype=torch.float64), std=std, coupling=coupling,
                   direction=u, links=links)
    return tree, p, x0, batch, bonds


def _exclude(bonds: torch.Tensor, n_beads: int) -> torch.Tensor:
    from cgsim.model.prior import pair_lists

    bonded, angle = pair_lists(torch.as_tensor(bonds), n_beads)
    excl = torch.cat([bonded, angle], dim=1)
    return torch.sort(excl[0] * n_beads + excl[1]).values


def _filter(tree, x0, batch, bonds, height: float, tries: int, g: torch.Generator, strength: float = 1.0):
    n = x0.shape[0]
    eps = torch.randn(tries - 1, n, 3, generator=g, dtype=torch.float64)
    uniform = torch.rand(tries, n, generator=g, dtype=torch.float64)
    pairs = core_pairs(torch.zeros(1, 1, dtype=torch.long), torch.zeros(n, dtype=torch.long), _exclude(bonds, n), n,
                       tree.hops, tree.root_of, x0, None, batch, 10.0)
    return core_filter(_core_tables(height), pairs, tree.hops, torch.nonzero(tree.root)[:, 0], tree.levels, x0, None, batch, strength, eps, uniform)


def _contacts(x: torch.Tensor, k: int, n: int, bonds_apart: int = 3) -> float:
    """Pairs of one chain >= ``bonds_apart`` bonds apart closer than R_CORE, per chain."""
    xs = x.reshape(k, n, 3)
    i, j = np.triu_indices(n, bonds_apart)
    return float((torch.linalg.norm(xs[:, i] - xs[:, j], dim=-1) < R_CORE).sum() / k)


def test_a_flat_core_or_one_try_leaves_the_draw_unchanged():
    k, n = 4, 7
    tree, p, x0, batch, bonds = _chains(k, n)
    g = torch.Generator().manual_seed(0)
    mean = 0.1 * torch.randn(k * n, 3, generator=g, dtype=torch.float64)
    scale = torch.tensor(0.5, dtype=torch.float64)
    eps = torch.randn(k * n, 3, generator=g, dtype=torch.float64)
    plain = bent_draw(eps, mean, scale, p)
    for height, tries in ((0.0, 5), (50.0, 1)):
        f = _filter(tree, x0, batch, bonds, height, tries, g)
        torch.testing.assert_close(bent_draw(eps, mean, scale, p, core=f), plain)


def test_the_core_removes_contacts_a_plain_draw_makes_and_keeps_bonds_turned():
    k, n = 200, 9
    tree, p, x0, batch, bonds = _chains(k, n)
    g = torch.Generator().manual_seed(1)
    mean = torch.zeros(k * n, 3, dtype=torch.float64)
    scale = torch.tensor(1.0, dtype=torch.float64)
    eps = torch.randn(k * n, 3, generator=g, dtype=torch.float64)
    plain = x0 + bent_draw(eps, mean, scale, p)
    f = _filter(tree, x0, batch, bonds, 200.0, 16, g)
    filtered = x0 + bent_draw(eps, mean, scale, p, core=f)
    before, after = _contacts(plain, k, n), _contacts(filtered, k, n)
    assert before > 0.5  # the hairpin folds onto itself in a plain draw
    assert after < 0.3 * before  # the rest: parents already placed too close for any turn of the child
    # each link keeps its turn-and-stretch construction: lengths stay near the 0.5 nm bonds
    i, j = tree.parent[~tree.root], torch.nonzero(~tree.root)[:, 0]
    assert (filtered[j] - filtered[i]).norm(dim=-1).min() > 0.0


def test_per_bead_acceptance_samples_the_tilted_conditional():
    """One bead (bead 0 of a 4-bead chain rooted at bead 2, placed last) is checked against bead 3; its
    accepted position follows ``q(x) exp(-u(r_03)) / Z`` with everything else fixed: compared with
    plain draws of that bead reweighted by ``exp(-u)``."""
    k, n = 20_000, 4
    tree, p, x0, batch, bonds = _chains(k, n)
    assert tree.hops[:4].tolist() == [2, 1, 0, 1]  # root 2; bead 0 is placed last
    g = torch.Generator().manual_seed(2)
    mean = torch.zeros(k * n, 3, dtype=torch.float64)
    scale = torch.tensor(1.0, dtype=torch.float64)
    shared = torch.randn(1, n, 3, generator=g, dtype=torch.float64).repeat(k, 1, 1)
    tables = _core_tables(4.0)

    def draw(core=None):
        eps = shared.clone()
        eps[:, 0] = torch.randn(k, 3, generator=g, dtype=torch.float64)  # only bead 0 varies
        return (x0 + bent_draw(eps.reshape(-1, 3), mean, scale, p, core=core)).reshape(k, n, 3)

    plain = draw()
    r_plain = (plain[:, 3] - plain[:, 0]).norm(dim=-1)
    w = torch.exp(-_table_value(tables, torch.zeros(k, dtype=torch.long), r_plain))
    want = float((w * r_plain).sum() / w.sum())
    torch.testing.assert_close(plain[:, 1:], plain[:1, 1:].expand(k, 3, 3))  # the rest is fixed
    filtered = draw(_filter(tree, x0, batch, bonds, 4.0, 64, g))
    r_filt = (filtered[:, 3] - filtered[:, 0]).norm(dim=-1)
    se = float(r_plain.std()) / k**0.5
    assert float(r_plain.mean()) < want - 10 * se  # the tilt moves the bead away measurably
    assert float(r_filt.mean()) == pytest.approx(want, abs=4 * se)


# -- training: the filtered draw's likelihood ------------------------------------------------------

@pytest.mark.parametrize("centred", [False, True])
def test_proposals_given_the_true_steps_reproduce_the_draw_they_came_from(centred):
    """With the innovations of a draw, each bead's proposal given the drawn steps before it is
    that bead's drawn step (the conditional the filter samples, every bead at once)."""
    from dataclasses import replace

    from cgsim.model.tree import conditional_proposals

    k, n = 3, 7
    tree, p, x0, batch, bonds = _chains(k, n)
    p = replace(p, centred=centred)
    g = torch.Generator().manual_seed(5)
    mean = 0.2 * torch.randn(k * n, 3, generator=g, dtype=torch.float64)
    scale = torch.tensor(0.7, dtype=torch.float64)
    eps = torch.randn(k * n, 3, generator=g, dtype=torch.float64)
    step = bent_draw(eps, mean, scale, p)
    proposals, placed = conditional_proposals(eps[None], step, mean, scale, p)
    torch.testing.assert_close(proposals[0], placed)
    if centred:  # the draw's own frame: the step before recentring, a rigid shift of each tree
        shift = step - placed
        torch.testing.assert_close(shift, shift[tree.root_of])
    else:
        torch.testing.assert_close(placed, step)


def test_log_partition_is_the_log_mean_acceptance_of_each_beads_proposals():
    from cgsim.model.excluded import core_log_partition

    g = torch.Generator().manual_seed(6)
    n, kk = 5, 4
    proposals = torch.rand(kk, n, 3, generator=g, dtype=torch.float64)
    placed = torch.rand(n, 3, generator=g, dtype=torch.float64)
    new, other = torch.tensor([3, 3, 4, 1]), torch.tensor([0, 1, 2, 4])
    table = torch.zeros(4, dtype=torch.long)
    tables = _core_tables(3.0)
    got = core_log_partition(proposals, placed, (new, other, table), tables, 2.0, None, torch.zeros(n, dtype=torch.long))
    want = 0.0
    for bead in (1, 3, 4):  # by hand: each bead's energy per proposal, log of the mean acceptance
        acc = []
        for s in range(kk):
            e = sum(3.0 * max(0.0, 1 - float((proposals[s, i] - placed[j]).norm()) / R_CORE) ** 2
                    for i, j in zip(new.tolist(), other.tolist(), strict=True) if i == bead)
            acc.append(np.exp(-2.0 * e))
        want += np.log(np.mean(acc))
    assert float(got) == pytest.approx(want, rel=1e-3)  # the table interpolates u linearly on a 0.01 nm grid
    # the sampler's own term with R tries: log Z - log(1 - (1 - Z)^R), never below -log R
    by_bead = []
    for bead in (1, 3, 4):
        sel = new == bead
        one = core_log_partition(proposals, placed, (new[sel], other[sel], table[sel]), tables, 2.0, None,
                                 torch.zeros(n, dtype=torch.long))
        by_bead.append(float(one))
    got_r = core_log_partition(proposals, placed, (new, other, table), tables, 2.0, None, torch.zeros(n, dtype=torch.long),
                               tries=5)
    want_r = sum(lz - np.log(1 - (1 - np.exp(lz)) ** 5) for lz in by_bead)
    assert float(got_r) == pytest.approx(want_r, rel=1e-9)
    assert float(got_r) >= -3 * np.log(5) - 1e-9
    far = core_log_partition(proposals + 100.0, placed, (new, other, table), tables, 2.0, None,
                             torch.zeros(n, dtype=torch.long), tries=5)
    onto = proposals.clone()
    onto[:, 3], onto[:, 4], onto[:, 1] = placed[0], placed[2], placed[4]  # every bead onto a partner
    deep = core_log_partition(onto, placed, (new, other, table), tables, 50.0, None, torch.zeros(n, dtype=torch.long),
                              tries=5)
    assert float(far) == pytest.approx(0.0, abs=1e-9) and float(deep) == pytest.approx(-3 * np.log(5), rel=1e-6)
    empty = (torch.zeros(0, dtype=torch.long),) * 3
    assert float(core_log_partition(proposals, placed, empty, tables, 1.0, None, torch.zeros(n, dtype=torch.long))) == 0.0


def test_a_model_trained_with_the_core_adds_its_log_partition_and_keeps_its_prior():
    from cgsim.model import collate
    from cgsim.model.checkpoint import restore_training, training_state
    from cgsim.model.tree import TreeNoise
    from cgsim.train.prior_fit import fit_prior_to
    from tests.conftest import BOX, chain_system, tiny_model

    with pytest.raises(ValueError, match="core_samples must be >= 0 and needs bend"):
        TreeNoise(16, core_samples=4)
    m = tiny_model(collective=TreeNoise(16, min_std=1e-3, bend=True, centred=True, core_samples=4).double(),
                   target="displacement")
    sys_, pos = chain_system(20, BOX, 5)
    nxt = pos[:, -1] + 0.05 * torch.randn(20, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    batch = collate([sys_], [pos])
    m.train()
    with pytest.raises(ValueError, match="needs a structural prior fitted before training"):
        m.loss_terms(batch, nxt)

    class _Traj:  # the fields fit_prior_to reads
        name, graph, positions = "chain", sys_, pos.permute(1, 0, 2).numpy()

    m.prior = fit_prior_to([_Traj()], ["A", "B", "C"], {"nb_cutoff": 1.0, "min_samples": 10, "core_tries": 8})
    terms = m.loss_terms(batch, nxt, torch.Generator().manual_seed(0))
    assert "core_logz" in terms and m.collective.core_log_strength is None and m.core_strength() == 1.0
    total = m.loss(batch, nxt, torch.Generator().manual_seed(0))
    torch.testing.assert_close(total, terms["nll"] + terms["core_logz"])
    # a learned exponent gets its gradient from the filtered likelihood
    learned = tiny_model(collective=TreeNoise(16, min_std=1e-3, bend=True, centred=True, core_samples=4,
                                              learn_core_strength=True).double(), target="displacement")
    learned.prior = m.prior
    learned.train()
    learned.loss(batch, nxt, torch.Generator().manual_seed(0)).backward()
    assert float(learned.collective.core_log_strength.grad) != 0.0
    # the prior travels with the training state and comes back on resume
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = training_state({}, m, None, opt, sched, 0, 1, {}, {}, {}, 1)
    assert state["prior"]["core_tries"] == 8
    fresh = tiny_model(collective=TreeNoise(16, min_std=1e-3, bend=True, centred=True, core_samples=4).double(),
                       target="displacement")
    restore_training(state, fresh, torch.optim.SGD(fresh.parameters(), lr=0.1),
                     torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(fresh.parameters(), lr=0.1), lambda s: 1.0))
    assert fresh.prior is not None and fresh.prior.to_dict() == m.prior.to_dict()


def test_free_beads_of_different_trees_keep_apart_where_no_recentring_moves_them():
    """Single-bead molecules (ions) are roots: with ``across_trees`` they check each other at
    level 0 (a non-centred draw places every tree where it stays)."""
    k = 500
    n = 2 * k
    parent, mol = bond_tree(n, np.zeros((2, 0), dtype=np.int64))
    tree = make_tree(parent, torch.from_numpy(mol), n)
    x0 = torch.zeros(n, 3, dtype=torch.float64)
    x0[1::2, 0] = 0.6  # pairs of ions 0.6 nm apart, one pair per system
    batch = torch.arange(k).repeat_interleave(2)
    zeros = torch.zeros(n, 3, dtype=torch.float64)
    p = TreeParams(tree=tree, root_std=torch.full((n,), 0.4, dtype=torch.float64), std=torch.ones(n, 2, dtype=torch.float64),
                   coupling=torch.full((n, 2), 0.5, dtype=torch.float64), direction=zeros, links=zeros)
    g = torch.Generator().manual_seed(7)
    eps = torch.randn(n, 3, generator=g, dtype=torch.float64)
    scale = torch.tensor(1.0, dtype=torch.float64)
    plain = x0 + bent_draw(eps, zeros, scale, p)
    no_bonds = torch.zeros(2, 0, dtype=torch.long)
    lookup, cls = torch.zeros(1, 1, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    for across, drop in ((False, False), (True, True)):
        pairs = core_pairs(lookup, cls, _exclude(no_bonds, n), n, tree.hops, tree.root_of, x0, None, batch, 5.0, across)
        f = core_filter(_core_tables(200.0), pairs, tree.hops, torch.nonzero(tree.root)[:, 0], tree.levels, x0, None,
                        batch, 1.0, torch.randn(15, n, 3, generator=g, dtype=torch.float64),
                        torch.rand(16, n, generator=g, dtype=torch.float64))
        filtered = x0 + bent_draw(eps, zeros, scale, p, core=f)
        before = float(((plain[0::2] - plain[1::2]).norm(dim=-1) < R_CORE).float().mean())
        after = float(((filtered[0::2] - filtered[1::2]).norm(dim=-1) < R_CORE).float().mean())
        assert before > 0.3
        if drop:
            assert after < 0.2 * before
        else:  # pairs of one tree only: ions are untouched
            torch.testing.assert_close(filtered, plain)


def test_bonded_and_angle_tables_join_the_core_shifted_to_zero_and_pairs_point_to_the_later_bead():
    from cgsim.model.excluded import merge_tables, ordered_pairs

    nb = _core_tables(3.0)
    r = np.arange(0.5, 1.5, 0.01)
    bond = _stack([PairTable(r0=0.5, dr=0.01, u=5 * (r - 1.0) ** 2 - 2.0, lo=0.6, hi=1.4, k=10.0, n_samples=1)],
                  torch.device("cpu"), torch.float64)
    merged, off = merge_tables([nb, None, bond], [False, True, True])
    assert off == [0, -1, 1] and merged.u.shape[0] == 2
    torch.testing.assert_close(merged.u[0, :nb.u.shape[1]], nb.u[0])  # the core as it was
    assert float(merged.u[1].min()) == 0.0  # the bond's well shifted to 0, its shape kept
    x = torch.tensor([0.8, 1.0, 1.2], dtype=torch.float64)
    idx = torch.ones(3, dtype=torch.long)
    torch.testing.assert_close(_table_value(merged, idx, x) - _table_value(merged, idx, x)[1],
                               _table_value(bond, idx - 1, x) - _table_value(bond, idx - 1, x)[1])
    hops = torch.tensor([2, 1, 0, 1])
    new, other, table = ordered_pairs(torch.tensor([[0, 1, 1], [1, 2, 3]]), torch.tensor([7, 8, 9]), hops)
    assert new.tolist() == [0, 1, 1, 3] and other.tolist() == [1, 2, 3, 1] and table.tolist() == [7, 8, 9, 9]


def test_a_model_with_every_term_in_the_filter_trains_and_draws():
    from cgsim.model import collate
    from cgsim.model.prior import bead_classes
    from cgsim.model.sampling import generator_noise, learned_step
    from cgsim.model.tree import TreeNoise
    from cgsim.train.prior_fit import fit_prior_to
    from tests.conftest import BOX, chain_system, tiny_model

    with pytest.raises(ValueError, match="core_terms must be one of"):
        TreeNoise(16, bend=True, core_samples=2, core_terms="bonds")
    m = tiny_model(collective=TreeNoise(16, min_std=1e-3, bend=True, centred=True, core_samples=4,
                                        learn_core_strength=True, core_terms="all").double(), target="displacement")
    sys_, pos = chain_system(20, BOX, 5)
    nxt = pos[:, -1] + 0.05 * torch.randn(20, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    class _Traj:
        name, graph, positions = "chain", sys_, pos.permute(1, 0, 2).numpy()

    m.prior = fit_prior_to([_Traj()], ["A", "B", "C"], {"nb_cutoff": 1.0, "min_samples": 10, "core_tries": 8})
    batch = collate([sys_], [pos])
    m.train()
    loss = m.loss(batch, nxt, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and float(m.collective.core_log_strength.grad) != 0.0
    m.eval()
    classes = bead_classes(sys_.atom_type, sys_.atom_to_bead, sys_.n_beads, ["A", "B", "C"])
    topo = m.prior.topology(classes, batch.bead_bonds, batch.n_beads, batch.pos.device, batch.pos.dtype)
    draws = [learned_step(m, batch, generator_noise((20, 3), torch.Generator().manual_seed(s), batch.pos.device,
                                                    batch.pos.dtype), prior_topology=topo) for s in range(2)]
    assert all(torch.isfinite(d).all() for d in draws) and not torch.equal(draws[0], draws[1])


def test_core_energy_reads_the_grid_ends_and_non_finite_proposals_in_float32():
    from cgsim.model.excluded import CoreFilter

    r = np.arange(0.0025, 2.0, 0.005)
    tab = _stack([PairTable(r0=0.0025, dr=0.005, u=np.clip(1.2 - r, 0, None) * 50, lo=0.5, hi=1.2, k=1.0,
                            n_samples=1, upper_wall=False)], torch.device("cpu"), torch.float32)
    f = CoreFilter(x0=torch.zeros(1, 3), box=None, batch=torch.zeros(1, dtype=torch.long), by_level=[None],
                   tables=tab, strength=1.0, eps=torch.zeros(0, 1, 3), uniform=torch.zeros(1, 1))
    assert f.grid is not None  # one grid, flat beyond: the fast interpolation
    pos = torch.tensor([[[1e6, 0, 0], [float("nan"), 0, 0], [0.3, 0, 0], [1.9975, 0, 0]]], dtype=torch.float32)
    u = f._pair_energy(pos, torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    assert u[0, 0] == 0.0 and u[0, 1] > 50 and u[0, 2] == pytest.approx(45.0, rel=1e-3) and u[0, 3] == 0.0


def test_export_keeps_the_prior_a_model_was_trained_with_and_sets_only_its_schedule(tmp_path):
    from cgsim.data.load import load_systems
    from cgsim.errors import CgsimInputError
    from cgsim.model.card import ModelCard
    from cgsim.model.checkpoint import load_checkpoint, save_checkpoint
    from cgsim.train.export import export_model
    from cgsim.train.prior_fit import fit_prior_to
    from tests.conftest import CKPT_MODEL, SEQ, make_checkpoint

    collective = {"_target_": "cgsim.model.tree.TreeNoise", "dim": 16, "bend": True, "centred": True,
                  "core_samples": 4, "learn_core_strength": True}
    src = make_checkpoint(tmp_path / "core.pt", model={**CKPT_MODEL, "collective": collective},
                          data={"train_systems": [str(SEQ)]})
    ckpt = load_checkpoint(src)
    systems = load_systems([str(SEQ)], "test")
    prior = fit_prior_to(systems.trajectories, systems.atom_types, {"nb_cutoff": 1.5, "core_tries": 16})
    ckpt["prior"] = prior.to_dict()  # what cgsim train stores for core_samples > 0
    save_checkpoint(src, ckpt)
    with pytest.raises(CgsimInputError, match="--prior strength.*trained with its prior"):
        export_model(src, tmp_path / "bad.pt", prior={"nb_cutoff": 2.0, "strength": 2.0})
    export_model(src, tmp_path / "out.pt", prior={"nb_cutoff": 2.0, "steps": 0, "core_tries": 8})
    out = load_checkpoint(tmp_path / "out.pt")
    assert out["prior"]["nb_cutoff"] == 1.5 and out["prior"]["tables"] == prior.to_dict()["tables"]
    assert out["prior"]["steps"] == 0 and out["prior"]["core_tries"] == 8
    card = ModelCard.from_checkpoint(out, tmp_path / "out.pt")
    assert card.sampler.parameters["structural_prior"]["core_strength"] == 1.0  # exp(0): untrained
    assert card.sampler.parameters["gaussian"]["core_samples"] == 4


def test_a_learned_pair_correction_is_the_same_energy_in_training_and_in_the_draws_grid():
    from cgsim.model import collate
    from cgsim.model.excluded import PairCorrection
    from cgsim.model.prior import bead_classes
    from cgsim.model.tree import TreeNoise
    from cgsim.train.prior_fit import fit_prior_to
    from tests.conftest import BOX, chain_system, tiny_model

    corr = PairCorrection(5, 2.0, kinds=2)
    with torch.no_grad():
        corr.theta.copy_(torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0, 0.0]]))
    sp = torch.nn.functional.softplus
    r = torch.tensor([[0.25, 1.0, 5.0]])
    got = corr(r, torch.tensor([0, 1, 0]))  # 0.25 nm: halfway between points 0 and 1; 5 nm: flat beyond
    torch.testing.assert_close(got, torch.stack([(sp(torch.tensor(0.0)) + sp(torch.tensor(1.0))) / 2,
                                                 sp(torch.tensor(2.0)), sp(torch.tensor(4.0))])[None])
    with pytest.raises(ValueError, match="core_learned_bins needs core_samples"):
        TreeNoise(16, bend=True, core_learned_bins=5)
    m = tiny_model(collective=TreeNoise(16, min_std=1e-3, bend=True, centred=True, core_samples=4,
                                        learn_core_strength=True, core_terms="all", core_learned_bins=9,
                                        core_learned_range=2.0).double(), target="displacement")
    with torch.no_grad():
        m.collective.core_correction.theta.normal_(generator=torch.Generator().manual_seed(0))
        m.collective.core_log_strength.fill_(0.3)
    sys_, pos = chain_system(20, BOX, 5)

    class _Traj:
        name, graph, positions = "chain", sys_, pos.permute(1, 0, 2).numpy()

    m.prior = fit_prior_to([_Traj()], ["A", "B", "C"], {"nb_cutoff": 1.0, "min_samples": 10, "core_tries": 8})
    batch = collate([sys_], [pos])
    classes = bead_classes(sys_.atom_type, sys_.atom_to_bead, sys_.n_beads, ["A", "B", "C"])
    topo = m.prior.topology(classes, batch.bead_bonds, batch.n_beads, batch.pos.device, batch.pos.dtype)
    tables, off, (flat, n, r_lo, inv_dr) = m._core_tables(topo)
    s = float(m.core_strength().detach())
    for t in range(tables.u.shape[0]):
        kind = torch.tensor([0 if t < off[1] else 1 if off[2] < 0 or t < off[2] else 2])
        x = torch.tensor([0.62, 1.37], dtype=torch.float64)
        at = ((x - r_lo) * inv_dr).round().long()  # grid points: no interpolation error
        x = r_lo + at / inv_dr
        want = s * _table_value(tables, torch.full((2,), t), x) + m.collective.core_correction(x[None], kind)[0]
        torch.testing.assert_close(s * flat.reshape(-1, n)[t, at], want.detach(), rtol=1e-6, atol=1e-6)


def test_a_weighted_pick_samples_the_tilt_of_a_table_that_also_attracts():
    """``select="weighted"`` picks one of the proposals with probability ``exp(-u)``: with a
    signed table (a core and a well at 1.2 nm) the placed bead follows ``q(x) exp(-u(r)) / Z``
    (plain draws reweighted), where the rejection filter clips the well away (energies >= 0)."""
    k, n = 6_000, 4
    tree, p, x0, batch, bonds = _chains(k, n)
    g = torch.Generator().manual_seed(5)
    mean = torch.zeros(k * n, 3, dtype=torch.float64)
    scale = torch.tensor(1.0, dtype=torch.float64)
    shared = torch.randn(1, n, 3, generator=g, dtype=torch.float64).repeat(k, 1, 1)
    r = np.arange(0.0, 3.0, 0.01)
    u = 3.0 * np.clip(1 - r / 0.6, 0, None) ** 2 - 2.0 * np.exp(-(((r - 1.2) / 0.3) ** 2))
    tables = _stack([PairTable(r0=0.0, dr=0.01, u=u, lo=0.0, hi=2.9, k=1.0, n_samples=1, upper_wall=False)],
                    torch.device("cpu"), torch.float64)

    def draw(select=None, tries=96):
        eps = shared.clone()
        eps[:, 0] = torch.randn(k, 3, generator=g, dtype=torch.float64)  # only bead 0 varies
        core = None
        if select is not None:
            pairs = core_pairs(torch.zeros(1, 1, dtype=torch.long), torch.zeros(k * n, dtype=torch.long),
                               _exclude(bonds, k * n), k * n, tree.hops, tree.root_of, x0, None, batch, 10.0)
            core = core_filter(tables, pairs, tree.hops, torch.nonzero(tree.root)[:, 0], tree.levels, x0, None,
                               batch, 1.0, torch.randn(tries - 1, k * n, 3, generator=g, dtype=torch.float64),
                               torch.rand(tries, k * n, generator=g, dtype=torch.float64), select=select)
        out = (x0 + bent_draw(eps.reshape(-1, 3), mean, scale, p, core=core)).reshape(k, n, 3)
        return (out[:, 3] - out[:, 0]).norm(dim=-1)

    r_plain = draw()
    w = torch.exp(-_table_value(tables, torch.zeros(k, dtype=torch.long), r_plain))
    want = float((w * r_plain).sum() / w.sum())
    se = float(r_plain.std()) / k**0.5
    in_well = float((w * ((r_plain - 1.2).abs() < 0.3)).sum() / w.sum())
    assert in_well > float(((r_plain - 1.2).abs() < 0.3).double().mean()) + 0.05  # the well pulls measurably
    r_w = draw("weighted")
    assert float(r_w.mean()) == pytest.approx(want, abs=5 * se)
    assert float(((r_w - 1.2).abs() < 0.3).double().mean()) == pytest.approx(in_well, abs=0.03)
    # the rejection filter only sees the clipped (repulsive) part: it cannot make the well's pairs
    r_first = draw("first")
    assert float(((r_first - 1.2).abs() < 0.3).double().mean()) < in_well - 0.04


def test_the_prior_keeps_its_pick_rule_and_refuses_an_unknown_one():
    from cgsim.model.prior import StructuralPrior

    tab = PairTable(r0=0.0, dr=0.01, u=np.zeros(10), lo=0.0, hi=0.09, k=1.0, n_samples=1, upper_wall=False)
    prior = StructuralPrior(tables={"nb": {"*": tab}}, nb_cutoff=0.1, core_tries=8)
    assert prior.core_select == "first"
    weighted = prior.with_schedule(core_select="weighted")
    assert StructuralPrior.from_dict(weighted.to_dict()).core_select == "weighted"
    with pytest.raises(ValueError, match="core_select must be one of"):
        prior.with_schedule(core_select="best")
