"""The rollout engine: many systems x replicas advanced as one batched graph, with hook points.

One *member* is one replica of one system. All active members are collated into one disjoint
:class:`~cgsim.model.batch.BeadBatch`; each learned step samples the next positions of all of
them at once. A member that a guard stops is *frozen*: its history is kept as it was before
the failing step, it leaves the batch (the batch is re-collated only when the active set
changes) and the others go on.

Randomness: every member owns a :class:`torch.Generator` seeded from ``(seed, system index,
replica index)``; the Gaussian noise of member ``m`` is drawn from its own generator in every
step. A member's noise stream therefore does not depend on which other members share the
batch (run alone, or with 63 other replicas, or after another replica was stopped, it draws
the same numbers). Positions of a member agree between a batched and a lone run to float
round-off (the batched matrix products may sum in another order); the engine is bitwise
deterministic for a fixed set of members, which is what makes ``resume`` exact.

Hook points (as schnetpack's simulator hooks), called in the order the hooks are given:

- ``on_start(engine, state)`` once before the first step (also after a resume);
- ``correct(engine, state, proposal)`` right after each step is sampled (also a redraw):
  may change ``proposal.new_pos`` (the pair exclusion of :mod:`cgsim.rollout.exclusion`);
- ``check(engine, state, proposal)`` after each step is sampled and before it is committed:
  returns ``{member: reason}`` for members to stop (the stability guard);
- ``on_step(engine, state)`` after the step is committed (``state.step`` is the new step);
- ``flush(engine, state)`` before each rollout checkpoint and at the end (writers commit
  their buffered frames here, so a checkpoint never refers to frames not on disk);
- ``on_end(engine, state)`` once after the last step.

Divergence is detected by the engine itself, whatever the hooks say: a member whose new
coordinates are not finite, spread over more than :data:`MAX_SPREAD` nm, or (with
``divergence`` limits, :class:`DivergenceLimits`) hold a bond or a molecule larger than its
limit is stopped with the status *diverged* (``state.diverged``); its reason names the step.
A step whose sampling itself fails on non-finite positions (a refiner's inner update) is
attributed to the members that fail alone.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cgsim.errors import CgsimInputError, NonFinitePositions
from cgsim.model.batch import BeadBatch, collate
from cgsim.model.prior import PriorTopology
from cgsim.model.sampling import learned_step
from cgsim.model.simulator import MultiScaleDynamics
from cgsim.rollout.state import (  # noqa: F401 - re-exported: the engine's public names
    MAX_SPREAD,
    STATE_FORMAT,
    STATE_VERSION,
    Divergence,
    DivergenceLimits,
    Member,
    RolloutState,
    load_state,
    member_seed,
    non_finite_members,
    save_state,
)


@dataclass
class Proposal:
    """The sampled next frame of the active members, before it is committed.

    Attributes
    ----------
    step : int
        The step these positions belong to (``state.step + 1``).
    active : list of int
        Members in the batch, in batch order.
    batch : BeadBatch
        The active batch (its ``pos`` is the history the step was sampled from).
    new_pos : torch.Tensor
        Sampled positions, shape (N_active, 3), nm.
    member_of_bead : torch.Tensor
        Position in ``active`` of each bead's member, shape (N_active,), int64.
    rows : torch.Tensor or None
        Rows of ``state.pos`` the batch holds (None: every member, in order).
    """

    step: int
    active: list[int]
    batch: BeadBatch
    new_pos: torch.Tensor
    member_of_bead: torch.Tensor
    rows: torch.Tensor | None = None


class RolloutHook:
    """Base class of the hooks: every method is a no-op; override the ones you need."""

    def on_start(self, engine: RolloutEngine, state: RolloutState) -> None:
        """Called once before stepping."""

    def correct(self, engine: RolloutEngine, state: RolloutState, proposal: Proposal) -> None:
        """Change ``proposal.new_pos`` in place of the sampled step (before any check)."""

    def check(self, engine: RolloutEngine, state: RolloutState, proposal: Proposal) -> dict[int, str]:
        """Members (global indices) to stop at ``proposal.step``, with the reason."""
        return {}

    def on_step(self, engine: RolloutEngine, state: RolloutState) -> None:
        """Called after each committed step."""

    def flush(self, engine: RolloutEngine, state: RolloutState) -> None:
        """Commit buffered output (before a checkpoint and at the end)."""

    def on_end(self, engine: RolloutEngine, state: RolloutState) -> None:
        """Called once after the last step."""


class RolloutEngine:
    """Advance members of a rollout with a learned simulator, calling hooks.

    Parameters
    ----------
    model : MultiScaleDynamics
        The learned simulator; it is evaluated on its own device and dtype in inference mode.
    members : sequence of Member
        The systems x replicas, in output order.
    temperature : float
        Scale of the sampled noise (0 = the deterministic mean).
    hooks : sequence of RolloutHook
        Called in order at each hook point.
    state_path : path-like, optional
        Where rollout checkpoints go (none written if ``None``).
    checkpoint_every : int
        Learned steps between rollout checkpoints (0 = only at the end).
    max_redraws : int
        A member whose sampled step fails a check (a guard hook, non-finite coordinates) is
        sampled again, with fresh noise from its own generator, up to this many times before
        it is stopped (0 = stop at the first failure). Redraws are counted per member in
        ``state.redraws``: they reject rare unphysical draws (a hard-wall constraint, not a
        force), so a rollout that needs many is not sampling the model's own distribution.
    divergence : sequence of DivergenceLimits, optional
        Per member, the bond and molecule sizes beyond which it has diverged; without them only
        non-finite or spread-out coordinates count as divergence.
    """

    def __init__(self, model: MultiScaleDynamics, members: Sequence[Member], temperature: float = 1.0,
                 hooks: Sequence[RolloutHook] = (), state_path: str | Path | None = None,
                 checkpoint_every: int = 0, max_redraws: int = 0,
                 divergence: Sequence[DivergenceLimits] | None = None) -> None:
        if not members:
            raise ValueError("a rollout needs at least one member")
        if int(max_redraws) < 0:
            raise ValueError(f"max_redraws must be >= 0, got {max_redraws}")
        self.max_redraws = int(max_redraws)
        self.model = model.eval()
        self.members = list(members)
        self.temperature = float(temperature)
        self.hooks = list(hooks)
        self.state_path = None if state_path is None else Path(state_path)
        self.checkpoint_every = int(checkpoint_every)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.history = model.history
        sizes = torch.tensor([m.n_beads for m in self.members])
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(sizes, 0)])
        self.n_beads = int(self.offsets[-1])
        self._generators = [torch.Generator(device=self.device) for _ in self.members]
        with torch.inference_mode():
            full = collate([m.graph for m in self.members],
                           [torch.zeros(m.n_beads, 1, 3) for m in self.members]).to(self.device)
            self._chem_full = model.chemistry(full)  # once: depends on topology only
        #: ``n_steps`` of the current (or last) :meth:`run` call
        self.target_steps: int | None = None
        self._active_key: tuple[int, ...] | None = None
        self._cache: tuple[BeadBatch, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._prior_topo: PriorTopology | None = None
        self._redraw_topo: PriorTopology | None = None
        #: bead classes of every member for the model's structural prior (computed once)
        self._classes: list[list[str]] | None = None
        self._divergence = self._divergence_tables(divergence)
        if model.prior is not None:
            self._classes = [model.prior.classes_of(m.graph.atom_type, m.graph.atom_to_bead, m.n_beads)
                             for m in self.members]

    def _divergence_tables(self, limits: Sequence[DivergenceLimits] | None) -> dict[str, torch.Tensor] | None:
        """Per-member limits and every bead's molecule (numbered over all members), on the device."""
        if limits is None:
            return None
        if len(limits) != len(self.members):
            raise ValueError(f"need one DivergenceLimits per member ({len(self.members)}), got {len(limits)}")
        from cgsim.model.graph import molecule_index

        mols, mol_member, n_mol = [], [], 0
        for k, m in enumerate(self.members):
            mol = molecule_index(m.n_beads, m.graph.bead_bonds.numpy())
            mols.append(torch.from_numpy(mol) + n_mol)
            count = int(mol.max()) + 1 if mol.size else 0
            mol_member.append(torch.full((count,), k, dtype=torch.long))
            n_mol += count
        mol_of_bead = torch.cat(mols)
        sizes = torch.bincount(mol_of_bead, minlength=n_mol)
        self._divergence_factor = [lim.factor for lim in limits]
        return {"max_bond": torch.tensor([lim.max_bond for lim in limits], dtype=torch.float64, device=self.device),
                "max_size": torch.tensor([lim.max_size for lim in limits], dtype=torch.float64, device=self.device),
                "mol_of_bead": mol_of_bead.to(self.device), "mol_member": torch.cat(mol_member).to(self.device),
                "multi": (sizes > 1).to(self.device), "n_mol": torch.tensor(n_mol)}

    def _diverged(self, p: Proposal, rows: torch.Tensor | None) -> dict[int, str]:
        """Members of ``p`` that diverged (non-finite, spread out, or beyond their limits), with the reason.

        Vectorised over the batch; one host synchronisation per step when nothing diverged.
        """
        x, mob = p.new_pos, p.member_of_bead
        na, dev = len(p.active), x.device
        bad, finite = non_finite_members(x, mob, na)
        xf = torch.where(finite[:, None], x, torch.zeros_like(x))
        idx3 = mob[:, None].expand(-1, 3)
        hi = torch.full((na, 3), -torch.inf, device=dev, dtype=x.dtype).scatter_reduce(0, idx3, xf, "amax")
        lo = torch.full((na, 3), torch.inf, device=dev, dtype=x.dtype).scatter_reduce(0, idx3, xf, "amin")
        spread = (hi - lo).amax(1)
        bond_ratio = size_ratio = torch.zeros(na, dtype=torch.float64, device=dev)
        tab = self._divergence
        if tab is not None:
            act = torch.tensor(p.active, device=dev)
            src, dst = p.batch.bead_bonds
            one = src < dst
            src, dst = src[one], dst[one]
            if src.numel():
                ratio = (xf[src] - xf[dst]).norm(dim=1).double() / tab["max_bond"][act][mob[src]]
                bond_ratio = bond_ratio.scatter_reduce(0, mob[src], ratio, "amax")
            n_mol = int(tab["n_mol"])
            if n_mol:
                mol = tab["mol_of_bead"][rows if rows is not None else torch.arange(x.shape[0], device=dev)]
                count = torch.zeros(n_mol, dtype=x.dtype, device=dev).index_add_(0, mol, torch.ones_like(xf[:, 0]))
                centre = torch.zeros(n_mol, 3, dtype=x.dtype, device=dev).index_add_(0, mol, xf) / count.clamp(min=1)[:, None]
                radius = (xf - centre[mol]).norm(dim=1).double()
                mol_r = torch.zeros(n_mol, dtype=torch.float64, device=dev).scatter_reduce(0, mol, radius, "amax")
                ratio = torch.where(tab["multi"], mol_r, torch.zeros_like(mol_r)) / tab["max_size"][tab["mol_member"]]
                per_member = torch.zeros(len(self.members), dtype=torch.float64, device=dev).scatter_reduce(
                    0, tab["mol_member"], ratio, "amax")
                size_ratio = per_member[act]
        flag = bad | (spread > MAX_SPREAD) | (bond_ratio > 1) | (size_ratio > 1)
        if not bool(flag.any()):
            return {}
        out: dict[int, str] = {}
        for k in torch.nonzero(flag).flatten().tolist():
            m = p.active[k]
            if bool(bad[k]):
                reason = "non-finite coordinates"
            elif float(spread[k]) > MAX_SPREAD:
                reason = f"beads spread over {float(spread[k]):.4g} nm > {MAX_SPREAD:g} nm"
            elif float(bond_ratio[k]) > 1:
                limit = float(tab["max_bond"][m])
                reason = (f"a bond stretched to {float(bond_ratio[k]) * limit:.4g} nm > {limit:.4g} nm "
                          f"({self._divergence_factor[m]:g} x the longest bond of the initial frames)")
            else:
                limit = float(tab["max_size"][m])
                reason = (f"a molecule reached {float(size_ratio[k]) * limit:.4g} nm from its centre > {limit:.4g} nm "
                          f"({self._divergence_factor[m]:g} x the largest of the initial frames)")
            out[m] = Divergence(f"diverged at step {p.step}: {reason}")
        return out

    # -- state ------------------------------------------------------------------------------
    def initial_state(self, initial: Sequence[torch.Tensor]) -> RolloutState:
        """State at step 0 from each member's position history (n_beads, >= H, 3), nm."""
        if len(initial) != len(self.members):
            raise ValueError(f"need one history per member ({len(self.members)}), got {len(initial)}")
        pos = torch.cat([p[:, -self.history:].to(self.dtype) for p in initial]).to(self.device)
        rng = [torch.Generator(device=self.device).manual_seed(m.seed).get_state() for m in self.members]
        n = len(self.members)
        return RolloutState(pos=pos, step=0, rng_states=rng, stop_step=[-1] * n, stop_reason=[""] * n,
                            frames_written=[0] * n, redraws=[0] * n)

    def member_slice(self, m: int) -> slice:
        """Bead rows of member ``m`` in ``state.pos``."""
        return slice(int(self.offsets[m]), int(self.offsets[m + 1]))

    def _active_batch(self, active: list[int], cache: bool = True) -> tuple[BeadBatch, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Collated topology of the active members (re-built only when the set changes).

        Returns the batch (positions to be filled), the rows of ``state.pos`` it holds, their
        chemistry embeddings and the batch position of each bead's member. ``cache=False``
        (a redraw's subset) builds them without replacing the cached active set.
        """
        key = tuple(active)
        if key == self._active_key:
            assert self._cache is not None
            return self._cache
        graphs = [self.members[m].graph for m in active]
        b = collate(graphs, [torch.zeros(g.n_beads, 1, 3) for g in graphs]).to(self.device)
        rows = torch.cat([torch.arange(int(self.offsets[m]), int(self.offsets[m + 1])) for m in active]).to(self.device)
        built = (b, rows, self._chem_full[rows], b.batch)
        topo = self._topology(active, b)
        if cache:
            self._cache, self._active_key = built, key
            self._prior_topo = topo
        else:
            self._redraw_topo = topo
        return built

    def _topology(self, active: list[int], b: BeadBatch) -> PriorTopology | None:
        """The structural prior's pairs and tables for the collated ``active`` members."""
        if self._classes is None or self.model.prior is None:
            return None
        classes = [c for m in active for c in self._classes[m]]
        return self.model.prior.topology(classes, b.bead_bonds, b.n_beads, self.device, self.dtype)

    def _noise(self, active: list[int]) -> torch.Tensor:
        """Standard-normal noise (N_active, 3), each member's rows from its own generator.

        Per-member streams make a member's trajectory independent of which others are still
        running, so stopping one replica never changes another's frames.
        """
        return torch.cat([torch.randn((self.members[m].n_beads, 3), generator=self._generators[m],
                                      device=self.device, dtype=self.dtype) for m in active])

    # -- one step ---------------------------------------------------------------------------
    def _sample(self, state: RolloutState, active: list[int], cache: bool = True
                ) -> tuple[BeadBatch, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sampled next positions of ``active`` (no hooks): batch, rows of ``state.pos``, bead -> member, positions."""
        batch, rows, chem, member_of_bead = self._active_batch(active, cache)
        hist = state.pos[rows] if len(active) < len(self.members) else state.pos
        batch = batch.with_pos(hist)
        topo = self._prior_topo if tuple(active) == self._active_key else self._redraw_topo
        try:
            new = learned_step(self.model, batch, functools.partial(self._noise, active), self.temperature, chem, topo)
        except NonFinitePositions:  # inside the step (a refiner's update): find the members that fail alone
            new = self._step_one_by_one(state, active)
        return batch, rows, member_of_bead, new

    def _propose(self, state: RolloutState, active: list[int], cache: bool = True) -> tuple[Proposal, torch.Tensor]:
        """Sample the next frame of the members ``active``; also returns their rows in ``state.pos``."""
        batch, rows, member_of_bead, new = self._sample(state, active, cache)
        proposal = Proposal(step=state.step + 1, active=active, batch=batch, new_pos=new, member_of_bead=member_of_bead,
                            rows=rows)
        for hook in self.hooks:
            hook.correct(self, state, proposal)
        return proposal, rows

    def _step_one_by_one(self, state: RolloutState, active: list[int]) -> torch.Tensor:
        """The step of each of ``active`` sampled alone (its own noise); NaN rows for a member whose
        sampling fails on non-finite positions by itself (it is then stopped as diverged)."""
        parts = []
        for m in active:
            if len(active) == 1:
                parts.append(torch.full((self.members[m].n_beads, 3), float("nan"), device=self.device, dtype=self.dtype))
            else:
                parts.append(self._sample(state, [m], cache=False)[3])
        return torch.cat(parts)

    def _check(self, state: RolloutState, proposal: Proposal) -> dict[int, str]:
        """Members of ``proposal`` to stop, with the reason: divergence first (always, even without a
        guard hook: NaN never enters the state), then every hook's check."""
        stops: dict[int, str] = dict(self._diverged(proposal, proposal.rows))
        for hook in self.hooks:
            for m, why in hook.check(self, state, proposal).items():
                stops.setdefault(m, why)
        return stops

    def _redraw(self, state: RolloutState, proposal: Proposal, retry: list[int]) -> dict[int, str]:
        """Sample the step again for the members ``retry`` (fresh noise from their own generators).

        Members whose new draw passes the checks get their rows of ``proposal.new_pos``
        replaced; returns the members that fail again, with the reason.
        """
        sub, _ = self._propose(state, retry, cache=False)  # keep the running set's collated batch
        stops = self._check(state, sub)
        start_full, start_sub = self._starts(proposal.active), self._starts(retry)
        for m in retry:
            state.redraws[m] += 1
            if m not in stops:
                n = self.members[m].n_beads
                proposal.new_pos[start_full[m]:start_full[m] + n] = sub.new_pos[start_sub[m]:start_sub[m] + n]
        return stops

    def _starts(self, members: list[int]) -> dict[int, int]:
        """First row of each of ``members`` in a batch of exactly those members, in that order."""
        starts, row = {}, 0
        for m in members:
            starts[m] = row
            row += self.members[m].n_beads
        return starts

    # -- loop -------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, state: RolloutState, n_steps: int) -> RolloutState:
        """Advance ``state`` until ``state.step == n_steps`` (or every member is stopped).

        Parameters
        ----------
        state : RolloutState
            From :meth:`initial_state` or a loaded checkpoint; updated in place and returned.
        n_steps : int
            Total learned steps of the rollout (not steps still to do).
        """
        if n_steps <= 0:
            raise CgsimInputError("steps", f"expected a positive number of learned steps, got {n_steps}")
        self.target_steps = int(n_steps)
        for g, s in zip(self._generators, state.rng_states, strict=True):
            g.set_state(s.cpu())
        state.pos = state.pos.to(self.device, self.dtype)
        for hook in self.hooks:
            hook.on_start(self, state)
        t_last = time.perf_counter()
        while state.step < n_steps and state.active:
            active = state.active
            proposal, rows = self._propose(state, active)
            stops = self._check(state, proposal)
            for _ in range(self.max_redraws):
                if not stops:
                    break
                stops = self._redraw(state, proposal, [m for m in active if m in stops])
            hist, new, member_of_bead = proposal.batch.pos, proposal.new_pos, proposal.member_of_bead
            new_hist = torch.cat([hist[:, 1:], new[:, None]], dim=1)
            if stops:
                keep = torch.tensor([m not in stops for m in active], device=self.device)[member_of_bead]
                new_hist = torch.where(keep[:, None, None], new_hist, hist)
                for m, why in stops.items():
                    state.stop_step[m] = state.step + 1
                    state.stop_reason[m] = str(why)
                    state.diverged[m] = isinstance(why, Divergence)
            if len(active) < len(self.members):
                state.pos[rows] = new_hist
            else:
                state.pos = new_hist
            state.step += 1
            for hook in self.hooks:
                hook.on_step(self, state)
            if self.checkpoint_every and state.step % self.checkpoint_every == 0 and state.step < n_steps:
                now = time.perf_counter()
                state.wall_seconds += now - t_last
                t_last = now
                self.checkpoint(state)
        state.wall_seconds += time.perf_counter() - t_last
        self.checkpoint(state)
        for hook in self.hooks:
            hook.on_end(self, state)
        return state

    def checkpoint(self, state: RolloutState) -> None:
        """Flush every hook, then save the state (so it never refers to unwritten frames)."""
        for hook in self.hooks:
            hook.flush(self, state)
        state.rng_states = [g.get_state().cpu() for g in self._generators]
        if self.state_path is not None:
            save_state(self.state_path, state)
