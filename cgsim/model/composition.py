"""Composition of each system as a per-bead input: what a bead's neighbourhood cannot show.

A bead-level network sees its environment within a few cutoffs. In a salt-in-polymer electrolyte
that environment looks much the same at EO:Li 12 and EO:Li 20, yet MD differs: at EO:Li <= 12 one
Li+ in six has a Li+ within 0.55 nm, at EO:Li 20-30 none has (BENCHMARKS.md, "Why
multi-composition electrolyte models pair Li+"). A model trained across compositions without
being told which one it is in draws a dilute box's Li+ steps from what Li+ did in concentrated
boxes. :class:`CompositionFeatures` gives every bead its system's number density of each fine
particle type (atoms per nm^3, from the topology and the box), divided by the mean over the
training systems, so the network can condition on the salt concentration (and polymer density)
of the whole box. It is generic: nothing names a species; the fine type vocabulary is the
model's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cgsim.model.batch import BeadBatch, SystemGraph


def type_densities(atom_type: torch.Tensor, atom_system: torch.Tensor, box: torch.Tensor, n_types: int
                   ) -> torch.Tensor:
    """Number density of each fine particle type in each system.

    Parameters
    ----------
    atom_type : torch.Tensor
        Type of each fine particle, shape (A,), int64, values 0..n_types-1.
    atom_system : torch.Tensor
        System of each fine particle, shape (A,), int64, values 0..B-1.
    box : torch.Tensor
        Orthorhombic box lengths per system, shape (B, 3), nm.
    n_types : int
        Size of the type vocabulary T.

    Returns
    -------
    torch.Tensor
        Particles per nm^3, shape (B, T).
    """
    n_sys = int(box.shape[0])
    flat = atom_system * n_types + atom_type
    counts = torch.bincount(flat, minlength=n_sys * n_types).reshape(n_sys, n_types).to(box.dtype)
    return counts / box.prod(dim=-1, keepdim=True)


class CompositionFeatures(nn.Module):
    """Per-bead input: the system's fine-type number densities relative to the training mean.

    Parameters
    ----------
    n_types : int
        Fine type vocabulary size T (the model's ``n_atom_types``).

    Notes
    -----
    ``reference`` (T,) particles per nm^3 is set from the training systems by :meth:`fit` and saved
    with the weights; a type absent from every training system keeps reference 1, so it reads as
    its absolute density. Only periodic systems have a density: a batch without a box is refused.
    """

    def __init__(self, n_types: int) -> None:
        super().__init__()
        self.n_types = int(n_types)
        self.register_buffer("reference", torch.ones(self.n_types))

    @property
    def dim(self) -> int:
        """Width of the per-bead feature (T)."""
        return self.n_types

    @torch.no_grad()
    def fit(self, systems: Sequence[SystemGraph]) -> None:
        """Set ``reference`` to the mean density of each type over ``systems`` (periodic only)."""
        if not systems or any(s.box is None for s in systems):
            raise ValueError("composition features need periodic training systems (a box for each)")
        dens = torch.stack([
            type_densities(s.atom_type, torch.zeros_like(s.atom_type), s.box.reshape(1, 3).to(self.reference.dtype),
                           self.n_types)[0]
            for s in systems])
        mean = dens.mean(dim=0)
        self.reference.copy_(torch.where(mean > 0, mean, torch.ones_like(mean)))

    def forward(self, batch: BeadBatch) -> torch.Tensor:
        """Features (N, T): each bead's system densities / ``reference``."""
        if batch.box is None:
            raise ValueError("composition features need a periodic box (the system's density); this batch has none")
        atom_system = batch.batch[batch.atom_to_bead]
        dens = type_densities(batch.atom_type, atom_system, batch.box.to(self.reference.dtype), self.n_types)
        return (dens / self.reference)[batch.batch]

