"""The innermost rollout loop: repeatedly sample the next positions of a batch of systems.

The full engine (hooks, writers, stability guard, resume) is built around this loop; training
uses it directly for rollout-based validation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cgsim.model.batch import SystemGraph, collate
from cgsim.model.simulator import MultiScaleDynamics


@torch.inference_mode()
def rollout_positions(
    model: MultiScaleDynamics,
    systems: Sequence[SystemGraph],
    initial: Sequence[torch.Tensor],
    n_steps: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Roll ``systems`` forward ``n_steps`` learned steps from their position histories.

    Parameters
    ----------
    model : MultiScaleDynamics
        The learned simulator (evaluated in inference mode on its own device).
    systems : sequence of SystemGraph
        Topologies, batched as one graph.
    initial : sequence of torch.Tensor
        Position history of each system, shape (n_beads_k, >= history, 3), nm, unwrapped.
    n_steps : int
        Number of learned steps (> 0).
    generator : torch.Generator, optional
        Source of the sampling noise (on the model's device).
    temperature : float
        Scale of the sampled noise (0 = deterministic mean).

    Returns
    -------
    torch.Tensor
        Positions after each step, shape (n_steps, N, 3), nm, beads in batch order.
    """
    if n_steps <= 0:
        raise ValueError(f"n_steps must be positive, got {n_steps}")
    device = next(model.parameters()).device
    h = model.history
    batch = collate(list(systems), [p[:, -h:] for p in initial]).to(device)
    dtype = next(model.parameters()).dtype
    batch = batch.with_pos(batch.pos.to(dtype))
    chem = model.chemistry(batch)
    out = torch.empty((n_steps, batch.n_beads, 3), dtype=dtype, device=device)
    pos = batch.pos
    for k in range(n_steps):
        nxt = model.step(batch.with_pos(pos), generator=generator, temperature=temperature, chem=chem)
        out[k] = nxt
        pos = torch.cat([pos[:, 1:], nxt[:, None]], dim=1)
    return out
