"""Verlet neighbour list: a radius graph reused across calls while beads move little.

A :class:`VerletList` searches candidate pairs with :func:`~cgsim.geometry.radius_graph` at
``cutoff + skin`` and keeps them. On every call it returns the pairs of the candidate list
that are closer than ``cutoff`` at the current positions, with their current minimum-image
vectors. It rebuilds the candidate list only when a bead has moved more than ``skin / 2``
since the last build (or when the number of beads, the system of each bead, the box, the
dtype or the device changed).

Why this is exact: between builds every bead moved at most ``skin / 2``, so every pair
distance (the minimum-image one included: each image distance changes by at most
``|dx_i| + |dx_j|``) changed by at most ``skin``. A pair missing from the candidates was at
least ``cutoff + skin`` apart at the build, so it is at least ``cutoff`` apart now and is not
an edge. Kept pairs are filtered with the same arithmetic as :func:`radius_graph` (positions
wrapped into the box, difference, minimum image, ``d^2 < cutoff^2``), and the candidates come
sorted by (target, source), so the result is the same edges in the same order with the same
vectors as a fresh ``radius_graph(pos, cutoff, box, batch)`` (bitwise, for the same inputs).

Displacements are measured on the positions as given, which are expected unwrapped (no jumps
by a box length between calls; they may drift many boxes away). A wrapped trajectory in which
a bead jumps across the box just triggers a rebuild, so it stays exact, only slower.

Rows are bead identities: if the beads of the rows are exchanged while the number of beads and
the ``batch`` vector stay the same (e.g. other members of a rollout take the rows), call
:meth:`VerletList.reset`.
"""

from __future__ import annotations

import math

import torch

from cgsim.errors import CgsimInputError
from cgsim.geometry.neighbors import RadiusGraph, _wrap, check_orthorhombic, radius_graph

__all__ = ["VerletList"]


def _as_float(value: object, where: str) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CgsimInputError(where, f"expected a number in nm, got {value!r}") from None


class VerletList:
    """Radius graph with a skin, rebuilt only when some bead moved more than ``skin / 2``.

    Parameters
    ----------
    cutoff : float
        Cutoff radius, nm: the returned edges are the pairs closer than ``cutoff``.
    skin : float
        Extra radius of the candidate list, nm, >= 0. Larger: fewer rebuilds, more candidates
        to filter on each call. With a periodic box, ``cutoff + skin`` must stay below half of
        the smallest box length.
    method : {"auto", "cells", "kdtree"}
        Search method of the rebuilds (see :func:`~cgsim.geometry.radius_graph`).

    Attributes
    ----------
    n_builds : int
        Candidate-list builds so far (the first call always builds).
    n_calls : int
        Calls so far.
    n_candidates : int
        Directed pairs in the current candidate list (0 before the first build).

    Raises
    ------
    CgsimInputError
        If ``cutoff`` is not positive or ``skin`` is negative or not finite.

    Examples
    --------
    >>> nl = VerletList(cutoff=3.0, skin=0.5)
    >>> g = nl(pos, box, batch)  # doctest: +SKIP
    >>> nl.n_builds / nl.n_calls  # rebuild rate  # doctest: +SKIP
    """

    def __init__(self, cutoff: float, skin: float, method: str = "auto") -> None:
        cutoff, skin = _as_float(cutoff, "cutoff"), _as_float(skin, "skin")
        if not (math.isfinite(cutoff) and cutoff > 0):
            raise CgsimInputError("cutoff", f"expected a positive, finite cutoff in nm, got {cutoff}")
        if not (math.isfinite(skin) and skin >= 0):
            raise CgsimInputError("skin", f"expected a non-negative, finite Verlet skin in nm, got {skin}")
        if method not in ("auto", "cells", "kdtree"):
            raise CgsimInputError("method", f"expected 'auto', 'cells' or 'kdtree', got {method!r}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.method = method
        self.n_builds = 0
        self.n_calls = 0
        self._ref_pos: torch.Tensor | None = None  # (N, 3) positions at the last build
        self._batch: torch.Tensor | None = None  # (N,) batch vector of the last build
        self._box: torch.Tensor | None = None  # (B, 3) box lengths of the last build, or None
        self._pairs: torch.Tensor | None = None  # (2, E_candidates) [source, target]
        self._src: torch.Tensor | None = None  # (E_candidates,) rows of _pairs, contiguous
        self._dst: torch.Tensor | None = None
        self._pair_box: torch.Tensor | None = None  # (E_candidates, 3) box lengths of each pair, or None

    @property
    def n_candidates(self) -> int:
        """Directed pairs in the current candidate list."""
        return 0 if self._pairs is None else int(self._pairs.shape[1])

    @property
    def rebuild_rate(self) -> float:
        """Builds per call (``nan`` before the first call)."""
        return self.n_builds / self.n_calls if self.n_calls else math.nan

    def reset(self) -> None:
        """Forget the candidate list: the next call rebuilds (counters are kept)."""
        self._ref_pos = self._batch = self._box = self._pairs = self._src = self._dst = self._pair_box = None

    def _lengths(self, box: torch.Tensor | None, n_sys: int, pos: torch.Tensor) -> torch.Tensor | None:
        """Box lengths (B, 3) on the device and dtype of ``pos``, as :func:`radius_graph` uses them."""
        if box is None:
            return None
        lengths = check_orthorhombic(box).to(device=pos.device, dtype=pos.dtype)
        if lengths.shape[0] == 1 and n_sys > 1:
            lengths = lengths.expand(n_sys, 3)
        if lengths.shape[0] != n_sys:
            raise CgsimInputError("box", f"expected one box per system ({n_sys}), got {lengths.shape[0]}")
        if torch.any(lengths < 2.0 * (self.cutoff + self.skin)):
            raise CgsimInputError("skin", f"cutoff + skin = {self.cutoff + self.skin:.4g} nm is not below half the "
                                          f"smallest box length {lengths.min().item():.4g} nm; use a smaller skin")
        return lengths

    def _stale(self, pos: torch.Tensor, batch: torch.Tensor, lengths: torch.Tensor | None) -> bool:
        """Whether the candidate list cannot be reused for ``pos`` (also True for non-finite positions)."""
        ref = self._ref_pos
        if ref is None or self._batch is None or self._pairs is None:
            return True
        if ref.shape != pos.shape or ref.dtype != pos.dtype or ref.device != pos.device:
            return True
        if (self._box is None) != (lengths is None):
            return True
        if lengths is not None and (self._box.shape != lengths.shape or not torch.equal(self._box, lengths)):
            return True
        if not torch.equal(self._batch, batch):
            return True
        d = pos - ref
        max_d2 = (d * d).sum(-1).max() if pos.shape[0] else torch.zeros((), dtype=pos.dtype)
        # `not <=` so that a NaN displacement also rebuilds (and radius_graph then refuses the positions)
        return not bool(max_d2 <= (0.5 * self.skin) ** 2)

    def __call__(self, pos: torch.Tensor, box: torch.Tensor | None = None,
                 batch: torch.Tensor | None = None) -> RadiusGraph:
        """Edges closer than ``cutoff`` at ``pos``: those of ``radius_graph(pos, cutoff, box, batch)``.

        Parameters
        ----------
        pos : torch.Tensor
            Positions, shape (N, 3), nm, unwrapped (see the module notes).
        box : torch.Tensor, optional
            Orthorhombic box of each system: lengths (3,) or (B, 3), or vectors (B, 3, 3), nm;
            ``None``: not periodic.
        batch : torch.Tensor, optional
            System index of each bead, shape (N,), int64, values 0..B-1.

        Returns
        -------
        RadiusGraph
            Edges sorted by (target, source), ``vec = x_source - x_target`` (minimum image), nm.

        Raises
        ------
        CgsimInputError
            On the inputs :func:`radius_graph` refuses (when a rebuild is due, e.g. non-finite
            positions), and if ``cutoff + skin`` is not below half of a box length.
        """
        if pos.dim() != 2 or pos.shape[1] != 3:
            raise CgsimInputError("pos", f"expected positions of shape (N, 3), got {tuple(pos.shape)}")
        n = pos.shape[0]
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=pos.device)
        batch = batch.to(device=pos.device, dtype=torch.long)
        if batch.shape != (n,):
            raise CgsimInputError("batch", f"expected a batch vector of shape ({n},), got {tuple(batch.shape)}")
        n_sys = int(batch.max().item()) + 1 if n else 1
        lengths = self._lengths(box, n_sys, pos)
        self.n_calls += 1
        if self._stale(pos, batch, lengths):
            self.reset()  # free the old list before the new one is searched
            cand = radius_graph(pos, self.cutoff + self.skin, lengths, batch, method=self.method)
            self._pairs = cand.edge_index.contiguous()
            self._src, self._dst = self._pairs[0].contiguous(), self._pairs[1].contiguous()
            self._pair_box = None if lengths is None else lengths[batch[self._dst]]
            self._ref_pos = pos.detach().clone()
            self._batch = batch.clone()
            self._box = None if lengths is None else lengths.clone()
            self.n_builds += 1
        assert self._pairs is not None and self._src is not None and self._dst is not None
        # radius_graph's arithmetic (wrap, difference, minimum image, d^2 < cutoff^2), so the kept
        # vectors are bitwise its vectors; index_select instead of fancy indexing only for speed
        # (in-place where autograd allows: fewer large allocations; the same values either way)
        x = pos if lengths is None else _wrap(pos, lengths[batch])
        inplace = not (torch.is_grad_enabled() and pos.requires_grad)
        vec = x.index_select(0, self._src)
        vec = vec.sub_(x.index_select(0, self._dst)) if inplace else vec - x.index_select(0, self._dst)
        if self._pair_box is not None:
            lb = self._pair_box
            vec = vec.sub_(torch.div(vec, lb).round_().mul_(lb)) if inplace else vec - lb * torch.round(vec / lb)
        keep = torch.nonzero((vec * vec).sum(-1) < self.cutoff * self.cutoff).squeeze(1)
        vec = vec.index_select(0, keep)
        return RadiusGraph(self._pairs.index_select(1, keep), vec, vec.norm(dim=-1))
