"""Periodic-boundary helpers on orthorhombic boxes."""

from __future__ import annotations

import torch


def minimum_image(vec: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Minimum-image displacement vectors in an orthorhombic box.

    Parameters
    ----------
    vec : torch.Tensor
        Displacements, shape (..., 3), nm.
    lengths : torch.Tensor
        Box edge lengths, broadcastable to ``vec`` (e.g. (3,) or (E, 3)), nm.

    Returns
    -------
    torch.Tensor
        ``vec - L * round(vec / L)``, same shape, every component in [-L/2, L/2].
    """
    return vec - lengths * torch.round(vec / lengths)
