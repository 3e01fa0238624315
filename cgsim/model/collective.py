"""Collective noise: each molecule's centre gets a random step of its own size.

The dynamics network predicts one diagonal Gaussian per bead, so a sampled step draws every
bead's noise independently. Over a molecule of ``n`` beads that noise averages out: its centre
(the unweighted mean of its beads) moves by a random step of variance ~ sigma^2 / n, while in MD
a molecule's beads move together. Measured from true histories of the held-out chains
(``bench/bench_collective.py``, BENCHMARKS.md "Collective motion"): the per-bead step variance
of the shipped chain model is 0.9-1.0x MD, the variance of a chain's centre step 0.17-0.30x
(0.5-0.65x after refinement), and rolled-out chains diffuse at about half the MD rate at lags of
50-500 tau.

:class:`CentreNoise` adds a Gaussian over each molecule's centre step: an isotropic std
``s_m = softplus(mean_{i in m} head(h_i)) + min_std`` (target-normalised units), fitted by the
negative log-likelihood of the true centre step's deviation from the predicted mean centre step
(the per-bead Gaussian's means are not changed by this term). A sample then combines the
per-bead noise with the molecule's centre noise (:func:`collective_noise`), both made from the
same standard-normal draw ``eps`` (N, 3), so rollouts keep their per-member noise streams:

- centre part: ``s_m sqrt(n_m) mean_{i in m}(eps_i)`` (standard normal times ``s_m``);
- internal part: ``sigma_i (eps_i - mean_m(eps))`` minus its own molecule mean (it leaves the
  centre alone).

For iid Gaussian ``eps`` the molecule mean and the deviations from it are independent, so the
two parts are independent Gaussians. A single-bead molecule (an ion) has no internal part: its
step noise is ``s_m eps_i``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch_geometric.utils import scatter

from cgsim.model.batch import BeadBatch
from cgsim.model.graph import TopologyCache, molecule_index
from cgsim.model.mlp import MLP


def remove_centre_shift(before: torch.Tensor, after: torch.Tensor, molecule: torch.Tensor, n_molecules: int) -> torch.Tensor:
    """``after`` (N, 3) with each multi-bead molecule's centre put back where it was in ``before``.

    The change ``after - before`` loses its mean over every molecule of two or more beads, so
    only the molecule's internal coordinates change; single beads (ions) keep their full change.
    """
    return before + without_molecule_shift(after - before, molecule, n_molecules)


def without_molecule_shift(shift: torch.Tensor, molecule: torch.Tensor, n_molecules: int) -> torch.Tensor:
    """``shift`` (N, 3) less its mean over every molecule of two or more beads (single beads keep theirs)."""
    counts = torch.bincount(molecule, minlength=n_molecules)
    centre = scatter(shift, molecule, dim=0, dim_size=n_molecules, reduce="mean")
    centre = centre * (counts > 1).to(shift.dtype)[:, None]
    return shift - centre[molecule]


def collective_noise(eps: torch.Tensor, std: torch.Tensor, molecule: torch.Tensor, n_molecules: int,
                     centre_std: torch.Tensor) -> torch.Tensor:
    """Per-bead noise (N, 3) whose molecule centres move with ``centre_std``.

    Parameters
    ----------
    eps : torch.Tensor
        Standard-normal draw, shape (N, 3).
    std : torch.Tensor
        Per-bead std, shape (N, 3) (normalised units).
    molecule : torch.Tensor
        Molecule of each bead, shape (N,), int64, values 0..M-1.
    n_molecules : int
        M.
    centre_std : torch.Tensor
        Std of each molecule's centre step, shape (M,) (normalised units).

    Returns
    -------
    torch.Tensor
        Noise in normalised units, shape (N, 3): internal part (zero mean over each molecule) +
        the molecule's centre part.
    """
    counts = torch.bincount(molecule, minlength=n_molecules).to(eps.dtype).clamp_min(1.0)
    eps_bar = scatter(eps, molecule, dim=0, dim_size=n_molecules, reduce="mean")
    internal = std * (eps - eps_bar[molecule])
    internal = internal - scatter(internal, molecule, dim=0, dim_size=n_molecules, reduce="mean")[molecule]
    centre = (centre_std * counts.sqrt())[:, None] * eps_bar
    return internal + centre[molecule]


class CentreNoise(nn.Module):
    """Std of each molecule's centre step, read from the bead latents.

    Parameters
    ----------
    dim : int
        Width of the bead latent.
    mlp_layers : int
        Layers of the per-bead head.
    min_std : float
        Smallest std (normalised units).
    loss_weight : float
        Weight of the centre-step NLL in the training loss.
    """

    def __init__(self, dim: int, mlp_layers: int = 2, min_std: float = 1e-3, loss_weight: float = 1.0) -> None:
        super().__init__()
        if not min_std > 0 or loss_weight < 0:
            raise ValueError(f"need min_std > 0 and loss_weight >= 0; got {min_std}, {loss_weight}")
        self.head = MLP(dim, dim, 1, mlp_layers, layer_norm=False)
        self.min_std = float(min_std)
        self.loss_weight = float(loss_weight)
        self.molecules = TopologyCache(molecule_index)

    def forward(self, h: torch.Tensor, batch: BeadBatch) -> tuple[torch.Tensor, int, torch.Tensor]:
        """Molecule index (N,), number of molecules M and the centre std (M,) from latents (N, dim)."""
        mol, n_mol = self.molecules(batch)
        raw = scatter(self.head(h)[:, 0], mol, dim=0, dim_size=n_mol, reduce="mean")
        return mol, n_mol, nn.functional.softplus(raw) + self.min_std

    @staticmethod
    def nll(z: torch.Tensor, mean: torch.Tensor, molecule: torch.Tensor, n_molecules: int,
            centre_std: torch.Tensor) -> torch.Tensor:
        """Mean NLL per molecule and dimension of the true centre steps.

        ``z`` (N, 3) is the true target and ``mean`` (N, 3) the predicted one (normalised units;
        ``mean`` is detached: this term fits the centre std only).
        """
        r = scatter(z - mean.detach(), molecule, dim=0, dim_size=n_molecules, reduce="mean")
        s = centre_std[:, None]
        return (0.5 * (r / s) ** 2 + torch.log(s) + 0.5 * math.log(2 * math.pi)).mean()
