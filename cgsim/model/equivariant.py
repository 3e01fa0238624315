"""An E(3)-equivariant bead-level network: predictions rotate (and reflect) exactly with the input.

:class:`EquivariantDynamics` is a :class:`~cgsim.model.simulator.MultiScaleDynamics` (same
chemistry embedding, normalisation, target, loss, sampling, refinement and checkpoints) whose
bead-level encode-process-decode is replaced by one that carries two kinds of node features:

- **scalars** ``s_i`` (N, F), invariant under rotations, reflections and translations: the
  chemistry embedding and invariants of the velocity history (norms and mutual dot products);
- **vectors** ``V_i`` (N, C, 3), which rotate with the input: linear combinations of the
  velocity history (in units of ``velocity_scale``).

Messages are built from invariants only (edge distance through a radial basis, edge type, the
scalars of both ends and the dot products of both ends' vectors with the edge direction); they
update the scalars, and update the vectors as linear combinations of the edge direction and
the neighbour's vectors with invariant weights. The layer combines the velocity-carrying EGNN
of Satorras, Hoogeboom & Welling, "E(n) Equivariant Graph Neural Networks", ICML 2021 (Eq. 3-4,
7: invariant edge messages, vector updates along edge directions, mean-normalised) with the
vector messages and the channel-mixing update block of PaiNN, Schütt, Unke & Gastegger,
"Equivariant message passing for the prediction of tensorial properties and molecular
spectra", ICML 2021 (Eq. 7-11). See :class:`EquivariantBlock` for the equations.

Output: the Gaussian mean is a combination of each bead's vector channels with invariant
weights (so it rotates with the input), and the std is one invariant scalar per bead repeated
over x, y, z (isotropic), so the whole predicted distribution rotates exactly with the input.
Only position differences enter (translation invariance), message passing is permutation
equivariant, and edges use minimum-image displacements (:func:`cgsim.model.graph.bead_edges`).
The symmetry group of a periodic orthorhombic box is smaller than O(3): there, predictions are
equivariant under the box's own symmetries (for a cubic box, the 48 signed axis permutations).
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import degree

from cgsim.model.batch import BeadBatch
from cgsim.model.coarse import CoarseLevel
from cgsim.model.collective import CentreNoise
from cgsim.model.graph import EdgeFeatures
from cgsim.model.mlp import MLP
from cgsim.model.refinement import ScoreRefiner
from cgsim.model.simulator import GaussianStep, MultiScaleDynamics


def _norm(v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Norm over the last axis with a finite gradient at zero: ``sqrt(|v|^2 + eps^2)``."""
    return torch.sqrt(v.pow(2).sum(dim=-1) + eps * eps)


class EquivariantBlock(MessagePassing):
    r"""One equivariant message-passing layer over scalars ``s`` (N, F) and vectors ``V`` (N, C, 3).

    Edge ``j -> i`` with unit direction ``u_ij = (x_j - x_i) / |x_j - x_i|`` and invariant
    features ``f_ij`` (distance, radial basis, type). With ``<V, u>`` the per-channel dot product:

    .. math::
        [m_{ij}, a_{ij}, b_{ij}] &= \phi_m\big([s_i, s_j, f_{ij}, \langle V_i, u_{ij}\rangle,
                                                \langle V_j, u_{ij}\rangle]\big) \\
        V_i &\leftarrow V_i + \tfrac{1}{|N(i)|} \textstyle\sum_j
                 \big(a_{ij} \odot V_j + b_{ij} \otimes u_{ij}\big) \\
        [\Delta s_i, g_i] &= \phi_u\big([s_i, \textstyle\sum_j \mathrm{LN}(m_{ij}),
                                        \lVert W V_i \rVert, \langle U V_i, W V_i\rangle]\big) \\
        s_i &\leftarrow s_i + \mathrm{LN}(\Delta s_i), \qquad V_i \leftarrow V_i + g_i \odot U V_i

    ``U, W`` (C x C, no bias) mix vector channels (PaiNN's update block, Schütt et al. 2021,
    Eq. 9-11); the mean over neighbours of the vector messages is EGNN's ``1 / (M - 1)``
    normalisation (Satorras et al. 2021, Eq. 4). ``a, b, g`` and every input of ``phi`` are
    invariant, so ``V`` stays equivariant under rotations and reflections and ``s`` invariant.

    Parameters
    ----------
    scalar_dim : int
        Scalar channels F.
    vector_dim : int
        Vector channels C.
    edge_dim : int
        Width of the invariant edge features.
    hidden_dim : int
        Hidden width of the MLPs.
    mlp_layers : int
        Layers per MLP.
    """

    def __init__(self, scalar_dim: int, vector_dim: int, edge_dim: int, hidden_dim: int, mlp_layers: int = 2) -> None:
        super().__init__(aggr="sum", flow="source_to_target")
        self.scalar_dim, self.vector_dim = int(scalar_dim), int(vector_dim)
        f, c = self.scalar_dim, self.vector_dim
        if mlp_layers < 1:
            raise ValueError(f"mlp_layers must be >= 1, got {mlp_layers}")
        # phi_m is an MLP on [s_i, s_j, f_ij, <V_i, u>, <V_j, u>] whose first linear layer is split:
        # its s_i and s_j parts act per node (N rows) and are gathered, only the rest acts per edge
        width = hidden_dim if mlp_layers > 1 else f + 2 * c
        self.message_node = nn.Linear(f, 2 * width, bias=False)
        self.message_edge = nn.Linear(edge_dim + 2 * c, width)
        self.message_rest = (nn.Sequential(nn.SiLU(), MLP(width, hidden_dim, f + 2 * c, mlp_layers - 1, layer_norm=False))
                             if mlp_layers > 1 else nn.Identity())
        self.message_norm = nn.LayerNorm(f)
        self.mix_u = nn.Linear(c, c, bias=False)
        self.mix_w = nn.Linear(c, c, bias=False)
        self.update_mlp = MLP(2 * f + 2 * c, hidden_dim, f + c, mlp_layers, layer_norm=False)
        self.update_norm = nn.LayerNorm(f)

    def forward(self, s: torch.Tensor, v: torch.Tensor, edge_index: torch.Tensor, u: torch.Tensor,
                f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Update scalars and vectors.

        Parameters
        ----------
        s : torch.Tensor
            Scalars, shape (N, F).
        v : torch.Tensor
            Vectors, shape (N, C, 3).
        edge_index : torch.Tensor
            Shape (2, E), ``[source j, target i]``.
        u : torch.Tensor
            Unit edge directions ``(x_j - x_i) / |x_j - x_i|``, shape (E, 3).
        f : torch.Tensor
            Invariant edge features, shape (E, edge_dim).

        Returns
        -------
        tuple of torch.Tensor
            New scalars (N, F) and vectors (N, C, 3).
        """
        n, c = s.shape[0], self.vector_dim
        p_dst, p_src = self.message_node(s).chunk(2, dim=-1)
        agg = self.propagate(edge_index, p_dst=p_dst, p_src=p_src, v=v.flatten(1), u=u, f=f, size=(n, n))
        count = degree(edge_index[1], n, dtype=s.dtype).clamp_min(1.0)
        m_s = agg[:, :self.scalar_dim]
        v = v + (agg[:, self.scalar_dim:] / count[:, None]).view(n, c, 3)
        uv = self.mix_u(v.transpose(1, 2)).transpose(1, 2)  # (N, C, 3): channel mixing commutes with rotation
        wv = self.mix_w(v.transpose(1, 2)).transpose(1, 2)
        out = self.update_mlp(torch.cat([s, m_s, _norm(wv), (uv * wv).sum(dim=-1)], dim=-1))
        s = s + self.update_norm(out[:, :self.scalar_dim])
        v = v + out[:, self.scalar_dim:, None] * uv
        return s, v

    def message(self, p_dst_i: torch.Tensor, p_src_j: torch.Tensor, v_i: torch.Tensor, v_j: torch.Tensor,
                u: torch.Tensor, f: torch.Tensor) -> torch.Tensor:  # noqa: D102 - PyG hook
        c = self.vector_dim
        vi, vj = v_i.view(-1, c, 3), v_j.view(-1, c, 3)
        dots = torch.cat([torch.einsum("ecx,ex->ec", vi, u), torch.einsum("ecx,ex->ec", vj, u)], dim=-1)
        out = self.message_rest(p_dst_i + p_src_j + self.message_edge(torch.cat([f, dots], dim=-1)))
        m, a, b = out.split([self.scalar_dim, c, c], dim=-1)
        vec = a[:, :, None] * vj + b[:, :, None] * u[:, None]
        return torch.cat([self.message_norm(m), vec.flatten(1)], dim=-1)


class EquivariantDynamics(MultiScaleDynamics):
    """Multi-scale simulator with an E(3)-equivariant bead-level network.

    The fine chemistry embedding, normalisation, target, NLL, sampling and checkpoints are
    those of :class:`~cgsim.model.simulator.MultiScaleDynamics`; the bead level is:

    - encode: scalars ``s = MLP([chem, |v_k|, v_k . v_l (k < l)])`` (N, hidden_dim) and vectors
      ``V_c = sum_k W_ck v_k`` (N, vector_dim, 3) from the velocity history ``v_k`` (H-1
      frames, in units of ``velocity_scale``);
    - process: ``bead_layers`` :class:`EquivariantBlock` layers over the radius + bond graph;
    - decode: ``[w, sigma] = MLP(s)``; mean ``= sum_c w_c V_c`` (N, 3), std ``= softplus(sigma) +
      min_std`` repeated over x, y, z.

    The mean therefore rotates (and reflects) exactly with the input and the std is isotropic.
    The optional score refinement (:class:`~cgsim.model.refinement.ScoreRefiner`, conditioned
    on the scalar latent ``s``) stays the non-equivariant network: its corrections are small,
    so the refined step is equivariant only approximately.

    Parameters
    ----------
    n_atom_types : int
        Number of fine particle types.
    history : int
        Frames of position history H the model reads (>= 2: H-1 velocities).
    cutoff : float
        Radius-graph cutoff between beads, nm.
    hidden_dim : int
        Width of the chemistry embedding, of the scalar channels and of all MLP hidden layers.
    fine_layers : int
        Message-passing layers at the fine level.
    bead_layers : int
        Equivariant layers at the bead level.
    mlp_layers : int
        Layers per MLP.
    n_rbf : int
        Radial basis functions of the edge distance.
    vector_dim : int
        Vector channels per bead.
    target : {"acceleration", "displacement"}
        What the Gaussian is over.
    min_std : float
        Smallest predicted std (normalised units), for numerical safety.
    refinement : ScoreRefiner, optional
        Score-based refinement (non-equivariant) applied after each sampled step.
    coarse : CoarseLevel, optional
        Super-bead level on the scalar channels (invariant: distances only), after the processor.
    collective : CentreNoise, optional
        Isotropic Gaussian over each molecule's centre step, read from the scalars (invariant).
    """

    def __init__(self, n_atom_types: int, history: int, cutoff: float, hidden_dim: int = 128, fine_layers: int = 7,
                 bead_layers: int = 7, mlp_layers: int = 2, n_rbf: int = 16, vector_dim: int = 16,
                 target: str = "acceleration", min_std: float = 1e-3, refinement: ScoreRefiner | None = None,
                 coarse: CoarseLevel | None = None, collective: CentreNoise | None = None) -> None:
        super().__init__(n_atom_types=n_atom_types, history=history, cutoff=cutoff, hidden_dim=hidden_dim,
                         fine_layers=fine_layers, bead_layers=0, mlp_layers=mlp_layers, n_rbf=n_rbf, target=target,
                         min_std=min_std, refinement=refinement, coarse=coarse, collective=collective)
        if vector_dim < 1:
            raise ValueError(f"vector_dim must be >= 1, got {vector_dim}")
        del self.edge_encoder  # the parent's non-equivariant bead network is replaced below
        self.vector_dim = int(vector_dim)
        n_vel = history - 1
        self.n_invariants = n_vel + n_vel * (n_vel - 1) // 2
        self.register_buffer("pairs", torch.triu_indices(n_vel, n_vel, offset=1), persistent=False)
        self.edge_features = EdgeFeatures(cutoff, n_rbf, directional=False)  # invariant: distance + type
        self.node_encoder = MLP(hidden_dim + self.n_invariants, hidden_dim, hidden_dim, mlp_layers)
        self.vector_encoder = nn.Linear(n_vel, vector_dim, bias=False)
        self.processor = nn.ModuleList([
            EquivariantBlock(hidden_dim, vector_dim, self.edge_features.dim, hidden_dim, mlp_layers)
            for _ in range(bead_layers)])
        self.decoder = MLP(hidden_dim, hidden_dim, vector_dim + 1, mlp_layers, layer_norm=False)
        with torch.no_grad():  # start from mean 0: random combinations of the vectors are far off the data
            last = [mod for mod in self.decoder.modules() if isinstance(mod, nn.Linear)][-1]
            last.weight[:vector_dim].zero_()
            last.bias[:vector_dim].zero_()

    def encode(self, chem: torch.Tensor, vel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Node scalars (N, hidden_dim) and vectors (N, vector_dim, 3) from the chemistry (N, hidden_dim)
        and the velocity history ``vel`` (N, H-1, 3) in units of ``velocity_scale``."""
        gram = vel @ vel.transpose(1, 2)  # (N, H-1, H-1), invariant under O(3)
        invariants = torch.cat([vel.norm(dim=-1), gram[:, self.pairs[0], self.pairs[1]]], dim=-1)
        s = self.node_encoder(torch.cat([chem, invariants], dim=-1))
        v = self.vector_encoder(vel.transpose(1, 2)).transpose(1, 2)
        return s, v

    def forward(self, batch: BeadBatch, chem: torch.Tensor | None = None) -> GaussianStep:
        """Gaussian over the next step of every bead (equivariant mean, isotropic std).

        Parameters
        ----------
        batch : BeadBatch
            Its ``pos`` holds at least ``history`` frames; the last ``history`` are used.
        chem : torch.Tensor, optional
            Precomputed :meth:`chemistry` (rollouts compute it once).

        Returns
        -------
        GaussianStep
            ``mean`` and ``std`` (N, 3) in normalised units; ``latent`` = the scalars (N, hidden_dim).
        """
        pos, chem, vel = self.history_inputs(batch, chem)
        s, v = self.encode(chem, vel)
        edge_index, vec, edge_type = self.edges(batch.with_pos(pos))
        dist = vec.norm(dim=-1)  # vec = x_source - x_target = x_j - x_i, minimum image
        u = vec / dist.clamp_min(1e-9)[:, None]
        f = self.edge_features(vec, edge_type)
        for block in self.processor:
            s, v = block(s, v, edge_index, u, f)
        if self.coarse is not None:
            s = self.coarse(s, batch.with_pos(pos))
        out = self.decoder(s)
        mean = (out[:, :self.vector_dim, None] * v).sum(dim=1)
        std = (nn.functional.softplus(out[:, self.vector_dim:]) + self.min_std).repeat(1, 3)
        return self.gaussian(mean, std, s, batch, (edge_index, vec, edge_type))
