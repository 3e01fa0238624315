"""The multi-scale graph network that samples bead positions one large time step ahead.

Two levels (Fu et al., TMLR 2023):

1. **Fine level** (:class:`ChemistryEmbedding`): atom (or fine-bead) types embedded and passed
   through geometry-free message passing over the fine bond graph, then mean-pooled to beads.
   It depends on topology only, so it is computed once per system during a rollout, and it is
   how the model knows (and can transfer) the chemistry of each bead.
2. **Bead level** (:class:`MultiScaleDynamics`): encode-process-decode over the bead radius
   graph plus coarse-grained bonds (edge type marks which). Node input: chemistry embedding
   and the finite-difference velocity history; edge input: minimum-image displacement,
   distance (radial basis) and type. Output: a per-bead diagonal Gaussian over the next step's
   acceleration ``a = x_{t+1} - 2 x_t + x_{t-1}`` (or the displacement ``x_{t+1} - x_t``),
   trained by negative log-likelihood. Optionally (:mod:`cgsim.model.collective`) a Gaussian over
   each molecule's centre step as well, so that sampled molecules move together as in MD.

Translation invariance holds by construction (only differences of positions enter);
permutation equivariance by message passing; periodic images by minimum-image displacements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch_geometric.utils import scatter

from cgsim.model.batch import BeadBatch, SystemGraph
from cgsim.model.blocks import BondMessageBlock, InteractionBlock
from cgsim.model.coarse import CoarseLevel
from cgsim.model.collective import CentreNoise, collective_noise
from cgsim.model.composition import CompositionFeatures
from cgsim.model.excluded import (
    CoreFilter,
    DenseGrid,
    PairCorrection,
    core_filter,
    core_log_partition,
    core_pairs,
    dense_grid,
    merge_tables,
    ordered_pairs,
)
from cgsim.model.graph import EdgeFeatures, bead_edges
from cgsim.model.mlp import MLP
from cgsim.model.prior import PriorTopology, StructuralPrior
from cgsim.model.prior_tables import StackedTables
from cgsim.model.refinement import NoiseFn, ScoreRefiner
from cgsim.model.sampling import generator_noise, learned_step
from cgsim.model.scoring import energy_score_terms
from cgsim.model.tree import (
    TreeNoise,
    TreeParams,
    bent_draw,
    bent_innovations,
    component_mean,
    conditional_proposals,
    innovation_nll,
    marginal_std,
    tree_nll,
    tree_noise,
)

TARGETS = ("acceleration", "displacement")


@dataclass
class GaussianStep:
    """A per-bead diagonal Gaussian over the next step.

    Attributes
    ----------
    mean : torch.Tensor
        Mean of the target in normalised units, shape (N, 3).
    std : torch.Tensor
        Standard deviation in normalised units, shape (N, 3), > 0.
    scale : torch.Tensor
        Normalisation (nm per unit), scalar tensor.
    latent : torch.Tensor or None
        The bead latent the Gaussian was decoded from, shape (N, hidden_dim) (what the
        refinement network is conditioned on).
    molecule, n_molecules, centre_std : torch.Tensor or None, int, torch.Tensor or None
        With collective noise (:class:`~cgsim.model.collective.CentreNoise`): the molecule of
        each bead (N,), their number M and the std of each molecule's centre step (M,),
        normalised units; ``None`` = independent bead noise.
    tree : TreeParams or None
        With bond-tree noise (:class:`~cgsim.model.tree.TreeNoise`): the correlated Gaussian's
        trees and parameters, which replace ``std`` (``centre_std`` is then each molecule's
        root std).
    """

    mean: torch.Tensor
    std: torch.Tensor
    scale: torch.Tensor
    latent: torch.Tensor | None = None
    molecule: torch.Tensor | None = None
    n_molecules: int = 0
    centre_std: torch.Tensor | None = None
    tree: TreeParams | None = None

    def nll(self, target: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per bead and dimension of ``target`` (N, 3) in nm (the
        exact joint one under bond-tree noise, :func:`~cgsim.model.tree.tree_nll`)."""
        if self.tree is not None:
            if self.tree.links is None:
                return tree_nll(target / self.scale - self.mean, self.tree)
            d, logdet = bent_innovations(target, self.mean, self.scale, self.tree)
            return innovation_nll(d, self.tree) + logdet / target.numel()
        z = target / self.scale
        return (0.5 * ((z - self.mean) / self.std) ** 2 + torch.log(self.std) + 0.5 * math.log(2 * math.pi)).mean()

    def value(self, eps: torch.Tensor, temperature: float = 1.0, core: CoreFilter | None = None) -> torch.Tensor:
        """The step (N, 3) in nm for a standard-normal draw ``eps`` (N, 3); ``temperature`` scales
        the noise (0 = the mean). With collective noise the draw is split into molecule-centre
        and internal parts (:func:`~cgsim.model.collective.collective_noise`). ``core``: the
        excluded volume of a bent tree draw (:mod:`cgsim.model.excluded`; ignored otherwise)."""
        if self.tree is not None:
            if self.tree.links is not None:
                return bent_draw(eps, self.mean, self.scale, self.tree, temperature, core)
            return (self.mean + temperature * tree_noise(eps, self.tree)) * self.scale
        if self.centre_std is None or self.molecule is None:
            noise = self.std * eps
        else:
            noise = collective_noise(eps, self.std, self.molecule, self.n_molecules, self.centre_std)
        return (self.mean + temperature * noise) * self.scale

    def marginal_std(self) -> torch.Tensor:
        """Each bead's own marginal std (N, 3), normalised units (``std`` without tree noise)."""
        if self.tree is not None:
            return marginal_std(self.tree)
        return self.std

    def sample(self, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """A sample in nm, shape (N, 3); ``temperature`` scales the std (0 = the mean)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.value(eps, temperature)


class ChemistryEmbedding(nn.Module):
    """Fine-level embedding: type embedding + bond message passing, mean-pooled to beads.

    Parameters
    ----------
    n_atom_types : int
        Number of fine particle types.
    dim : int
        Latent width.
    n_layers : int
        Message-passing layers over the fine bond graph.
    mlp_layers : int
        Layers per MLP.
    """

    def __init__(self, n_atom_types: int, dim: int, n_layers: int, mlp_layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_atom_types, dim)
        self.layers = nn.ModuleList([BondMessageBlock(dim, dim, mlp_layers) for _ in range(n_layers)])

    def forward(self, atom_type: torch.Tensor, atom_bonds: torch.Tensor, atom_to_bead: torch.Tensor,
                n_beads: int) -> torch.Tensor:
        """Bead embeddings, shape (n_beads, dim)."""
        h = self.embed(atom_type)
        for layer in self.layers:
            h = layer(h, atom_bonds)
        return scatter(h, atom_to_bead, dim=0, dim_size=n_beads, reduce="mean")


def _table_kinds(table: torch.Tensor, off: list[int]) -> torch.Tensor:
    """Kind (0 non-bonded, 1 bonded, 2 1-3) of each table index (any shape) of the filter's merged
    tables, whose kinds start at offsets ``off`` (-1: absent)."""
    kind = torch.zeros_like(table)
    for k, o in ((1, off[1]), (2, off[2])):
        if o >= 0:
            kind = torch.where(table >= o, torch.full_like(table, k), kind)
    return kind


class MultiScaleDynamics(nn.Module):
    """Fine chemistry embedding + bead-level encode-process-decode -> Gaussian next step.

    Parameters
    ----------
    n_atom_types : int
        Number of fine particle types.
    history : int
        Frames of position history H the model reads (>= 2: H-1 velocities).
    cutoff : float
        Radius-graph cutoff between beads, nm.
    hidden_dim : int
        Width of all latents.
    fine_layers : int
        Message-passing layers at the fine level.
    bead_layers : int
        Processor layers at the bead level.
    mlp_layers : int
        Layers per MLP.
    n_rbf : int
        Radial basis functions of the edge distance.
    target : {"acceleration", "displacement"}
        What the Gaussian is over.
    min_std : float
        Smallest predicted std (normalised units), for numerical safety.
    refinement : ScoreRefiner, optional
        Score-based refinement applied after each sampled step and trained alongside
        (:mod:`cgsim.model.refinement`); ``None`` = the plain Gaussian step.
    coarse : CoarseLevel, optional
        A super-bead level run after the bead processor (:mod:`cgsim.model.coarse`).
    collective : CentreNoise, optional
        A Gaussian over each molecule's centre step (:mod:`cgsim.model.collective`); ``None`` =
        independent bead noise.
    composition : bool
        Give every bead its system's fine-type number densities relative to the training mean
        (:mod:`cgsim.model.composition`; periodic systems only), so one model can tell the
        compositions it was trained on apart. Fit with :meth:`fit_composition`.
    """

    def __init__(self, n_atom_types: int, history: int, cutoff: float, hidden_dim: int = 128, fine_layers: int = 7,
                 bead_layers: int = 7, mlp_layers: int = 2, n_rbf: int = 16, target: str = "acceleration",
                 min_std: float = 1e-3, refinement: ScoreRefiner | None = None,
                 coarse: CoarseLevel | None = None, collective: CentreNoise | None = None,
                 composition: bool = False) -> None:
        super().__init__()
        if history < 2:
            raise ValueError(f"history must be >= 2 frames (one velocity), got {history}")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if not cutoff > 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        self.history = int(history)
        self.cutoff = float(cutoff)
        self.target = target
        self.min_std = float(min_std)
        self.n_atom_types = int(n_atom_types)
        self.fine = ChemistryEmbedding(n_atom_types, hidden_dim, fine_layers, mlp_layers)
        self.edge_features = EdgeFeatures(cutoff, n_rbf)
        n_vel = history - 1
        self.composition = CompositionFeatures(n_atom_types) if composition else None
        n_comp = self.composition.dim if self.composition is not None else 0
        self.node_encoder = MLP(hidden_dim + 4 * n_vel + n_comp, hidden_dim, hidden_dim, mlp_layers)
        self.edge_encoder = MLP(self.edge_features.dim, hidden_dim, hidden_dim, mlp_layers)
        self.processor = nn.ModuleList([InteractionBlock(hidden_dim, hidden_dim, hidden_dim, mlp_layers)
                                        for _ in range(bead_layers)])
        self.decoder = MLP(hidden_dim, hidden_dim, 6, mlp_layers, layer_norm=False)
        self.refiner = refinement
        #: structural prior applied after each draw (:mod:`cgsim.model.prior`); set from the
        #: checkpoint, not trained, so not a submodule
        self.prior: StructuralPrior | None = None
        #: the excluded volume's tables (merged with the bonded ones for core_terms="all") and
        #: their dense grid, kept for the prior topology they were made from (one per rollout)
        self._core_cache: tuple[PriorTopology, StackedTables, list[int], DenseGrid] | None = None
        self.coarse = coarse
        if isinstance(collective, TreeNoise) and (collective.bend or not collective.drift) and target != "displacement":
            what = "bend=true" if collective.bend else "drift=false"
            raise ValueError(f"bond-tree noise with {what} needs target='displacement', got {target!r}")
        self.collective = collective
        # normalisation, set from data by fit_normalization(); saved with the weights
        self.register_buffer("velocity_scale", torch.tensor(1.0))
        self.register_buffer("target_scale", torch.tensor(1.0))

    # -- normalisation -------------------------------------------------------------------
    @torch.no_grad()
    def fit_normalization(self, windows: torch.Tensor) -> None:
        """Set velocity and target scales from position windows (M, H+1, 3), nm."""
        vel = windows[:, 1:] - windows[:, :-1]
        self.velocity_scale.fill_(float(vel.pow(2).mean().sqrt().clamp_min(1e-12)))
        self.target_scale.fill_(float(self.target_from_positions(windows).pow(2).mean().sqrt().clamp_min(1e-12)))

    @torch.no_grad()
    def fit_composition(self, systems: Sequence[SystemGraph]) -> None:
        """Set the composition features' reference densities from the training systems (no-op
        for a model without them)."""
        if self.composition is not None:
            self.composition.fit(systems)

    def target_from_positions(self, window: torch.Tensor) -> torch.Tensor:
        """Target (N, 3) nm from positions (N, H+1, 3) whose last frame is the next one."""
        if self.target == "acceleration":
            return window[:, -1] - 2 * window[:, -2] + window[:, -3]
        return window[:, -1] - window[:, -2]

    def positions_from_target(self, pos: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Next positions (N, 3) from the history (N, H, 3) and a target sample (N, 3), nm."""
        if self.target == "acceleration":
            return 2 * pos[:, -1] - pos[:, -2] + value
        return pos[:, -1] + value

    # -- graph -----------------------------------------------------------------------------
    def edges(self, batch: BeadBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Radius edges + bond edges of the current frame (see :func:`cgsim.model.graph.bead_edges`)."""
        return bead_edges(batch.pos[:, -1], batch.batch, batch.box, batch.bead_bonds, self.cutoff)

    def chemistry(self, batch: BeadBatch) -> torch.Tensor:
        """Fine-level bead embeddings (N, hidden_dim); depends on topology only."""
        return self.fine(batch.atom_type, batch.atom_bonds, batch.atom_to_bead, batch.n_beads)

    # -- forward ---------------------------------------------------------------------------
    def history_inputs(self, batch: BeadBatch, chem: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The last ``history`` frames (N, H, 3) nm, the chemistry (N, hidden_dim) and the
        velocities (N, H-1, 3) in units of ``velocity_scale`` that every bead network reads."""
        if batch.history < self.history:
            raise ValueError(f"the model reads {self.history} frames of history, the batch has {batch.history}")
        pos = batch.pos[:, -self.history:]
        if chem is None:
            chem = self.chemistry(batch)
        return pos, chem, (pos[:, 1:] - pos[:, :-1]) / self.velocity_scale

    def forward(self, batch: BeadBatch, chem: torch.Tensor | None = None) -> GaussianStep:
        """Gaussian over the next step of every bead.

        Parameters
        ----------
        batch : BeadBatch
            Its ``pos`` holds at least ``history`` frames; the last ``history`` are used.
        chem : torch.Tensor, optional
            Precomputed :meth:`chemistry` (rollouts compute it once).
        """
        pos, chem, vel = self.history_inputs(batch, chem)
        parts = [chem, vel.flatten(1), vel.norm(dim=-1)]
        if self.composition is not None:
            parts.append(self.composition(batch))
        node_in = torch.cat(parts, dim=-1)
        edge_index, vec, edge_type = self.edges(batch.with_pos(pos))
        h = self.node_encoder(node_in)
        e = self.edge_encoder(self.edge_features(vec, edge_type))
        for block in self.processor:
            h, e = block(h, edge_index, e)
        if self.coarse is not None:
            h = self.coarse(h, batch.with_pos(pos))
        out = self.decoder(h)
        std = nn.functional.softplus(out[:, 3:]) + self.min_std
        return self.gaussian(out[:, :3], std, h, batch, (edge_index, vec, edge_type))

    def gaussian(self, mean: torch.Tensor, std: torch.Tensor, h: torch.Tensor, batch: BeadBatch,
                 edges: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> GaussianStep:
        """The :class:`GaussianStep` of decoded ``mean``/``std`` (N, 3) and latent ``h`` (with the
        molecule-centre std when the model has collective noise, the trees with bond-tree noise,
        whose contacts read ``edges``, the current frame's :meth:`edges`)."""
        if self.collective is None:
            return GaussianStep(mean=mean, std=std, scale=self.target_scale, latent=h)
        if isinstance(self.collective, TreeNoise):
            params = self.collective.tree_forward(h, batch, edges)
            if params.centred and not self.collective.drift:  # each molecule's centre: a zero-mean step
                mean = mean - component_mean(mean, params.tree)
            return GaussianStep(mean=mean, std=std, scale=self.target_scale, latent=h, molecule=params.tree.molecule,
                                n_molecules=params.tree.n_molecules, centre_std=params.root_std, tree=params)
        mol, n_mol, centre_std = self.collective(h, batch)
        return GaussianStep(mean=mean, std=std, scale=self.target_scale, latent=h, molecule=mol, n_molecules=n_mol,
                            centre_std=centre_std)

    def nll(self, batch: BeadBatch, next_pos: torch.Tensor, pred: GaussianStep | None = None) -> torch.Tensor:
        """NLL of the true next positions (N, 3) nm given the history in ``batch``."""
        window = torch.cat([batch.pos[:, -self.history:], next_pos[:, None]], dim=1)
        pred = self(batch) if pred is None else pred
        return pred.nll(self.target_from_positions(window))

    def loss_terms(self, batch: BeadBatch, next_pos: torch.Tensor,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``{"nll": ...}`` plus ``{"dsm": ...}`` (denoising loss) when the model has a refiner,
        ``{"centre_nll": ...}`` (molecule-centre steps) when it has collective noise and
        ``{"pair_es": ...}`` (energy score of close pair distances in two draws) with bond-tree
        noise and ``pair_score > 0``."""
        pred = self(batch)
        terms = {"nll": self.nll(batch, next_pos, pred)}
        if pred.centre_std is not None and pred.tree is None:
            window = torch.cat([batch.pos[:, -self.history:], next_pos[:, None]], dim=1)
            z = self.target_from_positions(window) / pred.scale
            terms["centre_nll"] = CentreNoise.nll(z, pred.mean, pred.molecule, pred.n_molecules, pred.centre_std)
        if isinstance(self.collective, TreeNoise) and self.collective.pair_score > 0:
            terms["pair_es"] = self._pair_score(batch, pred, next_pos, generator)
        if isinstance(self.collective, TreeNoise) and self.collective.core_samples > 0:
            terms["core_logz"] = self._core_log_partition(batch, pred, next_pos, generator)
        if self.refiner is not None:
            terms["dsm"] = self.refiner.loss(batch.with_pos(batch.pos[:, -self.history:]), pred.latent, next_pos,
                                             self.target_scale, generator)
        return terms

    def loss(self, batch: BeadBatch, next_pos: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss: NLL (+ ``refiner.loss_weight`` x denoising loss); ``generator`` draws its noise."""
        terms = self.loss_terms(batch, next_pos, generator)
        total = terms["nll"]
        if "dsm" in terms:
            total = total + self.refiner.loss_weight * terms["dsm"]
        if "centre_nll" in terms:
            total = total + self.collective.loss_weight * terms["centre_nll"]
        if "pair_es" in terms:
            total = total + self.collective.pair_score * terms["pair_es"]
        if "core_logz" in terms:  # part of the filtered draw's exact NLL (weight 1)
            total = total + terms["core_logz"]
        return total

    def _pair_score(self, batch: BeadBatch, pred: GaussianStep, next_pos: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
        """Energy score (Gneiting & Raftery 2007) of the distances of non-bonded pairs closer than
        ``collective.pair_cutoff`` nm in the current frame, two reparameterised draws of the step
        against the true next frame (target-scale units): what the likelihood of one bead's step
        given its parent's cannot see, two beads of different branches drawn onto each other."""
        hist = batch.pos[:, -self.history:]
        noise = generator_noise(tuple(pred.mean.shape), generator, pred.mean.device, pred.mean.dtype)
        draws = [self.positions_from_target(hist, pred.value(noise())) for _ in range(2)]
        terms = energy_score_terms(draws[0], draws[1], next_pos, batch.with_pos(hist), pred.scale,
                                   self.collective.pair_cutoff)
        return terms.pair

    def _core_log_partition(self, batch: BeadBatch, pred: GaussianStep, next_pos: torch.Tensor,
                            generator: torch.Generator | None) -> torch.Tensor:
        """``sum_i log Z_i / (3 N)`` of the excluded volume inside the draw (the NLL's term that the
        filter adds, :func:`~cgsim.model.excluded.core_log_partition`), from
        ``collective.core_samples`` proposals per bead given the true steps before it."""
        if self.prior is None or pred.tree is None or pred.tree.links is None:
            raise ValueError("collective.core_samples needs a structural prior fitted before training "
                             "(cgsim train fits it) and bent bond-tree noise")
        topo = self.prior.topology(self.prior.classes_of(batch.atom_type, batch.atom_to_bead, batch.n_beads),
                                   batch.bead_bonds, batch.n_beads, batch.pos.device, batch.pos.dtype)
        if topo.nb is None:
            return next_pos.new_zeros(())
        x0 = batch.pos[:, -1]
        tables, pairs = self._core_pairs(batch, pred, topo, self._core_radius(pred, batch.box))
        eps = torch.randn((self.collective.core_samples, *pred.mean.shape), generator=generator,
                          device=pred.mean.device, dtype=pred.mean.dtype)
        proposals, placed = conditional_proposals(eps, next_pos - x0, pred.mean, pred.scale, pred.tree)
        strength = self.core_strength()
        correction = self._core_correction(topo, pairs[2])
        logz = core_log_partition(x0 + proposals, x0 + placed, pairs, tables, strength, batch.box, batch.batch,
                                  max(self.prior.core_tries, 1), correction)
        # + s E(true): log(exp(-s E)) of the true step as the one proposal
        energy = -core_log_partition((x0 + placed)[None], x0 + placed, pairs, tables, strength, batch.box, batch.batch,
                                     correction=correction)
        return (logz + energy) / next_pos.numel()

    def _core_pairs(self, batch: BeadBatch, pred: GaussianStep, topo: PriorTopology, radius: float
                    ) -> tuple[StackedTables, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The tables and the ``(new, other, table)`` pairs the draw's filter checks: the close
        non-bonded pairs (:func:`~cgsim.model.excluded.core_pairs`), and with
        ``collective.core_terms="all"`` every bonded and 1-3 pair too (their tables shifted to a
        minimum of 0)."""
        t = pred.tree.tree
        nb = core_pairs(topo.nb_lookup, topo.cls, topo.exclude, topo.n_beads, t.hops, t.root_of, batch.pos[:, -1],
                        batch.box, batch.batch, radius, not pred.tree.centred)
        if getattr(self.collective, "core_terms", "nonbonded") != "all" or topo.nb is None:
            return topo.nb, nb
        (bpairs, bidx, _), (apairs, aidx, _) = topo.bond, topo.angle
        tables, off, _ = self._core_tables(topo, with_grid=False)
        parts = [(nb[0], nb[1], nb[2] + off[0])]
        for pairs, idx, o in ((bpairs, bidx, off[1]), (apairs, aidx, off[2])):
            if o >= 0 and pairs.shape[1]:
                new, other, table = ordered_pairs(pairs, idx + o, t.hops)
                parts.append((new, other, table))
        return tables, tuple(torch.cat([p[k] for p in parts]) for k in range(3))

    def _core_correction(self, topo: PriorTopology, table: torch.Tensor) -> tuple[PairCorrection, torch.Tensor] | None:
        """The learned pair correction and the kind (0 non-bonded, 1 bonded, 2 1-3) of each pair's
        ``table`` index (P,), or None without one."""
        corr = getattr(self.collective, "core_correction", None)
        if corr is None:
            return None
        _, off, _ = self._core_tables(topo, with_grid=False)
        return corr, _table_kinds(table, off)

    def _core_tables(self, topo: PriorTopology, with_grid: bool = True
                     ) -> tuple[StackedTables, list[int], DenseGrid | None]:
        """The filter's tables for ``topo`` (the core, or core + bonded + 1-3 merged), the offset of
        each kind in them and their :func:`~cgsim.model.excluded.dense_grid`, made once per topology."""
        if self._core_cache is not None and self._core_cache[0] is topo:
            return self._core_cache[1:]
        if getattr(self.collective, "core_terms", "nonbonded") == "all":
            tables, off = merge_tables([topo.nb, topo.bond[2], topo.angle[2]], [False, True, True])
        else:
            tables, off = topo.nb, [0, -1, -1]
        if not with_grid:  # tables and offsets only (training reads them directly, not the grid)
            return tables, off, None
        grid = dense_grid(tables)
        corr = getattr(self.collective, "core_correction", None)
        if corr is not None:  # the learned term folded into the grid: acceptance exp(-s (u + u_learned / s))
            flat, n, r_lo, inv_dr = grid
            n_tab = tables.u.shape[0]
            kind = _table_kinds(torch.arange(n_tab, device=flat.device), off)
            r = r_lo + torch.arange(n, dtype=flat.dtype, device=flat.device) / inv_dr
            with torch.no_grad():
                extra = corr(r[None].expand(n_tab, n), kind[:, None]) / float(torch.as_tensor(self.core_strength()).detach())
            grid = ((flat.reshape(n_tab, n) + extra.to(flat.dtype)).reshape(-1), n, r_lo, inv_dr)
        self._core_cache = (topo, tables, off, grid)
        return self._core_cache[1:]

    def core_strength(self) -> torch.Tensor | float:
        """Exponent of the excluded volume's acceptance: learned with a model trained for it
        (``collective.core_samples``), else the prior's ``strength``."""
        log_s = getattr(self.collective, "core_log_strength", None)
        if log_s is not None:
            return log_s.exp()
        return self.prior.strength if self.prior is not None else 1.0

    def _core_radius(self, pred: GaussianStep, box: torch.Tensor | None, temperature: float = 1.0) -> float:
        """Search radius (nm) of the excluded volume's pairs: the prior's core range plus twice a
        generous bound (99th percentile of |mean| + 3 std) of one bead's move; in a periodic box
        at most just under half its smallest length (every minimum-image pair is then in)."""
        with torch.no_grad():
            move = (pred.mean.norm(dim=-1) + 3 * temperature * pred.marginal_std().norm(dim=-1)) * pred.scale
            reach = float(torch.quantile(move, 0.99)) if move.numel() else 0.0
        radius = self.prior.nb_cutoff + 2 * reach
        if box is not None:
            radius = min(radius, 0.5 * float(box.min()) * (1 - 1e-6))
        return radius

    @torch.no_grad()
    def refine(self, batch: BeadBatch, pred: GaussianStep, new_pos: torch.Tensor, noise: NoiseFn) -> torch.Tensor:
        """Refined next positions (N, 3) nm (``new_pos`` unchanged without a refiner)."""
        if self.refiner is None:
            return new_pos
        return self.refiner.refine(batch.with_pos(batch.pos[:, -self.history:]), pred.latent, new_pos, pred.scale, noise)

    def calls_per_step(self) -> int:
        """Network calls per learned step: the dynamics network + the refiner's schedule (the
        structural prior calls no network)."""
        return 1 + (self.refiner.calls_per_step if self.refiner is not None else 0)

    @torch.no_grad()
    def apply_prior(self, batch: BeadBatch, pred: GaussianStep, new_pos: torch.Tensor, noise: NoiseFn,
                    topo: PriorTopology | None) -> torch.Tensor:
        """``new_pos`` (N, 3) nm tilted by the structural prior (unchanged without one).

        The draw's mean and per-bead std come from ``pred``; a single-bead molecule's std under
        collective noise is its centre std. ``topo`` is :meth:`StructuralPrior.topology` of the batch.
        """
        if self.prior is None or topo is None or self.prior.steps == 0:
            return new_pos
        hist = batch.pos[:, -self.history:]
        mean = self.positions_from_target(hist, pred.mean * pred.scale)
        std = pred.marginal_std() * pred.scale
        molecule = None
        if pred.centre_std is not None and pred.molecule is not None and pred.tree is None:
            molecule = pred.molecule
            counts = torch.bincount(molecule, minlength=pred.n_molecules)
            single = (counts[molecule] == 1)[:, None]
            std = torch.where(single, (pred.centre_std * pred.scale)[molecule][:, None].expand_as(std), std)
        return self.prior.sample(new_pos, mean, std, topo, batch.batch, batch.box, noise, molecule, pred.n_molecules)

    @torch.no_grad()
    def core_filter(self, batch: BeadBatch, pred: GaussianStep, topo: PriorTopology | None, noise: NoiseFn,
                    temperature: float = 1.0) -> CoreFilter | None:
        """The excluded volume of this step's tree draw (:mod:`cgsim.model.excluded`), or ``None``
        where it does not apply (no prior, ``prior.core_tries < 2``, no core tables, no bent tree
        draw). Draws its extra innovations and acceptance uniforms from ``noise``."""
        prior = self.prior
        if (prior is None or topo is None or prior.core_tries < 2 or topo.nb is None or pred.tree is None
                or pred.tree.links is None):
            return None
        if self.target != "displacement":
            raise ValueError("the prior's core_tries needs a model trained with target=displacement")
        tries = prior.core_tries
        eps = torch.stack([noise() for _ in range(tries - 1)])
        uniform = torch.special.ndtr(torch.cat([noise() for _ in range(-(-tries // 3))], dim=1))[:, :tries].T
        x0 = batch.pos[:, -1]
        t = pred.tree.tree
        tables, pairs = self._core_pairs(batch, pred, topo, self._core_radius(pred, batch.box, temperature))
        grid = self._core_tables(topo)[2]
        strength = float(torch.as_tensor(self.core_strength()).detach())
        return core_filter(tables, pairs, t.hops, torch.nonzero(t.root)[:, 0], t.levels, x0, batch.box, batch.batch,
                           strength, eps, uniform.contiguous(), grid, prior.core_select)

    @torch.no_grad()
    def step(self, batch: BeadBatch, generator: torch.Generator | None = None, temperature: float = 1.0,
             chem: torch.Tensor | None = None) -> torch.Tensor:
        """Sample next positions (N, 3), nm: :func:`cgsim.model.sampling.learned_step` with every
        draw from ``generator`` (refined when the model has a refiner; no structural prior step,
        which needs the batch's prior topology)."""
        noise = generator_noise((batch.n_beads, 3), generator, batch.pos.device, batch.pos.dtype)
        return learned_step(self, batch, noise, temperature, chem)
