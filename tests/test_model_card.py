"""The model card: one typed object with the facts a checkpoint carries (issue 21, item 1)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cgsim.data.load import load_systems
from cgsim.data.ranges import training_ranges, with_training_ranges
from cgsim.errors import CgsimInputError
from cgsim.model.card import RECOMMENDABLE, ModelCard
from cgsim.model.checkpoint import load_checkpoint, model_from_checkpoint
from cgsim.model.prior import bead_classes
from tests.conftest import CKPT_MODEL, FIXTURES, ROOT, SEQ, make_checkpoint

CHECKPOINTS = FIXTURES / "checkpoints"
ELY = ROOT / "data" / "electrolyte" / "mapped" / "test" / "peo6x25_eoli20"


@pytest.fixture(scope="module")
def shipped():
    return {name: load_checkpoint(CHECKPOINTS / f"{name}.pt") for name in ("chain", "electrolyte")}


@pytest.mark.parametrize("name, stride, dt, unit, history, periodic", [
    ("chain", 1, 5.0, "tau", 8, False), ("electrolyte", 10, 20.0, "ps", 4, True)])
def test_card_of_the_shipped_models(shipped, name, stride, dt, unit, history, periodic):
    card = ModelCard.from_checkpoint(shipped[name], CHECKPOINTS / f"{name}.pt")
    assert (card.stride, card.history_spacing, card.learned_dt, card.time_unit, card.history) == (stride, stride, dt, unit, history)
    assert card.save_interval == pytest.approx(dt / stride) and card.matches_save_interval(dt / stride)
    assert card.periodic is periodic and card.n_parameters > 0 and card.epoch is not None
    assert card.atom_types == tuple(shipped[name]["data"]["atom_types"]) and len(card.train_systems) >= 1
    assert card.cutoff == shipped[name]["config"]["model"]["cutoff"]
    # the sampler: what the model itself reports, without building it from the card
    model = model_from_checkpoint(shipped[name])
    assert card.sampler.kind == "gaussian+score_refiner"
    assert card.sampler.calls_per_step == model.calls_per_step()
    assert card.sampler.parameters["score_refiner"] == model.refiner.schedule()
    assert card.ranges is None and card.recommended_rollout == {}  # written before either was recorded
    assert "learned dt" in card.markdown() and f"{card.sampler.calls_per_step} network calls" in card.summary()


@pytest.mark.parametrize("field", ["data.learned_dt", "data.time_unit", "data.atom_types", "config.data.stride",
                                   "config.model.history", "config.model.cutoff"])
def test_missing_field_names_the_file_and_the_field(shipped, field):
    ckpt = copy.deepcopy({k: v for k, v in shipped["chain"].items() if k not in ("model", "ema")})
    node = ckpt
    *parents, last = field.split(".")
    for part in parents:
        node = node[part]
    del node[last]
    with pytest.raises(CgsimInputError, match=rf"^some/model\.pt: checkpoint lacks field '{field}'"):
        ModelCard.from_checkpoint(ckpt, "some/model.pt")


def test_training_ranges_of_a_chain_and_an_electrolyte():
    chain = load_systems([str(SEQ)], "t").trajectories[0]
    vocab = load_systems([str(SEQ)], "t").atom_types
    r = training_ranges([chain], vocab)
    g = chain.graph
    classes = bead_classes(g.atom_type, g.atom_to_bead, g.n_beads, vocab)
    b = g.bead_bonds.numpy()
    b = b[:, b[0] < b[1]]
    lengths = np.linalg.norm(chain.positions[:, b[0]] - chain.positions[:, b[1]], axis=-1)
    assert min(lo for lo, _ in r.bond_lengths.values()) == pytest.approx(float(lengths.min()))
    assert max(hi for _, hi in r.bond_lengths.values()) == pytest.approx(float(lengths.max()))
    assert set(r.bead_classes) == set(classes) and r.density is None and r.source == "training"
    assert sum(r.compositions[str(SEQ)].values()) == g.n_beads
    ely = load_systems([str(ELY)], "t").trajectories[0]
    re = training_ranges([ely], load_systems([str(ELY)], "t").atom_types)
    volume = float(torch.prod(ely.graph.box.double()))
    assert re.density == pytest.approx((ely.graph.n_beads / volume,) * 2)
    assert {"LI", "TFS"} <= set(re.compositions[str(ELY)])
    back = type(re).from_dict(re.to_dict())
    assert back == re


def test_old_checkpoint_gets_its_ranges_from_the_listed_training_systems(shipped, tmp_path):
    card = with_training_ranges(ModelCard.from_checkpoint(shipped["electrolyte"], "electrolyte.pt"))
    assert card.ranges is not None and card.ranges.source == "train_systems" and card.ranges.density is not None
    gone = copy.deepcopy({k: v for k, v in shipped["electrolyte"].items() if k not in ("model", "ema")})
    gone["data"]["train_systems"] = [str(tmp_path / "moved_away")]
    assert with_training_ranges(ModelCard.from_checkpoint(gone, "x.pt")).ranges is None


def _tiny_checkpoint(path: Path) -> Path:
    """The tiny checkpoint (its model at the default min_std) with its training system listed."""
    model = {k: v for k, v in CKPT_MODEL.items() if k != "min_std"}
    return make_checkpoint(path, model=model, data={"train_systems": [str(SEQ)]})


def test_export_records_recommended_rollout_settings_and_ranges(tmp_path):
    from cgsim.demo import case_overrides
    from cgsim.train.export import export_model

    src = _tiny_checkpoint(tmp_path / "tiny.pt")
    export_model(src, tmp_path / "out.pt", recommend={"guard.redraws": 3, "exclusion.enabled": True})
    card = ModelCard.from_checkpoint(load_checkpoint(tmp_path / "out.pt"), tmp_path / "out.pt")
    assert card.rollout_overrides() == ["guard.redraws=3", "exclusion.enabled=true"]
    assert card.ranges is not None and card.ranges.source == "train_systems"  # measured on the listed system
    assert card.sampler.kind == "gaussian" and card.sampler.calls_per_step == 1
    with pytest.raises(CgsimInputError, match="--recommend refine.levels"):
        export_model(src, tmp_path / "bad.pt", recommend={"refine.levels": 3})
    # the demo puts them before the case's own overrides (which win)
    case = OmegaConf.create({"checkpoint": "m.pt", "initial": "i", "steps": 2, "replicas": 1, "reference": "r",
                             "rollout_overrides": ["guard.redraws=5"]})
    ov = case_overrides(case, tmp_path / "o", False, None, card.rollout_overrides())
    assert ov.index("guard.redraws=3") < ov.index("guard.redraws=5")


def test_recommendable_options_are_rollout_options():
    from cgsim.rollout.config import RolloutConfig

    cfg = OmegaConf.structured(RolloutConfig)
    for key in RECOMMENDABLE:
        assert OmegaConf.select(cfg, key, default="absent") != "absent", key


def test_one_learned_step_for_validation_and_the_rollout_engine(tmp_path):
    """A lone engine member and the bare validation loop draw the same frames from the same seed."""
    from cgsim.data.windows import history_positions
    from cgsim.model.sampling import rollout_positions
    from cgsim.rollout.engine import Member, RolloutEngine, RolloutHook

    model = model_from_checkpoint(load_checkpoint(_tiny_checkpoint(tmp_path / "tiny.pt")))
    traj = load_systems([str(SEQ)], "t").trajectories[0]
    hist = history_positions(traj, model.history, 1)
    engine = RolloutEngine(model, [Member(0, 0, "m", traj.graph, seed=123)])
    frames = []

    class Recorder(RolloutHook):
        def on_step(self, eng, state):
            frames.append(state.pos[:, -1].clone())

    engine.hooks = [Recorder()]
    engine.run(engine.initial_state([hist]), 4)
    bare = rollout_positions(model, [traj.graph], [hist], 4, generator=torch.Generator().manual_seed(123))
    torch.testing.assert_close(torch.stack(frames), bare, rtol=0, atol=1e-6)


def test_history_frames_are_spaced_in_one_place():
    from cgsim.data.windows import WindowDataset, history_positions, window_frames

    traj = load_systems([str(SEQ)], "t").trajectories[0]
    ds = WindowDataset([traj], 3, 4)
    np.testing.assert_array_equal(ds.frames(5), window_frames(5, 3, 4, target=True))
    last = history_positions(traj, 3, 4)
    np.testing.assert_array_equal(last.numpy(), traj.positions[traj.n_frames - 9::4].transpose(1, 0, 2))
    first = history_positions(traj, 3, 4, start=0)
    np.testing.assert_array_equal(first.numpy(), traj.positions[[0, 4, 8]].transpose(1, 0, 2))
    with pytest.raises(CgsimInputError, match="needs a history of 3 frames 4 apart"):
        history_positions(traj, 3, 4, start=traj.n_frames - 2)


def test_export_shape_temperature_needs_tree_noise_and_a_positive_number(tmp_path):
    from cgsim.train.export import export_model

    src = _tiny_checkpoint(tmp_path / "tiny.pt")  # independent per-bead noise
    with pytest.raises(CgsimInputError, match="--shape-temperature.*bond-tree"):
        export_model(src, tmp_path / "out.pt", shape_temperature=0.7)
    assert not (tmp_path / "out.pt").exists()
    ckpt = load_checkpoint(src)
    ckpt["config"]["model"]["collective"] = {"_target_": "cgsim.model.tree.TreeNoise", "dim": 16, "bend": False}
    tree_src = tmp_path / "tree.pt"
    torch.save(ckpt, tree_src)
    for bad in ("hot", -1.0):
        with pytest.raises(CgsimInputError, match="expected 'fit' or a number > 0"):
            export_model(tree_src, tmp_path / "out.pt", shape_temperature=bad)
    export_model(tree_src, tmp_path / "out.pt", shape_temperature=0.7)
    out = load_checkpoint(tmp_path / "out.pt")
    assert out["config"]["model"]["collective"]["shape_temperature"] == 0.7
    assert out["exported"]["shape_temperature"] == {"value": 0.7, "fitted": False}
    card = ModelCard.from_checkpoint(out, tmp_path / "out.pt")
    assert card.sampler.parameters["gaussian"]["shape_temperature"] == 0.7
