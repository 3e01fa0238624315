"""A coarser level above the beads: super-beads pooled, processed and broadcast back.

Message passing over the bead radius graph reaches ``bead_layers x cutoff`` at most. Pooling
beads into super-beads of ``beads_per_super`` bonded neighbours, running a few message-passing
layers on the super-bead radius graph (a larger cutoff) and adding the result back to every
bead lets information travel along a chain and across the box with few layers.

Super-beads are contiguous pieces of each molecule's bead-bond graph: every connected component
(molecule) is walked breadth-first from its first end bead (lowest degree, then lowest index)
and cut into consecutive runs of ``beads_per_super`` beads, so a super-bead never spans two
molecules and beads of one super-bead are bonded neighbours or close along the chain.
Unbonded beads (ions) are super-beads of their own. The assignment depends on the topology
only; it is cached for the last topology seen, so rollouts compute it once.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order
from torch import nn
from torch_geometric.utils import scatter

from cgsim.geometry import radius_graph
from cgsim.model.batch import BeadBatch
from cgsim.model.blocks import InteractionBlock
from cgsim.model.graph import RADIUS_EDGE, EdgeFeatures, TopologyCache, molecule_index
from cgsim.model.mlp import MLP


def segment_assignment(n_beads: int, bonds: np.ndarray, beads_per_super: int) -> np.ndarray:
    """Super-bead of every bead: breadth-first runs of ``beads_per_super`` beads per molecule.

    Parameters
    ----------
    n_beads : int
        Number of beads N.
    bonds : numpy.ndarray
        Bead bonds, shape (2, E), int (either or both directions).
    beads_per_super : int
        Beads per super-bead (the last run of a molecule may be shorter), >= 1.

    Returns
    -------
    numpy.ndarray
        Super-bead index of each bead, shape (N,), int64, values 0..S-1, numbered in order of
        each molecule's first bead.
    """
    if beads_per_super < 1:
        raise ValueError(f"beads_per_super must be >= 1, got {beads_per_super}")
    bonds = np.asarray(bonds, dtype=np.int64).reshape(2, -1)
    adj = coo_matrix((np.ones(bonds.shape[1]), (bonds[0], bonds[1])), shape=(n_beads, n_beads)).tocsr()
    adj = ((adj + adj.T) > 0).astype(np.int8).tocsr()
    comp = molecule_index(n_beads, bonds)  # numbered in order of their lowest bead -> deterministic
    degree = np.asarray(adj.sum(axis=1)).ravel()
    out = np.empty(n_beads, dtype=np.int64)
    next_id = 0
    for c in range(int(comp.max()) + 1 if n_beads else 0):
        members = np.flatnonzero(comp == c)
        if len(members) == 1:
            out[members] = next_id
            next_id += 1
            continue
        start = members[np.lexsort((members, degree[members]))[0]]  # an end bead (lowest degree), lowest index
        order = breadth_first_order(adj, start, directed=False, return_predecessors=False)
        seg = np.arange(len(order)) // beads_per_super
        out[order] = next_id + seg
        next_id += int(seg[-1]) + 1
    return out


class CoarseLevel(nn.Module):
    """Pool beads to super-beads, message-pass on their radius graph, broadcast back.

    .. math::
        s_I = \\phi_{in}(\\mathrm{mean}_{i \\in I} h_i), \\quad s \\leftarrow \\mathrm{IN}^{L}(s),
        \\quad h_i \\leftarrow h_i + \\phi_{out}([h_i, s_{I(i)}])

    Parameters
    ----------
    dim : int
        Width of the bead latent (and of the super-bead latent).
    beads_per_super : int
        Beads per super-bead.
    cutoff : float
        Radius-graph cutoff between super-bead centres, nm (minimum image in periodic boxes;
        must stay below half the smallest box edge).
    layers : int
        Message-passing layers on the super-bead graph.
    mlp_layers : int
        Layers per MLP.
    n_rbf : int
        Radial basis functions of super-bead distances.
    """

    def __init__(self, dim: int, beads_per_super: int = 4, cutoff: float = 6.0, layers: int = 2, mlp_layers: int = 2,
                 n_rbf: int = 16) -> None:
        super().__init__()
        if beads_per_super < 1 or layers < 0 or not cutoff > 0:
            raise ValueError(f"need beads_per_super >= 1, layers >= 0, cutoff > 0; got {beads_per_super}, {layers}, {cutoff}")
        self.beads_per_super = int(beads_per_super)
        self.cutoff = float(cutoff)
        # distances only: rotation-invariant, so the level also serves the equivariant model
        self.edge_features = EdgeFeatures(cutoff, n_rbf, directional=False)
        self.pool = MLP(dim, dim, dim, mlp_layers)
        self.edge_encoder = MLP(self.edge_features.dim, dim, dim, mlp_layers)
        self.blocks = nn.ModuleList([InteractionBlock(dim, dim, dim, mlp_layers) for _ in range(layers)])
        self.broadcast = MLP(2 * dim, dim, dim, mlp_layers)
        self._segments = TopologyCache(lambda n, bonds: segment_assignment(n, bonds, self.beads_per_super))

    def assignment(self, batch: BeadBatch) -> torch.Tensor:
        """Super-bead of every bead of the batch, shape (N,), int64 (cached per topology)."""
        return self._segments(batch)[0]

    def forward(self, h: torch.Tensor, batch: BeadBatch) -> torch.Tensor:
        """Bead latents (N, dim) with the coarse level's information added.

        Parameters
        ----------
        h : torch.Tensor
            Bead latents, shape (N, dim).
        batch : BeadBatch
            Positions (last frame used; unwrapped, molecules whole) and topology.
        """
        sup, n_sup = self._segments(batch)
        x = batch.pos[:, -1]
        centre = scatter(x, sup, dim=0, dim_size=n_sup, reduce="mean")
        sys_of_sup = scatter(batch.batch, sup, dim=0, dim_size=n_sup, reduce="max")
        s = self.pool(scatter(h, sup, dim=0, dim_size=n_sup, reduce="mean"))
        if len(self.blocks):
            g = radius_graph(centre, self.cutoff, batch.box, sys_of_sup)
            etype = torch.full((g.n_edges,), RADIUS_EDGE, dtype=torch.long, device=h.device)
            e = self.edge_encoder(self.edge_features(g.vec, etype))
            for block in self.blocks:
                s, e = block(s, g.edge_index, e)
        return h + self.broadcast(torch.cat([h, s[sup]], dim=-1))
