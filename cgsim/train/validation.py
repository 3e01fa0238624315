"""Validation: one-step negative log-likelihood and short rollouts on held-out systems."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from cgsim.data.windows import BeadTrajectory, WindowCollator, WindowDataset, history_positions
from cgsim.model.sampling import rollout_positions
from cgsim.model.simulator import MultiScaleDynamics
from cgsim.observables.bonds import bond_lengths


@dataclass
class RolloutValidation:
    """Result of rollout validation.

    Attributes
    ----------
    bond_w1 : float
        Mean over systems of the Wasserstein-1 distance between rollout and reference
        distributions of bead-bond lengths, nm (NaN if no system has bonds).
    stable_fraction : float
        Fraction of systems whose rollout stayed finite with every bond shorter than
        ``max_bond_factor`` x the longest reference bond.
    score : float
        Model-selection score (lower is better): ``bond_w1 + (1 - stable_fraction)``.
    """

    bond_w1: float
    stable_fraction: float
    score: float


def _val_batches(dataset: WindowDataset, batch_size: int, device: torch.device | str, max_windows: int | None):
    """Clean (no input noise) validation batches over evenly spaced windows."""
    collate = WindowCollator(dataset.trajectories)
    idx = np.arange(len(dataset))
    if max_windows is not None and len(idx) > max_windows:
        idx = np.linspace(0, len(idx) - 1, max_windows).round().astype(int)
    for start in range(0, len(idx), batch_size):
        yield collate([dataset[int(i)] for i in idx[start:start + batch_size]]).to(device)


@torch.no_grad()
def one_step_nll(model: MultiScaleDynamics, dataset: WindowDataset, batch_size: int,
                 device: torch.device | str, max_windows: int | None = None) -> float:
    """Mean NLL (per bead and dimension, normalised units) over the dataset's windows (no noise)."""
    total, count = 0.0, 0
    for b in _val_batches(dataset, batch_size, device, max_windows):
        n = b.target.shape[0]
        total += float(model.nll(b.inputs, b.target)) * n
        count += n
    return total / max(count, 1)


@torch.no_grad()
def one_step_dsm(model: MultiScaleDynamics, dataset: WindowDataset, batch_size: int,
                 device: torch.device | str, max_windows: int | None = None, seed: int = 0) -> float:
    """Mean denoising loss of the model's refiner over the windows, with noise fixed by ``seed``."""
    if model.refiner is None:
        raise ValueError("the model has no refiner")
    gen = torch.Generator(device=device).manual_seed(int(seed))
    total, count = 0.0, 0
    for b in _val_batches(dataset, batch_size, device, max_windows):
        n = b.target.shape[0]
        total += float(model.loss_terms(b.inputs, b.target, gen)["dsm"]) * n
        count += n
    return total / max(count, 1)


@torch.no_grad()
def rollout_validation(model: MultiScaleDynamics, trajectories: Sequence[BeadTrajectory], stride: int,
                       n_steps: int, seed: int, device: torch.device | str,
                       max_bond_factor: float = 1.5) -> RolloutValidation:
    """Roll each trajectory out ``n_steps`` learned steps from its first frames and compare.

    The history is the first ``history`` frames ``stride`` apart; the reference bond-length
    distribution is taken over the whole reference trajectory.
    """
    systems = [t.graph for t in trajectories]
    initial = [history_positions(t, model.history, stride, start=0) for t in trajectories]
    gen = torch.Generator(device=device).manual_seed(int(seed))
    out = rollout_positions(model, systems, initial, n_steps, generator=gen).cpu().numpy()
    w1s, stable = [], []
    offset = 0
    for t in trajectories:
        n = t.graph.n_beads
        traj = out[:, offset:offset + n]
        offset += n
        bonds = t.graph.bead_bonds.numpy()
        bonds = bonds[:, bonds[0] < bonds[1]]
        finite = bool(np.all(np.isfinite(traj)))
        if bonds.shape[1] == 0:
            stable.append(finite)
            continue
        ref = bond_lengths(t.positions, bonds.T).ravel()
        if not finite:
            stable.append(False)
            w1s.append(float(ref.mean()))  # a broken rollout scores like losing every bond
            continue
        got = bond_lengths(traj, bonds.T).ravel()
        stable.append(bool(got.max() < max_bond_factor * ref.max()))
        w1s.append(float(wasserstein_distance(ref, got)))
    w1 = float(np.mean(w1s)) if w1s else float("nan")
    frac = float(np.mean(stable)) if stable else 0.0
    return RolloutValidation(bond_w1=w1, stable_fraction=frac, score=(0.0 if np.isnan(w1) else w1) + (1.0 - frac))
