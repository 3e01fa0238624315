"""The structural prior (cgsim/model/prior.py): fitting, sampling, symmetry, serialisation, IBI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgsim.model.prior import (
    StructuralPrior,
    bead_classes,
    fit_table,
    ibi_update,
    pair_lists,
)


def _bond_sample(n: int, r0: float, s: float, seed: int = 0) -> np.ndarray:
    """Distances of a 3D harmonic bond: P(r) ~ r^2 exp(-(r - r0)^2 / 2 s^2) (rejection sampling)."""
    rng = np.random.default_rng(seed)
    out = []
    while sum(len(o) for o in out) < n:
        r = rng.normal(r0, s, 4 * n)
        r = r[r > 0]
        keep = rng.uniform(size=r.size) < (r / (r0 + 5 * s)) ** 2
        out.append(r[keep])
    return np.concatenate(out)[:n]


def test_pair_lists_of_a_chain():
    bonds = torch.tensor([[0, 1, 2, 1], [1, 2, 3, 0]])  # both directions of 0-1 given
    bonded, angle = pair_lists(bonds, 4)
    assert bonded.t().tolist() == [[0, 1], [1, 2], [2, 3]]
    assert angle.t().tolist() == [[0, 2], [1, 3]]


def test_bead_classes_count_fine_types():
    atom_type = torch.tensor([0, 0, 1, 1, 1, 2])
    atom_to_bead = torch.tensor([0, 0, 0, 1, 1, 2])
    assert bead_classes(atom_type, atom_to_bead, 3, ["C", "H", "Li"]) == ["Cx2+Hx1", "Hx2", "Lix1"]


def test_boltzmann_inversion_of_a_harmonic_bond():
    r0, s = 1.0, 0.1
    t = fit_table(_bond_sample(200_000, r0, s), "bond", dr=0.005, r_max=2.0, smooth_bins=1.0)
    r = t.r0 + t.dr * np.arange(t.u.size)
    u = np.interp([r0 - s, r0, r0 + s], r, t.u)
    # u(r) = (r - r0)^2 / (2 s^2) + const: 0.5 kT one std away on either side
    assert u[0] - u[1] == pytest.approx(0.5, abs=0.12)
    assert u[2] - u[1] == pytest.approx(0.5, abs=0.12)
    assert t.k == pytest.approx(1 / s**2, rel=0.1)
    # beyond the data the table keeps rising on both sides (a wall, not a cliff)
    assert t.u[0] > u[1] + 20 and t.u[-1] > u[1] + 20


def test_nb_core_is_zero_beyond_the_first_peak():
    rng = np.random.default_rng(1)
    r = np.concatenate([rng.normal(0.5, 0.03, 20_000), 1.2 * rng.uniform(0.25, 1.0, 80_000) ** (1 / 3)])
    r = r[(r > 0.35) & (r < 1.2)]
    t = fit_table(r, "nb", dr=0.005, r_max=1.2)
    assert 0.45 < t.hi < 0.56
    grid = t.r0 + t.dr * np.arange(t.u.size)
    assert np.all(t.u[grid > t.hi + t.dr] == 0.0)
    assert np.all(np.diff(t.u[grid < 0.4]) <= 1e-9)  # repulsive (decreasing) below the data
    assert not t.upper_wall


def _two_bead_prior(r0: float = 1.0, s: float = 0.1, **schedule) -> StructuralPrior:
    x = np.zeros((4000, 2, 3))
    x[:, 1, 0] = _bond_sample(4000, r0, s, seed=2)
    rows = [("dimer", ["A", "A"], torch.tensor([[0], [1]]), x, None)]
    return StructuralPrior.fit(rows, nb_cutoff=2.0, atom_types=["A"], min_samples=100, **schedule)


def _sample(prior: StructuralPrior, x0: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, seed: int,
            box: torch.Tensor | None = None, bonds: torch.Tensor | None = None) -> torch.Tensor:
    n = x0.shape[0]
    bonds = torch.tensor([[0], [1]]) if bonds is None else bonds
    topo = prior.topology(["A"] * n, bonds, n, torch.device("cpu"), x0.dtype)
    g = torch.Generator().manual_seed(seed)
    return prior.sample(x0, mean, std, topo, torch.zeros(n, dtype=torch.long), box,
                        lambda: torch.randn(x0.shape, generator=g, dtype=x0.dtype))


def test_sampling_restores_the_bond_distribution_from_a_broad_draw():
    """With a draw much broader than the bond, the tilted draw's bond lengths follow the data."""
    prior = _two_bead_prior(steps=60, tau=0.3)
    rng = torch.Generator().manual_seed(3)
    lengths = []
    for k in range(300):
        mean = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
        std = torch.full((2, 3), 1.0, dtype=torch.float64)
        x0 = mean + std * torch.randn(2, 3, generator=rng, dtype=torch.float64)
        raw = float((x0[0] - x0[1]).norm())
        x = _sample(prior, x0, mean, std, seed=k)
        lengths.append((raw, float((x[0] - x[1]).norm())))
    raw, tilted = np.array(lengths).T
    assert raw.std() > 0.5  # the draw alone breaks the bond
    assert tilted.mean() == pytest.approx(1.0, abs=0.05)
    # the unadjusted Langevin steps leave the bond somewhat broader than the data (0.1 nm)
    assert 0.07 < tilted.std() < 0.16
    assert tilted.min() > 0.6


def test_steps_zero_is_exactly_the_draw():
    prior = _two_bead_prior(steps=0)
    x0 = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(_sample(prior, x0, x0, torch.ones(2, 3, dtype=torch.float64), 0), x0)


def test_translation_invariance_and_periodic_images():
    prior = _two_bead_prior(steps=10, tau=0.3)
    x0 = torch.tensor([[0.1, 0.2, 0.3], [1.6, 0.2, 0.3], [0.5, 1.3, 0.3]], dtype=torch.float64)
    mean = x0 + 0.05
    std = torch.full((3, 3), 0.3, dtype=torch.float64)
    bonds = torch.tensor([[0, 1], [1, 2]])
    a = _sample(prior, x0, mean, std, 5, bonds=bonds)
    shift = torch.tensor([7.0, -3.0, 11.0], dtype=torch.float64)
    b = _sample(prior, x0 + shift, mean + shift, std, 5, bonds=bonds)
    assert torch.allclose(b - shift, a, atol=1e-9)
    # in a periodic box, moving one bead (and its mean) by a box vector moves its result the same way
    box = torch.tensor([[4.0, 4.0, 4.0]], dtype=torch.float64)
    c = _sample(prior, x0, mean, std, 6, box=box, bonds=bonds)
    image = torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, -4.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    d = _sample(prior, x0 + image, mean + image, std, 6, box=box, bonds=bonds)
    assert torch.allclose(d - image, c, atol=1e-9)


def test_round_trip_and_schedule_checks():
    prior = _two_bead_prior(steps=7, tau=0.2, strength=1.5)
    back = StructuralPrior.from_dict(prior.to_dict())
    assert (back.steps, back.tau, back.strength, back.atom_types) == (7, 0.2, 1.5, ["A"])
    for kind, tables in prior.tables.items():
        for key, t in tables.items():
            np.testing.assert_array_equal(back.tables[kind][key].u, t.u)
    assert prior.with_schedule(steps=3, anchor="draw").steps == 3
    with pytest.raises(ValueError, match="tau"):
        prior.with_schedule(tau=1.5)
    with pytest.raises(ValueError, match="anchor"):
        prior.with_schedule(anchor="nowhere")
    with pytest.raises(ValueError, match="structural-prior"):
        StructuralPrior.from_dict({"format": "other"})


def test_ibi_update_moves_the_table_towards_the_target():
    target = _bond_sample(50_000, 1.0, 0.1, seed=4)
    table = fit_table(target, "bond", dr=0.005, r_max=2.0)
    same, err = ibi_update(table, target, target, 1, 1)
    np.testing.assert_allclose(same.u, table.u)
    assert err == 0.0
    too_long = _bond_sample(50_000, 1.1, 0.1, seed=5)  # the sampler makes bonds too long
    new, err = ibi_update(table, too_long, target, 1, 1, damping=1.0)
    grid = table.r0 + table.dr * np.arange(table.u.size)
    assert err > 0.1
    assert np.interp(1.15, grid, new.u - table.u) > 0.3   # long bonds cost more
    assert np.interp(0.95, grid, new.u - table.u) < -0.3  # short ones less


# -- a shipped model with a prior, as a user runs it ---------------------------------------------
CHAIN_CKPT = "tests/fixtures/checkpoints/chain.pt"
CHAIN_INIT = "data/chain/mapped/test/seq_000"


@pytest.fixture(scope="module")
def chain_with_prior(tmp_path_factory):
    """The fixture chain checkpoint, refiner off, with a prior fitted to one held-out chain's frames."""
    from cgsim.data.load import load_systems
    from cgsim.train.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(CHAIN_CKPT)
    vocab = list(ckpt["data"]["atom_types"])
    t = load_systems([CHAIN_INIT], "initial", vocab).trajectories[0]
    classes = bead_classes(t.graph.atom_type, t.graph.atom_to_bead, t.graph.n_beads, vocab)
    prior = StructuralPrior.fit([(t.name, classes, t.graph.bead_bonds, t.positions, None)], nb_cutoff=2.0,
                                atom_types=vocab, min_samples=500, steps=20, tau=0.3)
    ckpt["prior"] = prior.to_dict()
    ckpt["config"]["model"]["refinement"].update({"levels": 0, "final_denoise": False})
    path = tmp_path_factory.mktemp("prior") / "chain_prior.pt"
    save_checkpoint(path, ckpt)
    return path


def _roll(ckpt, out, *extra):
    from cgsim.cli import compose_verb
    from cgsim.rollout.command import rollout

    cfg = compose_verb("rollout", [f"checkpoint={ckpt}", f"initial={CHAIN_INIT}", "steps=6", f"output={out}",
                                   "progress=false", "num_threads=1", "replicas=2", "guard.redraws=3", *extra])
    return rollout(cfg)


def test_rollout_with_prior_is_one_call_and_reproducible(chain_with_prior, tmp_path):
    import mdtraj as md

    a = _roll(chain_with_prior, tmp_path / "a")
    _roll(chain_with_prior, tmp_path / "b")
    assert a["calls_per_step"] == 1 and a["prior_steps"] == 20
    assert all(m["status"] == "finished" for m in a["members"])
    xa = md.load(str(tmp_path / "a" / "seq_000" / "replica_001" / "rollout.h5")).xyz
    xb = md.load(str(tmp_path / "b" / "seq_000" / "replica_001" / "rollout.h5")).xyz
    np.testing.assert_array_equal(xa, xb)
    # the prior changes the frames (steps=0 is the plain one-call draw)
    c = _roll(chain_with_prior, tmp_path / "c", "prior.steps=0")
    assert c["prior_steps"] == 0
    xc = md.load(str(tmp_path / "c" / "seq_000" / "replica_001" / "rollout.h5")).xyz
    n = min(len(xa), len(xc))
    assert n >= 2 and not np.allclose(xa[1:n], xc[1:n])


def test_prior_override_needs_a_prior_and_valid_values(chain_with_prior, tmp_path):
    from cgsim.errors import CgsimInputError

    with pytest.raises(CgsimInputError, match="carries no structural prior"):
        _roll(CHAIN_CKPT, tmp_path / "x", "prior.steps=5")
    with pytest.raises(CgsimInputError, match="tau"):
        _roll(chain_with_prior, tmp_path / "y", "prior.tau=2.0")


def test_settling_removes_the_last_updates_noise():
    """Ending with noise-free updates lifts the low tail of a bond drawn collapsed."""
    prior = _two_bead_prior(steps=30, tau=0.3)
    lows = {}
    for settle in (0, 5):
        p = prior.with_schedule(settle=settle)
        r = []
        for seed in range(60):
            x0 = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0]], dtype=torch.float64)
            x = _sample(p, x0, x0.clone(), torch.full((2, 3), 0.45, dtype=torch.float64), seed)
            r.append(float((x[0] - x[1]).norm()))
        lows[settle] = np.quantile(r, 0.1)
    assert lows[5] > lows[0]
    assert lows[5] > 0.7  # the fitted bond is 1.0 +- 0.1 nm


def test_calibration_on_short_rollouts_changes_the_tables():
    from cgsim.data.load import load_systems
    from cgsim.model.card import ModelCard
    from cgsim.train.checkpoint import load_checkpoint
    from cgsim.train.loop import model_from_checkpoint
    from cgsim.train.prior_fit import calibrate_prior, fit_prior

    ckpt = load_checkpoint(CHAIN_CKPT)
    card = ModelCard.from_checkpoint(ckpt, CHAIN_CKPT)
    systems = load_systems([CHAIN_INIT], "initial", list(card.atom_types)).trajectories
    prior = fit_prior(card, {"nb_cutoff": 2.0, "min_samples": 500, "steps": 10}, systems)
    model = model_from_checkpoint(ckpt)
    model.refiner.set_schedule(levels=0, final_denoise=False)
    new, errors = calibrate_prior(model, prior, systems, stride=1, iterations=3, windows=24, progress=False,
                                  rollout_steps=4)
    assert len(errors) == 3 and all(np.isfinite(errors))
    changed = [not np.array_equal(new.tables[kind][k].u, prior.tables[kind][k].u)
               for kind in prior.tables for k in prior.tables[kind]]
    assert any(changed)
    assert model.prior is new


def test_export_calibrates_under_the_exported_schedule_when_asked(monkeypatch):
    """``--prior calibrate=N`` draws with the refiner off by default; ``refine_off=false`` draws
    under the ``--refine`` schedule the rollouts will use."""
    from cgsim.data.load import load_systems
    from cgsim.model.card import ModelCard
    from cgsim.train import export
    from cgsim.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(CHAIN_CKPT)
    card = ModelCard.from_checkpoint(ckpt, CHAIN_CKPT)
    systems = load_systems([CHAIN_INIT], "initial", list(card.atom_types)).trajectories
    seen = []

    def fake_calibrate(model, prior, *args, **kwargs):
        seen.append(model.calls_per_step())
        return prior, [0.0]

    monkeypatch.setattr(export, "training_systems", lambda _card: systems)
    monkeypatch.setattr(export, "calibrate_prior", fake_calibrate)
    refine = {"sampler": "student", "levels": 2, "steps_per_level": 0, "final_denoise": False}
    options = {"nb_cutoff": 2.0, "min_samples": 500, "calibrate": 1}
    export._fitted_prior(ckpt, card, options, refine)
    export._fitted_prior(ckpt, card, {**options, "refine_off": False}, refine)
    assert seen == [1, 3]
