"""Hard-core pair exclusion: push apart beads that a sampled step brought too close.

A learned step is a draw from the model's conditional distribution; nothing in it forbids two
beads from landing closer than they ever come in MD. For most pairs that never happens, but a
model that has never seen two Li+ closer than ~0.6 nm has not learned that they repel, and
pairs drift into each other over hundreds of steps (BENCHMARKS.md, the electrolyte fidelity
sections). The stability guard can only reject such a step and draw it again.

:class:`PairExclusion` instead corrects the proposal before the guard sees it, by the
overlap-removal move of potential-free hard-sphere Brownian dynamics (Heyes & Melrose,
J. Non-Newtonian Fluid Mech. 46, 1 (1993)): each pair of beads closer than its exclusion
distance ``r_ex`` is moved apart along the line joining them, each bead by half the overlap
``r_ex - r``, so the pair's midpoint stays put (a member's centroid is unchanged); because one
move can create a new overlap, the sweep repeats up to ``iterations`` times. The exclusion
distance of a pair of bead types is a factor (< 1) times the closest approach of that pair in
the frames the rollout starts from (see ``cgsim.rollout.command.closest_by_type_pair``), so
pairs that MD brings together are never touched, and the correction is zero for any step that
stays inside what MD shows.

This is a constraint, not a force: it changes only steps that would otherwise leave the
support of the reference data, and every corrected pair is counted (``summary.json``:
``exclusion_pairs`` per member), so a rollout that leans on it says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cgsim.geometry import radius_graph
from cgsim.rollout.engine import Proposal, RolloutEngine, RolloutHook, RolloutState

#: key of the per-member count of corrected pairs in ``RolloutState.extra``
STATE_KEY = "exclusion_pairs"


def merge_pair_tables(tables: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One block-diagonal table of per-type-pair distances for many members.

    Parameters
    ----------
    tables : sequence of (torch.Tensor, torch.Tensor)
        Per member, ``(bead_type, limits)``: a type index per bead, shape (n_beads,), int64,
        and a symmetric table over its types, shape (T_m, T_m), nm.

    Returns
    -------
    types : list of torch.Tensor
        Per member, its beads' type indices offset into the merged table, (n_beads,), int64.
    table : torch.Tensor
        Merged table, shape (sum T_m, sum T_m), float64 (zero between members' types).
    """
    offsets = np.cumsum([0] + [int(lim.shape[0]) for _, lim in tables])
    n_types = int(offsets[-1])
    table = torch.zeros(n_types, n_types, dtype=torch.float64)
    types = []
    for (ty, lim), o in zip(tables, offsets[:-1], strict=True):
        k = int(lim.shape[0])
        table[o:o + k, o:o + k] = lim.to(torch.float64)
        types.append(ty.long() + int(o))
    return types, table


def exclusion_table(closest: np.ndarray, factor: float) -> np.ndarray:
    """Exclusion distance of each pair of types: ``factor`` x its closest approach, nm.

    Parameters
    ----------
    closest : numpy.ndarray
        Symmetric (T, T) closest approaches, nm; ``inf`` where a pair never came within the
        scan's cutoff (such pairs get no exclusion: 0).
    factor : float
        Fraction of the closest approach, in (0, 1].

    Returns
    -------
    numpy.ndarray
        Symmetric (T, T) exclusion distances, nm.
    """
    if not 0.0 < factor <= 1.0:
        raise ValueError(f"factor: expected a number in (0, 1], got {factor}")
    return np.where(np.isfinite(closest), factor * closest, 0.0)


def remove_overlaps(x: torch.Tensor, bead_type: torch.Tensor, table: torch.Tensor, box: torch.Tensor | None,
                    system: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move apart every pair of beads closer than its exclusion distance (half the overlap each).

    Parameters
    ----------
    x : torch.Tensor
        Positions, shape (N, 3), nm, finite.
    bead_type : torch.Tensor
        Row of ``table`` of each bead, shape (N,), int64.
    table : torch.Tensor
        Exclusion distance of each pair of types, shape (T, T), nm, symmetric (0 = none).
    box : torch.Tensor or None
        Orthorhombic box lengths of each system, (3,) or (B, 3), nm; ``None``: not periodic.
    system : torch.Tensor
        System of each bead, shape (N,), int64, values 0..B-1 (pairs never cross systems).
    iterations : int
        Sweeps at most (each one radius graph); stops early when no pair overlaps.

    Returns
    -------
    x : torch.Tensor
        Corrected positions, shape (N, 3), nm (a new tensor; ``x`` is not modified).
    pairs : torch.Tensor
        Overlapping pairs each bead took part in at the first sweep, shape (N,), int64.
    """
    table = table.to(x.device, x.dtype)
    cut = float(table.max()) if table.numel() else 0.0
    pairs = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    if cut <= 0 or iterations <= 0:
        return x, pairs
    x = x.clone()
    for sweep in range(int(iterations)):
        g = radius_graph(x, cut, box, system)
        if not g.n_edges:
            break
        src, tgt = g.edge_index
        limit = table[bead_type[src], bead_type[tgt]]
        over = (g.dist < limit) & (g.dist > 0)
        if not bool(over.any()):
            break
        if sweep == 0:
            pairs.index_add_(0, tgt[over], torch.ones_like(tgt[over]))
        # edges come in both directions: each bead of a pair takes half the overlap, away from the other
        d = g.dist[over][:, None]
        push = -0.5 * (limit[over][:, None] - d) * g.vec[over] / d
        x.index_add_(0, tgt[over], push)
    return x, pairs


class PairExclusion(RolloutHook):
    """Rollout hook that removes bead overlaps from each sampled step before it is checked.

    Parameters
    ----------
    pair_distance : sequence of (torch.Tensor, torch.Tensor)
        Per member, ``(bead_type, table)``: a type index per bead, shape (n_beads,), int64, and
        the exclusion distance of each pair of its types, shape (T, T), nm (0 = none); see
        :func:`exclusion_table`.
    iterations : int
        Overlap-removal sweeps per step at most (>= 1).

    Notes
    -----
    The count of corrected pairs per member lives in ``state.extra["exclusion_pairs"]``, so it
    survives a checkpoint and resume; draws that the guard then rejects are counted too.
    """

    def __init__(self, pair_distance: Sequence[tuple[torch.Tensor, torch.Tensor]], iterations: int = 10) -> None:
        if int(iterations) < 1:
            raise ValueError(f"iterations: expected an integer >= 1, got {iterations}")
        self.types, self.table = merge_pair_tables(pair_distance)
        self.iterations = int(iterations)

    def on_start(self, engine: RolloutEngine, state: RolloutState) -> None:  # noqa: D102
        counts = state.extra.get(STATE_KEY)
        if counts is None or len(counts) != len(engine.members):
            state.extra[STATE_KEY] = [0] * len(engine.members)

    def correct(self, engine: RolloutEngine, state: RolloutState, p: Proposal) -> None:  # noqa: D102
        x = p.new_pos
        if not bool(torch.isfinite(x).all()):
            return  # the guard / the engine stops such members; nothing sensible to correct
        ty = torch.cat([self.types[m] for m in p.active]).to(x.device)
        new, pairs = remove_overlaps(x, ty, self.table, p.batch.box, p.member_of_bead, self.iterations)
        p.new_pos = new
        if bool(pairs.any()):
            per_member = torch.zeros(len(p.active), dtype=torch.long, device=x.device).index_add_(
                0, p.member_of_bead, pairs)
            counts = state.extra[STATE_KEY]  # set up by on_start
            for k, m in enumerate(p.active):
                counts[m] += int(per_member[k]) // 2  # each pair was counted at both of its beads
