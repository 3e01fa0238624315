"""The command line: verbs, help, hydra's messages for wrong overrides, one-line input errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cgsim.cli import VERBS

ROOT = Path(__file__).resolve().parents[1]


def _cgsim(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "cgsim", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


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


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_has_root_config(verb):
    assert (ROOT / "conf" / f"{verb}.yaml").is_file()


def test_generate_end_to_end_writes_resolved_config(tmp_path):
    out = tmp_path / "o"
    res = _cgsim("generate", "system.n_chains=2", "system.n_monomers=[5,6]", "system.equilibration_time=1",
                 "system.production_time=10", f"output={out}", "progress=false",
                 f"hydra.run.dir={tmp_path / 'h'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "generate chain: 2 chains x 3 frames" in res.stdout
    assert (tmp_path / "h" / ".hydra" / "config.yaml").is_file()
    assert (out / "seq_000.xtc").is_file() and (out / "dataset.json").is_file()
