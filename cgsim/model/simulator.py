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
   trained by negative log-likelihood.

Translation invariance holds by construction (only differences of positions enter);
permutation equivariance by message passing; periodic images by minimum-image displacements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch_geometric.utils import scatter

from cgsim.geometry import radius_graph
from cgsim.model.batch import BeadBatch
from cgsim.model.blocks import BondMessageBlock, InteractionBlock
from cgsim.model.mlp import MLP

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
    """

    mean: torch.Tensor
    std: torch.Tensor
    scale: torch.Tensor

    def nll(self, target: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per bead and dimension of ``target`` (N, 3) in nm."""
        z = target / self.scale
        return (0.5 * ((z - self.mean) / self.std) ** 2 + torch.log(self.std) + 0.5 * math.log(2 * math.pi)).mean()

    def sample(self, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """A sample in nm, shape (N, 3); ``temperature`` scales the std (0 = the mean)."""
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return (self.mean + temperature * self.std * noise) * self.scale


class GaussianRBF(nn.Module):
    """Gaussian radial basis of a distance on [0, cutoff]: shape (E,) -> (E, n)."""

    def __init__(self, n: int, cutoff: float) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n))
        self.width = cutoff / max(n - 1, 1)

    def forward(self, d: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.exp(-0.5 * ((d[:, None] - self.centers) / self.width) ** 2)


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
    """

    def __init__(self, n_atom_types: int, history: int, cutoff: float, hidden_dim: int = 128, fine_layers: int = 7,
                 bead_layers: int = 7, mlp_layers: int = 2, n_rbf: int = 16, target: str = "acceleration",
                 min_std: float = 1e-3) -> None:
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
        self.rbf = GaussianRBF(n_rbf, cutoff)
        n_vel = history - 1
        self.node_encoder = MLP(hidden_dim + 4 * n_vel, hidden_dim, hidden_dim, mlp_layers)
        self.edge_encoder = MLP(3 + 1 + n_rbf + 2, hidden_dim, hidden_dim, mlp_layers)
        self.processor = nn.ModuleList([InteractionBlock(hidden_dim, hidden_dim, hidden_dim, mlp_layers)
                                        for _ in range(bead_layers)])
        self.decoder = MLP(hidden_dim, hidden_dim, 6, mlp_layers, layer_norm=False)
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
        """Radius edges + bond edges of the current frame.

        Returns
        -------
        edge_index : torch.Tensor
            Shape (2, E), int64, ``[source, target]``.
        vec : torch.Tensor
            ``x_source - x_target``, minimum image, shape (E, 3), nm.
        edge_type : torch.Tensor
            0 for radius edges, 1 for bonds, shape (E,), int64.
        """
        x = batch.pos[:, -1]
        g = radius_graph(x, self.cutoff, batch.box, batch.batch)
        src, dst = batch.bead_bonds
        bvec = x[src] - x[dst]
        if batch.box is not None:
            lb = batch.box[batch.batch[dst]]
            bvec = bvec - lb * torch.round(bvec / lb)
        edge_index = torch.cat([g.edge_index, batch.bead_bonds], dim=1)
        vec = torch.cat([g.vec, bvec])
        edge_type = torch.cat([torch.zeros(g.n_edges, dtype=torch.long, device=x.device),
                               torch.ones(src.shape[0], dtype=torch.long, device=x.device)])
        return edge_index, vec, edge_type

    def chemistry(self, batch: BeadBatch) -> torch.Tensor:
        """Fine-level bead embeddings (N, hidden_dim); depends on topology only."""
        return self.fine(batch.atom_type, batch.atom_bonds, batch.atom_to_bead, batch.n_beads)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, batch: BeadBatch, chem: torch.Tensor | None = None) -> GaussianStep:
        """Gaussian over the next step of every bead.

        Parameters
        ----------
        batch : BeadBatch
            Its ``pos`` holds at least ``history`` frames; the last ``history`` are used.
        chem : torch.Tensor, optional
            Precomputed :meth:`chemistry` (rollouts compute it once).
        """
        if batch.history < self.history:
            raise ValueError(f"the model reads {self.history} frames of history, the batch has {batch.history}")
        pos = batch.pos[:, -self.history:]
        if chem is None:
            chem = self.chemistry(batch)
        vel = (pos[:, 1:] - pos[:, :-1]) / self.velocity_scale  # (N, H-1, 3)
        node_in = torch.cat([chem, vel.flatten(1), vel.norm(dim=-1)], dim=-1)
        edge_index, vec, edge_type = self.edges(batch.with_pos(pos))
        dist = vec.norm(dim=-1)
        edge_in = torch.cat([vec / self.cutoff, (dist / self.cutoff)[:, None], self.rbf(dist),
                             nn.functional.one_hot(edge_type, 2).to(vec.dtype)], dim=-1)
        h = self.node_encoder(node_in)
        e = self.edge_encoder(edge_in)
        for block in self.processor:
            h, e = block(h, edge_index, e)
        out = self.decoder(h)
        std = nn.functional.softplus(out[:, 3:]) + self.min_std
        return GaussianStep(mean=out[:, :3], std=std, scale=self.target_scale)

    def loss(self, batch: BeadBatch, next_pos: torch.Tensor) -> torch.Tensor:
        """NLL of the true next positions (N, 3) nm given the history in ``batch``."""
        window = torch.cat([batch.pos[:, -self.history:], next_pos[:, None]], dim=1)
        return self(batch).nll(self.target_from_positions(window))

    @torch.no_grad()
    def step(self, batch: BeadBatch, generator: torch.Generator | None = None, temperature: float = 1.0,
             chem: torch.Tensor | None = None) -> torch.Tensor:
        """Sample next positions (N, 3), nm."""
        pred = self(batch, chem)
        return self.positions_from_target(batch.pos[:, -self.history:], pred.sample(generator, temperature))
