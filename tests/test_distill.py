"""The student sampler (cgsim/model/refinement.py) and refiner distillation (cgsim/train/distill.py)."""

from __future__ import annotations

import pytest
import torch

from cgsim.errors import CgsimInputError
from cgsim.model.refinement import refiner_calls

CHAIN_CKPT = "tests/fixtures/checkpoints/chain.pt"
CHAIN_SYSTEM = "data/chain/mapped/test/seq_000"


def test_student_calls_are_its_levels():
    assert refiner_calls("student", 1, 0, False) == 1
    assert refiner_calls("student", 2, 0, False) == 2
    assert refiner_calls("student", 2, 5, True) == 3  # correctors do not apply to jumps


@pytest.fixture(scope="module")
def teacher():
    """The fixture chain model with a short deterministic ODE schedule, and one real chain."""
    from cgsim.data.load import load_systems
    from cgsim.model.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(CHAIN_CKPT)
    model = model_from_checkpoint(ckpt)
    model.refiner.set_schedule(sampler="ode", levels=4, steps_per_level=0, final_denoise=True)
    systems = load_systems([CHAIN_SYSTEM], "systems", list(ckpt["data"]["atom_types"])).trajectories
    return ckpt, model, systems


def _one_window(model, systems):
    from cgsim.data.windows import history_positions
    from cgsim.model.batch import collate

    b = collate([systems[0].graph], [history_positions(systems[0], model.history, 1, 10)])
    return b, model(b)


def test_one_jump_student_is_one_tweedie_step_from_the_top_level(teacher):
    _, model, systems = teacher
    r = model.refiner
    b, pred = _one_window(model, systems)
    y = torch.randn(b.n_beads, 3, generator=torch.Generator().manual_seed(1))
    z = torch.randn(b.n_beads, 3, generator=torch.Generator().manual_seed(2))
    saved = r.schedule()
    try:
        r.set_schedule(sampler="student", levels=1, final_denoise=False)
        calls = []
        out = r.refine(b, pred.latent, y, pred.scale, lambda: (calls.append(1), z)[1])
        top = y + r.sigma_start * pred.scale * z
        s = torch.full((b.n_beads,), r.sigma_start)
        expected = top - r.sigma_start * pred.scale * r(b, pred.latent, top, s, pred.scale)
        assert len(calls) == 1  # only the diffusion to the top level draws noise
        torch.testing.assert_close(out, expected)
        assert r.calls_per_step == 1
    finally:
        r.set_schedule(**saved)


def test_trace_records_the_ode_path_from_the_top_level(teacher):
    _, model, systems = teacher
    r = model.refiner
    b, pred = _one_window(model, systems)
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(b.n_beads, 3, generator=gen)
    z = torch.randn(b.n_beads, 3, generator=gen)
    path = []
    end = r.refine(b, pred.latent, y, pred.scale, lambda: z, trace=path)
    assert len(path) == r.levels
    torch.testing.assert_close(path[0], y + r.sigma_start * pred.scale * z)
    # the path narrows towards the end point (the noise levels decrease)
    dist = [float((p - end).norm()) for p in path]
    assert dist[0] > dist[-1]


def test_stochastic_teacher_is_refused(teacher, tmp_path):
    from cgsim.train.distill import teacher_pairs

    _, model, systems = teacher
    saved = model.refiner.schedule()
    try:
        model.refiner.set_schedule(sampler="diffusion", steps_per_level=1)
        with pytest.raises(CgsimInputError, match="deterministic"):
            teacher_pairs(model, systems, 1, 4, tmp_path, progress=False)
    finally:
        model.refiner.set_schedule(**saved)


def test_pairs_resume_and_student_learns_the_teacher(teacher, tmp_path):
    from cgsim.model.checkpoint import model_from_checkpoint
    from cgsim.train.distill import _validate, student_checkpoint, teacher_pairs, train_student

    ckpt, model, systems = teacher
    pairs = teacher_pairs(model, systems, 1, 24, tmp_path / "pairs", batch_windows=8, chunk_windows=8, progress=False)
    assert len(pairs) == 24 and len(list((tmp_path / "pairs").glob("pairs_*.pt"))) == 3
    again = teacher_pairs(model, systems, 1, 24, tmp_path / "pairs", batch_windows=8, chunk_windows=8, progress=False)
    torch.testing.assert_close(pairs[5]["end"], again[5]["end"])  # chunks are reused, not redrawn
    p = pairs[0]
    assert p["path"].shape == (model.refiner.levels, *p["end"].shape)
    import numpy as np

    val = np.arange(4, 24)
    before = _validate(model, model.refiner, systems, pairs, val, model.refiner.annealing_levels(), 1)
    student, report = train_student(model, systems, pairs, 1, 60, tmp_path / "state.pt", lr=1e-3, batch_windows=4,
                                    top_weight=1.0, val_fraction=0.2, progress=False, save_every=30)
    # the copy of the teacher's denoiser jumps from the top level to the posterior mean, not to the
    # teacher's end point; the student gets closer to it (pairs it was not trained on)
    assert report["val_rmsd_nm"][0] < 0.9 * before["val_rmsd_nm"][0]
    # resuming a finished run changes nothing
    again_student, again_report = train_student(model, systems, pairs, 1, 60, tmp_path / "state.pt", lr=1e-3,
                                                batch_windows=4, top_weight=1.0, val_fraction=0.2, progress=False)
    assert again_report["steps"] == 60
    for a, b in zip(student.parameters(), again_student.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    # the model file samples with the student in two calls per step
    distilled = model_from_checkpoint(student_checkpoint(ckpt, model, student, 1, {"test": True}))
    assert distilled.refiner.sampler == "student" and distilled.calls_per_step() == 2
    for a, b in zip(distilled.refiner.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(distilled.processor.parameters(), model.processor.parameters(), strict=True):
        torch.testing.assert_close(a, b)  # the dynamics network is the teacher's
