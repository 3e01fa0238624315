"""Hooks of the rollout loop: stability guard, streamed trajectory output, progress bar.

See :mod:`cgsim.rollout.engine` for the hook points and when they are called.

Files written per member (``OUTPUT/<system>/replica_<r>/``):

- ``beads.pdb``: topology (a copy of the initial system's), for VMD with ``rollout.dcd``;
- ``rollout.h5``: mdtraj HDF5 trajectory (nm, ps, topology inside), the primary output;
- ``rollout.dcd``: the same frames as DCD (Angstrom), if enabled;
- ``rollout.json``: the metadata sidecar (kind ``"rollout"``; checkpoint, seeds, learned dt,
  simulated time, units, guard status).

Kill safety: frames are buffered in memory and committed at every rollout checkpoint (and at
the end). A commit copies ``rollout.h5`` to a temporary file, appends the new frames, closes it
and renames it over ``rollout.h5`` (``rollout.dcd`` gets the same frames appended the same way), so a
process killed at any moment leaves complete, readable files holding every frame up to the last
checkpoint; ``resume=true`` continues from exactly there. A commit costs one copy of each file
(fast, but it grows with the file), so ``checkpoint_every`` trades kill-safety granularity
against I/O on very large outputs.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
import torch
from tqdm.auto import tqdm

from cgsim.errors import CgsimInputError
from cgsim.geometry import radius_graph
from cgsim.io.trajectory import TrajectoryWriter, box_lengths_angles
from cgsim.io_utils import atomic_path
from cgsim.metadata import SystemInfo, TrajectoryMetadata, now_iso, software_versions, write_sidecar
from cgsim.rollout.engine import (
    MAX_SPREAD,
    Proposal,
    RolloutEngine,
    RolloutHook,
    RolloutState,
    non_finite_members,
)
from cgsim.rollout.exclusion import merge_pair_tables


class StabilityGuard(RolloutHook):
    """Stop members whose bonds stretch, whose beads overlap or whose coordinates blow up.

    Parameters
    ----------
    max_bond : sequence of float
        Longest allowed bond of each member, nm (``inf`` = no bond check).
    min_distance : sequence of float
        Closest allowed approach of two beads of each member, nm (0 = no overlap check).
    pair_min_distance : sequence of (torch.Tensor, torch.Tensor) or None, optional
        Per member, ``(bead_type, limits)``: a type index per bead, shape (n_beads,), int64,
        and the closest allowed approach of each pair of types, shape (T, T), nm, symmetric.
        Given, it replaces ``min_distance`` for that member's pairs (``min_distance`` must
        then be the largest of its limits: it sets the search radius).

    Notes
    -----
    All checks are vectorised over the active batch: one norm over the bond list, one radius
    graph with the largest ``min_distance`` as cutoff (skipped when every limit is 0).
    """

    def __init__(self, max_bond: Sequence[float], min_distance: Sequence[float],
                 pair_min_distance: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.max_bond = torch.as_tensor(list(max_bond), dtype=torch.float64)
        self.min_distance = torch.as_tensor(list(min_distance), dtype=torch.float64)
        self.pairs = None if pair_min_distance is None else merge_pair_tables(pair_min_distance)

    def check(self, engine: RolloutEngine, state: RolloutState, p: Proposal) -> dict[int, str]:  # noqa: D102
        x, mob, dev = p.new_pos, p.member_of_bead, p.new_pos.device
        na = len(p.active)
        act = torch.tensor(p.active, device=dev)
        max_bond = self.max_bond.to(dev, x.dtype)[act]
        min_d = self.min_distance.to(dev, x.dtype)[act]
        bad_nf, finite = non_finite_members(x, mob, na)
        xf = torch.where(finite[:, None], x, torch.zeros_like(x))
        idx3 = mob[:, None].expand(-1, 3)
        hi = torch.full((na, 3), -torch.inf, device=dev, dtype=x.dtype).scatter_reduce(0, idx3, xf, "amax")
        lo = torch.full((na, 3), torch.inf, device=dev, dtype=x.dtype).scatter_reduce(0, idx3, xf, "amin")
        bad_nf |= ((hi - lo) > MAX_SPREAD).any(1)
        src, dst = p.batch.bead_bonds
        one = src < dst
        src, dst = src[one], dst[one]
        blen = (x[src] - x[dst]).norm(dim=1)
        over = blen > max_bond[mob[src]]
        bad_bond = (torch.zeros(na, device=dev).index_add_(0, mob[src], over.to(x.dtype)) > 0) & ~bad_nf
        bad_close = torch.zeros(na, dtype=torch.bool, device=dev)
        ok = ~(bad_nf | bad_bond) & (min_d > 0)
        # search radius: the largest limit, but not so small that the cell grid explodes
        cut = max(float(min_d[ok].max()), 0.1 * engine.model.cutoff) if bool(ok.any()) else 0.0
        close_d = close_e = close_limit = close_ratio = None
        if cut > 0:
            sel = ok[mob]
            idx = torch.nonzero(sel).flatten()
            # members already stopped above drop out: renumber the rest 0..K-1 and keep their boxes
            kept = torch.nonzero(ok).flatten()
            renum = torch.full((na,), -1, dtype=torch.long, device=dev)
            renum[kept] = torch.arange(len(kept), device=dev)
            box = p.batch.box
            if box is not None and box.dim() > 1 and box.shape[0] > 1:
                box = box[kept]
            g = radius_graph(x[idx], cut, box, renum[mob[idx]])
            d = g.vec.norm(dim=1)
            tgt_member = mob[idx][g.edge_index[1]]
            if self.pairs is None:
                limit = min_d[tgt_member]
            else:
                types, table = self.pairs
                ty = torch.cat([types[m] for m in p.active]).to(dev)[idx]
                limit = table.to(dev, x.dtype)[ty[g.edge_index[0]], ty[g.edge_index[1]]]
            hit = d < limit
            bad_close = torch.zeros(na, device=dev).index_add_(0, tgt_member, hit.to(x.dtype)) > 0
            # the worst pair of a member is reported: the smallest distance relative to its limit
            close_d, close_e, close_limit = d, idx[g.edge_index], limit
            close_ratio = torch.where(hit, d / limit, torch.full_like(d, float("inf")))
        stops: dict[int, str] = {}
        if not bool((bad_nf | bad_bond | bad_close).any()):
            return stops
        for k, m in enumerate(p.active):
            if bad_nf[k]:
                stops[m] = f"non-finite coordinates or beads spread over > {MAX_SPREAD:g} nm at step {p.step}"
            elif bad_bond[k]:
                mine = (mob[src] == k) & over
                j = int(torch.argmax(torch.where(mine, blen, torch.zeros_like(blen))))
                a, b = _local(p, k, int(src[j])), _local(p, k, int(dst[j]))
                stops[m] = (f"bond {a}-{b} stretched to {float(blen[j]):.4g} nm > limit {float(max_bond[k]):.4g} nm "
                            f"at step {p.step}")
            elif bad_close[k]:
                assert close_d is not None and close_e is not None and close_limit is not None \
                    and close_ratio is not None
                mine = mob[close_e[1]] == k
                j = int(torch.argmin(torch.where(mine, close_ratio, torch.full_like(close_ratio, float("inf")))))
                a, b = _local(p, k, int(close_e[0, j])), _local(p, k, int(close_e[1, j]))
                stops[m] = (f"beads {a} and {b} overlap at {float(close_d[j]):.4g} nm < {float(close_limit[j]):.4g} nm "
                            f"at step {p.step}")
        return stops


def _local(p: Proposal, k: int, bead: int) -> int:
    """Index within its member of global active-batch bead ``bead`` (member ``k`` of the batch)."""
    first = int(torch.nonzero(p.member_of_bead == k)[0])
    return bead - first


@dataclass
class MemberOutput:
    """Where and how one member's trajectory is written.

    Attributes
    ----------
    directory : pathlib.Path
        ``OUTPUT/<system>/replica_<r>``.
    topology : mdtraj.Topology
        Bead topology.
    source_pdb : pathlib.Path
        ``beads.pdb`` of the initial system (copied beside the trajectory).
    system : SystemInfo
        Sidecar system block of the initial trajectory.
    box : numpy.ndarray or None
        Box vectors as rows, shape (3, 3), nm, if periodic.
    extra : dict
        Member facts for the sidecar (source, seed, replica).
    """

    directory: Path
    topology: md.Topology
    source_pdb: Path
    system: SystemInfo
    box: np.ndarray | None
    extra: dict[str, Any] = field(default_factory=dict)


class TrajectoryOutput(RolloutHook):
    """Stream every ``save_every``-th frame of every member to its files (see module notes).

    Parameters
    ----------
    outputs : sequence of MemberOutput
        One per member, in member order.
    save_every : int
        Learned steps between written frames (frame 0 is the initial current frame).
    learned_dt : float
        Simulated time per learned step, in ``time_unit``.
    time_unit : str
        ``"ps"`` or ``"tau"``.
    ps_per_unit : float
        Picoseconds per ``time_unit`` (the files store ps).
    write_dcd : bool
        Also keep ``rollout.dcd`` up to date.
    provenance : dict
        Written into every sidecar (checkpoint, seed, config, ...).
    """

    def __init__(self, outputs: Sequence[MemberOutput], save_every: int, learned_dt: float, time_unit: str,
                 ps_per_unit: float = 1.0, write_dcd: bool = True, provenance: dict[str, Any] | None = None) -> None:
        self.outputs = list(outputs)
        self.save_every = int(save_every)
        self.learned_dt = float(learned_dt)
        self.time_unit = time_unit
        self.ps_per_unit = float(ps_per_unit)
        self.write_dcd = bool(write_dcd)
        self.provenance = {**(provenance or {}), "software": software_versions()}
        self._buf: list[list[tuple[np.ndarray, int]]] = [[] for _ in self.outputs]

    def h5_path(self, m: int) -> Path:
        """Path of member ``m``'s ``rollout.h5``."""
        return self.outputs[m].directory / "rollout.h5"

    def on_start(self, engine: RolloutEngine, state: RolloutState) -> None:  # noqa: D102
        for m, o in enumerate(self.outputs):
            o.directory.mkdir(parents=True, exist_ok=True)
            pdb = o.directory / "beads.pdb"
            if not pdb.is_file():
                with atomic_path(pdb) as tmp:
                    shutil.copyfile(o.source_pdb, tmp)
            self._reconcile(m, state.frames_written[m])
        if state.step == 0:
            self._collect(engine, state)

    def committed_frames(self, m: int, n_expected: int) -> int:
        """Frames in member ``m``'s ``rollout.h5`` (0 without one), checked to hold the ``n_expected``
        frames the rollout state committed, readable up to the last of them.

        Raises
        ------
        CgsimInputError
            The file is truncated, not an HDF5 trajectory, or holds fewer frames.
        """
        path = self.h5_path(m)
        if not path.is_file():
            n_file = 0
        else:
            try:
                with md.formats.HDF5TrajectoryFile(str(path), "r") as fh:
                    n_file = len(fh)
                    if 0 < n_expected <= n_file:
                        fh.seek(n_expected - 1)
                        fh.read(n_frames=1)
            except Exception as exc:  # noqa: BLE001 - pytables/HDF5 raise many types for a damaged file
                raise CgsimInputError(str(path), f"cannot be read (truncated or not an HDF5 trajectory: "
                                                 f"{type(exc).__name__}); the rollout cannot resume from it: restore "
                                                 "the file or start a new output") from None
        if n_file < n_expected:
            raise CgsimInputError(str(path), f"holds {n_file} frames but the rollout state committed {n_expected}; "
                                             "cannot resume (start a new output)")
        return n_file

    def check_resumable(self, state: RolloutState) -> None:
        """Before anything is written on ``resume=true``: every member's trajectory holds its committed frames."""
        for m in range(len(self.outputs)):
            self.committed_frames(m, state.frames_written[m])

    def _reconcile(self, m: int, n_expected: int) -> None:
        """Make the files hold exactly the ``n_expected`` committed frames (after a kill)."""
        path = self.h5_path(m)
        n_file = self.committed_frames(m, n_expected)
        if n_file > n_expected:  # killed between a frame commit and its state checkpoint
            if n_expected == 0:
                path.unlink()
            else:
                traj = md.load(str(path))[:n_expected]
                with atomic_path(path) as tmp:
                    traj.save_hdf5(str(tmp))
            if self.write_dcd:
                self._write_dcd(m)

    def _collect(self, engine: RolloutEngine, state: RolloutState) -> None:
        cur = state.pos[:, -1].detach().cpu().numpy()
        for m in state.active:
            sl = engine.member_slice(m)
            self._buf[m].append((cur[sl].astype(np.float32, copy=True), state.step))

    def on_step(self, engine: RolloutEngine, state: RolloutState) -> None:  # noqa: D102
        if state.step % self.save_every == 0:
            self._collect(engine, state)

    def flush(self, engine: RolloutEngine, state: RolloutState) -> None:  # noqa: D102
        for m, buf in enumerate(self._buf):
            if buf:
                self._append(m, buf)
                state.frames_written[m] += len(buf)
                self._buf[m] = []
            self._sidecar(m, state)

    def _append(self, m: int, buf: list[tuple[np.ndarray, int]]) -> None:
        o, path = self.outputs[m], self.h5_path(m)
        xyz = np.stack([b[0] for b in buf])
        t = np.array([b[1] for b in buf], dtype=np.float64) * self.learned_dt * self.ps_per_unit
        lengths = angles = None
        if o.box is not None:
            lengths, angles = box_lengths_angles(np.repeat(o.box[None], len(buf), axis=0))
        with atomic_path(path) as tmp:
            exists = path.is_file()
            if exists:
                shutil.copyfile(path, tmp)
            with md.formats.HDF5TrajectoryFile(str(tmp), "a" if exists else "w") as fh:
                if not exists:
                    fh.topology = o.topology
                fh.write(coordinates=xyz, time=t, cell_lengths=lengths, cell_angles=angles)
        if self.write_dcd:
            self._append_dcd(m, xyz, t, None if o.box is None else np.repeat(o.box[None], len(buf), axis=0))

    def _append_dcd(self, m: int, xyz: np.ndarray, t: np.ndarray, box: np.ndarray | None) -> None:
        """Append frames to ``rollout.dcd`` by raw frame records (O(new frames), atomic).

        DCD has no append mode in mdtraj: the new frames are written as a small DCD, its frame
        records are appended to a copy of the old file, and the header's frame counters (NSET
        at byte 8, NSTEP at byte 20) are patched. Falls back to a full rewrite from
        ``rollout.h5`` if the old file's size is not what its header says.
        """
        path = self.h5_path(m).with_suffix(".dcd")
        n_new, n_atoms = xyz.shape[0], xyz.shape[1]
        frame_bytes = 3 * (8 + 4 * n_atoms) + (56 if box is not None else 0)
        part = path.with_name(f".{path.stem}.part.dcd")
        with TrajectoryWriter(part, self.outputs[m].topology) as w:
            w.write(xyz, t, box)
        data = part.read_bytes()
        part.unlink()
        header = len(data) - n_new * frame_bytes
        if not path.is_file():
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            return
        with open(path, "rb") as fh:
            head = fh.read(24)
        if len(head) < 24:  # not even a header: rewrite it from rollout.h5
            self._write_dcd(m)
            return
        n_old, nsavc, nstep = (int(np.frombuffer(head, dtype="<i4", count=1, offset=k)[0]) for k in (8, 16, 20))
        if path.stat().st_size != header + n_old * frame_bytes:
            self._write_dcd(m)
            return
        with atomic_path(path) as tmp:
            shutil.copyfile(path, tmp)
            with open(tmp, "r+b") as fh:
                fh.seek(0, 2)
                fh.write(data[header:])
                fh.seek(8)
                fh.write(np.int32(n_old + n_new).tobytes())
                fh.seek(20)
                fh.write(np.int32(nstep + n_new * nsavc).tobytes())

    def _write_dcd(self, m: int) -> None:
        src = self.h5_path(m)
        dst = src.with_suffix(".dcd")
        if not src.is_file():
            dst.unlink(missing_ok=True)
            return
        with TrajectoryWriter(dst, self.outputs[m].topology) as w:
            for chunk in md.iterload(str(src), chunk=1000):
                w.write(chunk.xyz, chunk.time, chunk.unitcell_vectors)

    def _sidecar(self, m: int, state: RolloutState, finished: bool = False) -> None:
        o = self.outputs[m]
        stopped = state.stop_step[m] >= 0
        status = state.status(m) if stopped else ("finished" if finished else "running")
        last = (state.stop_step[m] - 1) if stopped else state.step
        extra = {**o.extra, "learned_dt": self.learned_dt, "time_unit": self.time_unit,
                 "steps_done": last, "simulated_time": last * self.learned_dt,
                 "status": status, "stop_step": state.stop_step[m] if stopped else None,
                 "stop_reason": state.stop_reason[m] or None, "redraws": state.redraws[m], "also_written": ["rollout.dcd"] if self.write_dcd else []}
        meta = TrajectoryMetadata(kind="rollout", trajectory="rollout.h5", topology="beads.pdb", system=replace(o.system),
                                  save_interval=self.learned_dt * self.save_every, n_frames=state.frames_written[m],
                                  start_time=0.0, coordinates="unwrapped",
                                  provenance={**self.provenance, "updated": now_iso()},
                                  extra=extra)
        write_sidecar(meta, self.h5_path(m))

    def on_end(self, engine: RolloutEngine, state: RolloutState) -> None:  # noqa: D102
        done = engine.target_steps is not None and state.step >= engine.target_steps
        for m in range(len(self.outputs)):
            if state.stop_step[m] < 0:
                self._sidecar(m, state, finished=done)


class ProgressBar(RolloutHook):
    """A tqdm bar over learned steps showing simulated time per wall second.

    Parameters
    ----------
    total : int
        Total learned steps of the rollout.
    learned_dt : float
        Simulated time per step, in ``time_unit``.
    time_unit : str
        ``"ps"`` or ``"tau"``.
    enabled : bool
        Show the bar (on stderr).
    """

    def __init__(self, total: int, learned_dt: float, time_unit: str, enabled: bool = True) -> None:
        self.total, self.learned_dt, self.time_unit, self.enabled = int(total), float(learned_dt), time_unit, enabled
        self._bar: Any = None

    def on_start(self, engine: RolloutEngine, state: RolloutState) -> None:  # noqa: D102
        self._bar = tqdm(total=self.total, initial=state.step, desc="rollout", unit="step", disable=not self.enabled,
                         dynamic_ncols=True, mininterval=1.0)
        self._t0, self._s0 = time.perf_counter(), state.step

    def on_step(self, engine: RolloutEngine, state: RolloutState) -> None:  # noqa: D102
        self._bar.update(1)
        wall = time.perf_counter() - self._t0
        if self.enabled and wall > 0:
            rate = (state.step - self._s0) * self.learned_dt / wall
            self._bar.set_postfix_str(f"{rate:.4g} {self.time_unit}/s, {len(state.active)} active", refresh=False)

    def on_end(self, engine: RolloutEngine, state: RolloutState) -> None:  # noqa: D102
        self._bar.close()
