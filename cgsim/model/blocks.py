"""Message-passing blocks (torch_geometric ``MessagePassing`` subclasses).

Edges follow PyG's ``source_to_target`` flow: ``edge_index[0] = j`` (source), ``edge_index[1] = i``
(target); messages ``m_ij`` are summed at ``i``.
"""

from __future__ import annotations

import torch
from torch_geometric.nn import MessagePassing

from cgsim.model.mlp import MLP


class InteractionBlock(MessagePassing):
    r"""Interaction-network layer with edge and node updates and residuals.

    .. math::
        e'_{ij} = e_{ij} + \phi_e([e_{ij}, h_i, h_j]), \qquad
        h'_i = h_i + \phi_h\big([h_i, \textstyle\sum_j e'_{ij}]\big)

    Parameters
    ----------
    node_dim, edge_dim : int
        Widths of node and edge latents.
    hidden_dim : int
        Hidden width of the MLPs.
    mlp_layers : int
        Layers per MLP.
    """

    def __init__(self, node_dim: int, edge_dim: int, hidden_dim: int, mlp_layers: int = 2) -> None:
        super().__init__(aggr="sum", flow="source_to_target")
        self.edge_mlp = MLP(edge_dim + 2 * node_dim, hidden_dim, edge_dim, mlp_layers)
        self.node_mlp = MLP(node_dim + edge_dim, hidden_dim, node_dim, mlp_layers)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Update node latents ``h`` (N, node_dim) and edge latents ``e`` (E, edge_dim)."""
        e_new = e + self.edge_mlp(torch.cat([e, h[edge_index[1]], h[edge_index[0]]], dim=-1))
        agg = self.propagate(edge_index, m=e_new, size=(h.shape[0], h.shape[0]))
        return h + self.node_mlp(torch.cat([h, agg], dim=-1)), e_new

    def message(self, m: torch.Tensor) -> torch.Tensor:  # noqa: D102 - PyG hook
        return m


class BondMessageBlock(MessagePassing):
    r"""Geometry-free message passing over a bond graph (chemistry only).

    .. math:: h'_i = h_i + \phi_h\big([h_i, \textstyle\sum_{j \in N(i)} \phi_m([h_i, h_j])]\big)
    """

    def __init__(self, dim: int, hidden_dim: int, mlp_layers: int = 2) -> None:
        super().__init__(aggr="sum", flow="source_to_target")
        self.msg_mlp = MLP(2 * dim, hidden_dim, dim, mlp_layers)
        self.node_mlp = MLP(2 * dim, hidden_dim, dim, mlp_layers)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Update node latents ``h`` (N, dim) over ``edge_index`` (2, E)."""
        agg = self.propagate(edge_index, h=h, size=(h.shape[0], h.shape[0]))
        return h + self.node_mlp(torch.cat([h, agg], dim=-1))

    def message(self, h_i: torch.Tensor, h_j: torch.Tensor) -> torch.Tensor:  # noqa: D102 - PyG hook
        return self.msg_mlp(torch.cat([h_i, h_j], dim=-1))
