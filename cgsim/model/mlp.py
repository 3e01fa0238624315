"""Multi-layer perceptrons used by every block."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """``n_layers`` linear layers with SiLU between them and an optional final LayerNorm.

    Parameters
    ----------
    in_dim, hidden_dim, out_dim : int
        Widths of the input, hidden and output layers.
    n_layers : int
        Number of linear layers (>= 1).
    layer_norm : bool
        Apply LayerNorm to the output (as in encode-process-decode networks).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, n_layers: int = 2, layer_norm: bool = True) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for k in range(n_layers):
            layers.append(nn.Linear(dims[k], dims[k + 1]))
            if k < n_layers - 1:
                layers.append(nn.SiLU())
        if layer_norm:
            layers.append(nn.LayerNorm(out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape (..., in_dim) -> (..., out_dim)."""
        return self.net(x)
