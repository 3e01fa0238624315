"""Calibrate the excluded-volume filter's tables on the model's own long rollouts.

A model trained with its filter (``model.collective.core_samples``) holds bonds and close
contacts from one step to the next, but what it learned is a one-step likelihood: a small bias
per step adds up over thousands of steps, and the chains' size drifts (session 16: mean Rg +18 %
over 5,000 steps, with the one-step distances right). The stationary distribution is what a
rollout must match, so this calibrates on it: roll the training systems out for ``steps``
learned steps with the filter picking by weight (``core_select="weighted"``, which lets a table
be negative and attract), histogram every filter pair's distance (non-bonded pairs within the
prior's ``nb_cutoff``, bonded and 1-3 pairs) after a burn-in, and move each table by
``damping * ln(P_rollout / P_MD)`` against the same systems' MD frames (iterative Boltzmann
inversion, Reith, Puetz & Mueller-Plathe 2003, here on the filter's tilt instead of a force
field). The histograms are per frame, not normalised in shape, so a rollout with too few close
non-bonded pairs (a swollen chain) gets a table that pulls them in. No weight of the network
changes.

The non-bonded tables' corrections are switched smoothly to zero over the last
:data:`cgsim.train.prior_fit.TAPER_FRACTION` of their range, so the filter's energy stays continuous where its pair
search ends.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from cgsim.data.windows import BeadTrajectory, history_positions
from cgsim.errors import CgsimInputError
from cgsim.model.batch import collate
from cgsim.model.prior import StructuralPrior
from cgsim.model.sampling import learned_step
from cgsim.model.simulator import MultiScaleDynamics
from cgsim.train.prior_fit import _collect, update_tables

#: a store of pair distances: ``{(kind, table index): [arrays of nm]}``
Store = dict[tuple[str, int], list[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class CoreCalibration:
    """Settings of :func:`calibrate_core`.

    Attributes
    ----------
    iterations : int
        Rollout-and-update rounds.
    steps : int
        Learned steps per rollout.
    burn_in : int
        Steps left out at the start of each rollout (the drift away from the MD start).
    every : int
        Learned steps between two collected frames (and MD frames, in learned steps).
    damping : float
        Fraction of ``ln(P_rollout / P_MD)`` applied per update (kT).
    systems : int
        Training systems rolled out together per round (at most all); 0 = all.
    seed : int
        Seed of the system choice and of the rollouts' noise.
    """

    iterations: int = 5
    steps: int = 1500
    burn_in: int = 500
    every: int = 10
    damping: float = 0.5
    systems: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.every < 1 or self.damping <= 0:
            raise ValueError("core calibration needs iterations >= 1, every >= 1 and damping > 0")
        if not 0 <= self.burn_in < self.steps:
            raise ValueError(f"core calibration needs 0 <= burn_in < steps, got burn_in={self.burn_in}, "
                             f"steps={self.steps}")


def _md_store(prior: StructuralPrior, t: BeadTrajectory, per: int, dtype: torch.dtype) -> Store:
    """Pair distances of ``per`` MD frames of ``t``, evenly spaced over its whole trajectory."""
    g = t.graph
    b = collate([g], [history_positions(t, 1, 1, 0).to(dtype)])
    topo = prior.topology(prior.classes_of(g.atom_type, g.atom_to_bead, g.n_beads), b.bead_bonds, b.n_beads,
                          b.pos.device, dtype)
    idx = np.linspace(0, t.n_frames - 1, per).round().astype(int)
    store: Store = {}
    for frame in torch.from_numpy(np.ascontiguousarray(t.positions[idx])).to(dtype):
        _collect(prior, topo, frame, b, store)
    return store


@torch.no_grad()
def calibrate_core(model: MultiScaleDynamics, systems: Sequence[BeadTrajectory], stride: int,
                   settings: CoreCalibration | None = None, progress: bool = True
                   ) -> tuple[StructuralPrior, list[float]]:
    """Fit the filter's tables so that the model's rollouts keep the training MD's pair statistics.

    Parameters
    ----------
    model : MultiScaleDynamics
        A model carrying its prior with the filter on (``prior.core_tries >= 2``); its prior is
        switched to ``core_select="weighted"`` and replaced by the calibrated one.
    systems : sequence of BeadTrajectory
        Training systems (MD frames every ``stride`` recorded frames per learned step).
    stride : int
        Recorded frames per learned step (the model's).
    settings : CoreCalibration, optional
        Rounds, rollout length, burn-in, sampling interval, damping, systems per round, seed.
    progress : bool
        Show a progress bar over the rounds.

    Returns
    -------
    prior : StructuralPrior
        The calibrated prior (also set on ``model``).
    errors : list of float
        Mean |ln(P_rollout / P_MD)| per round, before its update (0 = converged).

    Raises
    ------
    CgsimInputError
        If the model has no prior with the filter on, or no system is long enough for a history.
    """
    cfg = settings or CoreCalibration()
    prior = getattr(model, "prior", None)
    if prior is None or prior.core_tries < 2:
        raise CgsimInputError("--prior calibrate", "the model carries no structural prior with core_tries >= 2 "
                                                   "(a model trained with model.collective.core_samples)")
    prior = prior.with_schedule(core_select="weighted")
    h = model.history
    need = (h - 1) * stride + 1
    usable = [t for t in systems if t.n_frames >= need]
    if not usable:
        raise CgsimInputError("data.train_systems", f"no training system has {need} frames for a history")
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    dtype = next(model.parameters()).dtype
    errors: list[float] = []
    md_cache: dict[tuple[int, int], Store] = {}
    bar = tqdm(range(cfg.iterations), desc="calibrate filter", disable=not progress)
    for _ in bar:
        model.prior = prior
        n_pick = len(usable) if cfg.systems <= 0 else min(cfg.systems, len(usable))
        picked = [int(k) for k in rng.choice(len(usable), size=n_pick, replace=False)]
        chosen = [usable[k] for k in picked]
        graphs = [t.graph for t in chosen]
        starts = [int(rng.integers(0, t.n_frames - need + 1)) for t in chosen]
        hist = [history_positions(t, h, stride, s).to(dtype) for t, s in zip(chosen, starts, strict=True)]
        b = collate(graphs, hist)
        classes = [c for g in graphs for c in prior.classes_of(g.atom_type, g.atom_to_bead, g.n_beads)]
        topo = prior.topology(classes, b.bead_bonds, b.n_beads, b.pos.device, dtype)
        noise = functools.partial(torch.randn, (b.n_beads, 3), generator=gen, dtype=dtype)
        chem = model.chemistry(b)
        drawn: Store = {}
        n_drawn = 0
        pos = b.pos
        for k in range(cfg.steps):
            nxt = learned_step(model, b.with_pos(pos), noise, 1.0, chem, topo)
            if not bool(torch.isfinite(nxt).all()):
                raise FloatingPointError(f"calibration rollout produced non-finite positions at step {k}")
            pos = torch.cat([pos[:, 1:], nxt[:, None]], dim=1)
            if k >= cfg.burn_in and (k - cfg.burn_in) % cfg.every == 0:
                _collect(prior, topo, nxt, b, drawn)
                n_drawn += 1
            bar.set_postfix(step=k + 1, refresh=False)
        # the same systems' MD frames, the same number from each (one learned step = stride frames),
        # so that a per-frame histogram sums over the systems as a rollout frame does; the tables'
        # indices do not change between rounds, so each system's MD pairs are collected once
        per = min(len(range(0, t.n_frames, stride * cfg.every)) for t in chosen)
        true: Store = {}
        for k in picked:
            if (k, per) not in md_cache:
                md_cache[(k, per)] = _md_store(prior, usable[k], per, dtype)
            for key, v in md_cache[(k, per)].items():
                true.setdefault(key, []).extend(v)
        prior, err = update_tables(prior, drawn, true, n_drawn, per, cfg.damping, nb_whole_range=True)
        errors.append(err)
        bar.set_postfix(error=f"{err:.3f}")
    model.prior = prior
    return prior, errors
