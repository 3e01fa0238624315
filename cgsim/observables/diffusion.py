"""Self-diffusion coefficients from the Einstein relation, with block-averaged errors.

``MSD(t) = 2 d D t + c`` in the diffusive regime (d = 3 dimensions): D is the slope of an
ordinary least-squares line through the MSD points whose lag lies in a stated window
``[t_start, t_end]`` (ps), divided by 2d. The intercept absorbs the ballistic/caged start.

Error: the trajectory is cut into ``n_blocks`` contiguous blocks, the MSD and fit are redone
in each, and the error is the standard error of the block values,
``std(D_b, ddof=1) / sqrt(n_blocks)`` (blocks treated as independent; Flyvbjerg & Petersen,
J. Chem. Phys. 91, 461 (1989) give the rationale). The reported D is the fit on the whole
trajectory. The window must fit inside one block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cgsim.errors import CgsimInputError
from cgsim.observables import _checks
from cgsim.observables.msd import MSDResult, block_slices, msd
from cgsim.units import NM2_PER_PS_TO_CM2_PER_S


@dataclass(frozen=True, eq=False)
class DiffusionResult:
    """Self-diffusion coefficients per group.

    Attributes
    ----------
    groups : list of str
        Group (species) names.
    D : numpy.ndarray
        Diffusion coefficient per group, shape (n_groups,), nm^2/ps.
    D_err : numpy.ndarray
        Standard error from block averaging, shape (n_groups,), nm^2/ps; NaN with one block.
    block_D : numpy.ndarray
        D of each block, shape (n_groups, n_blocks), nm^2/ps.
    intercept : numpy.ndarray
        Intercept of the fit on the whole trajectory, shape (n_groups,), nm^2.
    window : tuple of float
        Fit window ``(t_start, t_end)``, ps.
    dim : int
        Dimensions of the Einstein relation.
    units : dict
        ``{"D": "nm^2/ps", "window": "ps", "intercept": "nm^2"}``.
    """

    groups: list[str]
    D: np.ndarray
    D_err: np.ndarray
    block_D: np.ndarray
    intercept: np.ndarray
    window: tuple[float, float]
    dim: int
    units: dict[str, str]

    @property
    def D_cm2_s(self) -> np.ndarray:
        """D in cm^2/s, shape (n_groups,)."""
        return self.D * NM2_PER_PS_TO_CM2_PER_S

    @property
    def D_err_cm2_s(self) -> np.ndarray:
        """Error of D in cm^2/s, shape (n_groups,)."""
        return self.D_err * NM2_PER_PS_TO_CM2_PER_S

    def of(self, group: str) -> tuple[float, float]:
        """``(D, D_err)`` of one group, nm^2/ps."""
        if group not in self.groups:
            raise CgsimInputError("DiffusionResult.of", f"no group {group!r}; expected one of {self.groups}")
        i = self.groups.index(group)
        return float(self.D[i]), float(self.D_err[i])


def linear_fit(lag_times: np.ndarray, y: np.ndarray, window: Sequence[float], where: str) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and intercept of ``y`` against lag time within ``window``.

    Parameters
    ----------
    lag_times : numpy.ndarray
        Lag times, shape (n_lags,), ps.
    y : numpy.ndarray
        Curves, shape (n_curves, n_lags).
    window : (float, float)
        ``(t_start, t_end)``, ps, inclusive; must lie within the lags and hold >= 2 points.
    where : str
        Name used in errors.

    Returns
    -------
    slope, intercept : numpy.ndarray
        Shape (n_curves,) each; slope in y-unit/ps.
    """
    t0, t1 = _checks.window(window, float(lag_times[-1]), where)
    eps = 1e-9 * max(float(lag_times[-1]), 1.0)
    sel = (lag_times >= t0 - eps) & (lag_times <= t1 + eps)
    if sel.sum() < 2:
        raise CgsimInputError(where, f"window ({t0:g}, {t1:g}) ps holds fewer than 2 lag times; widen it")
    t = lag_times[sel]
    yy = np.atleast_2d(y)[:, sel]
    tc = t - t.mean()
    slope = (yy - yy.mean(axis=1, keepdims=True)) @ tc / (tc @ tc)
    intercept = yy.mean(axis=1) - slope * t.mean()
    return slope, intercept


def diffusion_from_msds(full: MSDResult, blocks: Sequence[MSDResult], window: Sequence[float],
                        dim: int = 3) -> DiffusionResult:
    """D per group from a whole-trajectory MSD, and its error from block MSDs.

    Parameters
    ----------
    full : MSDResult
        MSD of the whole trajectory (or pooled trajectories).
    blocks : sequence of MSDResult
        MSDs of the blocks (same groups); empty or one block gives a NaN error.
    window : (float, float)
        Fit window, ps.
    dim : int
        Dimensions (3 for bulk).

    Returns
    -------
    DiffusionResult
    """
    slope, intercept = linear_fit(full.lag_times, full.msd, window, "diffusion.fit_window")
    block_d = np.zeros((len(full.groups), len(blocks)))
    for b, res in enumerate(blocks):
        if res.groups != full.groups:
            raise CgsimInputError("diffusion.blocks", "expected every block to hold the same groups")
        if float(window[1]) > res.lag_times[-1] * (1 + 1e-9):
            raise CgsimInputError("diffusion.fit_window", f"window ends at {float(window[1]):g} ps but each of the "
                                                           f"{len(blocks)} blocks spans only {res.lag_times[-1]:g} ps; "
                                                           "use fewer blocks or a shorter window")
        block_d[:, b] = linear_fit(res.lag_times, res.msd, window, "diffusion.fit_window")[0] / (2 * dim)
    if len(blocks) > 1:
        err = block_d.std(axis=1, ddof=1) / np.sqrt(len(blocks))
    else:
        err = np.full(len(full.groups), np.nan)
    return DiffusionResult(groups=list(full.groups), D=slope / (2 * dim), D_err=err, block_D=block_d,
                           intercept=intercept, window=(float(window[0]), float(window[1])), dim=int(dim),
                           units={"D": "nm^2/ps", "window": "ps", "intercept": "nm^2"})


def self_diffusion(xyz: np.ndarray, dt: float, fit_window: Sequence[float], *, groups: Sequence[str] | None = None,
                   box: Any = None, masses: np.ndarray | None = None, remove_drift: bool = False,
                   n_blocks: int = 5, dim: int = 3) -> DiffusionResult:
    """Self-diffusion coefficient per group from the MSD slope over ``fit_window``.

    Parameters
    ----------
    xyz : numpy.ndarray
        Unwrapped positions, shape (n_frames, n_particles, 3), nm (use
        :func:`cgsim.observables.polymer.molecule_centres` first for molecules).
    dt : float
        Time between frames, ps.
    fit_window : (float, float)
        ``(t_start, t_end)`` of the linear fit, ps; must fit inside one block.
    groups, box, masses, remove_drift
        As in :func:`cgsim.observables.msd.msd`.
    n_blocks : int
        Blocks for the error estimate (1 = no error).
    dim : int
        Dimensions of the Einstein relation.

    Returns
    -------
    DiffusionResult
    """
    arr = _checks.positions(xyz, "self_diffusion.xyz", min_frames=2)
    dt = _checks.time_step(dt, "self_diffusion.dt")
    _checks.window(fit_window, (arr.shape[0] - 1) * dt, "self_diffusion.fit_window")
    full = msd(arr, dt, groups=groups, box=box, masses=masses, remove_drift=remove_drift)
    blocks = []
    slices = block_slices(arr.shape[0], n_blocks, "self_diffusion.n_blocks")
    if len(slices) > 1:
        for sl in slices:
            bbox = None if box is None else _checks.box_lengths(box, arr.shape[0], "self_diffusion.box")[sl]
            blocks.append(msd(arr[sl], dt, groups=groups, box=bbox, masses=masses, remove_drift=remove_drift))
    return diffusion_from_msds(full, blocks, fit_window, dim)
