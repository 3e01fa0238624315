"""An electrolyte reference run directory, read without writing anything.

:func:`open_run` reads what a ``cgsim generate system=electrolyte`` output directory holds
(``.run/identity.json``, the equilibration and production progress records, ``dataset.json``
once finished); :func:`production_frames` gives its NVT production frames (the final
``NAME.xtc``, or the committed chunks of a run still in production); :func:`latest_state` its
latest saved configuration. Used by :mod:`cgsim.reference.electrolyte_validate` and
:mod:`cgsim.reference.nve`. MD units (nm, ps).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
import openmm
import openmm.unit as u
from omegaconf import OmegaConf

from cgsim.errors import CgsimInputError
from cgsim.reference import electrolyte as el
from cgsim.reference.electrolyte_equilibration import EQ_DIR
from cgsim.reference.electrolyte_settings import ElectrolyteSettings, settings_from_config
from cgsim.reference.runner import RUN_DIR, read_chunks


@dataclass
class RunDirectory:
    """What a run directory holds (read once, nothing written).

    Attributes
    ----------
    path : pathlib.Path
        The run directory.
    identity : dict
        ``.run/identity.json``: the run's system config and step plan.
    settings : ElectrolyteSettings
        The validated settings rebuilt from the identity.
    stage : str
        ``"started"`` (nothing committed), ``"equilibration"``, ``"production"`` or ``"finished"``.
    eq_progress : dict or None
        ``.run/equilibration/progress.json`` (density log), None if absent.
    prod_progress : dict or None
        ``.run/progress.json`` of the production run, None if absent.
    name : str
        File stem of the run's trajectory (``NAME.pdb`` / ``NAME.xtc`` once finished).
    """

    path: Path
    identity: dict[str, Any]
    settings: ElectrolyteSettings
    stage: str
    eq_progress: dict[str, Any] | None
    prod_progress: dict[str, Any] | None
    name: str

    @property
    def box_length(self) -> float | None:
        """Edge of the production box, nm (None before the end of equilibration)."""
        if self.eq_progress and self.eq_progress.get("box_length"):
            return float(self.eq_progress["box_length"])
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CgsimInputError(str(path), f"cannot read it as JSON ({exc})") from None


def _settings_from_identity(identity: dict[str, Any], where: str, forcefield: str | Path | None) -> ElectrolyteSettings:
    system = dict(identity.get("system") or {})
    ff = system.get("forcefield")
    ff_path = el.forcefield_path(str(forcefield) if forcefield else None)
    if isinstance(ff, dict) and ff.get("sha256") and ff["sha256"] != el.file_sha256(ff_path):
        raise CgsimInputError(where, f"the run used force field {ff.get('file')} (sha256 {ff['sha256'][:12]}...), "
                                     f"which is not {ff_path}; pass the run's force-field file")
    system["forcefield"] = str(ff_path)
    system.setdefault("packmol", None)
    try:
        return settings_from_config(OmegaConf.create(system))
    except CgsimInputError as exc:
        raise CgsimInputError(where, f"identity does not describe a valid electrolyte run ({exc})") from None
    except Exception as exc:  # missing keys in a hand-edited identity
        raise CgsimInputError(where, f"identity does not describe an electrolyte run ({type(exc).__name__}: {exc})") from None


def open_run(directory: str | Path, forcefield: str | Path | None = None) -> RunDirectory:
    """Read the state of an electrolyte run directory without writing anything.

    Parameters
    ----------
    directory : path-like
        Output directory of ``cgsim generate system=electrolyte`` (finished or in progress).
    forcefield : path-like, optional
        Force-field XML the run used, if not the shipped one (checked against its sha256).

    Returns
    -------
    RunDirectory

    Raises
    ------
    CgsimInputError
        If the directory does not exist or holds no electrolyte run.
    """
    path = Path(directory)
    if not path.is_dir():
        raise CgsimInputError(str(path), "no such directory; expected the output directory of "
                                         "`cgsim generate system=electrolyte`")
    ident_path = path / RUN_DIR / "identity.json"
    if not ident_path.is_file():
        raise CgsimInputError(str(path), f"not an electrolyte run directory (no {RUN_DIR}/identity.json); expected "
                                         "the output directory of `cgsim generate system=electrolyte`")
    identity = _read_json(ident_path)
    name = (identity.get("system") or {}).get("name")
    if name != "electrolyte":
        raise CgsimInputError(str(path), f"holds a {name!r} run, expected an electrolyte run (system=electrolyte)")
    settings = _settings_from_identity(identity, str(ident_path), forcefield)
    eq_path = path / RUN_DIR / EQ_DIR / "progress.json"
    prod_path = path / RUN_DIR / "progress.json"
    eq = _read_json(eq_path) if eq_path.is_file() else None
    prod = _read_json(prod_path) if prod_path.is_file() else None
    file_name = settings.file_name
    if (path / "dataset.json").is_file():
        stage = "finished"
        file_name = _read_json(path / "dataset.json")["molecules"][0]["name"]
    elif prod is not None:
        stage = "production"
    elif eq is not None:
        stage = "equilibration"
    else:
        stage = "started"
    return RunDirectory(path=path, identity=identity, settings=settings, stage=stage, eq_progress=eq,
                        prod_progress=prod, name=file_name)


@dataclass
class ProductionFrames:
    """Recorded NVT production frames of a run.

    Attributes
    ----------
    xyz : numpy.ndarray
        Unwrapped positions, shape (n_frames, n_atoms, 3), nm (XTC precision, 1e-3 nm).
    times : numpy.ndarray
        Time of each frame from the start of production, shape (n_frames,), ps.
    box_length : float
        Cubic box edge, nm (constant in NVT).
    source : str
        Where they were read (``NAME.xtc`` or ``.run/chunks (k of n chunks)``).
    partial : bool
        True if the run has not finished (frames from committed chunks).
    """

    xyz: np.ndarray
    times: np.ndarray
    box_length: float
    source: str
    partial: bool

    @property
    def dt(self) -> float:
        """Time between frames, ps."""
        return float(self.times[1] - self.times[0]) if len(self.times) > 1 else float("nan")


def production_frames(run: RunDirectory, stride: int = 1) -> ProductionFrames:
    """The production frames of a run: the final trajectory, or the committed chunks of a partial run.

    Parameters
    ----------
    run : RunDirectory
        From :func:`open_run`.
    stride : int
        Keep every ``stride``-th frame (>= 1).

    Returns
    -------
    ProductionFrames

    Raises
    ------
    CgsimInputError
        If the run has no production frames yet, or its files do not match its identity.
    """
    if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride < 1:
        raise CgsimInputError("stride", f"expected a positive integer, got {stride!r}")
    n_atoms = run.settings.composition.n_atoms
    if run.stage == "finished":
        xtc, pdb = run.path / f"{run.name}.xtc", run.path / f"{run.name}.pdb"
        for f in (xtc, pdb):
            if not f.is_file():
                raise CgsimInputError(str(f), "missing; the finished run's dataset.json names it")
        traj = md.load(str(xtc), top=str(pdb))
        xyz, times = traj.xyz, traj.time.astype(np.float64)
        box = float(traj.unitcell_lengths[0, 0]) if traj.unitcell_lengths is not None else run.box_length
        source, partial = xtc.name, False
    else:
        done = int((run.prod_progress or {}).get("chunks_done", 0))
        if done == 0 or run.box_length is None:
            where = "NVT equilibration" if run.stage == "production" else _stage_text(run)
            raise CgsimInputError(str(run.path), f"no production frames yet (run is in {where}); RDFs and diffusion "
                                                 "need the NVT production, wait for .run/chunks/ to fill")
        try:
            xyz, times, _temps = read_chunks(run.path, done)
        except (FileNotFoundError, OSError) as exc:
            raise CgsimInputError(str(run.path / RUN_DIR / "chunks"), f"a committed chunk is missing ({exc}); the run "
                                                                      "may have finished meanwhile: run again") from None
        times = times.astype(np.float64)
        box = run.box_length
        source, partial = f"{RUN_DIR}/chunks ({done} committed chunks)", True
    if xyz.shape[1] != n_atoms:
        raise CgsimInputError(source, f"frames hold {xyz.shape[1]} atoms, the run's composition {n_atoms}")
    if box is None:
        raise CgsimInputError(str(run.path), "no box length recorded for the production frames")
    return ProductionFrames(xyz=np.asarray(xyz[::stride], dtype=np.float64), times=times[::stride],
                            box_length=float(box), source=source, partial=partial)


def _stage_text(run: RunDirectory) -> str:
    eq = run.eq_progress
    if not eq:
        return "its first stage (nothing committed)"
    stage = eq.get("stage")
    steps = eq.get("steps", {})
    t = steps.get(stage, 0) * run.settings.timestep if stage in ("compress", "npt") else 0.0
    return {"minimize": "minimisation", "compress": f"compression, {t:g} ps done",
            "npt": f"NPT equilibration, {t:g} ps done"}.get(stage, f"equilibration stage {stage!r}")


def latest_state(run: RunDirectory) -> tuple[np.ndarray, np.ndarray | None, float, str]:
    """The run's latest saved configuration: positions, velocities, box edge and where it came from.

    Order: the production checkpoint (``.run/state_*.xml``), else the last equilibration
    checkpoint (``.run/equilibration/state_*.xml``, NPT box), else (a finished run keeps no
    state) the last frame of ``NAME.xtc`` (XTC precision, 1e-3 nm) without velocities, which
    :func:`run_nve` then draws at the run temperature.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray or None, float, str)
        Positions (n_atoms, 3) nm, velocities (n_atoms, 3) nm/ps or None, cubic box edge nm,
        and a description of the source.

    Raises
    ------
    CgsimInputError
        If the run has no saved configuration yet.
    """
    candidates = []
    if run.stage != "finished":
        if run.prod_progress and run.prod_progress.get("state"):
            candidates.append(run.path / RUN_DIR / run.prod_progress["state"])
        if run.eq_progress and run.eq_progress.get("state"):
            candidates.append(run.path / RUN_DIR / EQ_DIR / run.eq_progress["state"])
    for path in candidates:
        try:
            text = path.read_text()
        except FileNotFoundError:  # replaced by a newer commit meanwhile
            continue
        state = openmm.XmlSerializer.deserialize(text)
        pos = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        try:
            vel = state.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond)
        except openmm.OpenMMException:
            vel = None
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer)
        if not np.allclose(box, np.diag(np.diag(box))) or not np.allclose(np.diag(box), box[0, 0]):
            raise CgsimInputError(str(path), "expected a cubic box")
        return np.asarray(pos), None if vel is None else np.asarray(vel), float(box[0, 0]), \
            f"{path.relative_to(run.path)} (state time {state.getTime().value_in_unit(u.picosecond):.1f} ps)"
    if run.stage == "finished" or (run.prod_progress and run.prod_progress.get("chunks_done")):
        frames = production_frames(run)
        return frames.xyz[-1], None, frames.box_length, f"last frame of {frames.source} (t = {frames.times[-1]:g} ps)"
    raise CgsimInputError(str(run.path), f"no saved state yet (run is in {_stage_text(run)}); nothing to run NVE from")
