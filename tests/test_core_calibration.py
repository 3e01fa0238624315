"""The excluded-volume filter calibrated on the model's own rollouts (cgsim/train/core_calibration.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cgsim.errors import CgsimInputError
from cgsim.model.prior import PairTable, StructuralPrior
from cgsim.model.prior_tables import taper_change as taper
from cgsim.train.core_calibration import CoreCalibration, calibrate_core
from cgsim.train.prior_fit import update_tables


def _prior() -> StructuralPrior:
    r = np.arange(0.0, 2.0, 0.01)
    nb = PairTable(r0=0.0, dr=0.01, u=5.0 * np.clip(1 - r / 0.8, 0, None) ** 2, lo=0.3, hi=0.8, k=1.0,
                   n_samples=100, upper_wall=False)
    bond = PairTable(r0=0.0, dr=0.01, u=50.0 * (r - 1.0) ** 2, lo=0.8, hi=1.2, k=50.0, n_samples=100, upper_wall=True)
    return StructuralPrior(tables={"nb": {"*": nb}, "bond": {"*": bond}, "angle": {}}, nb_cutoff=2.0, steps=0,
                           core_tries=16, core_select="weighted", settle=2)


def test_too_few_close_pairs_in_the_rollout_grow_a_well_and_the_schedule_stays():
    """Per frame, the rollout makes half MD's non-bonded pairs at 1.0-1.4 nm (a swollen chain): the
    table falls there (an attraction, below the fitted 0), stays where both agree, and its change
    ends at 0 at the table's end; the schedule (tries, pick rule, settle) is kept."""
    rng = np.random.default_rng(0)
    md = rng.uniform(0.8, 2.0, 200_000)
    roll = np.concatenate([rng.uniform(0.8, 1.4, 50_000), rng.uniform(1.4, 2.0, 100_000)])  # MD: 100k each
    drawn = {("nb", 0): [roll]}
    true = {("nb", 0): [md]}
    prior = _prior()
    new, err = update_tables(prior, drawn, true, 100, 100, damping=1.0, nb_whole_range=True)
    u_old, u_new = prior.tables["nb"]["*"].u, new.tables["nb"]["*"].u
    r = np.arange(0.0, 2.0, 0.01)
    mid = (r > 1.05) & (r < 1.3)
    assert err > 0.1
    np.testing.assert_allclose(u_new[mid] - u_old[mid], np.log(0.5), atol=0.15)
    assert abs(u_new[-1] - u_old[-1]) < 1e-9  # tapered to 0 where the pair search ends
    assert np.abs(u_new[(r > 1.45) & (r < 1.5)] - u_old[(r > 1.45) & (r < 1.5)]).max() < 0.15
    assert new.tables["bond"]["*"] is prior.tables["bond"]["*"]  # no pairs of it: unchanged
    assert (new.core_tries, new.core_select, new.settle) == (16, "weighted", 2)


def test_taper_keeps_the_change_inside_and_removes_it_at_the_end():
    old = _prior().tables["nb"]["*"]
    moved = dataclasses.replace(old, u=old.u - 1.0)
    t = taper(moved, old, 0.25)
    np.testing.assert_allclose(t.u[:100], old.u[:100] - 1.0)
    assert t.u[-1] == pytest.approx(old.u[-1])
    assert np.all(np.diff(t.u[160:] - old.u[160:]) >= -1e-12)  # a monotone switch


def test_calibration_rolls_a_model_out_and_moves_its_filter_tables():
    from cgsim.model.tree import TreeNoise
    from cgsim.train.prior_fit import fit_prior_to
    from tests.conftest import chain_system, tiny_model

    with pytest.raises(ValueError, match="burn_in < steps"):
        CoreCalibration(steps=5, burn_in=5)
    m = tiny_model(collective=TreeNoise(16, min_std=1e-3, bend=True, centred=True, core_samples=4).double(),
                   target="displacement")
    sys_, pos = chain_system(12, None, 3)
    gen = torch.Generator().manual_seed(1)
    frames = pos.permute(1, 0, 2)[-1:] + 0.02 * torch.randn(40, 12, 3, generator=gen, dtype=torch.float64).cumsum(0)

    @dataclasses.dataclass
    class _Traj:  # the fields the calibration reads
        name: str
        graph: object
        positions: np.ndarray

        @property
        def n_frames(self) -> int:
            return self.positions.shape[0]

    systems = [_Traj("chain", sys_, frames.numpy())]
    with pytest.raises(CgsimInputError, match="core_tries >= 2"):
        calibrate_core(m, systems, 1, CoreCalibration(iterations=1, steps=4, burn_in=1), progress=False)
    m.prior = fit_prior_to(systems, ["A", "B", "C"], {"nb_cutoff": 1.0, "min_samples": 10, "core_tries": 8})
    with torch.no_grad():  # a network that predicts no move: the rollout stays near its MD start
        for p in m.parameters():
            p.zero_()
    before = m.prior
    prior, errors = calibrate_core(m, systems, 1, CoreCalibration(iterations=2, steps=40, burn_in=4, every=1),
                                   progress=False)
    assert len(errors) == 2 and all(np.isfinite(errors)) and errors[0] > 0
    assert m.prior is prior and prior.core_select == "weighted" and prior.core_tries == 8
    changed = [not np.array_equal(prior.tables[k][key].u, before.tables[k][key].u)
               for k in prior.tables for key in prior.tables[k]]
    assert any(changed)
    assert StructuralPrior.from_dict(prior.to_dict()).to_dict() == prior.to_dict()


def test_the_one_step_calibration_keeps_the_prior_schedule():
    """``calibrate_prior``'s update rebuilt the prior without ``settle`` and ``core_tries`` (reset
    to 0: the filter silently off after a calibration); it keeps the whole schedule now."""
    from cgsim.train.prior_fit import _update

    prior = _prior()
    rng = np.random.default_rng(1)
    store = {("bond", 0): [rng.normal(1.0, 0.05, 5000)]}
    out, err = _update(prior, store, {("bond", 0): [rng.normal(1.02, 0.05, 5000)]}, 10, 0.5)
    assert err > 0 and not np.array_equal(out.tables["bond"]["*"].u, prior.tables["bond"]["*"].u)
    assert (out.settle, out.core_tries, out.core_select, out.steps) == (2, 16, "weighted", 0)
