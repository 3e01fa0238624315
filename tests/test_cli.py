"""The command line: verbs, help, hydra's messages for wrong overrides, one-line input errors."""

import pytest
from omegaconf import DictConfig, OmegaConf

from cgsim.cli import VERBS
from tests.conftest import ROOT
from tests.conftest import run_cgsim as _cgsim

#: what `cgsim demo` reads from its root config (it has no schema of its own), and from each case
DEMO_KEYS = {"output", "progress", "num_threads", "speed_seconds", "cases"}
DEMO_CASE_KEYS = {"description", "checkpoint", "initial", "reference", "reference_md", "steps", "replicas", "rollout_overrides",
                  "evaluate_overrides"}


def test_help_lists_verbs(tmp_path):
    res = _cgsim("--help", cwd=tmp_path)
    assert res.returncode == 0
    for verb in VERBS:
        assert verb in res.stdout


def test_unknown_verb(tmp_path):
    res = _cgsim("frobnicate", cwd=tmp_path)
    assert res.returncode == 2
    assert "unknown verb 'frobnicate'" in res.stderr


def test_unknown_key_is_hydra_message(tmp_path):
    res = _cgsim("generate", "system.no_such_key=3", f"output={tmp_path / 'o'}", cwd=tmp_path)
    assert res.returncode != 0
    assert "no_such_key" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


def test_wrong_type_is_hydra_message(tmp_path):
    res = _cgsim("generate", "system.n_chains=many", f"output={tmp_path / 'o'}", cwd=tmp_path)
    assert res.returncode != 0
    assert "n_chains" in res.stderr and "many" in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_input_is_one_line(tmp_path):
    res = _cgsim("generate", "system.sequences=[AAXB]", f"output={tmp_path / 'o'}", cwd=tmp_path)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines == ["cgsim generate: error: system.sequences[0]: unknown monomer letter(s) 'X' in sequence; "
                     "expected letters from 'AB'"]
    assert not (tmp_path / "o").exists()


def _key_paths(node: DictConfig, prefix: str = "") -> set[str]:
    """Dotted paths of every key of ``node``, nested configs included."""
    paths = set()
    for key in node.keys():
        paths.add(prefix + str(key))
        value = node._get_node(key)
        if isinstance(value, DictConfig) and not value._is_missing() and not value._is_none():
            paths |= _key_paths(value, f"{prefix}{key}.")
    return paths


@pytest.mark.parametrize("verb", [v for v in VERBS if v != "demo"])
def test_every_verb_has_root_config(verb, compose_cfg):
    """conf/VERB.yaml composes into a config typed by the verb's schema, with every key of it."""
    from hydra.core.config_store import ConfigStore

    assert (ROOT / "conf" / f"{verb}.yaml").is_file()
    cfg = compose_cfg(verb)
    schema = ConfigStore.instance().load(f"{verb}_schema.yaml").node  # registered by the verb's module
    assert OmegaConf.get_type(cfg) is OmegaConf.get_type(schema) is not dict
    missing = _key_paths(schema) - _key_paths(cfg)
    assert not missing, f"conf/{verb}.yaml lacks {sorted(missing)}"
    assert OmegaConf.is_struct(cfg)  # an unknown key is an error, not a new option
    with pytest.raises(Exception, match="no_such_key"):
        cfg.no_such_key  # noqa: B018


def test_demo_root_config_has_what_the_demo_reads_and_its_cases_compose_as_rollouts(compose_cfg, tmp_path):
    """`cgsim demo` has no schema: its root config holds the keys it reads, and each case's rollout
    composes against the rollout schema exactly as the demo will run it."""
    from cgsim.demo import case_overrides

    assert (ROOT / "conf" / "demo.yaml").is_file()
    cfg = compose_cfg("demo")
    assert set(cfg.keys()) == DEMO_KEYS and len(cfg.cases) >= 2
    for name, case in cfg.cases.items():
        assert DEMO_CASE_KEYS <= set(case.keys()), name
        rollout = compose_cfg("rollout", case_overrides(case, tmp_path / name, False))
        assert rollout.checkpoint == case.checkpoint and rollout.steps == case.steps and rollout.evaluate


def test_generate_end_to_end_writes_resolved_config(tmp_path):
    out = tmp_path / "o"
    res = _cgsim("generate", "system.n_chains=2", "system.n_monomers=[5,6]", "system.equilibration_time=1",
                 "system.production_time=10", f"output={out}", "progress=false",
                 f"hydra.run.dir={tmp_path / 'h'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "generate chain: 2 chains x 3 frames" in res.stdout
    assert (tmp_path / "h" / ".hydra" / "config.yaml").is_file()
    assert (out / "seq_000.xtc").is_file() and (out / "dataset.json").is_file()
