"""`cgsim rollout`: frames written, exact resume after a kill, stability guard, batching, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest
import torch

import cgsim.model.checkpoint as model_checkpoint
import cgsim.train.loop as train_loop
from cgsim.cli import VERBS
from cgsim.data.load import load_systems
from cgsim.errors import CgsimInputError
from cgsim.model.simulator import GaussianStep
from cgsim.report.loading import load_set
from cgsim.rollout.command import initial_history, rollout
from cgsim.rollout.core import rollout_positions
from cgsim.rollout.engine import Member, RolloutEngine, RolloutHook, load_state, member_seed
from cgsim.train.checkpoint import save_checkpoint
from tests.conftest import ROOT, SEQ, make_checkpoint, rollout_cfg

#: tests/test_bad_inputs.py imports SEQ and _make_checkpoint from here
_make_checkpoint = make_checkpoint


@pytest.fixture(scope="module")
def ckpt_refined(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_refined.pt", refinement=True)


def _frames(out: Path, member: str = "seq_000/replica_000") -> np.ndarray:
    return md.load(str(out / member / "rollout.h5")).xyz


def test_verb_registered_after_train():
    names = list(VERBS)
    assert names.index("rollout") == names.index("train") + 1


def test_writes_frames_sidecar_and_summary(compose_cfg, ckpt, tmp_path):
    out = tmp_path / "ro"
    summary = rollout(rollout_cfg(compose_cfg, ckpt, out, "replicas=2", "save_every=2", "checkpoint_every=3",
                           "guard.enabled=false"))
    assert summary["steps"] == 6 and summary["n_stopped"] == 0 and summary["bead_steps_per_second"] > 0
    first = torch.from_numpy(load_systems([str(SEQ)], "t").trajectories[0].positions[-1])
    for r in range(2):
        d = out / "seq_000" / f"replica_{r:03d}"
        traj = md.load(str(d / "rollout.h5"))
        assert traj.xyz.shape == (4, 30, 3)  # steps 0, 2, 4, 6
        np.testing.assert_allclose(traj.time, [0.0, 10.0, 20.0, 30.0])  # 5 tau = 5 ps per step here
        np.testing.assert_allclose(traj.xyz[0], first.numpy(), atol=1e-6)  # frame 0 = last initial frame
        dcd = md.load(str(d / "rollout.dcd"), top=str(d / "beads.pdb"))
        np.testing.assert_allclose(dcd.xyz, traj.xyz, atol=1e-3)
        meta = json.loads((d / "rollout.json").read_text())
        assert meta["kind"] == "rollout" and meta["n_frames"] == 4 and meta["save_interval"] == 10.0
        assert meta["extra"]["learned_dt"] == 5.0 and meta["extra"]["time_unit"] == "tau"
        assert meta["extra"]["simulated_time"] == 30.0 and meta["extra"]["replica"] == r
        assert meta["system"]["units"]["system"] == "lj" and meta["coordinates"] == "unwrapped"
    a, b = _frames(out), _frames(out, "seq_000/replica_001")
    assert not np.allclose(a[1:], b[1:])  # replicas draw different noise
    assert json.loads((out / "summary.json").read_text())["members"][1]["frames"] == 4
    with pytest.raises(CgsimInputError, match="already holds a rollout"):
        rollout(rollout_cfg(compose_cfg, ckpt, out, "replicas=2", "save_every=2", "guard.enabled=false"))


class _Kill(RolloutHook):
    """Raise (like a kill) at step ``at``: after the step (`on_step`) or in the middle of a checkpoint."""

    def __init__(self, at: int, where: str) -> None:
        self.at, self.where = at, where

    def on_step(self, engine, state):
        if self.where == "step" and state.step == self.at:
            raise KeyboardInterrupt("killed")

    def flush(self, engine, state):  # runs after the writer committed its frames, before the state is saved
        if self.where == "flush" and state.step == self.at:
            raise KeyboardInterrupt("killed")


@pytest.mark.parametrize("where, committed, refined", [("step", 9, False), ("flush", 9, False), ("step", 9, True)])
def test_resume_after_kill_gives_identical_frames(compose_cfg, ckpt, ckpt_refined, tmp_path, where, committed, refined):
    # the untrained model drifts: a generous divergence limit lets it run the 12 steps
    opts = ("steps=12", "checkpoint_every=4", "replicas=2", "seed=3", "guard.enabled=false", "divergence_factor=1000")
    ckpt = ckpt_refined if refined else ckpt
    full, split = tmp_path / "full", tmp_path / "split"
    rollout(rollout_cfg(compose_cfg, ckpt, full, *opts))
    with pytest.raises(KeyboardInterrupt):
        rollout(rollout_cfg(compose_cfg, ckpt, split, *opts), extra_hooks=[_Kill(10 if where == "step" else 8, where)])
    # what a kill leaves is readable: every frame up to the last commit (steps 0..8)
    assert _frames(split).shape[0] == committed
    assert load_state(split / "rollout_state.pt").step == (8 if where == "step" else 4)
    assert json.loads((split / "seq_000/replica_000/rollout.json").read_text())["extra"]["status"] == "running"
    rollout(rollout_cfg(compose_cfg, ckpt, split, *opts, "resume=true"))
    for member in ("seq_000/replica_000", "seq_000/replica_001"):
        a, b = _frames(full, member), _frames(split, member)
        assert a.shape == (13, 30, 3)
        assert np.array_equal(a, b)  # bitwise
        dcd = md.load(str(split / member / "rollout.dcd"), top=str(split / member / "beads.pdb"))
        assert dcd.n_frames == 13
        np.testing.assert_allclose(dcd.xyz, b, atol=1e-4)  # DCD appended in raw records stays in step with h5


def test_resume_needs_same_settings(compose_cfg, ckpt, tmp_path):
    out = tmp_path / "ro"
    rollout(rollout_cfg(compose_cfg, ckpt, out, "guard.enabled=false", "steps=2"))
    with pytest.raises(CgsimInputError, match="different 'seed'"):
        rollout(rollout_cfg(compose_cfg, ckpt, out, "guard.enabled=false", "seed=9", "resume=true"))
    with pytest.raises(CgsimInputError, match="no rollout state"):
        rollout(rollout_cfg(compose_cfg, ckpt, tmp_path / "none", "resume=true"))


def test_rollout_from_before_an_option_existed_resumes_while_it_is_off(compose_cfg, ckpt, tmp_path):
    from cgsim.rollout.engine import save_state

    out = tmp_path / "ro"
    rollout(rollout_cfg(compose_cfg, ckpt, out, "steps=2", "temperature=0.0"))
    state = load_state(out / "rollout_state.pt")
    del state.extra["config"]["guard"]["by_type_pair"]  # as written before the option was added
    save_state(out / "rollout_state.pt", state)
    with pytest.raises(CgsimInputError, match="different 'guard'"):
        rollout(rollout_cfg(compose_cfg, ckpt, out, "steps=4", "temperature=0.0", "resume=true", "guard.by_type_pair=true"))
    summary = rollout(rollout_cfg(compose_cfg, ckpt, out, "steps=4", "temperature=0.0", "resume=true"))
    assert summary["steps"] == 4 and summary["n_stopped"] == 0


def _sabotage(kind: str, victim: int = 1, at_call: int = 3):
    """Wrap model_from_checkpoint so the model breaks batch member ``victim`` from its ``at_call``-th step."""
    real = train_loop.model_from_checkpoint

    def wrapped(*args, **kwargs):
        model = real(*args, **kwargs)
        forward = model.forward
        calls = {"n": 0}

        def bad_forward(batch, chem=None):
            out = forward(batch, chem)
            calls["n"] += 1
            if calls["n"] < at_call or batch.n_systems != 3:
                return out
            hit = (batch.batch == victim)[:, None]
            x = batch.pos[:, -1]
            if kind == "nan":
                want = torch.full_like(x, float("nan"))
            elif kind == "stretch":
                want = torch.full_like(x, 100.0) * torch.arange(x.shape[0], device=x.device)[:, None]
            else:  # collapse every bead of the victim onto one point
                want = -x + x[hit[:, 0]].mean(0)
            mean = torch.where(hit, want / out.scale, out.mean)
            return GaussianStep(mean=mean, std=out.std, scale=out.scale)

        model.forward = bad_forward
        return model

    return wrapped


@pytest.mark.parametrize("kind, reason, status", [("nan", "non-finite", "diverged"), ("stretch", "stretched", "stopped"),
                                                  ("collapse", "overlap", "stopped")])
def test_guard_stops_one_replica_and_others_continue(compose_cfg, ckpt, tmp_path, monkeypatch, kind, reason, status):
    """The guard stops a stretched or collapsed replica; non-finite coordinates are divergence (issue 22)."""
    opts = ("steps=6", "replicas=3", "temperature=0.0", "guard.max_bond_factor=50", "divergence_factor=1000")
    clean = rollout(rollout_cfg(compose_cfg, ckpt, tmp_path / "clean", *opts))
    assert clean["n_stopped"] == 0
    monkeypatch.setattr(model_checkpoint, "model_from_checkpoint", _sabotage(kind))
    out = tmp_path / "bad"
    summary = rollout(rollout_cfg(compose_cfg, ckpt, out, *opts))
    victim, others = summary["members"][1], [summary["members"][0], summary["members"][2]]
    assert victim["status"] == status and victim["stop_step"] == 3 and reason in victim["stop_reason"]
    assert "at step 3" in victim["stop_reason"]
    assert _frames(out, "seq_000/replica_001").shape[0] == 3  # steps 0, 1, 2: nothing after the failure
    assert np.all(np.isfinite(_frames(out, "seq_000/replica_001")))
    meta = json.loads((out / "seq_000/replica_001/rollout.json").read_text())
    assert meta["extra"]["status"] == status and reason in meta["extra"]["stop_reason"]
    loaded = load_set(out, file_index=-1)  # what `cgsim evaluate` reads: dynamics leave the victim out
    assert [t.stop_step for t in loaded] == [None, 3, None] and reason in loaded[1].stop_reason
    for k, m in zip((0, 2), others, strict=True):
        assert m["status"] == "finished" and m["frames"] == 7
        side = json.loads((out / f"seq_000/replica_{k:03d}/rollout.json").read_text())
        assert side["extra"]["status"] == "finished" and side["extra"]["steps_done"] == 6
        name = f"seq_000/replica_{k:03d}"
        np.testing.assert_allclose(_frames(out, name), _frames(tmp_path / "clean", name), atol=1e-5)


def test_non_finite_replica_stopped_even_without_guard(compose_cfg, ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(model_checkpoint, "model_from_checkpoint", _sabotage("nan"))
    summary = rollout(rollout_cfg(compose_cfg, ckpt, tmp_path / "o", "replicas=3", "guard.enabled=false",
                                  "divergence_factor=1000"))
    assert [m["status"] for m in summary["members"]] == ["finished", "diverged", "finished"]
    assert summary["members"][1]["stop_reason"] == "diverged at step 3: non-finite coordinates"
    assert np.all(np.isfinite(load_state(tmp_path / "o" / "rollout_state.pt").pos.numpy()))


def _engine_setup(ckpt: Path):
    model = train_loop.model_from_checkpoint(torch.load(ckpt, weights_only=False))
    traj = load_systems([str(SEQ)], "t").trajectories[0]
    return model, traj, initial_history(traj, model.history, 1)


@pytest.fixture(scope="module")
def ckpt_collective(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_collective.pt", collective=True)


@pytest.mark.parametrize("which", ["plain", "refined", "collective"])
def test_batched_replicas_match_lone_runs(ckpt, ckpt_refined, ckpt_collective, which):
    model, traj, hist = _engine_setup({"plain": ckpt, "refined": ckpt_refined, "collective": ckpt_collective}[which])
    assert (model.refiner is not None) == (which == "refined")
    assert (model.collective is not None) == (which == "collective")
    members = [Member(0, r, f"r{r}", traj.graph, member_seed(7, 0, r)) for r in range(3)]
    batched = RolloutEngine(model, members, temperature=1.0)
    sb = batched.run(batched.initial_state([hist] * 3), 5)
    for r in range(3):
        alone = RolloutEngine(model, [members[r]], temperature=1.0)
        sa = alone.run(alone.initial_state([hist]), 5)
        torch.testing.assert_close(sa.pos, sb.pos[batched.member_slice(r)], rtol=1e-5, atol=1e-5)
    # deterministic: the same members twice give bitwise the same state
    again = RolloutEngine(model, members, temperature=1.0)
    assert torch.equal(again.run(again.initial_state([hist] * 3), 5).pos, sb.pos)


def test_engine_at_zero_temperature_matches_plain_loop(ckpt):
    model, traj, hist = _engine_setup(ckpt)
    eng = RolloutEngine(model, [Member(0, 0, "r0", traj.graph, 0)], temperature=0.0)
    state = eng.run(eng.initial_state([hist]), 4)
    ref = rollout_positions(model, [traj.graph], [hist], 4, temperature=0.0)
    torch.testing.assert_close(state.pos[:, -1], ref[-1])
    torch.testing.assert_close(state.pos[:, -3:].permute(1, 0, 2), ref[-3:])


# -- bad input: one clear line each ---------------------------------------------------------------
def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_truncated_and_non_checkpoints(compose_cfg, ckpt, tmp_path):
    cut = tmp_path / "cut.pt"
    data = ckpt.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CgsimInputError, match="truncated") as e:
        rollout(rollout_cfg(compose_cfg, cut, tmp_path / "a"))
    assert str(cut) in _one_line(e)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CgsimInputError, match="not a cgsim checkpoint") as e:
        rollout(rollout_cfg(compose_cfg, other, tmp_path / "b"))
    _one_line(e)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CgsimInputError) as e:
        rollout(rollout_cfg(compose_cfg, text, tmp_path / "c"))
    _one_line(e)


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_must_be_positive(compose_cfg, ckpt, tmp_path, steps):
    with pytest.raises(CgsimInputError, match="steps") as e:
        rollout(rollout_cfg(compose_cfg, ckpt, tmp_path / "o", f"steps={steps}"))
    _one_line(e)
    assert not (tmp_path / "o").exists()


def _copy_system(tmp_path: Path, n_frames: int | None = None, triclinic: bool = False) -> Path:
    d = tmp_path / "sys"
    shutil.copytree(SEQ, d)
    traj = md.load(str(d / "beads.xtc"), top=str(d / "beads.pdb"))
    meta = json.loads((d / "beads.json").read_text())
    if n_frames is not None:
        traj[:n_frames].save_xtc(str(d / "beads.xtc"))
        meta["n_frames"] = n_frames
    if triclinic:
        vec = np.array([[20.0, 0, 0], [5.0, 20.0, 0], [0, 0, 20.0]], dtype=np.float32)
        traj.unitcell_vectors = np.repeat(vec[None], traj.n_frames, axis=0)
        traj.save_hdf5(str(d / "beads.h5"))
        (d / "beads.xtc").unlink()
        (d / "beads.json").unlink()
        meta["trajectory"] = "beads.h5"
        meta["system"]["periodic"] = True
        meta["system"]["box"] = [20.0, 20.6, 20.0, 90.0, 90.0, 76.0]
        (d / "beads.json").unlink(missing_ok=True)
        (d / "beads.json").write_text(json.dumps(meta))
        return d
    (d / "beads.json").write_text(json.dumps(meta))
    return d


def test_initial_shorter_than_history(compose_cfg, ckpt, tmp_path):
    d = _copy_system(tmp_path, n_frames=2)
    cfg = compose_cfg("rollout", [f"checkpoint={ckpt}", f"initial={d}", f"output={tmp_path / 'o'}", "steps=3"])
    with pytest.raises(CgsimInputError, match="needs a history of 3 frames") as e:
        rollout(cfg)
    assert "has 2 frames" in _one_line(e)


def test_unknown_fine_types(compose_cfg, tmp_path):
    ck = make_checkpoint(tmp_path / "narrow.pt", atom_types=["B1", "B2", "S1"])
    with pytest.raises(CgsimInputError, match="unknown to the model") as e:
        rollout(rollout_cfg(compose_cfg, ck, tmp_path / "o"))
    assert "S2" in _one_line(e)


def test_triclinic_box(compose_cfg, ckpt, tmp_path):
    d = _copy_system(tmp_path, triclinic=True)
    cfg = compose_cfg("rollout", [f"checkpoint={ckpt}", f"initial={d}", f"output={tmp_path / 'o'}", "steps=3"])
    with pytest.raises(CgsimInputError, match="triclinic") as e:
        rollout(cfg)
    _one_line(e)


def test_initial_recorded_at_another_time_step(compose_cfg, ckpt, tmp_path):
    long = SEQ.parent / "seq_000_long"  # frames 25 tau apart; the model steps 5 tau
    with pytest.raises(CgsimInputError, match="not its learned dt 5") as e:
        rollout(compose_cfg("rollout", [f"checkpoint={ckpt}", f"initial={long}", f"output={tmp_path / 'o'}", "steps=2"]))
    _one_line(e)


def test_initial_accepts_lists_and_globs(compose_cfg, ckpt, tmp_path):
    for sub in ("a", "b"):
        shutil.copytree(SEQ, tmp_path / sub / "seq_000")
    cfg = compose_cfg("rollout", [f"checkpoint={ckpt}", f"initial=['{tmp_path}/*/seq_000']", f"output={tmp_path / 'o'}",
                                  "steps=2", "progress=false", "guard.enabled=false", "write_dcd=false", "replicas=2"])
    summary = rollout(cfg)
    names = [m["name"] for m in summary["members"]]
    assert names == ["seq_000/replica_000", "seq_000/replica_001", "seq_000_001/replica_000", "seq_000_001/replica_001"]
    assert len({m["seed"] for m in summary["members"]}) == 4
    assert (tmp_path / "o" / "seq_000_001" / "replica_001" / "rollout.h5").is_file()
    assert not (tmp_path / "o" / "seq_000" / "replica_000" / "rollout.dcd").exists()


def test_evaluate_after_rollout(compose_cfg, ckpt, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(CgsimInputError, match="needs reference") as e:
        rollout(rollout_cfg(compose_cfg, ckpt, out, "evaluate=true"))
    _one_line(e)
    # a glob reference ('[...]' must survive being handed on as a hydra override)
    summary = rollout(rollout_cfg(compose_cfg, ckpt, out, "evaluate=true", f"reference='{SEQ.parent / 'seq_00[0]'}'", "steps=8",
                           "guard.enabled=false", "evaluate_overrides=['figures=false','noise_floor=false','observables=[rdf,bond_lengths]']"))
    index = json.loads((out / "dataset.json").read_text())
    assert index["molecules"][0]["files"][0]["trajectory"] == "seq_000/replica_000/rollout.h5"
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert metrics and summary["evaluate"]
    # every replica is evaluated, pooled (not replica 0 alone)
    out2 = tmp_path / "two"
    rollout(rollout_cfg(compose_cfg, ckpt, out2, "evaluate=true", f"reference='{SEQ.parent / 'seq_00[0]'}'", "steps=8",
                        "replicas=2", "guard.enabled=false",
                        "evaluate_overrides=['figures=false','noise_floor=false','observables=[rdf]']"))
    assert json.loads((out2 / "evaluate" / "metrics.json").read_text())["rollout"]["n_trajectories"] == 2


def test_refine_schedule_override(compose_cfg, ckpt, ckpt_refined, tmp_path):
    out = tmp_path / "r"
    rollout(rollout_cfg(compose_cfg, ckpt_refined, out, "refine.sampler=diffusion", "refine.levels=3", "refine.steps_per_level=0",
                 "guard.enabled=false", "divergence_factor=1000"))
    assert _frames(out).shape[0] == 7
    ode = rollout(rollout_cfg(compose_cfg, ckpt_refined, tmp_path / "o", "refine.sampler=ode", "refine.levels=3",
                       "refine.spacing=karras", "guard.enabled=false", "divergence_factor=1000"))
    assert ode["steps"] == 6 and np.isfinite(_frames(tmp_path / "o")).all()
    kept = rollout(rollout_cfg(compose_cfg, ckpt_refined, tmp_path / "c", "refine.keep_centres=true", "guard.enabled=false",
                               "divergence_factor=1000"))
    assert kept["steps"] == 6 and np.isfinite(_frames(tmp_path / "c")).all()
    with pytest.raises(CgsimInputError, match="refine.spacing"):
        rollout(rollout_cfg(compose_cfg, ckpt_refined, tmp_path / "k", "refine.spacing=linear"))
    with pytest.raises(CgsimInputError, match="trained without refinement"):
        rollout(rollout_cfg(compose_cfg, ckpt, tmp_path / "p", "refine.levels=3"))
    with pytest.raises(CgsimInputError, match="refine.sampler"):
        rollout(rollout_cfg(compose_cfg, ckpt_refined, tmp_path / "q", "refine.sampler=euler"))
    with pytest.raises(CgsimInputError, match="refine.sigma_start"):
        rollout(rollout_cfg(compose_cfg, ckpt_refined, tmp_path / "s", "refine.sigma_start=5.0"))
    assert not any((tmp_path / d).exists() for d in ("p", "q", "s", "k"))  # refused before anything is written


class _Reject(RolloutHook):
    """Reject member ``victim``'s draws of step ``at``: the first ``times`` of them (all if None)."""

    def __init__(self, victim: int, at: int, times: int | None) -> None:
        self.victim, self.at, self.times, self.seen = victim, at, times, 0

    def check(self, engine, state, proposal):
        if proposal.step != self.at or self.victim not in proposal.active:
            return {}
        self.seen += 1
        if self.times is None or self.seen <= self.times:
            return {self.victim: f"rejected draw {self.seen} at step {proposal.step}"}
        return {}


@pytest.mark.parametrize("which", ["plain", "refined"])
def test_redraw_replaces_a_failed_step_and_leaves_others_alone(ckpt, ckpt_refined, which):
    model, traj, hist = _engine_setup(ckpt if which == "plain" else ckpt_refined)
    members = [Member(0, r, f"r{r}", traj.graph, member_seed(5, 0, r)) for r in range(3)]
    base = RolloutEngine(model, members)
    sb = base.run(base.initial_state([hist] * 3), 5)
    hook = _Reject(victim=1, at=3, times=1)
    eng = RolloutEngine(model, members, hooks=[hook], max_redraws=2)
    s = eng.run(eng.initial_state([hist] * 3), 5)
    assert s.active == [0, 1, 2] and s.redraws == [0, 1, 0] and hook.seen == 2
    for r in (0, 2):  # the other replicas' noise streams are untouched by the redraw
        torch.testing.assert_close(s.pos[eng.member_slice(r)], sb.pos[base.member_slice(r)], rtol=0, atol=1e-5)
    one = eng.member_slice(1)
    # steps 1-2 are the same draws, step 3 onwards differs (fresh noise)
    torch.testing.assert_close(s.pos[one][:, :-3], sb.pos[base.member_slice(1)][:, :-3], rtol=0, atol=1e-5)
    assert not torch.allclose(s.pos[one][:, -1], sb.pos[base.member_slice(1)][:, -1])
    # deterministic: again gives bitwise the same frames and counts
    again = RolloutEngine(model, members, hooks=[_Reject(victim=1, at=3, times=1)], max_redraws=2)
    s2 = again.run(again.initial_state([hist] * 3), 5)
    assert torch.equal(s2.pos, s.pos) and s2.redraws == s.redraws


def test_redraws_exhausted_stop_the_member(ckpt):
    model, traj, hist = _engine_setup(ckpt)
    members = [Member(0, r, f"r{r}", traj.graph, member_seed(5, 0, r)) for r in range(2)]
    eng = RolloutEngine(model, members, hooks=[_Reject(victim=0, at=2, times=None)], max_redraws=3)
    s = eng.run(eng.initial_state([hist] * 2), 4)
    assert s.stop_step == [2, -1] and s.redraws == [3, 0]
    assert s.stop_reason[0] == "rejected draw 4 at step 2"  # the reason of the last failed draw
    with pytest.raises(ValueError, match="max_redraws"):
        RolloutEngine(model, members, max_redraws=-1)


def test_redraws_reported_and_checked_by_the_command(compose_cfg, ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(model_checkpoint, "model_from_checkpoint", _sabotage("nan"))
    out = tmp_path / "o"
    summary = rollout(rollout_cfg(compose_cfg, ckpt, out, "replicas=3", "temperature=0.0", "guard.max_bond_factor=50",
                           "guard.redraws=2"))
    # the sabotage breaks the victim only in the full 3-member batch (steps 3-6); each redraw runs it
    # alone, which succeeds: one redraw per step rescues it and nobody is stopped
    assert [m["redraws"] for m in summary["members"]] == [0, 4, 0] and summary["redraws"] == 4
    assert summary["n_stopped"] == 0 and np.isfinite(_frames(out, "seq_000/replica_001")).all()
    meta = json.loads((out / "seq_000/replica_001/rollout.json").read_text())
    assert meta["extra"]["redraws"] == 4
    with pytest.raises(CgsimInputError, match=r"guard\.redraws"):
        rollout(rollout_cfg(compose_cfg, ckpt, tmp_path / "neg", "guard.redraws=-1"))


def test_exported_model_rolls_out_like_its_checkpoint(ckpt, tmp_path):
    from cgsim.train.checkpoint import load_checkpoint
    from cgsim.train.export import export_model

    full = torch.load(ckpt, weights_only=False)
    with_ema = {**full, "ema": {k: v + 0.01 if v.is_floating_point() else v for k, v in full["model"].items()},
                "optimizer": {"state": {}, "blob": torch.zeros(1000)}}
    src = save_checkpoint(tmp_path / "train.pt", with_ema)
    rec = export_model(src, tmp_path / "ship" / "model.pt")
    slim = load_checkpoint(tmp_path / "ship" / "model.pt")
    assert rec["weights"] == "ema" and slim["ema"] is None and "optimizer" not in slim
    assert slim["exported"]["source_sha256"].startswith("sha256:")
    a = train_loop.model_from_checkpoint(with_ema, use_ema=True)
    b = train_loop.model_from_checkpoint(slim, use_ema=True)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    with pytest.raises(CgsimInputError, match="not a readable checkpoint"):
        (tmp_path / "junk.pt").write_bytes(b"junk")
        export_model(tmp_path / "junk.pt", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_keep_freed_memory_applies_on_glibc():
    import platform

    from cgsim.runtime import keep_freed_memory

    applied = keep_freed_memory()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert applied is True
    torch.randn(4_000_000).sum()  # large allocations still work afterwards


def test_guard_in_a_periodic_box_with_a_member_already_stopped():
    """Overlap check of the members left after a bond check stopped one (each has its own box row)."""
    from cgsim.model.batch import collate
    from cgsim.rollout.engine import Proposal
    from cgsim.rollout.hooks import StabilityGuard

    box_dir = ROOT / "data" / "electrolyte" / "mapped" / "train" / "peo7x20_eoli8"
    traj = load_systems([str(box_dir)], "t").trajectories[0]
    graph = traj.graph
    assert graph.box is not None
    frame = torch.from_numpy(traj.positions[:2]).permute(1, 0, 2)  # (N, 2, 3)
    batch = collate([graph] * 3, [frame] * 3)
    n = frame.shape[0]
    new = batch.pos[:, -1].clone()
    mob = batch.batch.clone()
    a, b = (int(i) for i in graph.bead_bonds[:, 0])
    new[2 * n + a] += torch.tensor([0.0, 0.0, 1.0], dtype=new.dtype)  # member 2: a stretched bond
    new[b] = new[a] + 0.01  # member 0: two bonded beads 0.017 nm apart
    guard = StabilityGuard(max_bond=[0.6] * 3, min_distance=[0.1] * 3)
    stops = guard.check(_FakeEngine(), None, Proposal(1, [0, 1, 2], batch, new, mob))
    assert set(stops) == {0, 2}
    assert "stretched" in stops[2] and "overlap" in stops[0]


class _FakeEngine:
    """Only what StabilityGuard.check reads from the engine: the model's cutoff."""

    class model:  # noqa: N801
        cutoff = 0.8


def test_guard_by_type_pair_stops_a_pair_closer_than_its_own_limit():
    """Two Li+ at 0.12 nm pass an overall limit of 0.11 nm but not the Li-Li one (0.5 x 0.349 nm)."""
    from cgsim.model.batch import collate
    from cgsim.rollout.command import closest_by_type_pair
    from cgsim.rollout.engine import Proposal
    from cgsim.rollout.hooks import StabilityGuard

    box_dir = ROOT / "data" / "electrolyte" / "mapped" / "train" / "peo7x20_eoli8"
    traj = load_systems([str(box_dir)], "t").trajectories[0]
    types = json.loads((box_dir / "beads.json").read_text())["system"]["particle_types"]
    names, index, closest = closest_by_type_pair(traj, types, 0.8, 20)
    li = names.index("LI")
    assert index.shape == (traj.graph.n_beads,) and np.allclose(closest, closest.T)
    # independent check of the Li-Li closest approach: all Li pairs, minimum image, same frames
    frames = np.unique(np.linspace(0, traj.n_frames - 1, 20).round().astype(int))
    x = traj.positions[frames][:, index == li]
    d = x[:, :, None] - x[:, None]
    edge = traj.graph.box.numpy()
    d -= edge * np.round(d / edge)
    r = np.linalg.norm(d, axis=-1)
    r[:, np.arange(r.shape[1]), np.arange(r.shape[1])] = np.inf
    assert closest[li, li] == pytest.approx(r.min(), abs=1e-5)

    table = torch.from_numpy(0.5 * np.where(np.isfinite(closest), closest, np.nanmin(closest)))
    frame = torch.from_numpy(traj.positions[:2]).permute(1, 0, 2)
    batch = collate([traj.graph] * 2, [frame] * 2)
    new = batch.pos[:, -1].clone()
    a, b = np.flatnonzero(index == li)[:2]
    n = frame.shape[0]
    assert 0.5 * closest[li, li] > 0.12
    new[n + b] = new[n + a] + torch.tensor([0.12, 0.0, 0.0], dtype=new.dtype)  # member 1: Li-Li at 0.12 nm
    pairs = [(torch.from_numpy(index), table)] * 2
    prop = Proposal(1, [0, 1], batch, new, batch.batch.clone())
    plain = StabilityGuard(max_bond=[9.0] * 2, min_distance=[0.11] * 2)
    assert plain.check(_FakeEngine(), None, prop) == {}
    typed = StabilityGuard(max_bond=[9.0] * 2, min_distance=[float(table.max())] * 2, pair_min_distance=pairs)
    stops = typed.check(_FakeEngine(), None, prop)
    assert list(stops) == [1]
    assert f"overlap at 0.12 nm < {float(table[li, li]):.4g} nm" in stops[1] and f"beads {b} and {a}" in stops[1]


def test_guard_by_type_pair_with_an_absolute_limit_is_an_error(compose_cfg, ckpt, tmp_path):
    with pytest.raises(CgsimInputError, match="guard.by_type_pair"):
        rollout(rollout_cfg(compose_cfg, ckpt, tmp_path / "o", "guard.by_type_pair=true", "guard.min_distance=0.1"))
    assert not (tmp_path / "o").exists()


def test_guard_by_type_pair_runs_from_the_command(compose_cfg, ckpt, tmp_path):
    summary = rollout(rollout_cfg(compose_cfg, ckpt, tmp_path / "o", "guard.by_type_pair=true", "temperature=0.0"))
    assert summary["steps"] == 6 and summary["n_stopped"] == 0
