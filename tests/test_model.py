"""Model properties: shapes, the symmetries (ModelSymmetryTests), the zero-temperature step, learning."""

import pytest
import torch

from cgsim.model import MultiScaleDynamics, collate
from tests.conftest import BOX, ModelSymmetryTests, chain_system, overfit_one_batch, tiny_model


class TestPlainModelSymmetries(ModelSymmetryTests):
    """Translation, relabelling, batching and periodic images; no rotation equivariance (Cartesian inputs)."""

    def make_model(self) -> MultiScaleDynamics:
        return tiny_model()


@pytest.mark.parametrize("box", [None, BOX])
def test_shapes(box):
    sys, pos = chain_system(30, box, 0)
    out = tiny_model()(collate([sys], [pos]))
    assert out.mean.shape == out.std.shape == (30, 3)
    assert torch.all(out.std > 0)


def test_step_returns_positions_and_zero_temperature_is_mean():
    sys, pos = chain_system(10, None, 4)
    m = tiny_model()
    batch = collate([sys], [pos])
    x1 = m.step(batch, temperature=0.0)
    pred = m(batch)
    expected = 2 * pos[:, -1] - pos[:, -2] + pred.mean * m.target_scale
    torch.testing.assert_close(x1, expected)


@pytest.mark.parametrize("target", ["acceleration", "displacement"])
def test_overfits_one_batch(target):
    first, last, err, scale = overfit_one_batch(tiny_model(target=target))
    # memorised: the NLL fell far and the mean prediction lands on the target
    assert last < first - 1.5, (first, last)
    assert err < 0.25 * scale


def test_rejects_short_history_and_bad_args():
    sys, pos = chain_system(10, None, 6)
    with pytest.raises(ValueError, match="reads 4 frames of history"):
        tiny_model()(collate([sys], [pos[:, :2]]))
    with pytest.raises(ValueError, match="history must be >= 2"):
        MultiScaleDynamics(n_atom_types=2, history=1, cutoff=1.0)
    with pytest.raises(ValueError, match="target must be one of"):
        MultiScaleDynamics(n_atom_types=2, history=3, cutoff=1.0, target="force")
