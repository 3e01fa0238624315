"""The bead-level graph every network of the model reads: radius edges + bond edges, featurised.

One function builds the edges (so the dynamics network and the refinement network see the same
graph for the same positions) and one module turns them into edge features. The molecules of
the bond graph (:func:`molecule_index`) and per-topology labels of beads computed once for a
rollout (:class:`TopologyCache`) serve the coarse level, collective noise and the refiner.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import nn

from cgsim.geometry import radius_graph
from cgsim.geometry.pbc import minimum_image
from cgsim.model.batch import BeadBatch

V = TypeVar("V")

#: edge types: 0 = within the cutoff (radius graph), 1 = coarse-grained bond
RADIUS_EDGE, BOND_EDGE = 0, 1


def bead_edges(x: torch.Tensor, batch: torch.Tensor, box: torch.Tensor | None, bead_bonds: torch.Tensor,
               cutoff: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Radius edges + bond edges of one frame of a batch of systems.

    Parameters
    ----------
    x : torch.Tensor
        Bead positions, shape (N, 3), nm (unwrapped is fine: distances are minimum image).
    batch : torch.Tensor
        System of each bead, shape (N,), int64.
    box : torch.Tensor or None
        Orthorhombic box lengths per system, shape (B, 3), nm; ``None`` if not periodic.
    bead_bonds : torch.Tensor
        Bonds, shape (2, Eb), int64, global indices, both directions.
    cutoff : float
        Radius-graph cutoff, nm.

    Returns
    -------
    edge_index : torch.Tensor
        Shape (2, E), int64, ``[source, target]`` (radius edges first, then bonds).
    vec : torch.Tensor
        ``x_source - x_target``, minimum image, shape (E, 3), nm.
    edge_type : torch.Tensor
        :data:`RADIUS_EDGE` or :data:`BOND_EDGE`, shape (E,), int64.
    """
    g = radius_graph(x, cutoff, box, batch)
    src, dst = bead_bonds
    bvec = x[src] - x[dst]
    if box is not None:
        bvec = minimum_image(bvec, box[batch[dst]])
    edge_index = torch.cat([g.edge_index, bead_bonds], dim=1)
    vec = torch.cat([g.vec, bvec])
    edge_type = torch.cat([torch.full((g.n_edges,), RADIUS_EDGE, dtype=torch.long, device=x.device),
                           torch.full((src.shape[0],), BOND_EDGE, dtype=torch.long, device=x.device)])
    return edge_index, vec, edge_type


def molecule_index(n_beads: int, bonds: np.ndarray) -> np.ndarray:
    """Molecule of every bead: connected components of the bead-bond graph.

    Parameters
    ----------
    n_beads : int
        Number of beads N.
    bonds : numpy.ndarray
        Bead bonds, shape (2, E), int (either or both directions).

    Returns
    -------
    numpy.ndarray
        Molecule index per bead, shape (N,), int64, numbered in order of each molecule's first bead.
    """
    bonds = np.asarray(bonds, dtype=np.int64).reshape(2, -1)
    adj = coo_matrix((np.ones(bonds.shape[1]), (bonds[0], bonds[1])), shape=(n_beads, n_beads))
    _, comp = connected_components(adj, directed=False)
    _, first = np.unique(comp, return_index=True)
    renumber = np.empty_like(first)
    renumber[np.argsort(first, kind="stable")] = np.arange(first.size)
    return renumber[comp].astype(np.int64)


def topology_key(batch: BeadBatch) -> tuple[tuple, np.ndarray]:
    """A key for the batch's topology (bead count and a digest of the bond tensor's bytes, dtype,
    shape and device: never its address) and the bonds on the host, (2, E)."""
    bonds = batch.bead_bonds
    host = bonds.detach().cpu().numpy()
    key = (int(batch.n_beads), str(bonds.dtype), tuple(bonds.shape), str(bonds.device),
           hashlib.blake2b(host.tobytes(), digest_size=16).digest())
    return key, host


class TopologyMemo(Generic[V]):
    """A value computed once per bead-bond topology, the last ``size`` topologies kept.

    ``build(batch, bonds)`` makes the value from the batch and its bonds on the host (numpy,
    (2, E)); calling the memo with a batch returns it, recomputed only for a topology not among
    the last ``size`` seen (least recently used dropped first), keyed by :func:`topology_key`.
    """

    def __init__(self, build: Callable[[BeadBatch, np.ndarray], V], size: int = 4) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.build = build
        self.size = int(size)
        self._cache: OrderedDict[tuple, V] = OrderedDict()

    def __call__(self, batch: BeadBatch) -> V:
        """The batch's value."""
        key, host = topology_key(batch)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        out = self.build(batch, host)
        self._cache[key] = out
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return out


class TopologyCache(TopologyMemo[tuple[torch.Tensor, int]]):
    """A label per bead that depends on the bead bonds only, computed once per topology.

    ``label(n_beads, bonds)`` maps the batch's bonds (numpy, (2, E)) to labels 0..K-1 per bead
    (numpy, (N,)); calling the cache with a batch returns them as a tensor on the bonds' device
    with their number K, recomputed only for a topology not among the last ``size`` seen
    (rollouts reuse one every step; a guard's redraw batch of fewer members is a second one).

    The key is the topology itself: the number of beads and a digest of the bond tensor's
    bytes (dtype, shape and device included), never the tensor's address: an allocator hands
    a freed block to the next tensor of the same size, so a new batch's bonds can sit where the
    last batch's did with another topology. Hashing the bonds costs a copy to the host and a
    BLAKE2 digest of 16 bytes per bond, a few microseconds for hundreds of beads.

    Parameters
    ----------
    label : callable
        ``label(n_beads, bonds) -> labels`` as above.
    size : int
        Topologies kept (least recently used dropped first).
    """

    def __init__(self, label: Callable[[int, np.ndarray], np.ndarray], size: int = 4) -> None:
        super().__init__(self._labels, size)
        self.label = label

    def _labels(self, batch: BeadBatch, host: np.ndarray) -> tuple[torch.Tensor, int]:
        values = np.asarray(self.label(batch.n_beads, host), dtype=np.int64)
        return torch.from_numpy(values).to(batch.bead_bonds.device), int(values.max()) + 1 if values.size else 0


class GaussianRBF(nn.Module):
    """Gaussian radial basis of a distance on [0, cutoff]: shape (E,) -> (E, n)."""

    def __init__(self, n: int, cutoff: float) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n))
        self.width = cutoff / max(n - 1, 1)

    def forward(self, d: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.exp(-0.5 * ((d[:, None] - self.centers) / self.width) ** 2)


class EdgeFeatures(nn.Module):
    """Edge input of a bead network: ``[vec / cutoff, |vec| / cutoff, rbf(|vec|), one_hot(type)]``.

    Parameters
    ----------
    cutoff : float
        Length scale of the features, nm.
    n_rbf : int
        Radial basis functions.
    directional : bool
        Include the displacement components ``vec / cutoff``; without them the features are
        invariant under rotations (distance and type only).
    """

    def __init__(self, cutoff: float, n_rbf: int, directional: bool = True) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.directional = bool(directional)
        self.rbf = GaussianRBF(n_rbf, cutoff)
        self.dim = 3 * self.directional + 1 + n_rbf + 2

    def forward(self, vec: torch.Tensor, edge_type: torch.Tensor) -> torch.Tensor:
        """Features (E, dim) of displacements ``vec`` (E, 3) nm and types (E,)."""
        dist = vec.norm(dim=-1)
        parts = [vec / self.cutoff] if self.directional else []
        parts += [(dist / self.cutoff)[:, None], self.rbf(dist), nn.functional.one_hot(edge_type, 2).to(vec.dtype)]
        return torch.cat(parts, dim=-1)
