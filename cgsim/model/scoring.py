"""Energy scores (Gneiting & Raftery 2007) of drawn next frames against the true one.

A proper scoring rule on two draws: ``E|X - y| - 0.5 E|X - X'|`` per row, estimated with two
members. A sampler whose spread is too narrow or too wide scores worse than the true
distribution, so it trains draws whose *joint* statistics (pair distances, molecule centres)
match the data's, which a per-bead likelihood cannot see. Used by the few-call sampler trainer
(:mod:`cgsim.train.energy_score`) and, on close pairs, by bond-tree models in training
(:class:`cgsim.model.tree.TreeNoise` ``pair_score``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch_geometric.utils import scatter

from cgsim.geometry.neighbors import radius_graph
from cgsim.geometry.pbc import minimum_image
from cgsim.model.batch import BeadBatch


@dataclass
class ScoreTerms:
    """Energy-score terms of one batch (each a mean over beads, bonds, pairs or molecules; scalar
    tensors)."""

    displacement: torch.Tensor
    bond: torch.Tensor
    pair: torch.Tensor
    centre: torch.Tensor

    def total(self, bond_weight: float, pair_weight: float, centre_weight: float = 0.0) -> torch.Tensor:
        """``displacement + bond_weight * bond + pair_weight * pair + centre_weight * centre``."""
        return (self.displacement + bond_weight * self.bond + pair_weight * self.pair
                + centre_weight * self.centre)


def _es(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Two-member energy score per row; ``a, b, y`` shape (M, D) -> (M,)."""
    return 0.5 * ((a - y).norm(dim=-1) + (b - y).norm(dim=-1)) - 0.5 * (a - b).norm(dim=-1)


def _distances(x: torch.Tensor, pairs: torch.Tensor, box: torch.Tensor | None, batch: torch.Tensor) -> torch.Tensor:
    """Minimum-image distances (P, 1) of ``pairs`` (2, P) in positions ``x`` (N, 3)."""
    vec = x[pairs[0]] - x[pairs[1]]
    if box is not None:
        vec = minimum_image(vec, box[batch[pairs[1]]])
    return vec.norm(dim=-1, keepdim=True)


def _balanced_mean(values: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` (M,) over each group present in ``groups`` (M,) int64, then over groups
    (the plain mean without groups)."""
    if groups is None:
        return values.mean()
    present, inverse = torch.unique(groups, return_inverse=True)
    sums = values.new_zeros(present.shape[0]).index_add(0, inverse, values)
    counts = torch.bincount(inverse, minlength=present.shape[0]).to(values.dtype)
    return (sums / counts).mean()


def energy_score_terms(x_a: torch.Tensor, x_b: torch.Tensor, y: torch.Tensor, batch: BeadBatch, scale: torch.Tensor,
                       pair_cutoff: float, bead_class: torch.Tensor | None = None,
                       molecule: torch.Tensor | None = None) -> ScoreTerms:
    """Energy scores of two drawn next frames against the true one.

    Parameters
    ----------
    x_a, x_b : torch.Tensor
        Two draws of the next positions from the same histories, shape (N, 3), nm.
    y : torch.Tensor
        The true next positions, shape (N, 3), nm.
    batch : BeadBatch
        The histories (``pos[:, -1]`` is the current frame), topology and boxes.
    scale : torch.Tensor
        The model's target scale, nm per unit: every term is in these units.
    pair_cutoff : float
        Non-bonded pairs closer than this in the current frame are scored, nm.
    bead_class : torch.Tensor, optional
        Class of each bead, shape (N,), int64 (e.g. its fine composition): the displacement term
        is then averaged within each bead class and the pair term within each pair of classes
        before averaging over classes, so that a few ions count as much as many polymer beads.
    molecule : torch.Tensor, optional
        Molecule of each bead, shape (N,), int64, 0..M-1: adds the score of each molecule's
        centre displacement (what self-diffusion measures); without it that term is 0.
    """
    last = batch.pos[:, -1]
    disp = _balanced_mean(_es((x_a - last) / scale, (x_b - last) / scale, (y - last) / scale), bead_class)
    src, dst = batch.bead_bonds
    bonds = batch.bead_bonds[:, src < dst]
    zero = disp.new_zeros(())
    bond = zero
    if bonds.shape[1]:
        bond = _es(*(_distances(x, bonds, batch.box, batch.batch) / scale for x in (x_a, x_b, y))).mean()
    g = radius_graph(last, pair_cutoff, batch.box, batch.batch)
    pairs = g.edge_index[:, g.edge_index[0] < g.edge_index[1]]
    if bonds.shape[1] and pairs.shape[1]:  # leave out the bonded pairs (scored above)
        n = last.shape[0]
        bonded = torch.isin(pairs[0] * n + pairs[1], bonds[0] * n + bonds[1])
        pairs = pairs[:, ~bonded]
    pair = zero
    if pairs.shape[1]:
        groups = None
        if bead_class is not None:
            ci, cj = bead_class[pairs[0]], bead_class[pairs[1]]
            k = int(bead_class.max()) + 1
            groups = torch.minimum(ci, cj) * k + torch.maximum(ci, cj)
        pair = _balanced_mean(_es(*(_distances(x, pairs, batch.box, batch.batch) / scale for x in (x_a, x_b, y))),
                              groups)
    centre = zero
    if molecule is not None:
        m = int(molecule.max()) + 1
        shift = [scatter((x - last) / scale, molecule, dim=0, dim_size=m, reduce="mean") for x in (x_a, x_b, y)]
        centre = _es(*shift).mean()
    return ScoreTerms(displacement=disp, bond=bond, pair=pair, centre=centre)
