import numpy as np
import pytest
import torch

from cgsim.data import BeadTrajectory, WindowCollator, WindowDataset
from cgsim.errors import CgsimInputError
from cgsim.model import SystemGraph


def _traj(name, n_frames, n_beads):
    graph = SystemGraph(atom_type=torch.zeros(n_beads, dtype=torch.long), atom_bonds=torch.zeros((2, 0), dtype=torch.long),
                        atom_to_bead=torch.arange(n_beads), bead_bonds=torch.zeros((2, 0), dtype=torch.long),
                        n_beads=n_beads)
    # positions encode (frame, bead) so windows can be checked exactly
    pos = np.zeros((n_frames, n_beads, 3), dtype=np.float32)
    pos[:, :, 0] = np.arange(n_frames)[:, None]
    pos[:, :, 1] = np.arange(n_beads)[None, :]
    return BeadTrajectory(name, graph, pos, save_interval=5.0)


def test_windows_index_frames_with_stride():
    ds = WindowDataset([_traj("a", 20, 3), _traj("b", 12, 5)], history=3, stride=2)
    # span = 3*2+1 = 7 frames: 14 windows in a, 6 in b
    assert len(ds) == 14 + 6
    k, w = ds[0]
    assert k == 0 and w.shape == (3, 4, 3)
    np.testing.assert_array_equal(w[0, :, 0].numpy(), [0, 2, 4, 6])
    k, w = ds[14 + 5]
    assert k == 1
    np.testing.assert_array_equal(w[4, :, 0].numpy(), [5, 7, 9, 11])
    np.testing.assert_array_equal(w[:, 0, 1].numpy(), np.arange(5))


def test_window_step_thins_windows():
    assert len(WindowDataset([_traj("a", 20, 2)], history=2, stride=1, window_step=5)) == 4


@pytest.mark.parametrize("kw, match", [({"stride": 0}, "data.stride"), ({"history": 1}, "data.history"),
                                       ({"history": 10, "stride": 3}, "a: trajectory has 20 frames")])
def test_bad_windows(kw, match):
    args = {"history": 3, "stride": 1}
    args.update(kw)
    with pytest.raises(CgsimInputError, match=match):
        WindowDataset([_traj("a", 20, 2)], **args)


def test_collator_batches_and_noises_inputs_only():
    trajs = [_traj("a", 20, 3), _traj("b", 12, 5)]
    ds = WindowDataset(trajs, history=3, stride=1)
    clean = WindowCollator(trajs)([ds[0], ds[len(ds) - 1]])
    assert clean.inputs.pos.shape == (8, 3, 3) and clean.target.shape == (8, 3)
    assert clean.inputs.n_systems == 2 and clean.inputs.batch.tolist() == [0] * 3 + [1] * 5
    noisy = WindowCollator(trajs, noise_std=[0.1], generator=torch.Generator().manual_seed(0))([ds[0], ds[len(ds) - 1]])
    torch.testing.assert_close(noisy.target, clean.target)
    diff = (noisy.inputs.pos - clean.inputs.pos).std().item()
    assert 0.07 < diff < 0.13


def test_random_symmetry_without_a_box_is_uniform_over_o3():
    from cgsim.data.windows import random_symmetry

    gen = torch.Generator().manual_seed(0)
    mats = torch.stack([random_symmetry(None, gen) for _ in range(2000)])
    torch.testing.assert_close(mats @ mats.transpose(1, 2), torch.eye(3).expand(2000, 3, 3), atol=1e-5, rtol=0)
    dets = torch.linalg.det(mats)
    assert 0.45 < (dets > 0).float().mean() < 0.55  # rotations and reflections alike
    # a uniform orthogonal matrix sends a fixed unit vector uniformly over the sphere: mean ~ 0, <v_i^2> = 1/3
    v = mats[:, :, 0]
    assert v.mean(0).abs().max() < 0.06 and ((v ** 2).mean(0) - 1 / 3).abs().max() < 0.04


@pytest.mark.parametrize("box, n_expected", [((2.0, 2.0, 2.0), 48), ((2.0, 2.0, 3.0), 16), ((1.0, 2.0, 3.0), 8)])
def test_random_symmetry_with_a_box_maps_the_lattice_onto_itself(box, n_expected):
    from cgsim.data.windows import random_symmetry
    from cgsim.geometry.pbc import minimum_image

    lengths = torch.tensor(box)
    gen = torch.Generator().manual_seed(1)
    seen = set()
    pos = torch.rand(20, 3, generator=gen) * 3.0 * lengths - lengths  # unwrapped, some outside the box
    d0 = minimum_image(pos[:, None] - pos[None], lengths).norm(dim=-1)
    for _ in range(600):
        r = random_symmetry(lengths, gen)
        seen.add(tuple(r.flatten().tolist()))
        torch.testing.assert_close(r.abs() @ lengths, lengths)  # signed permutation of equal edges only
        moved = pos @ r.T
        torch.testing.assert_close(minimum_image(moved[:, None] - moved[None], lengths).norm(dim=-1), d0,
                                   atol=1e-5, rtol=0)
    assert len(seen) == n_expected


def test_collator_symmetries_move_inputs_and_target_together():
    trajs = [_traj("a", 20, 4)]
    trajs[0].positions[:] = np.random.default_rng(0).normal(size=trajs[0].positions.shape).astype(np.float32)
    ds = WindowDataset(trajs, history=3, stride=1)
    items = [ds[0], ds[5]]
    clean = WindowCollator(trajs)(items)
    turned = WindowCollator(trajs, generator=torch.Generator().manual_seed(2), symmetries=True)(items)
    assert not torch.allclose(turned.inputs.pos, clean.inputs.pos)
    for sel in (slice(0, 4), slice(4, 8)):  # per window: all distances, across frames and to the target, kept
        a = torch.cat([clean.inputs.pos[sel].reshape(-1, 3), clean.target[sel]])
        b = torch.cat([turned.inputs.pos[sel].reshape(-1, 3), turned.target[sel]])
        torch.testing.assert_close(torch.cdist(b, b), torch.cdist(a, a), atol=1e-4, rtol=0)
