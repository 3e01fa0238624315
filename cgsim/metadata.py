"""Metadata shared by every stage, and the sidecar files that carry it.

Every trajectory file cgsim writes (``name.xtc``, ``name.dcd``, ``name.h5``) has a JSON
sidecar ``name.json`` beside it that says what the file is, in which units, and how it was
made. :func:`write_sidecar` / :func:`read_sidecar` are the only functions that touch them.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cgsim.errors import CgsimInputError
from cgsim.io_utils import write_json_atomic

SIDECAR_FORMAT = "cgsim-trajectory-metadata"
SIDECAR_VERSION = 1


@dataclass
class SystemInfo:
    """What a simulated system is.

    Attributes
    ----------
    name : str
        System name, e.g. ``"chain"`` or ``"electrolyte"``.
    units : dict
        The ``units`` block from :func:`cgsim.units.units_block`.
    temperature : float
        Thermostat temperature, in the system's units (K, or reduced for ``lj``).
    md_timestep : float
        Time step of the fine MD, in the system's time unit (ps or tau).
    periodic : bool
        Whether the system is periodic.
    box : list[float] or None
        Box vectors as ``[a, b, c, alpha, beta, gamma]`` (nm, degrees) if periodic.
    particle_types : list[str]
        Type name of each particle (length n_particles).
    particle_masses : list[float]
        Mass of each particle, amu (length n_particles).
    """

    name: str
    units: dict[str, Any]
    temperature: float
    md_timestep: float
    periodic: bool
    particle_types: list[str]
    particle_masses: list[float]
    box: list[float] | None = None

    @property
    def n_particles(self) -> int:
        """Number of particles."""
        return len(self.particle_types)


@dataclass
class TrajectoryMetadata:
    """What one trajectory file holds and how it was made (the sidecar's content).

    Attributes
    ----------
    kind : str
        ``"reference_md"``, ``"mapped"`` or ``"rollout"``.
    trajectory : str
        File name of the trajectory (relative to the sidecar).
    topology : str
        File name of the topology (PDB) it pairs with.
    system : SystemInfo
        The simulated system.
    save_interval : float
        Time between stored frames, in the system's time unit.
    n_frames : int
        Number of frames in the file.
    start_time : float
        Simulated time of the first frame, in the system's time unit.
    coordinates : str
        ``"unwrapped"`` (molecules whole, no box jumps) or ``"wrapped"``.
    provenance : dict
        How the file was made: command line, config, seed, software versions, host.
    summary : dict
        Quick physical checks (e.g. mean bond length, Rg, temperature).
    extra : dict
        Anything system-specific (e.g. a chain's sequence).
    """

    kind: str
    trajectory: str
    topology: str
    system: SystemInfo
    save_interval: float
    n_frames: int
    start_time: float = 0.0
    coordinates: str = "unwrapped"
    provenance: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, with a format tag and version."""
        return {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "<dict>") -> TrajectoryMetadata:
        """Inverse of :meth:`to_dict`; raises :class:`CgsimInputError` naming the bad field."""
        if data.get("format") != SIDECAR_FORMAT:
            raise CgsimInputError(where, f"field 'format' is {data.get('format')!r}, expected {SIDECAR_FORMAT!r}")
        body = {k: v for k, v in data.items() if k not in ("format", "version")}
        try:
            system = SystemInfo(**body.pop("system"))
            return cls(system=system, **body)
        except (TypeError, KeyError) as exc:
            raise CgsimInputError(where, f"malformed metadata ({exc})") from None


def sidecar_path(trajectory: str | Path) -> Path:
    """Sidecar path of a trajectory file: same directory and stem, suffix ``.json``."""
    trajectory = Path(trajectory)
    return trajectory.with_suffix(".json")


def write_sidecar(meta: TrajectoryMetadata, trajectory: str | Path) -> Path:
    """Write the sidecar of ``trajectory`` atomically and return its path."""
    path = sidecar_path(trajectory)
    write_json_atomic(path, meta.to_dict())
    return path


def read_sidecar(trajectory: str | Path) -> TrajectoryMetadata:
    """Read the sidecar of ``trajectory`` (or a sidecar path itself)."""
    path = Path(trajectory)
    if path.suffix != ".json":
        path = sidecar_path(path)
    if not path.is_file():
        raise CgsimInputError(str(path), "metadata sidecar not found; expected a cgsim JSON sidecar next to the trajectory")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CgsimInputError(str(path), f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return TrajectoryMetadata.from_dict(data, where=str(path))


def software_versions() -> dict[str, str]:
    """Versions of the packages that shape results, for provenance blocks."""
    import importlib.metadata as im

    out = {"python": platform.python_version()}
    for pkg in ("cgsim", "openmm", "mdtraj", "numpy", "torch", "torch_geometric"):
        try:
            out[pkg] = im.version(pkg.replace("_", "-"))
        except im.PackageNotFoundError:
            continue
    return out


def now_iso() -> str:
    """Current UTC time, ISO 8601, seconds resolution."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def command_line_keys() -> frozenset[str]:
    """The option keys set on the running ``cgsim`` command line (``guard.redraws=3`` ->
    ``"guard.redraws"``; hydra's ``+``/``++``/``~`` prefixes dropped); empty outside hydra.

    Lets a verb tell an option the user set to its default value from one left alone.
    """
    try:
        from hydra.core.hydra_config import HydraConfig

        task = HydraConfig.get().overrides.task
    except (ImportError, ValueError):
        return frozenset()
    return frozenset(o.split("=", 1)[0].lstrip("+~") for o in task)


def command_line(verb: str, api: str) -> str:
    """The command that made a file, for provenance blocks.

    Parameters
    ----------
    verb : str
        The ``cgsim`` verb (``"generate"``, ``"map"``, ...).
    api : str
        The Python function called when not run from the command line
        (e.g. ``"cgsim.reference.generate.run"``).

    Returns
    -------
    str
        ``"cgsim VERB override ..."`` under hydra, else a note naming ``api``.
    """
    try:
        from hydra.core.hydra_config import HydraConfig

        return " ".join([f"cgsim {verb}", *HydraConfig.get().overrides.task])
    except (ImportError, ValueError):
        return f"{api}(cfg) from Python (full config under provenance.config)"
