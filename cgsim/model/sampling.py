"""One learned step of a trained model, and its sampler's settings at rollout time.

Training validation, the prior's calibration and every rollout draw the next frame the same
way, in :func:`learned_step`:

1. the dynamics network gives a per-bead Gaussian over the step (one network call);
2. a standard-normal draw (scaled by ``temperature``) becomes the next positions;
3. the score refiner, if the model has one, refines them (its schedule's calls);
4. the structural prior, if the model carries one, tilts them (no network call).

Every random number comes from one *noise source*, a callable returning standard-normal
``(N, 3)`` draws: a rollout passes each member's own generators in
(:class:`cgsim.rollout.engine.RolloutEngine`), :meth:`MultiScaleDynamics.step` one generator.
:func:`rollout_positions` is the bare loop over learned steps (no hooks, no files) that
training validation uses; :func:`apply_refine_overrides` and :func:`apply_prior_overrides` set
the sampler's schedule from a rollout's ``refine.*`` / ``prior.*`` options (or an export's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from cgsim.errors import CgsimInputError
from cgsim.model.batch import BeadBatch, SystemGraph, collate
from cgsim.model.refinement import NoiseFn

if TYPE_CHECKING:
    from cgsim.model.prior import PriorTopology
    from cgsim.model.simulator import MultiScaleDynamics


def generator_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
                    dtype: torch.dtype) -> NoiseFn:
    """A noise source drawing standard-normal ``shape`` tensors from ``generator`` (None: torch's global one)."""

    def noise() -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    return noise


@torch.no_grad()
def learned_step(model: MultiScaleDynamics, batch: BeadBatch, noise: NoiseFn, temperature: float = 1.0,
                 chem: torch.Tensor | None = None, prior_topology: PriorTopology | None = None) -> torch.Tensor:
    """Sample the next positions of every bead of ``batch``, shape (N, 3), nm.

    Parameters
    ----------
    model : MultiScaleDynamics
        The learned simulator (or its ``torch.compile`` wrapper: it is called, so a compiled
        forward is used).
    batch : BeadBatch
        Topology and position history (at least ``model.history`` frames), nm.
    noise : callable
        Source of standard-normal ``(N, 3)`` draws: the first call is the Gaussian draw, later
        ones the refiner's and the prior's noise.
    temperature : float
        Scale of the Gaussian draw's noise (0 = its mean).
    chem : torch.Tensor, optional
        Precomputed chemistry embedding (a rollout computes it once).
    prior_topology : PriorTopology, optional
        The structural prior's pairs of the batch; None: no prior step.
    """
    pred = model(batch, chem)
    eps = noise()
    core = model.core_filter(batch, pred, prior_topology, noise, temperature)
    new = model.positions_from_target(batch.pos[:, -model.history:], pred.value(eps, temperature, core))
    new = model.refine(batch, pred, new, noise)
    return model.apply_prior(batch, pred, new, noise, prior_topology)


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
        Positions after each step, shape (n_steps, N, 3), nm, beads in batch order (with the
        model's structural prior where it carries one, as in training validation of a model
        trained with it).
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
    topo = None
    prior = getattr(model, "prior", None)
    if prior is not None:  # a model that carries its prior (one trained with it) samples with it
        classes = [c for s in systems for c in prior.classes_of(s.atom_type, s.atom_to_bead, s.n_beads)]
        topo = prior.topology(classes, batch.bead_bonds, batch.n_beads, device, dtype)
    noise = generator_noise((batch.n_beads, 3), generator, device, dtype)
    for k in range(n_steps):
        nxt = learned_step(model, batch.with_pos(pos), noise, temperature, chem, topo)
        out[k] = nxt
        pos = torch.cat([pos[:, 1:], nxt[:, None]], dim=1)
    return out


def _given(overrides: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(overrides or {}).items() if v is not None}


def apply_refine_overrides(model: torch.nn.Module, overrides: Mapping[str, Any] | Any, checkpoint: str) -> None:
    """Set the refiner's sampling schedule from ``refine.*`` (null entries keep the trained values).

    The refiner checks the values (:meth:`cgsim.model.refinement.ScoreRefiner.apply_overrides`).

    Raises
    ------
    CgsimInputError
        If a schedule is given for a model without a refiner, or a value is out of range.
    """
    given = _given(overrides)
    if not given:
        return
    refiner = getattr(model, "refiner", None)
    if refiner is None:
        raise CgsimInputError(f"refine.{next(iter(given))}", f"{checkpoint} was trained without refinement "
                                                             "(model/refinement=score); nothing to schedule")
    refiner.apply_overrides(given, "refine")


def apply_prior_overrides(model: torch.nn.Module, overrides: Mapping[str, Any] | Any, checkpoint: str) -> None:
    """Set the structural prior's schedule from ``prior.*`` (null entries keep the exported values).

    Raises
    ------
    CgsimInputError
        If a schedule is given for a model without a prior, or a value is out of range.
    """
    given = _given(overrides)
    if not given:
        return
    if getattr(model, "prior", None) is None:
        raise CgsimInputError(f"prior.{next(iter(given))}", f"{checkpoint} carries no structural prior "
                                                            "(export it with --prior); nothing to schedule")
    try:
        model.prior = model.prior.with_schedule(**given)
    except ValueError as exc:
        raise CgsimInputError(f"prior.{next(iter(given))}", str(exc)) from None
