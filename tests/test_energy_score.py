"""Energy-score training of the few-call sampler (cgsim/train/energy_score.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgsim.data.load import load_systems
from cgsim.model import scoring
from cgsim.model.batch import SystemGraph, collate
from cgsim.model.card import ModelCard
from cgsim.model.checkpoint import load_checkpoint, model_from_checkpoint
from cgsim.train import energy_score as es

CKPT = "tests/fixtures/checkpoints/chain.pt"
SYSTEM = "data/chain/mapped/test/seq_000"


def _three_beads(box=None) -> tuple[SystemGraph, torch.Tensor]:
    """Beads 0-1 bonded, bead 2 a non-bonded neighbour 0.5 nm from bead 1."""
    g = SystemGraph(atom_type=torch.zeros(3, dtype=torch.long), atom_bonds=torch.zeros((2, 0), dtype=torch.long),
                    atom_to_bead=torch.arange(3), bead_bonds=torch.tensor([[0, 1], [1, 0]]), n_beads=3, box=box)
    x = torch.tensor([[1.0, 1.0, 1.0], [1.3, 1.0, 1.0], [1.3, 1.5, 1.0]], dtype=torch.float64)
    return g, x[:, None].repeat(1, 2, 1)


def test_scores_of_a_collapsed_ensemble_are_its_distance_from_the_truth():
    g, hist = _three_beads()
    b = collate([g], [hist])
    y = hist[:, -1].clone()
    scale = torch.tensor(0.5, dtype=torch.float64)
    t = es.energy_score_terms(y, y, y, b, scale, pair_cutoff=0.8)
    assert float(t.displacement) == float(t.bond) == float(t.pair) == 0.0
    # both draws move bead 0 by 0.1 nm along x: the bond shortens 0.1 nm, its distance to bead 2
    # changes too, but the pair term scores only non-bonded pairs closer than the cutoff now
    # (1-2 at 0.5 nm; 0-2 at 0.58 nm)
    x = y.clone()
    x[0, 0] += 0.1
    t = es.energy_score_terms(x, x.clone(), y, b, scale, pair_cutoff=0.8)
    assert float(t.displacement) == pytest.approx(0.1 / 0.5 / 3)  # one bead of three, in scale units
    assert float(t.bond) == pytest.approx(0.1 / 0.5)
    d_before, d_after = float(np.hypot(0.3, 0.5)), float(np.hypot(0.2, 0.5))
    assert float(t.pair) == pytest.approx(abs(d_after - d_before) / 0.5 / 2)  # pairs 0-2 (moved) and 1-2 (not)


def test_class_balance_weighs_each_class_alike():
    values = torch.tensor([1.0, 1.0, 1.0, 4.0])
    assert float(scoring._balanced_mean(values, torch.tensor([0, 0, 0, 1]))) == pytest.approx(2.5)
    assert float(scoring._balanced_mean(values, None)) == pytest.approx(1.75)
    g, hist = _three_beads()
    b = collate([g], [hist])
    y = hist[:, -1].clone()
    x = y.clone()
    x[0, 0] += 0.1
    scale = torch.tensor(0.5, dtype=torch.float64)
    # bead 0 alone in class 0: its displacement counts half, not a third
    t = es.energy_score_terms(x, x.clone(), y, b, scale, 0.8, bead_class=torch.tensor([0, 1, 1]))
    assert float(t.displacement) == pytest.approx(0.1 / 0.5 / 2)
    # pairs 0-2 (classes 0-1) and 1-2 (1-1) are different pair classes: the same plain mean here
    d_before, d_after = float(np.hypot(0.3, 0.5)), float(np.hypot(0.2, 0.5))
    assert float(t.pair) == pytest.approx(abs(d_after - d_before) / 0.5 / 2)


def test_centre_term_scores_each_molecules_mean_displacement():
    g, hist = _three_beads()
    b = collate([g], [hist])
    y = hist[:, -1].clone()
    x = y.clone()
    x[0, 0] += 0.1  # molecule 0 = beads 0-1 (bonded): centre moves 0.05 nm; molecule 1 = bead 2: still
    scale = torch.tensor(0.5, dtype=torch.float64)
    t = es.energy_score_terms(x, x.clone(), y, b, scale, 0.8, molecule=torch.tensor([0, 0, 1]))
    assert float(t.centre) == pytest.approx(0.05 / 0.5 / 2)
    assert float(es.energy_score_terms(x, x.clone(), y, b, scale, 0.8).centre) == 0.0
    mols = es.system_molecules([type("T", (), {"graph": g})()])
    assert mols[0].tolist() == [0, 0, 1]


def test_system_classes_share_indices_across_systems(chain_model):
    _, card, systems = chain_model
    classes = es.system_classes(systems + systems, list(card.atom_types))
    assert torch.equal(classes[0], classes[1]) and classes[0].shape == (systems[0].graph.n_beads,)
    assert int(classes[0].max()) >= 1  # the chain has beads of more than one fine composition


def test_the_score_prefers_the_true_spread_to_a_shrunk_one():
    """A proper score: draws with the data's spread beat draws shrunk towards the mean (what a
    posterior-mean sampler produces), and beat draws spread too wide."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(20000, 3, generator=g)
    scores = {}
    for spread in (0.5, 1.0, 1.5):
        a, b = spread * torch.randn(20000, 3, generator=g), spread * torch.randn(20000, 3, generator=g)
        scores[spread] = float(scoring._es(a, b, y).mean())
    assert scores[1.0] < scores[0.5] - 0.05 and scores[1.0] < scores[1.5] - 0.02, scores


@pytest.fixture(scope="module")
def chain_model():
    ckpt = load_checkpoint(CKPT)
    card = ModelCard.from_checkpoint(ckpt, CKPT)
    systems = load_systems([SYSTEM], "systems", list(card.atom_types)).trajectories
    return ckpt, card, systems


def _train(chain_model, path, steps):
    ckpt, card, systems = chain_model
    model = model_from_checkpoint(ckpt)
    return es.train_sampler(model, systems, card.stride, levels=2, sigma_start=1.0, sigma_end=0.3, steps=steps,
                            state_path=path, batch_windows=2, val_windows=2, save_every=2, progress=False, lr=1e-3)


def test_training_changes_the_refiner_and_resumes_bitwise(chain_model, tmp_path):
    ckpt = chain_model[0]
    start = model_from_checkpoint(ckpt).refiner.state_dict()
    straight, report = _train(chain_model, tmp_path / "a.pt", 4)
    assert report["steps"] == 4 and all(np.isfinite(v) for v in report["val_after"].values())
    assert any(not torch.equal(straight.state_dict()[k], start[k]) for k in start)

    class Killed(Exception):
        pass

    class KillAtThirdStep:  # stands in for the progress bar: the run dies after step 3 (saved at step 2)
        def __init__(self, *args, initial=0, **kwargs):
            self.n = initial

        def update(self, k):
            self.n += k
            if self.n == 3:
                raise Killed

        def set_postfix(self, **kwargs):
            pass

        def close(self):
            pass

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(es, "tqdm", KillAtThirdStep)
        with pytest.raises(Killed):
            _train(chain_model, tmp_path / "b.pt", 4)
    assert torch.load(tmp_path / "b.pt", weights_only=False)["step"] == 2
    resumed, _ = _train(chain_model, tmp_path / "b.pt", 4)  # finds b.pt at step 2 and goes on
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)
    assert resumed.sampler == "student" and resumed.calls_per_step == 2


def test_command_writes_a_three_call_model(tmp_path, capsys):
    es.main([CKPT, str(tmp_path / "out"), "--systems", SYSTEM, "--steps", "2", "--batch", "1"])
    card = ModelCard.from_checkpoint(load_checkpoint(tmp_path / "out" / "sampler.pt"), "sampler.pt")
    assert card.sampler.calls_per_step == 3 and card.sampler.parameters["score_refiner"]["sampler"] == "student"
    assert (tmp_path / "out" / "energy_score.json").exists()
    assert "3 calls per step" in capsys.readouterr().out


def test_command_refuses_a_model_without_a_refiner_and_bad_levels(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        es.main([CKPT, str(tmp_path / "x"), "--systems", SYSTEM, "--levels", "0"])
    assert exc.value.code == 2
    assert "--levels" in capsys.readouterr().err
