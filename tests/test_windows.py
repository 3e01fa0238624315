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
