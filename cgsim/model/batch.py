"""The model's input: bead histories of many systems batched as one disjoint graph."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch


@dataclass
class SystemGraph:
    """Fixed (time-independent) description of one system for the model.

    Attributes
    ----------
    atom_type : torch.Tensor
        Fine-level particle type index, shape (n_atoms,), int64.
    atom_bonds : torch.Tensor
        Fine-level bonds, shape (2, n_atom_bonds), int64, each bond in both directions.
    atom_to_bead : torch.Tensor
        Bead of each fine particle, shape (n_atoms,), int64, values 0..n_beads-1.
    bead_bonds : torch.Tensor
        Coarse-grained bonds, shape (2, n_bead_bonds), int64, both directions.
    n_beads : int
        Number of beads.
    box : torch.Tensor or None
        Orthorhombic box lengths, shape (3,), nm; ``None`` if not periodic.
    """

    atom_type: torch.Tensor
    atom_bonds: torch.Tensor
    atom_to_bead: torch.Tensor
    bead_bonds: torch.Tensor
    n_beads: int
    box: torch.Tensor | None = None


@dataclass
class BeadBatch:
    """A batch of systems: positions of the last H frames + topology, as one disjoint graph.

    Attributes
    ----------
    pos : torch.Tensor
        Bead positions of the last ``H`` frames, shape (N, H, 3), nm, unwrapped (molecules
        whole, no jumps between frames); ``pos[:, -1]`` is the current frame.
    batch : torch.Tensor
        System of each bead, shape (N,), int64.
    n_systems : int
        Number of systems B.
    box : torch.Tensor or None
        Box lengths per system, shape (B, 3), nm; ``None`` for non-periodic systems.
    bead_bonds : torch.Tensor
        Bead bonds, shape (2, Eb), int64, global bead indices.
    atom_type, atom_bonds, atom_to_bead : torch.Tensor
        Fine level, global indices: shapes (A,), (2, Ea), (A,).
    """

    pos: torch.Tensor
    batch: torch.Tensor
    n_systems: int
    box: torch.Tensor | None
    bead_bonds: torch.Tensor
    atom_type: torch.Tensor
    atom_bonds: torch.Tensor
    atom_to_bead: torch.Tensor

    @property
    def n_beads(self) -> int:
        """Total number of beads N."""
        return int(self.pos.shape[0])

    @property
    def history(self) -> int:
        """Number of frames H."""
        return int(self.pos.shape[1])

    def to(self, device: torch.device | str) -> BeadBatch:
        """Copy to ``device``."""
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.to(device) if isinstance(v, torch.Tensor) else v
        return BeadBatch(**kw)

    def with_pos(self, pos: torch.Tensor) -> BeadBatch:
        """The same batch with other positions (N, H', 3)."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw["pos"] = pos
        return BeadBatch(**kw)


def collate(systems: Sequence[SystemGraph], positions: Sequence[torch.Tensor]) -> BeadBatch:
    """Batch systems and their position histories into one :class:`BeadBatch`.

    Parameters
    ----------
    systems : sequence of SystemGraph
        Topologies (the same object may repeat).
    positions : sequence of torch.Tensor
        Position history of each system, shape (n_beads_k, H, 3), same H for all.

    Returns
    -------
    BeadBatch
        Indices offset so the systems form one disjoint graph.
    """
    if len(systems) != len(positions) or not systems:
        raise ValueError("collate needs one position history per system and at least one system")
    periodic = [s.box is not None for s in systems]
    if any(periodic) and not all(periodic):
        raise ValueError("cannot batch periodic and non-periodic systems together")
    bead_off = atom_off = 0
    batch, bead_bonds, atom_type, atom_bonds, atom_to_bead, boxes = [], [], [], [], [], []
    for k, (s, p) in enumerate(zip(systems, positions, strict=True)):
        if p.shape[0] != s.n_beads:
            raise ValueError(f"system {k}: positions have {p.shape[0]} beads, topology has {s.n_beads}")
        batch.append(torch.full((s.n_beads,), k, dtype=torch.long))
        bead_bonds.append(s.bead_bonds + bead_off)
        atom_type.append(s.atom_type)
        atom_bonds.append(s.atom_bonds + atom_off)
        atom_to_bead.append(s.atom_to_bead + bead_off)
        if s.box is not None:
            boxes.append(s.box.reshape(3))
        bead_off += s.n_beads
        atom_off += int(s.atom_type.shape[0])
    return BeadBatch(
        pos=torch.cat(list(positions)),
        batch=torch.cat(batch),
        n_systems=len(systems),
        box=torch.stack(boxes) if boxes else None,
        bead_bonds=torch.cat(bead_bonds, dim=1),
        atom_type=torch.cat(atom_type),
        atom_bonds=torch.cat(atom_bonds, dim=1),
        atom_to_bead=torch.cat(atom_to_bead),
    )
