"""Excluded volume inside a bond-tree draw: each bead's innovation is redrawn until it lands clear.

A bond-tree draw (:func:`cgsim.model.tree.bent_draw`) holds bonds and angles by construction, but
two beads far apart along a chain (or in two branches of one tree) move by nearly independent
Gaussians: one learned step from true MD histories puts ~0.17 pairs per bead closer than 1.2 nm,
where MD's next frame has 0.013 (BENCHMARKS.md, session 15). A Gaussian of the step cannot
represent "these two never overlap"; a correction after the draw (the Langevin prior of
:mod:`cgsim.model.prior`) has to push whole segments through each other and does not manage it
in a few updates.

This module makes the draw itself avoid contacts, the way configurational-bias growth builds a
chain: the tree places its beads level by level from the roots, so when bead ``i`` is placed,
every bead of its tree nearer the root is already where the step puts it. Bead ``i`` proposes
its position from the model's own conditional Gaussian (its innovation given its parent's drawn
step) and accepts it with probability ``exp(-s E_i)``, ``E_i`` the structural prior's
non-bonded core energy (kT, :attr:`cgsim.model.prior.StructuralPrior.tables` ``"nb"``, fitted to
the training frames) of its pairs with the placed beads; a rejected proposal is replaced by the
next of ``tries`` fresh innovations, and a bead none of whose proposals is accepted keeps the one
with the lowest energy. Per bead this is rejection sampling of ``q_i(x) exp(-s E_i(x))`` (the
model's conditional tilted by the prior's core), the chain growth's usual sequential
approximation of the joint tilt. Beads of one level (two arms of a chain at equal distance from
its root) see each other: all pick, then the later bead of each pair that still touches picks
again with the other held (:data:`SAME_LEVEL_PASSES`).

Where trees are not recentred after they grow (``centred=false``) every placed bead stays where
it is, so pairs of different trees are checked too and the roots (ions, molecule roots) check
each other first, at level 0. In a centred draw each tree moves rigidly after it is grown, so
only pairs within a tree are checked.

A model trained for it (``model.collective.core_samples``) learns the network with the filter
in place: :func:`core_log_partition` adds each bead's ``log Z_i`` (and, with a learned ``s``,
its energy at the true step) to the Gaussian NLL, for the sampler as it runs (stopping at the
first accepted of ``tries``, so the term is bounded). No network is called; the cost is
``depth`` small gathers of ``tries`` candidates per bead and one neighbour search per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cgsim.geometry import radius_graph
from cgsim.geometry.pbc import minimum_image
from cgsim.model.prior_tables import StackedTables, _table_value

#: passes over a level with pairs inside it: all its beads pick, then (up to this many passes in
#: all) the later bead of each pair that still touches picks again with the other held
SAME_LEVEL_PASSES = 3
#: one level's pairs: (new, other, table, slot of new in the level, any partner of the same level,
#: whether the pair is of one level and new is the one to pick again when it still touches)
LevelPairs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool, torch.Tensor]
#: every table on one grid: (values (T * G,), G, first r (nm), 1 / spacing (1/nm))
DenseGrid = tuple[torch.Tensor, int, float, float]


def dense_grid(tables: StackedTables) -> DenseGrid:
    """Every table read once onto one grid (the finest spacing, from the smallest start to the
    farthest end), so that a lookup is one interpolation; below and beyond it a table keeps its
    end values (deep in a wall, or the flat 0 beyond a core). Build it once per set of tables
    (:meth:`cgsim.model.simulator.MultiScaleDynamics.core_filter` keeps it for a rollout)."""
    g = tables.u.shape[1]
    dr = float(tables.dr.min())
    r_lo = float(tables.r0.min())
    r_hi = float((tables.r0 + (g - 1) * tables.dr).max())
    n = int(math.ceil((r_hi - r_lo) / dr)) + 2
    r = r_lo + dr * torch.arange(n, dtype=tables.u.dtype, device=tables.u.device)
    n_tab = tables.u.shape[0]
    idx = torch.arange(n_tab, device=tables.u.device).repeat_interleave(n)
    dense = _table_value(tables, idx, r.repeat(n_tab)).reshape(n_tab, n)
    return dense.reshape(-1), n, r_lo, 1.0 / dr


@dataclass
class CoreFilter:
    """What one draw needs to place each tree's beads clear of each other.

    Attributes
    ----------
    x0 : torch.Tensor
        Positions the step starts from, shape (N, 3), nm (the step is added to them).
    box : torch.Tensor or None
        Box lengths per system (B, 3), nm; ``None`` = not periodic.
    batch : torch.Tensor
        System of each bead, (N,), int64.
    by_level : list
        Per level of the tree draw (0: the roots, ``k + 1``: ``tree.levels[k]``): ``None`` or ``(new, other, table, slot,
        same)``, the candidate pairs (P,) whose later-placed bead ``new`` is placed at that level,
        the bead ``other`` it is checked against (placed at an earlier or the same level), each
        pair's core table index, the slot of ``new`` in the level, and whether any partner is of
        the same level.
    tables : StackedTables
        The prior's non-bonded core tables.
    strength : float
        Exponent of the acceptance ``exp(-strength E)``.
    eps : torch.Tensor
        Standard-normal innovations of the extra proposals, shape (tries - 1, N, 3).
    uniform : torch.Tensor
        Uniform(0, 1) numbers of the acceptance tests, shape (tries, N).
    grid : DenseGrid, optional
        :func:`dense_grid` of ``tables`` (made here when not given).
    select : {"first", "weighted"}
        ``"first"``: the first proposal accepted with probability ``exp(-strength E)`` (energies
        clipped at 0: a repulsive filter). ``"weighted"``: one proposal picked with probability
        proportional to ``exp(-strength E)`` (sampling importance resampling by the Gumbel-max
        trick on the same uniforms), with signed energies, so a table may also attract.
    """

    x0: torch.Tensor
    box: torch.Tensor | None
    batch: torch.Tensor
    by_level: list[LevelPairs | None]
    tables: StackedTables
    strength: float
    eps: torch.Tensor
    uniform: torch.Tensor
    grid: DenseGrid | None = None
    select: str = "first"

    def __post_init__(self) -> None:
        if self.grid is None:
            self.grid = dense_grid(self.tables)

    @property
    def tries(self) -> int:
        return self.uniform.shape[0]

    def choose(self, level: int, idx: torch.Tensor, cand: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The accepted proposal of every bead of one level.

        Parameters
        ----------
        level : int
            0 for the roots, ``k + 1`` for ``tree.levels[k]``.
        idx : torch.Tensor
            Its beads, (n,), int64.
        cand : torch.Tensor
            Their proposed steps, (tries, n, 3), nm.
        out : torch.Tensor
            The draw so far, (N, 3), nm: every bead of earlier levels is placed; this level's
            beads hold their current choice (updated in place between passes).

        Returns
        -------
        torch.Tensor
            The chosen step of each bead, (n, 3), nm.
        """
        pairs = self.by_level[level]
        if pairs is None:
            return cand[0]
        new, other, table, a, same, recheck = pairs
        n = idx.shape[0]
        start = self.x0[new]
        weighted = self.select == "weighted"
        if not same and not weighted:  # every partner is placed: the first proposal stands where it touches nothing
            energy0 = self._energy(start + cand[:1, a], self.x0[other] + out[other], new, table, a, n, 1)
            if not bool((energy0 > 0).any()):
                return cand[0]
        uniform = self.uniform[:, idx]
        arange = torch.arange(n, device=idx.device)
        rows = torch.ones_like(new, dtype=torch.bool)  # the pairs of the beads that pick in this pass
        free = torch.ones(n, dtype=torch.bool, device=idx.device)
        for k in range(SAME_LEVEL_PASSES if same else 1):
            if k > 0:  # the later bead of each pair of this level still touching re-picks, the other stays
                r = torch.nonzero(recheck)[:, 0]
                touching = self._pair_energy(start[r] + out[new[r]], self.x0[other[r]] + out[other[r]], new[r],
                                             table[r]) > 0
                free = torch.zeros(n, dtype=torch.bool, device=idx.device)
                free[a[r[touching]]] = True
                if not bool(free.any()):
                    break
                rows = free[a]
            sel = torch.nonzero(rows)[:, 0]
            energy = self._energy(start[sel] + cand[:, a[sel]], self.x0[other[sel]] + out[other[sel]], new[sel],
                                  table[sel], a[sel], n, self.tries)
            if weighted:  # Gumbel-max: P(pick j) = exp(-s E_j) / sum_k exp(-s E_k)
                gumbel = -torch.log(-torch.log(uniform.clamp(1e-12, 1.0 - 1e-7)))
                pick = torch.argmax(gumbel - self.strength * energy, dim=0)
            else:
                accept = uniform < torch.exp(-self.strength * energy)
                first = torch.argmax(accept.to(torch.int8), dim=0)  # the first accepted proposal
                pick = torch.where(accept.any(dim=0), first, torch.argmin(energy, dim=0))
            out[idx] = torch.where(free[:, None], cand[pick, arange], out[idx])
        return out[idx]

    def _energy(self, pos: torch.Tensor, partner: torch.Tensor, new: torch.Tensor, table: torch.Tensor,
                a: torch.Tensor, n: int, tries: int) -> torch.Tensor:
        """Core energy (tries, n), kT (>= 0), of each proposal ``pos`` (tries, P, 3) of a pair's
        new bead against its partner (P, 3), summed per bead of the level (``a``: its slot)."""
        u = self._pair_energy(pos, partner, new, table)
        return torch.zeros(tries, n, dtype=pos.dtype, device=pos.device).index_add_(-1, a, u)

    def _pair_energy(self, pos: torch.Tensor, partner: torch.Tensor, new: torch.Tensor,
                     table: torch.Tensor) -> torch.Tensor:
        """Core energy (..., P), kT (>= 0), of pairs at positions ``pos`` (..., P, 3) and ``partner`` (P, 3)."""
        vec = pos - partner
        if self.box is not None:
            vec = minimum_image(vec, self.box[self.batch[new]])
        r = torch.nan_to_num(vec.norm(dim=-1), nan=0.0)  # a non-finite proposal lands in the wall: rejected
        flat, g, r0, inv_dr = self.grid
        s = ((r - r0) * inv_dr).clamp_(0.0, g - 1.0)  # below the first point: its value (a wall)
        j = s.floor().clamp_(max=g - 2)  # (g - 1 - 1e-6 rounds to g - 1 in float32)
        w = s - j
        at = table * g + j.long()
        u = flat[at] * (1 - w) + flat[at + 1] * w
        return u if self.select == "weighted" else u.clamp_min(0.0)


def core_pairs(nb_lookup: torch.Tensor, cls: torch.Tensor, exclude: torch.Tensor, n_beads: int,
               hops: torch.Tensor, root_of: torch.Tensor, x0: torch.Tensor, box: torch.Tensor | None,
               batch: torch.Tensor, radius: float, across_trees: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs a tree draw checks, each from the bead placed later.

    Candidate pairs are the beads of one tree (with ``across_trees``, of any trees: where no
    recentring moves a tree after it is grown, every bead is where the draw puts it once placed)
    closer than ``radius`` (nm) at ``x0`` that are neither bonded nor two bonds apart (``exclude``: sorted codes ``i * n_beads + j``, ``i < j``,
    of :class:`~cgsim.model.prior.PriorTopology`); ``radius`` must cover the core plus how far
    two beads can approach in one step. Each pair is checked when its later bead (more links
    from the root, ``hops``) is placed; two beads of one level check each other (the pair is
    listed from both sides).

    Parameters
    ----------
    nb_lookup, cls : torch.Tensor
        The core table of each pair of classes (C, C) and each bead's class (N,).
    exclude : torch.Tensor
        Sorted codes of the bonded and 1-3 pairs (left out).
    n_beads : int
        N.
    hops, root_of : torch.Tensor
        Each bead's links to its root (N,) and its root (N,).
    x0 : torch.Tensor
        Start positions (N, 3), nm.
    box, batch : torch.Tensor or None, torch.Tensor
        Box (B, 3) nm and system of each bead (N,).
    radius : float
        Search radius, nm.
    across_trees : bool
        Also pairs of different trees (roots check each other at level 0).

    Returns
    -------
    new, other, table : torch.Tensor
        The bead checked (P,), the bead it is checked against (P,) and the pair's table (P,).
    """
    g = radius_graph(x0, radius, box, batch)
    src, dst = g.edge_index
    keep = (src < dst) if across_trees else (src < dst) & (root_of[src] == root_of[dst])
    src, dst = src[keep], dst[keep]
    if exclude.numel() and src.numel():
        code = src * n_beads + dst
        pos = torch.searchsorted(exclude, code).clamp_max(exclude.numel() - 1)
        keep = exclude[pos] != code
        src, dst = src[keep], dst[keep]
    return ordered_pairs(torch.stack([src, dst]), nb_lookup[cls[src], cls[dst]], hops)


def core_filter(tables: StackedTables, pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], hops: torch.Tensor,
                roots: torch.Tensor, levels: tuple[torch.Tensor, ...], x0: torch.Tensor, box: torch.Tensor | None, batch: torch.Tensor, strength: float,
                eps: torch.Tensor, uniform: torch.Tensor, grid: DenseGrid | None = None,
                select: str = "first") -> CoreFilter:
    """Build the :class:`CoreFilter` of one draw from its :func:`core_pairs`.

    Parameters
    ----------
    tables : StackedTables
        The prior's core tables.
    pairs : tuple of torch.Tensor
        ``(new, other, table)`` from :func:`core_pairs`.
    hops : torch.Tensor
        Each bead's links to its root (N,): a pair is checked at level ``hops[new]``.
    roots, levels : torch.Tensor, tuple of torch.Tensor
        The roots (level 0) and the beads of each later level of the trees' draw
        (``tree.levels``, levels 1, 2, ...).
    x0, box, batch : torch.Tensor, torch.Tensor or None, torch.Tensor
        Start positions (N, 3) nm, box (B, 3) nm, system of each bead (N,).
    strength : float
        Exponent of the acceptance.
    eps, uniform : torch.Tensor
        Extra innovations (tries - 1, N, 3) and acceptance uniforms (tries, N).
    grid : DenseGrid, optional
        :func:`dense_grid` of ``tables`` (made here when not given).
    select : {"first", "weighted"}
        How a bead picks among its proposals (:class:`CoreFilter`).
    """
    new, other, table = pairs
    order_levels = (roots, *levels)  # level 0: the roots; level k: tree.levels[k - 1]
    level = hops[new]
    # each bead's slot within its level, so a pair finds its bead's proposals
    slot = torch.zeros_like(hops)
    for idx in order_levels:
        slot[idx] = torch.arange(idx.numel(), device=idx.device)
    order = torch.argsort(level, stable=True)
    new, other, table, level = new[order], other[order], table[order], level[order]
    same_level = hops[other] == hops[new]
    # a pair of one level still touching after a pass: its bead with the larger index picks again
    # (a partner of an earlier level was already where it stays when the bead first picked)
    recheck = same_level & (new > other)
    same_level = same_level.tolist()
    n = len(order_levels)
    counts = torch.bincount(level, minlength=n).tolist() if level.numel() else [0] * n
    by_level: list[LevelPairs | None] = [None] * n
    start = 0
    for k, c in enumerate(counts):
        if c:
            sl = slice(start, start + c)
            by_level[k] = (new[sl], other[sl], table[sl], slot[new[sl]], any(same_level[sl]), recheck[sl])
        start += c
    return CoreFilter(x0=x0, box=box, batch=batch, by_level=by_level, tables=tables, strength=strength,
                      eps=eps, uniform=uniform, grid=grid, select=select)


class PairCorrection(torch.nn.Module):
    """A learned pair energy ``u(r) >= 0`` (kT) per kind of pair (non-bonded, bonded, 1-3), added
    to the fitted tables in the draw's filter and trained with the filtered likelihood.

    The fitted tables only repel (their non-bonded part is a potential of mean force of the
    data, which for intra-chain pairs falls to 0 at its cutoff without a well); a learned term
    can also make a range of distances cheaper than the rest, and maximum likelihood sets it so
    that the true steps' pair energies match the filtered draws'.

    Parameters
    ----------
    bins : int
        Points of the piecewise-linear ``u`` over ``[0, r_max]`` (flat beyond).
    r_max : float
        nm.
    kinds : int
        Pair kinds (3: non-bonded, bonded, 1-3).
    """

    def __init__(self, bins: int, r_max: float, kinds: int = 3) -> None:
        super().__init__()
        if bins < 2 or r_max <= 0:
            raise ValueError(f"a pair correction needs >= 2 bins and r_max > 0 nm, got {bins}, {r_max}")
        self.r_max = float(r_max)
        self.theta = torch.nn.Parameter(torch.full((kinds, bins), -2.0))  # softplus(-2) = 0.13 kT per pair

    def forward(self, r: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        """``u`` (kT) at distances ``r`` (..., P) nm of pairs of kinds ``kind`` (P,)."""
        bins = self.theta.shape[1]
        values = torch.nn.functional.softplus(self.theta)
        s = (r * ((bins - 1) / self.r_max)).clamp(0.0, bins - 1.0)
        j = s.floor().clamp(max=bins - 2)
        w = s - j
        j = j.long()
        kind = kind.expand_as(j)
        return values[kind, j] * (1 - w) + values[kind, j + 1] * w


def core_log_partition(proposals: torch.Tensor, placed: torch.Tensor, pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                       tables: StackedTables, strength: float, box: torch.Tensor | None,
                       batch: torch.Tensor, tries: int | None = None,
                       correction: tuple[PairCorrection, torch.Tensor] | None = None) -> torch.Tensor:
    """Monte-Carlo ``sum_i log Z_i`` of the filtered draw's per-bead normalisers (training).

    With the core in the draw, bead ``i``'s density given the beads placed before it is
    ``q_i(x) exp(-strength E_i(x)) / Z_i``, ``Z_i = E_{q_i}[exp(-strength E_i)]``; the exact NLL
    of a true step is the Gaussian one plus ``strength * E_i(true)`` (no parameter in it) plus
    ``log Z_i``, estimated here from ``K`` reparameterised proposals of every bead given the
    *true* positions of the beads placed before it (differentiable in the network's outputs).

    Parameters
    ----------
    proposals : torch.Tensor
        Proposed positions (K, N, 3), nm, each bead's drawn given its parent's true step.
    placed : torch.Tensor
        True positions (N, 3), nm, in the same frame (what each bead is checked against).
    pairs : tuple of torch.Tensor
        ``(new, other, table)`` from :func:`core_pairs`.
    tables : StackedTables
        The core tables.
    strength : float
        Exponent of the acceptance.
    box, batch : torch.Tensor or None, torch.Tensor
        Box (B, 3) nm and system of each bead (N,).
    correction : (PairCorrection, torch.Tensor), optional
        A learned pair energy and the kind of each pair (P,), added to ``strength`` x the tables'.
    tries : int, optional
        The sampler's proposals per bead ``R``: it stops at the first accepted one, so the
        density of what it returns is ``q_i exp(-s E_i) (1 - (1 - Z_i)^R) / Z_i`` (the rare
        fallback when all ``R`` are rejected left out), and the term is
        ``log Z_i - log(1 - (1 - Z_i)^R)``, bounded below by ``-log R``: a network cannot win
        likelihood by sending its proposals into the core, which plain ``log Z_i`` rewards
        without limit (and which a few samples cannot even estimate). None: ``log Z_i``.

    Returns
    -------
    torch.Tensor
        Scalar, the sum over the beads that have pairs (others have ``Z_i = 1``).
    """
    new, other, table = pairs
    if new.numel() == 0:
        return proposals.new_zeros(())
    k = proposals.shape[0]
    vec = proposals[:, new] - placed[other]
    if box is not None:
        vec = minimum_image(vec, box[batch[new]])
    r = vec.norm(dim=-1)
    u = strength * _table_value(tables, table.repeat(k), r.reshape(-1)).reshape(k, -1).clamp_min(0.0)
    if correction is not None:
        u = u + correction[0](r, correction[1])
    beads, local = torch.unique(new, return_inverse=True)
    energy = proposals.new_zeros(k, beads.numel()).index_add(1, local, u)
    log_z = torch.logsumexp(-energy, dim=0) - math.log(k)
    if tries is None:
        return log_z.sum()
    # log(1 - (1 - Z)^R): log(R) + log(Z) for tiny Z (both branches finite, so is the gradient)
    z = log_z.exp().clamp(1e-6, 1.0 - 1e-6)  # float32 keeps 1 - 1e-6 below 1
    log_some = torch.where(log_z < math.log(1e-6), math.log(tries) + log_z,
                           torch.log(-torch.expm1(tries * torch.log1p(-z))))
    return (log_z - log_some).sum()


def merge_tables(parts: list[StackedTables | None], floor: list[bool]) -> tuple[StackedTables, list[int]]:
    """One :class:`StackedTables` of several (each padded to the longest grid with its edge
    value, flat), and the offset of each part's first table in it (-1 for a missing part).

    ``floor[k]`` shifts part ``k``'s tables so that their smallest value is 0 (a bonded or 1-3
    potential of mean force, as an acceptance ``exp(-s u) <= 1``; its shape is unchanged)."""
    present = [p for p in parts if p is not None]
    g = max(p.u.shape[1] for p in present)
    offsets, rows = [], []
    n = 0
    for p, shift in zip(parts, floor, strict=True):
        if p is None:
            offsets.append(-1)
            continue
        offsets.append(n)
        n += p.u.shape[0]
        pad = g - p.u.shape[1]
        u = torch.cat([p.u, p.u[:, -1:].expand(-1, pad)], dim=1) if pad else p.u
        du = torch.cat([p.du, torch.zeros_like(p.du[:, :1]).expand(-1, pad)], dim=1) if pad else p.du
        if shift:
            u = u - u.min(dim=1, keepdim=True).values
        rows.append(StackedTables(r0=p.r0, dr=p.dr, u=u, du=du, lo=p.lo, hi=p.hi, k=p.k, k_hi=p.k_hi))
    cat = {f: torch.cat([getattr(r, f) for r in rows]) for f in ("r0", "dr", "u", "du", "lo", "hi", "k", "k_hi")}
    return StackedTables(**cat), offsets


def ordered_pairs(pairs: torch.Tensor, table: torch.Tensor, hops: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs (2, E) with their tables (E,) as ``(new, other, table)``, each checked from its
    later-placed bead (a pair of one level from both sides), as :func:`core_pairs` lists them."""
    src, dst = pairs
    later = hops[src] >= hops[dst]
    new = torch.where(later, src, dst)
    other = torch.where(later, dst, src)
    tie = hops[src] == hops[dst]
    return torch.cat([new, dst[tie]]), torch.cat([other, src[tie]]), torch.cat([table, table[tie]])
