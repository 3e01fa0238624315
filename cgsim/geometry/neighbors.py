"""Radius graphs in O(N) with a cell list, periodic (minimum image) or not, batched.

PyG's ``radius_graph`` knows no periodic boxes, and torch-cluster has no wheels here, so
cgsim carries its own search. It is pure torch, so it runs on whatever device the positions
are on.

Algorithm (per system of a batch):

1. cell grid: ``n_d = floor(L_d / cutoff)`` cells along each axis d (at least 1), so a cell is
   at least ``cutoff`` wide and every neighbour within the cutoff lies in one of the 27 cells
   around a particle's own; in a periodic box, offsets that wrap onto the same cell (n_d < 3)
   are counted once;
2. particles are sorted by (system, cell); each cell's slice of the sorted list is found with
   ``searchsorted``;
3. for each particle and each of its (up to) 27 neighbour cells, all particles of that cell
   are candidates; candidates within the cutoff (minimum-image distance in a periodic box)
   become edges. Work and memory are O(N * occupancy), processed in chunks of particles.

Edges follow PyG's ``source_to_target`` convention: ``edge_index[0]`` is the neighbour j
(source), ``edge_index[1]`` the centre i (target); ``vec = x_j - x_i`` (minimum image).
Both directions of every pair are present, self-pairs are not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from cgsim.errors import CgsimInputError, NonFinitePositions

__all__ = ["RadiusGraph", "radius_graph", "brute_force_radius_graph", "check_orthorhombic"]

_OFFSETS = torch.tensor([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], dtype=torch.long)


@dataclass
class RadiusGraph:
    """Edges of a radius graph.

    Attributes
    ----------
    edge_index : torch.Tensor
        Shape (2, n_edges), int64: ``[source j, target i]``.
    vec : torch.Tensor
        Shape (n_edges, 3), dtype of the positions: ``x_j - x_i``, minimum image if periodic (nm).
    dist : torch.Tensor
        Shape (n_edges,): ``|vec|`` (nm).
    """

    edge_index: torch.Tensor
    vec: torch.Tensor
    dist: torch.Tensor

    @property
    def n_edges(self) -> int:
        """Number of (directed) edges."""
        return int(self.edge_index.shape[1])


def check_orthorhombic(box: torch.Tensor, where: str = "box") -> torch.Tensor:
    """Return box lengths (B, 3) from lengths (3,) or (B, 3), or box vectors (B, 3, 3).

    A 2-D tensor is always read as lengths of B systems; give one system's box vectors as
    shape (1, 3, 3).

    Raises
    ------
    CgsimInputError
        If the box vectors are not orthorhombic (off-diagonal elements) or not positive.
    """
    box = torch.as_tensor(box)
    if box.dim() == 3 and box.shape[-2:] == (3, 3):
        vecs = box.reshape(-1, 3, 3)
        off = vecs - torch.diag_embed(torch.diagonal(vecs, dim1=-2, dim2=-1))
        if torch.any(off.abs() > 1e-6 * vecs.abs().amax()):
            raise CgsimInputError(where, "triclinic box; the learned dynamics support orthorhombic boxes only")
        lengths = torch.diagonal(vecs, dim1=-2, dim2=-1)
    else:
        lengths = box.reshape(-1, 3)
    if not torch.all(torch.isfinite(lengths)) or torch.any(lengths <= 0):
        raise CgsimInputError(where, "box lengths must be positive and finite")
    return lengths


def _wrap(pos: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return pos - lengths * torch.floor(pos / lengths)


def radius_graph(
    pos: torch.Tensor,
    cutoff: float,
    box: torch.Tensor | None = None,
    batch: torch.Tensor | None = None,
    max_candidates: int = 4_000_000,
    method: str = "auto",
) -> RadiusGraph:
    """All pairs closer than ``cutoff``, by a cell list (or scipy's KD-tree on the CPU).

    Parameters
    ----------
    pos : torch.Tensor
        Positions, shape (N, 3), nm. Wrapped or unwrapped: in a periodic box the result is
        the same.
    cutoff : float
        Cutoff radius, nm (pairs with distance < cutoff are edges).
    box : torch.Tensor, optional
        Orthorhombic box of each system: lengths (3,) or (B, 3), or box vectors (B, 3, 3),
        nm. ``None``: not periodic (implicit solvent).
    batch : torch.Tensor, optional
        System index of each particle, shape (N,), int64, sorted or not; values 0..B-1.
        Particles of different systems are never connected.
    max_candidates : int
        Candidate pairs examined at once (bounds memory; not the result).
    method : {"auto", "cells", "kdtree"}
        ``cells``: the torch cell list (any device). ``kdtree``: scipy's ``cKDTree`` (periodic
        via ``boxsize``), one tree per system, positions copied to the CPU; ~10x faster there
        (BENCHMARKS.md). ``auto``: ``kdtree`` for CPU tensors, else ``cells``. Both give the
        same edges in the same order.

    Returns
    -------
    RadiusGraph
        Edges sorted by (target, source).

    Raises
    ------
    CgsimInputError
        If the cutoff is not positive, the positions are not finite, the box is triclinic,
        or the cutoff is not below half of a box length (minimum image would be ambiguous).
    """
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise CgsimInputError("pos", f"expected positions of shape (N, 3), got {tuple(pos.shape)}")
    if not cutoff > 0:
        raise CgsimInputError("cutoff", f"expected a positive cutoff, got {cutoff}")
    if not torch.all(torch.isfinite(pos)):
        raise NonFinitePositions("pos", "positions contain NaN or infinity")
    device, n = pos.device, pos.shape[0]
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=device)
    batch = batch.to(device=device, dtype=torch.long)
    n_sys = int(batch.max().item()) + 1 if n else 1
    lengths, x, origin, extent = _frame(pos, cutoff, box, batch, n_sys)
    if method not in ("auto", "cells", "kdtree"):
        raise CgsimInputError("method", f"expected 'auto', 'cells' or 'kdtree', got {method!r}")
    if method == "kdtree" or (method == "auto" and device.type == "cpu"):
        return _kdtree_graph(pos, x, cutoff, lengths, batch, n_sys)
    return _cell_list_graph(pos, x, cutoff, lengths, batch, n_sys, origin, extent, max_candidates)


def _frame(pos: torch.Tensor, cutoff: float, box: torch.Tensor | None, batch: torch.Tensor,
           n_sys: int) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Box lengths per system (None: not periodic), positions (wrapped if periodic), and the
    origin and extent (B, 3) of each system's cell grid."""
    device, periodic = pos.device, box is not None
    if periodic:
        lengths = check_orthorhombic(box).to(device=device, dtype=pos.dtype)
        if lengths.shape[0] == 1 and n_sys > 1:
            lengths = lengths.expand(n_sys, 3)
        if lengths.shape[0] != n_sys:
            raise CgsimInputError("box", f"expected one box per system ({n_sys}), got {lengths.shape[0]}")
        if torch.any(lengths < 2.0 * cutoff):
            raise CgsimInputError("cutoff", f"cutoff {cutoff} nm is not below half the smallest box length "
                                            f"{lengths.min().item():.4g} nm; minimum image would be ambiguous")
        x = _wrap(pos, lengths[batch])
        origin = torch.zeros_like(lengths)
        extent = lengths
    else:
        lengths = None
        x = pos
        big = torch.finfo(pos.dtype).max
        origin = torch.full((n_sys, 3), big, dtype=pos.dtype, device=device).scatter_reduce(
            0, batch[:, None].expand(-1, 3), pos, reduce="amin", include_self=True)
        top = torch.full((n_sys, 3), -big, dtype=pos.dtype, device=device).scatter_reduce(
            0, batch[:, None].expand(-1, 3), pos, reduce="amax", include_self=True)
        extent = (top - origin).clamp_min(0) + 1e-6 * cutoff
    return lengths, x, origin, extent


def _distinct_offsets(offsets: torch.Tensor, ncell: torch.Tensor, periodic: bool) -> torch.Tensor:
    """Which of the 27 neighbour-cell ``offsets`` are distinct cells of each system, (B, 27) bool
    (a periodic wrap of a grid under 3 cells wide merges some of them)."""
    if not periodic:
        return torch.ones((ncell.shape[0], 27), dtype=torch.bool, device=ncell.device)
    wrapped = torch.remainder(offsets[None, :, :], ncell[:, None, :])  # (B, 27, 3)
    nc = ncell[:, None, :]
    key = (wrapped[..., 0] * nc[..., 1] + wrapped[..., 1]) * nc[..., 2] + wrapped[..., 2]
    keep = torch.ones_like(key, dtype=torch.bool)
    for k in range(1, 27):
        keep[:, k] = ~(key[:, :k] == key[:, k : k + 1]).any(dim=1)
    return keep


def _cell_list_graph(pos: torch.Tensor, x: torch.Tensor, cutoff: float, lengths: torch.Tensor | None,
                     batch: torch.Tensor, n_sys: int, origin: torch.Tensor, extent: torch.Tensor,
                     max_candidates: int) -> RadiusGraph:
    """:func:`radius_graph` by a torch cell list (any device; ``x``: wrapped if periodic)."""
    device, n, periodic = pos.device, pos.shape[0], lengths is not None
    ncell = torch.clamp(torch.floor(extent / cutoff), min=1).long()  # (B, 3)
    if not periodic:  # bound the grid of a sparse, spread-out system: at most ~N cells per system
        counts = torch.bincount(batch, minlength=n_sys).clamp_min(1)
        total = ncell.prod(dim=1)
        scale = torch.where(total > 8 * counts, (total / (8 * counts)).pow(1 / 3), torch.ones_like(counts, dtype=pos.dtype))
        ncell = torch.clamp(torch.floor(ncell / scale[:, None]), min=1).long()
    cell_width = extent / ncell
    cell3 = torch.floor((x - origin[batch]) / cell_width[batch]).long()
    cell3 = torch.minimum(torch.maximum(cell3, torch.zeros_like(cell3)), ncell[batch] - 1)
    sys_cells = ncell.prod(dim=1)
    sys_start = torch.cumsum(sys_cells, 0) - sys_cells  # first global cell id of each system

    def linear(c3: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        nc = ncell[b]
        return sys_start[b] + (c3[:, 0] * nc[:, 1] + c3[:, 1]) * nc[:, 2] + c3[:, 2]

    cell_id = linear(cell3, batch)
    order = torch.argsort(cell_id, stable=True)
    sorted_ids = cell_id[order]
    n_total_cells = int(sys_cells.sum().item())
    cell_begin = torch.searchsorted(sorted_ids, torch.arange(n_total_cells, device=device))
    cell_end = torch.searchsorted(sorted_ids, torch.arange(n_total_cells, device=device), right=True)

    offsets = _OFFSETS.to(device)
    keep = _distinct_offsets(offsets, ncell, periodic)

    occupancy = max(1.0, n / max(1, n_total_cells))
    chunk = max(1, int(max_candidates / (27 * occupancy * 2)))
    src_all, dst_all, vec_all = [], [], []
    for start in range(0, n, chunk):
        i = torch.arange(start, min(n, start + chunk), device=device)
        bi = batch[i]
        nb3 = cell3[i][:, None, :] + offsets[None, :, :]  # (m, 27, 3)
        valid = keep[bi]
        if periodic:
            nb3 = torch.remainder(nb3, ncell[bi][:, None, :])
        else:
            valid = valid & torch.all((nb3 >= 0) & (nb3 < ncell[bi][:, None, :]), dim=-1)
        ii = i[:, None].expand(-1, 27)[valid]
        nb_id = linear(nb3[valid], bi[:, None].expand(-1, 27)[valid])
        beg, cnt = cell_begin[nb_id], cell_end[nb_id] - cell_begin[nb_id]
        centre = torch.repeat_interleave(ii, cnt)
        # positions within each cell's slice: global index minus the running start of its group
        group_start = torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
        slot = torch.arange(int(cnt.sum().item()), device=device) - group_start + torch.repeat_interleave(beg, cnt)
        nbr = order[slot]
        d = x[nbr] - x[centre]
        if periodic:
            lb = lengths[batch[centre]]
            d = d - lb * torch.round(d / lb)
        mask = (nbr != centre) & ((d * d).sum(-1) < cutoff * cutoff)
        src_all.append(nbr[mask])
        dst_all.append(centre[mask])
        vec_all.append(d[mask])
    src = torch.cat(src_all) if src_all else torch.zeros(0, dtype=torch.long, device=device)
    dst = torch.cat(dst_all) if dst_all else torch.zeros(0, dtype=torch.long, device=device)
    vec = torch.cat(vec_all) if vec_all else torch.zeros((0, 3), dtype=pos.dtype, device=device)
    perm = torch.argsort(dst * max(n, 1) + src)
    src, dst, vec = src[perm], dst[perm], vec[perm]
    return RadiusGraph(torch.stack([src, dst]), vec, vec.norm(dim=-1))


def _kdtree_graph(pos: torch.Tensor, x: torch.Tensor, cutoff: float, lengths: torch.Tensor | None,
                  batch: torch.Tensor, n_sys: int) -> RadiusGraph:
    """:func:`radius_graph` by scipy's cKDTree, one tree per system (``x``: wrapped if periodic)."""
    xs = x.detach().to("cpu", torch.float64).numpy()
    bs = batch.detach().cpu().numpy()
    order = np.argsort(bs, kind="stable")
    bounds = np.searchsorted(bs[order], np.arange(n_sys + 1))
    src_all, dst_all = [], []
    for b in range(n_sys):
        idx = order[bounds[b]:bounds[b + 1]]
        if len(idx) < 2:
            continue
        pts = xs[idx]
        if lengths is not None:
            box = lengths[b].detach().to("cpu", torch.float64).numpy()
            pts = np.where(pts >= box, 0.0, pts)  # rounding can put a wrapped coordinate at L
            tree = cKDTree(pts, boxsize=box)
        else:
            tree = cKDTree(pts)
        pairs = tree.query_pairs(cutoff, output_type="ndarray")
        src_all += [idx[pairs[:, 1]], idx[pairs[:, 0]]]
        dst_all += [idx[pairs[:, 0]], idx[pairs[:, 1]]]
    device = pos.device
    src = torch.from_numpy(np.concatenate(src_all) if src_all else np.zeros(0, np.int64)).to(device)
    dst = torch.from_numpy(np.concatenate(dst_all) if dst_all else np.zeros(0, np.int64)).to(device)
    vec = x[src] - x[dst]
    if lengths is not None:
        lb = lengths[batch[dst]]
        vec = vec - lb * torch.round(vec / lb)
    keep = (vec * vec).sum(-1) < cutoff * cutoff  # query_pairs includes distance == cutoff
    src, dst, vec = src[keep], dst[keep], vec[keep]
    perm = torch.argsort(dst * max(pos.shape[0], 1) + src)
    src, dst, vec = src[perm], dst[perm], vec[perm]
    return RadiusGraph(torch.stack([src, dst]), vec, vec.norm(dim=-1))


def brute_force_radius_graph(
    pos: torch.Tensor, cutoff: float, box: torch.Tensor | None = None, batch: torch.Tensor | None = None
) -> RadiusGraph:
    """O(N^2) reference of :func:`radius_graph` (same conventions); for tests and small N."""
    n = pos.shape[0]
    batch = torch.zeros(n, dtype=torch.long) if batch is None else batch.long()
    d = pos[None, :, :] - pos[:, None, :]  # d[i, j] = x_j - x_i
    if box is not None:
        lengths = check_orthorhombic(box).to(pos.dtype)
        lengths = lengths.expand(int(batch.max()) + 1, 3) if lengths.shape[0] == 1 else lengths
        lb = lengths[batch][:, None, :]
        d = d - lb * torch.round(d / lb)
    same = batch[:, None] == batch[None, :]
    mask = same & ((d * d).sum(-1) < cutoff * cutoff) & ~torch.eye(n, dtype=torch.bool)
    dst, src = torch.nonzero(mask, as_tuple=True)
    vec = d[dst, src]
    return RadiusGraph(torch.stack([src, dst]), vec, vec.norm(dim=-1))
