"""MSD by FFT and self-diffusion: brute-force origins, random walks, ballistic motion, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from cgsim.errors import CgsimInputError
from cgsim.observables.diffusion import self_diffusion
from cgsim.observables.msd import check_unwrapped, combine_msds, msd, remove_com_drift


def _brute_msd(x: np.ndarray) -> np.ndarray:
    """Loops over every time origin; shape (n_frames, n_particles)."""
    n = x.shape[0]
    out = np.zeros((n, x.shape[1]))
    for m in range(1, n):
        acc = np.zeros(x.shape[1])
        for k in range(n - m):
            acc += ((x[k + m] - x[k]) ** 2).sum(-1)
        out[m] = acc / (n - m)
    return out


def _walk(rng: np.random.Generator, d: float, dt: float, n_frames: int, n: int) -> np.ndarray:
    return np.cumsum(rng.normal(0, np.sqrt(2 * d * dt), (n_frames, n, 3)), axis=0) + rng.uniform(0, 10, (1, n, 3))


def test_fft_equals_loops_over_origins():
    rng = np.random.default_rng(0)
    x = _walk(rng, 0.3, 0.5, 37, 6) + 1000.0  # far from the origin: no loss of precision
    groups = ["a", "b", "a", "c", "b", "a"]
    res = msd(x, 0.5, groups=groups)
    brute = _brute_msd(x)
    assert res.groups == ["a", "b", "c"]
    assert np.allclose(res.of("a"), brute[:, [0, 2, 5]].mean(1), rtol=1e-9, atol=1e-9)
    assert np.allclose(res.of("c"), brute[:, 3], rtol=1e-9, atol=1e-9)
    assert np.allclose(res.lag_times, np.arange(37) * 0.5)
    assert res.units == {"lag_times": "ps", "msd": "nm^2"}


def test_random_walk_msd_is_6Dt():
    rng = np.random.default_rng(1)
    d, dt = 0.2, 0.1
    res = msd(_walk(rng, d, dt, 200, 500), dt)
    lags = res.lag_times[1:50]
    # relative standard error of the particle-averaged MSD at these lags is below ~3 %
    assert np.allclose(res.msd[0, 1:50], 6 * d * lags, rtol=0.08)


def test_ballistic_motion_is_exact():
    v = np.array([0.3, -0.1, 0.2])
    t = np.arange(20) * 0.25
    x = (t[:, None] * v)[:, None, :] + np.zeros((1, 3, 3))
    res = msd(x, 0.25, max_lag=10)
    assert res.lag_times.size == 11
    assert np.allclose(res.msd[0], (v @ v) * res.lag_times**2)


def test_com_drift_removal():
    rng = np.random.default_rng(2)
    x = _walk(rng, 0.1, 1.0, 50, 40)
    drift = np.arange(50)[:, None, None] * np.array([0.5, 0.0, -0.2])
    plain = msd(x, 1.0, remove_drift=True)
    drifted = msd(x + drift, 1.0, remove_drift=True)
    assert np.allclose(plain.msd, drifted.msd)
    assert drifted.com_drift_removed
    assert np.allclose(remove_com_drift(x + drift).mean(1), 0.0)


def test_combine_weights_by_particles():
    rng = np.random.default_rng(3)
    x = _walk(rng, 0.1, 1.0, 30, 9)
    parts = combine_msds([msd(x[:, :4], 1.0), msd(x[:20, 4:], 1.0)])
    assert parts.lag_times.size == 20 and parts.n_particles.tolist() == [9]
    expected = (4 * _brute_msd(x)[:20, :4].mean(1) + 5 * _brute_msd(x[:20])[:, 4:].mean(1)) / 9
    assert np.allclose(parts.msd[0], expected)


def test_self_diffusion_with_block_error():
    rng = np.random.default_rng(4)
    d_a, d_b, dt = 0.05, 0.2, 0.5
    x = np.concatenate([_walk(rng, d_a, dt, 400, 150), _walk(rng, d_b, dt, 400, 150)], axis=1)
    groups = ["Li"] * 150 + ["TFSI"] * 150
    res = self_diffusion(x, dt, (2.0, 20.0), groups=groups, n_blocks=4)
    for g, d in (("Li", d_a), ("TFSI", d_b)):
        value, err = res.of(g)
        assert 0 < err < 0.1 * d
        assert abs(value - d) < 5 * err + 0.02 * d
    assert np.allclose(res.D_cm2_s, res.D * 1e-2)
    assert res.units["D"] == "nm^2/ps" and res.window == (2.0, 20.0)
    assert res.block_D.shape == (2, 4)


def test_wrapped_coordinates_are_refused():
    rng = np.random.default_rng(5)
    box = np.array([3.0, 3.0, 3.0])
    x = _walk(rng, 0.01, 1.0, 30, 10)
    msd(x, 1.0, box=box)  # unwrapped: fine
    wrapped = x % box
    with pytest.raises(CgsimInputError, match="coordinates look wrapped"):
        msd(wrapped, 1.0, box=box)
    with pytest.raises(CgsimInputError, match="look wrapped"):
        check_unwrapped(wrapped, np.tile(box, (30, 1)))
    with pytest.raises(CgsimInputError, match="self_diffusion.xyz|msd.xyz"):
        self_diffusion(wrapped, 1.0, (1, 5), box=box, n_blocks=2)


def test_fit_window_errors():
    x = _walk(np.random.default_rng(6), 0.1, 1.0, 40, 5)
    with pytest.raises(CgsimInputError, match="beyond the longest lag"):
        self_diffusion(x, 1.0, (1.0, 100.0), n_blocks=1)
    with pytest.raises(CgsimInputError, match="blocks spans only"):
        self_diffusion(x, 1.0, (1.0, 15.0), n_blocks=4)
    with pytest.raises(CgsimInputError, match="t_start < t_end"):
        self_diffusion(x, 1.0, (5.0, 2.0), n_blocks=1)
    with pytest.raises(CgsimInputError, match="fewer than 2 lag times"):
        self_diffusion(x, 1.0, (1.2, 1.8), n_blocks=1)
    with pytest.raises(CgsimInputError, match="positive whole number of blocks"):
        self_diffusion(x, 1.0, (1.0, 5.0), n_blocks=0)


def test_bad_input():
    x = np.zeros((5, 2, 3))
    with pytest.raises(CgsimInputError, match="at least 2 frames"):
        msd(x[:1], 1.0)
    with pytest.raises(CgsimInputError, match="positive number"):
        msd(x, -1.0)
    with pytest.raises(CgsimInputError, match="max_lag"):
        msd(x, 1.0, max_lag=9)
    with pytest.raises(CgsimInputError, match="no group"):
        msd(x, 1.0).of("Li")
    with pytest.raises(CgsimInputError, match="triclinic"):
        msd(x, 1.0, box=np.array([[3, 0, 0], [1, 3, 0], [0, 0, 3.0]]))


def test_diffusion_matches_polyfit_of_loops_and_hand_made_blocks():
    rng = np.random.default_rng(9)
    x = _walk(rng, 0.1, 0.5, 120, 6)
    window, dt = (3.0, 15.0), 0.5
    res = self_diffusion(x, dt, window, n_blocks=3)
    t = np.arange(120) * dt
    sel = (t >= window[0]) & (t <= window[1])

    def d_of(part: np.ndarray) -> float:
        curve = _brute_msd(part).mean(axis=1)  # loops over every origin, averaged over particles
        return np.polyfit(t[: part.shape[0]][sel[: part.shape[0]]], curve[sel[: part.shape[0]]], 1)[0] / 6

    assert res.D[0] == pytest.approx(d_of(x), rel=1e-9)
    blocks = [d_of(x[k * 40:(k + 1) * 40]) for k in range(3)]
    assert res.block_D[0] == pytest.approx(blocks, rel=1e-9)
    assert res.D_err[0] == pytest.approx(np.std(blocks, ddof=1) / np.sqrt(3), rel=1e-9)


def test_box_lengths_of_three_frames_are_not_read_as_vectors():
    from cgsim.observables import _checks

    lengths = np.array([[3.0, 3.1, 3.2], [3.0, 3.1, 3.2], [3.05, 3.1, 3.2]])
    np.testing.assert_array_equal(_checks.box_lengths(lengths, 3, "box"), lengths)
    np.testing.assert_array_equal(_checks.box_lengths(np.diag([3.0, 3.1, 3.2]), 3, "box"), np.tile([3.0, 3.1, 3.2], (3, 1)))
