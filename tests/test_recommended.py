"""A model's recommended rollout settings (``--recommend`` at export) apply to a plain ``cgsim rollout``."""

from __future__ import annotations

import pytest

from cgsim.cli import compose_verb
from cgsim.model.checkpoint import load_checkpoint, save_checkpoint
from cgsim.rollout.command import with_recommended

CKPT = "tests/fixtures/checkpoints/chain.pt"


@pytest.fixture
def recommending(tmp_path):
    ckpt = load_checkpoint(CKPT)
    ckpt["recommended_rollout"] = {"guard.redraws": 3, "guard.max_bond_factor": 1.7}
    path = tmp_path / "rec.pt"
    save_checkpoint(path, ckpt)
    return path


def _cfg(ckpt, *extra):
    return compose_verb("rollout", [f"checkpoint={ckpt}", "initial=data/chain/mapped/test/seq_000", "steps=2",
                                    "output=/tmp/unused", *extra])


def test_recommended_settings_fill_options_left_at_their_defaults(recommending, capsys):
    cfg = with_recommended(_cfg(recommending))
    assert cfg.guard.redraws == 3 and cfg.guard.max_bond_factor == pytest.approx(1.7)
    assert "recommended settings" in capsys.readouterr().out


def test_the_users_own_setting_wins_and_the_card_can_be_ignored(recommending):
    cfg = with_recommended(_cfg(recommending, "guard.redraws=7"))
    assert cfg.guard.redraws == 7 and cfg.guard.max_bond_factor == pytest.approx(1.7)
    cfg = with_recommended(_cfg(recommending, "use_recommended=false"))
    assert cfg.guard.redraws == 0 and cfg.guard.max_bond_factor == pytest.approx(1.5)


def test_an_option_set_to_its_default_on_the_command_line_wins(recommending):
    # guard.redraws=0 is the schema default: only the command line says the user chose it
    cfg = with_recommended(_cfg(recommending, "guard.redraws=0"), given={"guard.redraws"})
    assert cfg.guard.redraws == 0 and cfg.guard.max_bond_factor == pytest.approx(1.7)


def test_command_line_keys_outside_hydra_are_empty():
    from cgsim.metadata import command_line_keys

    assert command_line_keys() == frozenset()


def test_a_model_without_recommendations_changes_nothing():
    cfg = _cfg(CKPT)
    assert with_recommended(cfg) == cfg


def test_the_shipped_models_recommend_what_the_demo_runs():
    from cgsim.model.card import ModelCard

    chain = ModelCard.from_checkpoint(load_checkpoint("data/checkpoints/chain.pt"), "chain.pt")
    assert chain.recommended_rollout.get("guard.redraws") == 3
    el = ModelCard.from_checkpoint(load_checkpoint("data/checkpoints/electrolyte.pt"), "electrolyte.pt")
    assert el.recommended_rollout.get("exclusion.enabled") is True
    assert el.recommended_rollout.get("guard.by_type_pair") is True


def test_shipped_model_cards_hold_the_facts_of_their_files():
    """data/checkpoints/*.md carry the table ModelCard makes of the file (regenerate with
    ``python -m cgsim.model.card CKPT --update CARD.md`` after a re-export)."""
    from pathlib import Path

    from cgsim.model.card import ModelCard, with_facts

    for name in ("chain", "electrolyte"):
        card = ModelCard.from_checkpoint(load_checkpoint(f"data/checkpoints/{name}.pt"), f"{name}.pt")
        text = Path(f"data/checkpoints/{name}.md").read_text()
        assert with_facts(text, card) == text, f"data/checkpoints/{name}.md is out of date"
        assert f"{card.sampler.calls_per_step} network calls per step" in text
