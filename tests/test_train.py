"""`cgsim train`: tiny runs, exact resume, config checks, bad input, DDP with gloo."""

import math
import os
import subprocess
import sys

import pytest
import torch

from cgsim.errors import CgsimInputError
from cgsim.train.checkpoint import load_checkpoint, save_checkpoint
from cgsim.train.loop import model_from_checkpoint, train
from tests.conftest import ROOT, train_overrides


def test_tiny_training_writes_checkpoints_and_logs(mapped_chains, tmp_path, compose_cfg):
    out = tmp_path / "run"
    summary = train(compose_cfg("train", train_overrides(mapped_chains, out)))
    assert summary["epochs_run"] == 2 and summary["n_parameters"] > 0
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "checkpoints" / "best.pt").is_file()
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("step,epoch,train_loss,val_nll") and len(lines) == 3
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["config"]["data"]["history"] == 3
    assert len(ckpt["data"]["mapping_hashes"]) == 3 and ckpt["data"]["time_unit"] == "tau"
    model = model_from_checkpoint(ckpt)
    assert model.history == 3 and model.velocity_scale.item() > 0


#: what validation writes in an epoch's metrics row (and the summary)
VALIDATION = ("val_nll", "val_dsm", "rollout_bond_w1", "rollout_stable_fraction", "score")


def test_symmetry_augmentation_changes_training_but_not_validation(mapped_chains, tmp_path, compose_cfg):
    def run(name: str, *extra: str) -> dict:
        return train(compose_cfg("train", train_overrides(mapped_chains, tmp_path / name, "trainer.max_epochs=1", *extra)))

    def weights(name: str) -> dict:
        return load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["model"]

    base, aug = run("a"), run("b", "data.augment_symmetry=true")
    # training sees rotated / reflected windows: another loss, other weights
    assert aug["train_loss"] == aug["train_loss"] and aug["train_loss"] != base["train_loss"]
    assert any(not torch.equal(v, weights("b")[k]) for k, v in weights("a").items())
    # with the weights held still (lr = 0) the augmented training windows still give another loss, while
    # validation (one-step NLL on the held-out windows, short rollouts from them) gives the same numbers
    # to the last bit: it never sees the augmentation
    frozen, frozen_aug = run("c", "optim.lr=0.0"), run("d", "optim.lr=0.0", "data.augment_symmetry=true")
    assert frozen_aug["train_loss"] != frozen["train_loss"]
    assert all(torch.equal(v, weights("d")[k]) for k, v in weights("c").items())
    assert math.isfinite(frozen["val_nll"]) and math.isfinite(frozen["rollout_bond_w1"])
    assert [frozen_aug[k] for k in VALIDATION] == pytest.approx([frozen[k] for k in VALIDATION], rel=0, abs=0,
                                                                 nan_ok=True)
    rows = [(tmp_path / name / "metrics.csv").read_text().splitlines() for name in ("c", "d")]
    header = rows[0][0].split(",")
    cols = [header.index(k) for k in VALIDATION]
    assert [rows[1][1].split(",")[c] for c in cols] == [rows[0][1].split(",")[c] for c in cols]


def test_validate_every_skips_validation_between_and_picks_best_among_validated(mapped_chains, tmp_path, compose_cfg):
    out = tmp_path / "run"
    summary = train(compose_cfg("train", train_overrides(mapped_chains, out, "trainer.max_epochs=3",
                                                          "trainer.validate_every=2")))
    rows = [line.split(",") for line in (out / "metrics.csv").read_text().splitlines()]
    col = rows[0].index("val_nll")
    assert rows[1][col] == "nan" and rows[2][col] != "nan" and rows[3][col] != "nan"  # epochs 1 / 2 / 3 (last)
    assert summary["best"]["epoch"] in (2, 3)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 2


@pytest.mark.parametrize("refinement", [[], ["model/refinement=score"]], ids=["plain", "refinement"])
def test_resume_after_kill_matches_uninterrupted(mapped_chains, tmp_path, compose_cfg, refinement):
    full, split = tmp_path / "full", tmp_path / "split"
    common = ["optim.ema_decay=0.9", "data.noise_std=[0.0,0.01]", *refinement]
    train(compose_cfg("train", train_overrides(mapped_chains, full, *common)))
    train(compose_cfg("train", train_overrides(mapped_chains, split, *common, "stop_after_epochs=1")))
    assert load_checkpoint(split / "checkpoints" / "last.pt")["epoch"] == 0
    train(compose_cfg("train", train_overrides(mapped_chains, split, *common, "resume=true")))
    a, b = load_checkpoint(full / "checkpoints" / "last.pt"), load_checkpoint(split / "checkpoints" / "last.pt")
    assert a["step"] == b["step"]
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)


def test_output_with_run_needs_resume_and_compatible_config(mapped_chains, tmp_path, compose_cfg):
    out = tmp_path / "run"
    train(compose_cfg("train", train_overrides(mapped_chains, out, "stop_after_epochs=1")))
    with pytest.raises(CgsimInputError, match="already holds a training run; pass resume=true"):
        train(compose_cfg("train", train_overrides(mapped_chains, out)))
    with pytest.raises(CgsimInputError, match="last.pt: checkpoint was trained with a different 'model' config"):
        train(compose_cfg("train", train_overrides(mapped_chains, out, "resume=true", "model.hidden_dim=8")))
    with pytest.raises(CgsimInputError, match="no checkpoint to resume from"):
        train(compose_cfg("train", train_overrides(mapped_chains, tmp_path / "new", "resume=true")))


def test_checkpoint_from_before_an_option_existed_resumes_while_it_is_off(mapped_chains, tmp_path, compose_cfg):
    out = tmp_path / "run"
    train(compose_cfg("train", train_overrides(mapped_chains, out, "trainer.max_epochs=2", "stop_after_epochs=1")))
    last = out / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    del ckpt["config"]["data"]["augment_symmetry"]  # as written before the option was added
    save_checkpoint(last, ckpt)
    with pytest.raises(CgsimInputError, match="different 'data' config"):
        train(compose_cfg("train", train_overrides(mapped_chains, out, "trainer.max_epochs=2", "resume=true",
                                                    "data.augment_symmetry=true")))
    summary = train(compose_cfg("train", train_overrides(mapped_chains, out, "trainer.max_epochs=2", "resume=true")))
    assert load_checkpoint(last)["epoch"] == 1 and summary["train_loss"] == summary["train_loss"]


@pytest.mark.parametrize(
    "extra, match",
    [(("data.stride=0",), "data.stride: expected a stride of at least 1"),
     (("data.history=40", "data.stride=2"), "trajectory has 61 frames; a window of history 40 x stride 2 needs 81"),
     (("data.train=['/nonexistent/dir']",), "data.train: no mapped system at '/nonexistent/dir'"),
     (("trainer.validate_every=0",), "trainer.validate_every: must be >= 1 epoch, got 0")],
)
def test_bad_training_input(mapped_chains, tmp_path, compose_cfg, extra, match):
    with pytest.raises(CgsimInputError, match=match):
        train(compose_cfg("train", train_overrides(mapped_chains, tmp_path / "o", *extra)))


def test_mismatched_mapping_and_trajectory(mapped_chains, tmp_path, compose_cfg):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(mapped_chains / "seq_000", bad)
    shutil.copy(mapped_chains / "seq_001" / "mapping.yaml", bad / "mapping.yaml")
    shutil.copy(mapped_chains / "seq_001" / "beads.pdb", bad / "beads.pdb")
    with pytest.raises(CgsimInputError, match=r"beads\.xtc: trajectory has \d+ beads, mapping\.yaml has \d+"):
        train(compose_cfg("train", train_overrides(mapped_chains, tmp_path / "o", f"data.val=['{bad}']")))


def test_truncated_checkpoint_is_refused(mapped_chains, tmp_path, compose_cfg):
    out = tmp_path / "run"
    train(compose_cfg("train", train_overrides(mapped_chains, out, "stop_after_epochs=1")))
    path = out / "checkpoints" / "last.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CgsimInputError, match="last.pt: not a readable checkpoint"):
        load_checkpoint(path)
    path.write_text("hello")
    with pytest.raises(CgsimInputError, match="not a readable checkpoint"):
        load_checkpoint(path)
    torch.save({"weights": 1}, path)
    with pytest.raises(CgsimInputError, match="not a cgsim checkpoint"):
        load_checkpoint(path)


def _free_port() -> int:
    """A TCP port no one listens on now (the OS picks it for a socket bound to port 0)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ddp_two_cpu_processes_with_gloo(mapped_chains, tmp_path):
    """Two gloo ranks train, rank 0 validates and writes; a free port, and a collective timeout of 60 s
    so that a hung rank fails the run in about a minute rather than at the test's timeout."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "cgsim", "train", *train_overrides(mapped_chains, out),
           "trainer.dist_timeout_s=60", f"hydra.run.dir={tmp_path / 'h'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1
    assert "train: 2 epoch(s)" in res.stdout


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("overrides", [
    *[[f"experiment={e}"] for e in _group_options("experiment")],
    *[[f"model={m}"] for m in _group_options("model")],
    *[["experiment=chain", f"model/refinement={r}"] for r in _group_options("model/refinement")],
    *[["experiment=chain", f"model/coarse={c}"] for c in _group_options("model/coarse")],
    *[["experiment=chain", f"model/collective={c}"] for c in _group_options("model/collective")],
    *[["experiment=electrolyte", "model=equivariant_gnn", f"model/collective={c}"] for c in _group_options("model/collective")],
], ids=lambda o: ",".join(o))
def test_every_training_config_composes_and_instantiates_at_tiny_size(compose_cfg, overrides):
    from cgsim.train.loop import build_model

    cfg = compose_cfg("train", [*overrides, "debug=tiny", "output=/tmp/unused"])
    model = build_model(cfg, n_atom_types=5)
    assert model.history == cfg.data.history
    if "refinement" in ",".join(overrides):
        assert model.refiner is not None
    if "coarse" in ",".join(overrides):
        assert model.coarse is not None
    if "collective" in ",".join(overrides):
        assert model.collective is not None
    assert sum(p.numel() for p in model.parameters()) < 100_000  # debug=tiny really is tiny


def test_ema_warm_up_follows_the_model_early_and_decays_later():
    from cgsim.train.ema import EMA

    lin = torch.nn.Linear(2, 1)
    ema = EMA(lin, 0.999)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10_000) == 0.999 and ema.decay_at(None) == 0.999
    before = ema.shadow["weight"].clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin, 0)
    torch.testing.assert_close(ema.shadow["weight"], 0.1 * before + 0.9 * lin.weight.detach())
    with pytest.raises(ValueError):
        EMA(lin, 1.0)
