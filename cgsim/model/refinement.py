"""Score-based refinement of the sampled next positions.

The dynamics network samples every bead's next position from an independent Gaussian. Over a
large time step the true next configuration is strongly correlated between beads (bonded beads
move together), so independent samples stretch bonds and overlap beads, and a rollout drifts off
the manifold of physical configurations. The refiner fixes that, as in Fu et al. (TMLR 2023):

- **Training** (denoising score matching, alongside the dynamics loss). The true next frame
  ``x`` is perturbed, ``y = x + sigma * eps`` with one noise level per system drawn
  log-uniformly from ``[sigma_min, sigma_max]``, and a graph network conditioned on the
  dynamics network's bead latent (the history), on ``sigma`` and on ``y - x_t`` predicts
  ``eps``; the loss is ``mean |eps_hat - eps|^2``. Then ``-eps_hat / sigma`` estimates the score
  ``grad_y log p_sigma(y | history)``.
- **Sampling** (annealed Langevin dynamics, Song & Ermon 2019). After each learned step the
  sampled positions are moved through ``levels`` noise levels, geometric from ``sigma_start``
  down to ``sigma_min``, ``steps_per_level`` updates each::

      y <- y - a * sigma_k * eps_hat(y, sigma_k) + sqrt(2 a) * sigma_k * z,   z ~ N(0, 1)

  (the Langevin step ``a sigma_k^2`` times the score), with ``a = step_size``; optionally one
  final denoising step ``y <- y - sigma_min * eps_hat(y, sigma_min)`` (Tweedie's formula).
  Network calls per learned step: ``levels * steps_per_level (+ 1)``. ``levels = 0`` or
  ``steps_per_level = 0`` (and no final denoise) is exactly no refinement.
- **Sampling** (``sampler="diffusion"``, predictor-corrector, Song et al. 2021). The sampled
  step is first diffused to the top level, ``y <- y + sigma_0 z`` (so ``y`` is a draw of the
  dynamics Gaussian convolved with the noise the denoiser was trained on), then each level
  ``k >= 1`` starts with one reverse-diffusion (ancestral) step from ``sigma_{k-1}`` to
  ``sigma_k``::

      y <- y - (sigma_{k-1}^2 - sigma_k^2) / sigma_{k-1} * eps_hat + sqrt(sigma_{k-1}^2 - sigma_k^2) * z

  followed by ``steps_per_level`` Langevin corrector updates as above, and the final denoising
  step. Calls: ``(levels - 1) + levels * steps_per_level (+ 1)``. This samples the denoiser's
  learned conditional distribution from a well-defined start, so far fewer calls are needed
  than for Langevin alone from the raw Gaussian sample.
- **Sampling** (``sampler="ode"``, Karras et al. 2022). As ``diffusion``, but each level is
  reached by a deterministic Heun step of the probability-flow ODE ``dy/dsigma = eps_hat``
  (second order: the slope is averaged over both ends of the step), so the only noise after
  the first level is that of the Langevin correctors. Calls:
  ``2 (levels - 1) + levels * steps_per_level (+ 1)``.
- **Sampling** (``sampler="student"``, few-jump; Luhman & Luhman 2021, Song et al. 2023). As
  ``diffusion`` up to the top level; then at each level one jump to the clean positions,
  ``x_hat = y - sigma_k * eps_hat(y, sigma_k)``, re-noised to the next level,
  ``y <- x_hat + sigma_{k+1} z``; the last jump is the sample. Calls: ``levels (+ 1)``. With a
  denoiser trained only by score matching, ``x_hat`` is a posterior *mean* (too smooth, too
  little motion); a denoiser distilled from the ``ode`` sampler (:mod:`cgsim.train.distill`)
  jumps to the ODE's end point instead. ``sigma_end`` sets the lowest level of the ladder
  (default ``sigma_min``): a few-jump sampler's last level is chosen by measurement.

The ladder of levels is geometric (``spacing="geometric"``, equal ratios) or the ``rho = 7``
power law of Karras et al. 2022 (``spacing="karras"``: ``sigma^(1/7)`` evenly spaced, so the
absolute steps shrink towards small noise while the ratios grow; it spends more levels at large
noise than the geometric ladder).

Noise levels are given in units of the dynamics model's ``target_scale`` (the rms of its
target, fitted from data), so one config serves systems whose steps differ in size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cgsim.errors import CgsimInputError
from cgsim.model.batch import BeadBatch
from cgsim.model.blocks import InteractionBlock
from cgsim.model.collective import remove_centre_shift
from cgsim.model.graph import EdgeFeatures, TopologyCache, bead_edges, molecule_index
from cgsim.model.mlp import MLP

#: a source of standard-normal noise shaped like the positions, (N, 3)
NoiseFn = Callable[[], torch.Tensor]

SAMPLERS = ("langevin", "diffusion", "ode", "student")
SPACINGS = ("geometric", "karras")
#: exponent of the Karras et al. (2022) noise ladder
KARRAS_RHO = 7.0
#: the sampling schedule: what :meth:`ScoreRefiner.set_schedule` sets (not part of training)
SCHEDULE_KEYS = ("sampler", "levels", "steps_per_level", "step_size", "sigma_start", "final_denoise", "spacing",
                 "keep_centres", "sigma_end")


def refiner_calls(sampler: str, levels: int, steps_per_level: int, final_denoise: bool) -> int:
    """Network evaluations of the refiner per learned step for a schedule (module docstring)."""
    if sampler == "student":  # one jump to the clean positions per level
        return int(levels) + int(bool(final_denoise))
    per_level = {"langevin": 0, "diffusion": 1, "ode": 2}[sampler]
    return per_level * max(int(levels) - 1, 0) + int(levels) * int(steps_per_level) + int(bool(final_denoise))


class ScoreRefiner(nn.Module):
    """Denoising network over the bead graph, conditioned on the dynamics latent.

    Parameters
    ----------
    cond_dim : int
        Width of the dynamics network's bead latent it is conditioned on.
    cutoff : float
        Radius-graph cutoff of the refiner, nm.
    hidden_dim : int
        Width of its latents.
    layers : int
        Message-passing layers.
    mlp_layers : int
        Layers per MLP.
    n_rbf : int
        Radial basis functions of the edge distance.
    sigma_min, sigma_max : float
        Training noise range, in units of the dynamics target scale (0 < min < max).
    sigma_start : float
        First (largest) annealing level, same units, in ``[sigma_min, sigma_max]``.
    levels : int
        Annealing levels, >= 0.
    steps_per_level : int
        Langevin updates per level, >= 0.
    step_size : float
        Langevin step as a fraction of ``sigma_k^2``, > 0.
    final_denoise : bool
        End with one Tweedie denoising step at ``sigma_min``.
    loss_weight : float
        Weight of the denoising loss next to the dynamics NLL.
    sampler : {"langevin", "diffusion", "ode"}
        Annealed Langevin from the Gaussian sample, predictor-corrector reverse diffusion, or
        the probability-flow ODE with Heun steps (see the module docstring).
    spacing : {"geometric", "karras"}
        How the annealing levels are spread between ``sigma_start`` and ``sigma_end``.
    sigma_end : float, optional
        Last (smallest) annealing level, same units; default ``sigma_min``. A few-jump student
        sampler may stop its ladder higher (its last jump goes to the clean positions anyway).
    keep_centres : bool
        Keep each multi-bead molecule's centre where the Gaussian sample put it: the refinement
        changes only internal coordinates (and moves single beads freely). The denoiser, trained
        on independent noise per bead, pulls molecule centres back towards their mean step, so
        without this a refined molecule's centre moves too little (``bench/bench_collective.py``);
        meant for models with collective noise (``model/collective=centre``).
    """

    def __init__(self, cond_dim: int, cutoff: float, hidden_dim: int = 64, layers: int = 3, mlp_layers: int = 2,
                 n_rbf: int = 16, sigma_min: float = 0.02, sigma_max: float = 1.0, sigma_start: float = 0.5,
                 levels: int = 5, steps_per_level: int = 2, step_size: float = 0.2, final_denoise: bool = True,
                 loss_weight: float = 1.0, sampler: str = "langevin", spacing: str = "geometric",
                 keep_centres: bool = False, sigma_end: float | None = None) -> None:
        super().__init__()
        if not 0.0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if not cutoff > 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        self.cutoff = float(cutoff)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.loss_weight = float(loss_weight)
        self.set_schedule(sampler=sampler, levels=levels, steps_per_level=steps_per_level, step_size=step_size,
                          sigma_start=sigma_start, final_denoise=final_denoise, spacing=spacing,
                          keep_centres=keep_centres, sigma_end=sigma_end if sigma_end is not None else sigma_min)
        self.molecules = TopologyCache(molecule_index)
        self.edge_features = EdgeFeatures(cutoff, n_rbf)
        # node input: dynamics latent, log-sigma features, displacement from the current frame
        self.node_encoder = MLP(cond_dim + 3 + 4, hidden_dim, hidden_dim, mlp_layers)
        self.edge_encoder = MLP(self.edge_features.dim, hidden_dim, hidden_dim, mlp_layers)
        self.processor = nn.ModuleList([InteractionBlock(hidden_dim, hidden_dim, hidden_dim, mlp_layers)
                                        for _ in range(layers)])
        self.decoder = MLP(hidden_dim, hidden_dim, 3, mlp_layers, layer_norm=False)

    # -- schedule ----------------------------------------------------------------------------
    def set_schedule(self, sampler: str | None = None, levels: int | None = None, steps_per_level: int | None = None,
                     step_size: float | None = None, sigma_start: float | None = None,
                     final_denoise: bool | None = None, spacing: str | None = None,
                     keep_centres: bool | None = None, sigma_end: float | None = None) -> None:
        """Set (and check) the sampling schedule; ``None`` keeps the current value.

        Raises
        ------
        ValueError
            Naming the first argument out of range (the rollout command reports it as ``refine.<name>``).
        """
        if sampler is not None and sampler not in SAMPLERS:
            raise ValueError(f"sampler: expected one of {SAMPLERS}, got {sampler!r}")
        if spacing is not None and spacing not in SPACINGS:
            raise ValueError(f"spacing: expected one of {SPACINGS}, got {spacing!r}")
        for name, value in (("levels", levels), ("steps_per_level", steps_per_level)):
            if value is not None and int(value) < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {value}")
        if step_size is not None and not float(step_size) > 0:
            raise ValueError(f"step_size: expected a positive number, got {step_size}")
        if sigma_start is not None and not self.sigma_min <= float(sigma_start) <= self.sigma_max:
            raise ValueError(f"sigma_start: expected a level in the trained range [{self.sigma_min:g}, "
                             f"{self.sigma_max:g}], got {sigma_start}")
        if sigma_end is not None and not self.sigma_min <= float(sigma_end) <= self.sigma_max:
            raise ValueError(f"sigma_end: expected a level in the trained range [{self.sigma_min:g}, "
                             f"{self.sigma_max:g}], got {sigma_end}")
        if sigma_end is not None:
            self.sigma_end = float(sigma_end)
        if sampler is not None:
            self.sampler = sampler
        if levels is not None:
            self.levels = int(levels)
        if steps_per_level is not None:
            self.steps_per_level = int(steps_per_level)
        if step_size is not None:
            self.step_size = float(step_size)
        if sigma_start is not None:
            self.sigma_start = float(sigma_start)
        if final_denoise is not None:
            self.final_denoise = bool(final_denoise)
        if spacing is not None:
            self.spacing = spacing
        if keep_centres is not None:
            self.keep_centres = bool(keep_centres)

    def schedule(self) -> dict[str, Any]:
        """The current sampling schedule, ``{key: value}`` for :data:`SCHEDULE_KEYS`."""
        return {key: getattr(self, key) for key in SCHEDULE_KEYS}

    def apply_overrides(self, overrides: Mapping[str, Any], prefix: str = "refine") -> None:
        """:meth:`set_schedule` from option overrides (``None`` entries keep the current value).

        Raises
        ------
        CgsimInputError
            Naming ``<prefix>.<key>`` for an unknown key or a value out of range.
        """
        given = {k: v for k, v in dict(overrides).items() if v is not None}
        unknown = sorted(set(given) - set(SCHEDULE_KEYS))
        if unknown:
            raise CgsimInputError(f"{prefix}.{unknown[0]}", f"not a refinement schedule option; expected one of {SCHEDULE_KEYS}")
        try:
            self.set_schedule(**given)
        except ValueError as exc:
            name, _, message = str(exc).partition(": ")
            raise CgsimInputError(f"{prefix}.{name}", message) from None

    def annealing_levels(self) -> list[float]:
        """Annealing noise levels, largest first, in target-scale units (``levels`` values)."""
        if self.levels == 0:
            return []
        if self.levels == 1:
            return [self.sigma_start]
        n = self.levels - 1
        if self.spacing == "karras":
            hi, lo = self.sigma_start ** (1.0 / KARRAS_RHO), self.sigma_end ** (1.0 / KARRAS_RHO)
            return [(hi + k / n * (lo - hi)) ** KARRAS_RHO for k in range(self.levels)]
        ratio = (self.sigma_end / self.sigma_start) ** (1.0 / n)
        return [self.sigma_start * ratio**k for k in range(self.levels)]

    @property
    def calls_per_step(self) -> int:
        """Network evaluations per learned step."""
        return refiner_calls(self.sampler, self.levels, self.steps_per_level, self.final_denoise)

    def _sigma_features(self, sigma_rel: torch.Tensor) -> torch.Tensor:
        """(N,) relative sigma -> (N, 3): log sigma, normalised to about [-1, 1], and its sin/cos."""
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        u = (2.0 * (torch.log(sigma_rel) - lo) / (hi - lo) - 1.0)[:, None]
        return torch.cat([u, torch.sin(math.pi * u), torch.cos(math.pi * u)], dim=-1)

    # -- network -----------------------------------------------------------------------------
    def forward(self, batch: BeadBatch, latent: torch.Tensor, y: torch.Tensor, sigma_rel: torch.Tensor,
                scale: torch.Tensor) -> torch.Tensor:
        """Predicted noise ``eps_hat`` (N, 3) of perturbed next positions.

        Parameters
        ----------
        batch : BeadBatch
            The history (its last frame is the current one) and topology.
        latent : torch.Tensor
            Dynamics network's bead latent, shape (N, cond_dim).
        y : torch.Tensor
            Perturbed next positions, shape (N, 3), nm.
        sigma_rel : torch.Tensor
            Noise level of each bead, shape (N,), in target-scale units.
        scale : torch.Tensor
            The dynamics target scale, nm per unit (scalar tensor).
        """
        disp = (y - batch.pos[:, -1]) / scale
        node_in = torch.cat([latent, self._sigma_features(sigma_rel), disp, disp.norm(dim=-1, keepdim=True)], dim=-1)
        edge_index, vec, edge_type = bead_edges(y, batch.batch, batch.box, batch.bead_bonds, self.cutoff)
        h = self.node_encoder(node_in)
        e = self.edge_encoder(self.edge_features(vec, edge_type))
        for block in self.processor:
            h, e = block(h, edge_index, e)
        return self.decoder(h)

    def loss(self, batch: BeadBatch, latent: torch.Tensor, next_pos: torch.Tensor, scale: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoising score-matching loss ``mean |eps_hat - eps|^2`` on the true next frame (N, 3), nm."""
        dev, dt = next_pos.device, next_pos.dtype
        u = torch.rand((batch.n_systems,), generator=generator, device=dev, dtype=dt)
        sigma_sys = self.sigma_min * (self.sigma_max / self.sigma_min) ** u
        sigma = sigma_sys[batch.batch]
        eps = torch.randn(next_pos.shape, generator=generator, device=dev, dtype=dt)
        y = next_pos + (sigma * scale)[:, None] * eps
        return (self(batch, latent, y, sigma, scale) - eps).pow(2).mean()

    # -- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, batch: BeadBatch, latent: torch.Tensor, y: torch.Tensor, sigma_rel: float,
                scale: torch.Tensor) -> torch.Tensor:
        """One Tweedie step ``y - sigma * eps_hat(y, sigma)``: the estimated clean positions (N, 3), nm."""
        s = torch.full((y.shape[0],), float(sigma_rel), device=y.device, dtype=y.dtype)
        return y - sigma_rel * scale * self(batch, latent, y, s, scale)

    def student_jumps(self, batch: BeadBatch, latent: torch.Tensor, y: torch.Tensor, scale: torch.Tensor,
                      noise: NoiseFn, levels: Sequence[float], trace: list[torch.Tensor] | None = None
                      ) -> torch.Tensor:
        """The student sampler's path (differentiable; :meth:`refine` runs it without gradients).

        The sampled positions ``y`` (N, 3) nm are diffused to the top of ``levels`` (target-scale
        units, largest first); at each level one jump to the estimated clean positions, then
        re-noising to the next level. One network call per level. ``trace`` as in :meth:`refine`.
        """
        for k, sigma in enumerate(levels):
            if k == 0:
                y = y + sigma * scale * noise()
            if trace is not None:
                trace.append(y)
            s = torch.full((y.shape[0],), sigma, device=y.device, dtype=y.dtype)
            y = y - sigma * scale * self(batch, latent, y, s, scale)
            if k + 1 < len(levels):
                y = y + levels[k + 1] * scale * noise()
        return y

    @torch.no_grad()
    def refine(self, batch: BeadBatch, latent: torch.Tensor, y: torch.Tensor, scale: torch.Tensor,
               noise: NoiseFn, trace: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Annealed Langevin correction of sampled next positions.

        Parameters
        ----------
        batch, latent, scale
            As in :meth:`forward`.
        y : torch.Tensor
            Sampled next positions, shape (N, 3), nm.
        noise : callable
            Returns standard-normal noise (N, 3) (so rollouts control the random stream).
        trace : list, optional
            If given, the positions (N, 3) at each annealing level are appended to it, as the
            sampler reaches the level (before its correctors): the probability-flow path a
            student is distilled from (:mod:`cgsim.train.distill`).

        Returns
        -------
        torch.Tensor
            Refined positions (N, 3), nm; ``y`` itself when the schedule is empty.
        """
        a = self.step_size
        sampled = y
        previous = None
        levels = self.annealing_levels()
        if self.sampler == "student":
            y = self.student_jumps(batch, latent, y, scale, noise, levels, trace)
            levels = []
        for sigma in levels:
            s = torch.full((y.shape[0],), sigma, device=y.device, dtype=y.dtype)
            if self.sampler != "langevin":
                if previous is None:  # diffuse the Gaussian sample to the top level
                    y = y + sigma * scale * noise()
                elif self.sampler == "diffusion":  # reverse-diffusion predictor from the previous level
                    sp = torch.full_like(s, previous)
                    dvar = previous**2 - sigma**2
                    y = y - dvar / previous * scale * self(batch, latent, y, sp, scale) + math.sqrt(dvar) * scale * noise()
                elif self.sampler == "ode":  # Heun step of the probability-flow ODE dy/dsigma = eps_hat
                    sp = torch.full_like(s, previous)
                    slope = self(batch, latent, y, sp, scale)
                    euler = y - (previous - sigma) * scale * slope
                    slope = 0.5 * (slope + self(batch, latent, euler, s, scale))
                    y = y - (previous - sigma) * scale * slope
                previous = sigma
            if trace is not None:
                trace.append(y)
            for _ in range(self.steps_per_level):
                eps_hat = self(batch, latent, y, s, scale)
                y = y - a * sigma * scale * eps_hat + math.sqrt(2.0 * a) * sigma * scale * noise()
        if self.final_denoise:
            y = self.denoise(batch, latent, y, self.sigma_min, scale)
        if self.keep_centres:
            y = remove_centre_shift(sampled, y, *self.molecules(batch))
        return y
