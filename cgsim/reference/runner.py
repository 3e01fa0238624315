"""Resumable, chunked OpenMM runs that write standard trajectory files.

A run has two phases: *equilibration* (nothing recorded) and *production* (frames recorded
at given times). The state lives in ``OUT/.run/``:

- ``identity.json``: what run this is (the config that determines the physics); a different
  run in the same directory is refused;
- ``progress.json``: the commit point (steps of equilibration done, frames and chunks written);
- ``state_NNNNN.xml``: the OpenMM State (positions, velocities, box) at that commit point,
  portable across platforms and machines;
- ``state_NNNNN.chk``: the OpenMM checkpoint of the same moment (``Context.createCheckpoint``),
  which also carries the random state of the integrator (and of a barostat), and the platform it
  was written on (``checkpoint_platform`` in ``progress.json``);
- ``chunks/chunk_NNNNN.xtc`` + ``.npz``: recorded frames of all particles (XTC, 1e-3 nm
  precision) with their times and per-molecule temperatures.

Each chunk and state is written to a temporary file and renamed, and only then is
``progress.json`` replaced, so a run killed at any moment resumes from the last commit
without duplicating or losing frames (files from after the last commit are deleted).

Resuming on the platform (and thread count) the checkpoint was written on loads the checkpoint,
so a killed run continues bitwise as if it had never stopped: every commit reinitialises the
running context from its own checkpoint, exactly what a resume does. That holds where the
platform is deterministic at all (Reference, CPU with ``threads=1``; OpenMM's multi-threaded CPU
platform is not, even without a kill). Resumed on another platform, or from a state written
before checkpoints were kept, the run loads the portable XML state with a reseeded integrator,
says in one line that it continues statistically only, and goes on.
When all frames exist, :func:`finalize` splits them into one trajectory per molecule
(``NAME.pdb`` + ``NAME.xtc`` + ``NAME.json`` sidecar) and removes the chunks.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
import openmm
import openmm.unit as u
from tqdm.auto import tqdm

from cgsim.errors import CgsimInputError
from cgsim.io_utils import atomic_path, write_json_atomic
from cgsim.reference.platforms import select_platform
from cgsim.units import BOLTZMANN

RUN_DIR = ".run"


def nonzero_seed(seed: int) -> int:
    """``seed`` in OpenMM's range ``[1, 2^31)``: OpenMM draws a fresh random seed for a seed of 0,
    which would make a run with ``system.seed=0`` irreproducible from its first step."""
    return int(seed) % 2**31 or 1


def platform_signature(name: str, properties: dict[str, str]) -> str:
    """What must match for an OpenMM checkpoint to continue bitwise, e.g. ``"CPU (Threads=1)"``."""
    props = ", ".join(f"{k}={v}" for k, v in sorted(properties.items()))
    return f"{name} ({props})" if props else name


def commit_checkpoint(directory: Path, state_name: str, context: openmm.Context | None, signature: str,
                      progress: dict[str, Any]) -> None:
    """Write ``context``'s checkpoint next to the XML state ``state_name`` and record it in ``progress``.

    The checkpoint file is ``state_name`` with the suffix ``.chk``, written atomically; ``progress``
    gets ``checkpoint`` (its name, None without a context) and ``checkpoint_platform``. The caller
    then writes ``progress`` (the commit) and deletes the previous files.
    """
    if context is None:
        progress["checkpoint"] = None
        return
    name = Path(state_name).with_suffix(".chk").name
    with atomic_path(Path(directory) / name) as tmp:
        tmp.write_bytes(context.createCheckpoint())
    progress["checkpoint"] = name
    progress["checkpoint_platform"] = signature


def restore_state(context: openmm.Context, directory: Path, progress: dict[str, Any], signature: str,
                  where: str) -> str:
    """Load the committed state of ``progress`` into ``context``; return how the run continues.

    Returns ``"bitwise"`` when the OpenMM checkpoint was written on this platform (``signature``)
    and loaded, else ``"statistical"``: the portable XML state (positions, velocities, box) is
    loaded with the integrator's fresh seed, and one line on stderr says so and why.
    """
    directory = Path(directory)
    chk = progress.get("checkpoint")
    saved_on = progress.get("checkpoint_platform")
    if chk and saved_on == signature and (directory / chk).is_file():
        try:
            context.loadCheckpoint((directory / chk).read_bytes())
            return "bitwise"
        except openmm.OpenMMException as exc:
            reason = f"its checkpoint does not load here: {str(exc).splitlines()[0]}"
    elif chk and saved_on != signature:
        reason = f"it was checkpointed on {saved_on} and resumes on {signature}"
    else:
        reason = "the saved state has no checkpoint, as an older cgsim wrote it"
    context.setState(openmm.XmlSerializer.deserialize((directory / progress["state"]).read_text()))
    print(f"generate: {where}: resumed from the portable XML state, not an OpenMM checkpoint ({reason}); the run "
          "continues statistically only, not bitwise", file=sys.stderr)
    return "statistical"


@dataclass
class Molecule:
    """One molecule whose frames are written to its own files.

    Attributes
    ----------
    name : str
        File stem, e.g. ``"seq_003"``.
    atoms : numpy.ndarray
        Indices of its particles in the System, shape (n,), int64.
    topology : mdtraj.Topology
        Its topology (n atoms).
    extra : dict
        Extra metadata for its sidecar (e.g. its sequence).
    """

    name: str
    atoms: np.ndarray
    topology: md.Topology
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunPlan:
    """What to simulate and when to record.

    Attributes
    ----------
    timestep : float
        Integration step, ps.
    equilibration_steps : int
        Steps before the first recorded frame.
    frame_steps : numpy.ndarray
        Production step (counted from the end of equilibration) of each recorded frame,
        strictly increasing, shape (n_frames,), int64. Step 0 is the first frame.
    frames_per_chunk : int
        Frames per chunk = per checkpoint.
    """

    timestep: float
    equilibration_steps: int
    frame_steps: np.ndarray
    frames_per_chunk: int = 50

    @property
    def n_frames(self) -> int:
        """Number of recorded frames."""
        return int(len(self.frame_steps))

    @property
    def total_steps(self) -> int:
        """Equilibration plus production steps."""
        return int(self.equilibration_steps + (self.frame_steps[-1] if self.n_frames else 0))


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": value} (lists kept as values)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def check_identity(out: Path, identity: dict[str, Any]) -> bool:
    """Refuse an output dir holding a different run; return True if it holds this one.

    Raises
    ------
    CgsimInputError
        If ``out`` holds files but no run state, or the state of a run with another identity.
    """
    ident_path = out / RUN_DIR / "identity.json"
    if ident_path.is_file():
        old = _flatten(json.loads(ident_path.read_text()))
        new = _flatten(json.loads(json.dumps(identity)))
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if len(diff) > 5:
                diff = [*diff[:5], f"... {len(diff) - 5} more"]
            raise CgsimInputError(str(out), f"output dir already holds a different run (differs in: {', '.join(diff)}); choose another output")
        return True
    if out.exists() and any(out.iterdir()):
        raise CgsimInputError(str(out), "output dir is not empty and holds no cgsim run; choose an empty or new directory")
    return False


class ChunkedRun:
    """Run ``plan`` on ``system`` and record frames in resumable chunks under ``out/.run``.

    Parameters
    ----------
    out : pathlib.Path
        Output directory.
    system : openmm.System
        The system.
    make_integrator : callable
        ``make_integrator(seed) -> openmm.Integrator``; called at every (re)start with a seed
        in ``[1, 2^31)`` that depends on the run seed and the number of chunks done (a resume
        that loads an OpenMM checkpoint restores the integrator's random state over it).
    positions : numpy.ndarray
        Initial positions, shape (n_particles, 3), nm (used only on a fresh start).
    molecules : list of Molecule
        Molecules whose temperature is recorded per frame.
    plan : RunPlan
        Steps and frames.
    identity : dict
        JSON-able description of the run (config that determines the physics).
    seed : int
        Run seed.
    platform : str
        ``"auto"`` (CUDA if present, else CPU), ``"CPU"``, ``"CUDA"``, ``"OpenCL"``, ``"Reference"``.
    threads : int
        CPU threads (CPU platform only).
    progress : bool
        Show a progress bar.
    time_unit : tuple(str, float)
        Name and size in ps of the time unit used in the progress bar (e.g. ``("tau", 1.0)``).
    prepare : callable, optional
        ``prepare(context)`` run once on a fresh start, after the initial positions are set
        (e.g. an energy minimisation).
    rate_format : callable, optional
        ``rate_format(simulated_ps, wall_seconds) -> str``: the speed shown in the progress bar
        (e.g. ns/day); when None it is simulated ``time_unit`` per second.
    """

    def __init__(self, out: Path, system: openmm.System, make_integrator: Callable[[int], openmm.Integrator],
                 positions: np.ndarray, molecules: list[Molecule], plan: RunPlan, identity: dict[str, Any],
                 seed: int, platform: str = "auto", threads: int = 1, progress: bool = True,
                 time_unit: tuple[str, float] = ("ps", 1.0),
                 prepare: Callable[[openmm.Context], None] | None = None,
                 rate_format: Callable[[float, float], str] | None = None) -> None:
        self.out = Path(out)
        self.run_dir = self.out / RUN_DIR
        self.chunk_dir = self.run_dir / "chunks"
        self.system = system
        self.make_integrator = make_integrator
        self.positions = positions
        self.molecules = molecules
        self.plan = plan
        self.identity = identity
        self.seed = int(seed)
        self.platform_name = platform
        self.threads = int(threads)
        self.show_progress = progress
        self.time_unit = time_unit
        self.prepare = prepare
        self.rate_format = rate_format
        self.platform_used = platform
        self.signature = platform
        self.context: openmm.Context | None = None
        self.resumed = "fresh"
        self.masses = np.array([system.getParticleMass(i).value_in_unit(u.dalton) for i in range(system.getNumParticles())])

    # -- state on disk -------------------------------------------------------------------
    def read_progress(self) -> dict[str, Any]:
        """The committed progress record (a fresh one if the run has not started)."""
        path = self.run_dir / "progress.json"
        if path.is_file():
            return json.loads(path.read_text())
        return {"equilibration_steps_done": 0, "frames_done": 0, "chunks_done": 0, "wall_seconds": 0.0, "state": None}

    def _commit(self, progress: dict[str, Any], state: openmm.State) -> None:
        """Commit ``state`` (the running context's present state) and its checkpoint, then the record.

        The running context is then reinitialised from its own checkpoint, so that a run that
        goes on and a run resumed from this commit continue from the same footing (bitwise).
        """
        name = f"state_{progress['chunks_done']:05d}_{progress['equilibration_steps_done']:012d}.xml"
        with atomic_path(self.run_dir / name) as tmp:
            tmp.write_text(openmm.XmlSerializer.serialize(state))
        old, old_chk = progress.get("state"), progress.get("checkpoint")
        progress["state"] = name
        commit_checkpoint(self.run_dir, name, self.context, self.signature, progress)
        write_json_atomic(self.run_dir / "progress.json", progress)
        for f in (old, old_chk):
            if f and f not in (name, progress["checkpoint"]):
                (self.run_dir / f).unlink(missing_ok=True)
        if self.context is not None:
            self.context.reinitialize(preserveState=True)

    def _cleanup_uncommitted(self, progress: dict[str, Any]) -> None:
        """Delete chunks and states written after the last commit."""
        for f in self.chunk_dir.glob("chunk_*"):
            idx = int(f.name.split("_")[1].split(".")[0])
            if idx >= progress["chunks_done"]:
                f.unlink()
        for f in list(self.run_dir.glob("state_*.xml")) + list(self.run_dir.glob("state_*.chk")):
            if f.name not in (progress.get("state"), progress.get("checkpoint")):
                f.unlink()
        for f in list(self.run_dir.glob(".*.tmp*")) + list(self.chunk_dir.glob(".*")):
            f.unlink()

    # -- platform ------------------------------------------------------------------------
    def _platform(self) -> tuple[openmm.Platform, dict[str, str]]:
        platform, props, self.platform_used = select_platform(self.platform_name, self.threads)
        self.signature = platform_signature(self.platform_used, props)
        return platform, props

    def _open_context(self, progress: dict[str, Any]) -> tuple[openmm.Context, openmm.Integrator]:
        """The running context: the committed state restored, or the fresh start prepared and committed."""
        platform, props = self._platform()
        integrator = self.make_integrator(nonzero_seed(self.seed * 100_003 + progress["chunks_done"] * 7
                                                       + progress["equilibration_steps_done"] % 997))
        context = openmm.Context(self.system, integrator, platform, props)
        if progress["state"]:
            self.resumed = restore_state(context, self.run_dir, progress, self.signature, str(self.out))
            self.context = context
        else:
            context.setPositions(self.positions * u.nanometer)
            if self.prepare is not None:
                self.prepare(context)
            context.setVelocitiesToTemperature(integrator.getTemperature(), self.seed)
            self.context = context
            self._commit(progress, context.getState(getPositions=True, getVelocities=True, enforcePeriodicBox=False))
        return context, integrator

    # -- the run -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run (or resume) until every frame is recorded; return the final progress dict."""
        resumed = check_identity(self.out, self.identity)
        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        if not resumed:
            write_json_atomic(self.run_dir / "identity.json", self.identity)
        progress = self.read_progress()
        self._cleanup_uncommitted(progress)
        plan = self.plan
        self.session = {"steps": 0, "wall_seconds": 0.0, "steps_per_second": 0.0, "already_complete": True}
        if progress["frames_done"] >= plan.n_frames:
            return progress

        context, integrator = self._open_context(progress)
        unit_name, unit_ps = self.time_unit
        done_steps = progress["equilibration_steps_done"] + (
            int(plan.frame_steps[progress["frames_done"] - 1]) if progress["frames_done"] else 0)
        bar = tqdm(total=plan.total_steps, initial=done_steps, unit="step", disable=not self.show_progress,
                   desc=f"MD {self.out.name}", dynamic_ncols=True, mininterval=2.0)
        t_start = time.perf_counter()
        base_wall = float(progress["wall_seconds"])
        steps_this_session = 0
        chunk_steps = max(1, int(plan.frame_steps[min(plan.frames_per_chunk, plan.n_frames - 1)])) if plan.n_frames > 1 else 1000

        def _rate() -> str:
            el = time.perf_counter() - t_start
            if self.rate_format is not None:
                return self.rate_format(steps_this_session * plan.timestep, el)
            sim = steps_this_session * plan.timestep / unit_ps
            return f"{sim / max(el, 1e-9):.3g} {unit_name}/s"

        # equilibration, in blocks of about one chunk's steps
        while progress["equilibration_steps_done"] < plan.equilibration_steps:
            n = min(chunk_steps, plan.equilibration_steps - progress["equilibration_steps_done"])
            integrator.step(n)
            steps_this_session += n
            progress["equilibration_steps_done"] += n
            bar.update(n)
            bar.set_postfix_str(f"equilibrating, {_rate()}")
            progress["wall_seconds"] = base_wall + time.perf_counter() - t_start
            self._commit(progress, context.getState(getPositions=True, getVelocities=True))

        # production
        last_step = int(plan.frame_steps[progress["frames_done"] - 1]) if progress["frames_done"] else 0
        buf_xyz: list[np.ndarray] = []
        buf_t: list[float] = []
        buf_temp: list[np.ndarray] = []
        while progress["frames_done"] + len(buf_xyz) < plan.n_frames:
            i = progress["frames_done"] + len(buf_xyz)
            n = int(plan.frame_steps[i]) - last_step
            if n > 0:
                integrator.step(n)
                steps_this_session += n
                bar.update(n)
            last_step = int(plan.frame_steps[i])
            state = context.getState(getPositions=True, getVelocities=True)
            buf_xyz.append(state.getPositions(asNumpy=True).value_in_unit(u.nanometer).astype(np.float32))
            buf_temp.append(self._temperatures(state.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond)))
            buf_t.append(last_step * plan.timestep)
            if len(buf_xyz) == plan.frames_per_chunk or i + 1 == plan.n_frames:
                self._write_chunk(progress["chunks_done"], buf_xyz, buf_t, buf_temp)
                progress["frames_done"] += len(buf_xyz)
                progress["chunks_done"] += 1
                progress["wall_seconds"] = base_wall + time.perf_counter() - t_start
                self._commit(progress, state)
                buf_xyz, buf_t, buf_temp = [], [], []
                bar.set_postfix_str(f"{progress['frames_done']}/{plan.n_frames} frames, {_rate()}")
        bar.close()
        return self._end_session(progress, steps_this_session, time.perf_counter() - t_start)

    def _end_session(self, progress: dict[str, Any], steps: int, elapsed: float) -> dict[str, Any]:
        """Record this session (steps, wall time, how it started) in ``progress.json``; return ``progress``."""
        self.context = None
        self.session = {"steps": steps, "wall_seconds": elapsed, "steps_per_second": steps / max(elapsed, 1e-9),
                        "already_complete": False, "resumed": self.resumed}
        progress["last_session"] = dict(self.session)
        write_json_atomic(self.run_dir / "progress.json", progress)
        return progress

    def _temperatures(self, velocities: np.ndarray) -> np.ndarray:
        """Kinetic temperature of each molecule, K (3 degrees of freedom per particle)."""
        ke = 0.5 * self.masses[:, None] * velocities**2
        out = np.empty(len(self.molecules))
        for k, mol in enumerate(self.molecules):
            out[k] = 2.0 * ke[mol.atoms].sum() / (3 * len(mol.atoms) * BOLTZMANN)
        return out

    def _write_chunk(self, index: int, xyz: list[np.ndarray], times: list[float], temps: list[np.ndarray]) -> None:
        stem = self.chunk_dir / f"chunk_{index:05d}"
        with atomic_path(stem.with_suffix(".npz")) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, time=np.asarray(times), temperature=np.asarray(temps))
        with atomic_path(stem.with_suffix(".xtc")) as tmp:
            with md.formats.XTCTrajectoryFile(str(tmp), "w") as fh:
                fh.write(np.stack(xyz), time=np.asarray(times, dtype=np.float32))


def read_chunks(out: Path, n_chunks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All recorded frames of a run: positions (n_frames, n_particles, 3) nm, times (n_frames,) ps,
    temperatures (n_frames, n_molecules) K."""
    chunk_dir = Path(out) / RUN_DIR / "chunks"
    xyz, times, temps = [], [], []
    for i in range(n_chunks):
        stem = chunk_dir / f"chunk_{i:05d}"
        with md.formats.XTCTrajectoryFile(str(stem.with_suffix(".xtc")), "r") as fh:
            x, _t, _s, _b = fh.read()
        xyz.append(x)
        with np.load(stem.with_suffix(".npz")) as z:
            times.append(z["time"])
            temps.append(z["temperature"])
    return np.concatenate(xyz), np.concatenate(times), np.concatenate(temps)


def remove_chunks(out: Path) -> None:
    """Delete chunks, states and checkpoints of a finished run, keeping identity.json and progress.json."""
    run_dir = Path(out) / RUN_DIR
    shutil.rmtree(run_dir / "chunks", ignore_errors=True)
    for f in list(run_dir.glob("state_*.xml")) + list(run_dir.glob("state_*.chk")):
        f.unlink()
