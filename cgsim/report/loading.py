"""Reading bead trajectories for evaluation: one file + sidecar, or a dataset directory.

A *trajectory set* is what ``reference=`` or ``rollout=`` names:

- a trajectory file (``.xtc``, ``.dcd``, ``.h5``, ...) with its cgsim JSON sidecar
  (:func:`cgsim.metadata.read_sidecar`); the sidecar names the topology (PDB) beside it;
- a directory holding ``dataset.json`` (written by ``cgsim generate`` and ``cgsim rollout``):
  every molecule entry is one system, its ``files[file_index]`` entry names the trajectory
  file (``file_index = -1``: every file, e.g. all replicas of a rollout);
- a mapped-system directory written by ``cgsim map`` (``beads.h5``/``.xtc``/``.dcd`` with its
  sidecar and ``mapping.yaml``), named after the directory;
- a glob matching any of these (``'data/chain/mapped/test/seq_00?'``), in sorted order.

Bead charges (e) come from the sidecar's ``extra.particle_charges`` or else from the bead
charges of the ``mapping.yaml`` beside the trajectory, or beside the mapped system a rollout
started from (its sidecar's ``extra.source``); all-zero charges count as unknown.

Everything is converted to MD units here (nm, ps, amu, K): trajectory files hold nm; times
and temperatures in a sidecar are in the system's units and are converted with its ``units``
block (``lj``: tau and epsilon/k_B in MD units).
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np

from cgsim.checks import finite_frames
from cgsim.errors import CgsimInputError
from cgsim.metadata import TrajectoryMetadata, read_sidecar

#: bead trajectory names inside a mapped-system directory (as ``cgsim map`` writes them)
MAPPED_TRAJECTORY_NAMES = ("beads.h5", "beads.xtc", "beads.dcd")
#: file stems too generic to name a trajectory: the parent directory names it instead
_GENERIC_STEMS = ("beads", "rollout", "traj", "trajectory")


@dataclass(frozen=True, eq=False)
class BeadTrajectory:
    """One bead trajectory in MD units, with what the observables need.

    Attributes
    ----------
    name : str
        Molecule / system name (``seq_000``, or the file stem).
    path : pathlib.Path
        Trajectory file.
    xyz : numpy.ndarray
        Positions, shape (n_frames, n_particles, 3), float64, nm.
    dt : float
        Time between frames, ps.
    box : numpy.ndarray or None
        Box vectors, shape (n_frames, 3, 3), nm; None when the file has none.
    types : numpy.ndarray
        Bead type per particle, shape (n_particles,), str.
    masses : numpy.ndarray
        Mass per particle, shape (n_particles,), amu.
    bonds : numpy.ndarray
        Bonded pairs, shape (n_bonds, 2), int64.
    molecule_ids : numpy.ndarray
        Molecule index per particle, shape (n_particles,), int64 (bond-connected components).
    molecule_kinds : list of str
        Kind of each molecule: the residue name of a one-residue molecule, else ``"chain"``.
    periodic : bool
        From the sidecar's ``system.periodic``.
    coordinates : str
        ``"unwrapped"`` or ``"wrapped"`` (sidecar).
    temperature : float or None
        Thermostat temperature, K; None when the sidecar does not know it (a trajectory mapped
        without a cgsim sidecar and without ``temperature=``): only the conductivity needs it.
    charges : numpy.ndarray or None
        Charge per particle, shape (n_particles,), e, from the sidecar's
        ``extra.particle_charges`` when present.
    system : str
        System name from the sidecar (``"chain"``, ``"electrolyte"``, ...).
    replica : int
        Index of the file among its system's files in a dataset (rollout replica); 0 else.
    stop_step : int or None
        For a rollout replica that the stability guard stopped early: the learned step it was
        stopped at (its sidecar's ``extra.stop_step``); None for a complete trajectory.
    stop_reason : str or None
        The guard's reason for stopping it (sidecar ``extra.stop_reason``).
    unfinished : bool
        A rollout replica whose run has not finished: killed (or still running) before the
        steps it was asked for (its sidecar's ``extra.status`` is ``"running"``).
    steps_done : int or None
        For a rollout replica: the learned steps its frames cover (sidecar ``extra.steps_done``).
    """

    name: str
    path: Path
    xyz: np.ndarray
    dt: float
    box: np.ndarray | None
    types: np.ndarray
    masses: np.ndarray
    bonds: np.ndarray
    molecule_ids: np.ndarray
    molecule_kinds: list[str]
    periodic: bool
    coordinates: str
    temperature: float | None
    charges: np.ndarray | None
    system: str
    replica: int = 0
    stop_step: int | None = None
    stop_reason: str | None = None
    unfinished: bool = False
    steps_done: int | None = None

    @property
    def stopped_early(self) -> bool:
        """Whether the rollout's stability guard stopped this replica before the last step."""
        return self.stop_step is not None

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return int(self.xyz.shape[0])

    @property
    def n_particles(self) -> int:
        """Number of particles."""
        return int(self.xyz.shape[1])

    @property
    def duration(self) -> float:
        """Time spanned, ps."""
        return (self.n_frames - 1) * self.dt

    def frames(self, sl: slice) -> BeadTrajectory:
        """The same trajectory restricted to a frame slice (e.g. the first half)."""
        return replace(self, xyz=self.xyz[sl], box=None if self.box is None else self.box[sl])


def _time_and_temperature_factors(meta: TrajectoryMetadata, where: str) -> tuple[float, float]:
    """Factors converting the sidecar's times and temperatures to ps and K."""
    units = meta.system.units or {}
    system = units.get("system", "md")
    if system == "md":
        return 1.0, 1.0
    if system == "lj":
        lj = units.get("lj_in_md_units") or {}
        try:
            return float(lj["tau_ps"]), float(lj["temperature_K"])
        except (KeyError, TypeError, ValueError):
            raise CgsimInputError(where, "field 'system.units.lj_in_md_units' lacks tau_ps / temperature_K") from None
    raise CgsimInputError(where, f"field 'system.units.system' is {system!r}, expected 'md' or 'lj'")


def load_trajectory(path: str | Path, name: str | None = None, stride: int = 1) -> BeadTrajectory:
    """Load one bead trajectory and its sidecar.

    Parameters
    ----------
    path : path-like
        Trajectory file; its sidecar ``<stem>.json`` must be beside it.
    name : str, optional
        Name to keep; default the file stem.
    stride : int
        Keep every ``stride``-th frame.

    Returns
    -------
    BeadTrajectory
    """
    path = Path(path)
    if not path.is_file():
        raise CgsimInputError(str(path), "trajectory file not found")
    meta = read_sidecar(path)
    side = str(path.with_suffix(".json"))
    t_factor, temp_factor = _time_and_temperature_factors(meta, side)
    try:
        if path.suffix in (".h5", ".pdb"):
            traj = md.load(str(path), stride=stride)
        else:
            top = path.parent / meta.topology
            if not top.is_file():
                raise CgsimInputError(side, f"field 'topology' names {meta.topology!r}, which is not beside the trajectory")
            traj = md.load(str(path), top=str(top), stride=stride)
    except CgsimInputError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise CgsimInputError(str(path), f"mdtraj cannot read it ({type(exc).__name__}: {exc})") from None
    finite_frames(traj.xyz, str(path), "particle")
    n = traj.n_atoms
    types = np.asarray(meta.system.particle_types, dtype=str)
    masses = np.asarray(meta.system.particle_masses, dtype=np.float64)
    if types.shape != (n,) or masses.shape != (n,):
        raise CgsimInputError(side, f"fields 'system.particle_types'/'particle_masses' have {types.size}/{masses.size} "
                                    f"entries, expected {n} (the trajectory's particles)")
    stop_step, stop_reason = _stop(meta, side)
    unfinished, steps_done = _unfinished(meta, stop_step)
    # a replica the guard stopped (or a run killed) before its first saved step holds just the
    # initial frame: it still counts for structure (dynamical observables leave such replicas out)
    min_frames = 1 if stop_step is not None or unfinished else 2
    if traj.n_frames < min_frames:
        raise CgsimInputError(str(path), f"expected at least {min_frames} frames, got {traj.n_frames}")
    if not (np.isfinite(meta.save_interval) and meta.save_interval > 0):
        raise CgsimInputError(side, f"field 'save_interval' is {meta.save_interval!r}, expected a positive number")
    charges = meta.extra.get("particle_charges") if isinstance(meta.extra, dict) else None
    if charges is not None:
        charges = np.asarray(charges, dtype=np.float64)
        if charges.shape != (n,) or not np.isfinite(charges).all():
            raise CgsimInputError(side, f"field 'extra.particle_charges' has shape {charges.shape}, expected ({n},) "
                                        "finite charges in e")
    else:
        charges = _mapping_charges(path, meta, n)
    if charges is not None and not np.any(np.abs(charges) > 0):
        charges = None  # all zero: a mapping made without atom charges
    bonds = np.array([[b[0].index, b[1].index] for b in traj.topology.bonds], dtype=np.int64).reshape(-1, 2)
    ids = np.zeros(n, dtype=np.int64)
    kinds = []
    for k, atoms in enumerate(sorted(traj.topology.find_molecules(), key=lambda s: min(a.index for a in s))):
        idx = [a.index for a in atoms]
        ids[idx] = k
        residues = {a.residue.index for a in atoms}
        kinds.append(next(iter(atoms)).residue.name if len(residues) == 1 else "chain")
    box = None
    if traj.unitcell_vectors is not None and np.abs(traj.unitcell_vectors).max() > 0:
        box = np.asarray(traj.unitcell_vectors, dtype=np.float64)
    return BeadTrajectory(
        name=name or path.stem, path=path, xyz=np.asarray(traj.xyz, dtype=np.float64),
        dt=float(meta.save_interval) * t_factor * stride, box=box, types=types, masses=masses, bonds=bonds,
        molecule_ids=ids, molecule_kinds=kinds, periodic=bool(meta.system.periodic), coordinates=meta.coordinates,
        temperature=None if meta.system.temperature is None else float(meta.system.temperature) * temp_factor, charges=charges, system=str(meta.system.name),
        stop_step=stop_step, stop_reason=stop_reason, unfinished=unfinished, steps_done=steps_done)


def _stop(meta: TrajectoryMetadata, where: str) -> tuple[int | None, str | None]:
    """Step and reason at which the stability guard stopped a rollout replica (None, None if it did not).

    ``cgsim rollout`` records them in every replica's sidecar (``extra.status == "stopped"``,
    ``extra.stop_step``, ``extra.stop_reason``; the same as its ``summary.json``).
    """
    extra = meta.extra if isinstance(meta.extra, dict) else {}
    if meta.kind != "rollout" or (extra.get("status") != "stopped" and extra.get("stop_step") is None):
        return None, None
    try:
        step = int(extra.get("stop_step"))
    except (TypeError, ValueError):
        raise CgsimInputError(where, f"field 'extra.stop_step' is {extra.get('stop_step')!r}, expected the step at "
                                     "which the stability guard stopped this replica") from None
    reason = extra.get("stop_reason")
    return step, (str(reason) if reason else "stopped by the stability guard")


def _unfinished(meta: TrajectoryMetadata, stop_step: int | None) -> tuple[bool, int | None]:
    """Whether a rollout replica's run never finished, and the learned steps its frames cover.

    ``cgsim rollout`` rewrites every replica's sidecar at each of its checkpoints with
    ``extra.status == "running"`` and only at the end with ``"finished"`` (or ``"stopped"``),
    so a killed run (or one still running) leaves ``"running"``: fewer steps than asked.
    """
    extra = meta.extra if isinstance(meta.extra, dict) else {}
    if meta.kind != "rollout":
        return False, None
    done = extra.get("steps_done")
    steps_done = int(done) if isinstance(done, int | float) and not isinstance(done, bool) else None
    return stop_step is None and extra.get("status") == "running", steps_done


def _mapping_charges(path: Path, meta: TrajectoryMetadata, n: int) -> np.ndarray | None:
    """Bead charges (e) from the ``mapping.yaml`` of a mapped system or of a rollout's source."""
    from cgsim.mapping.core import load_mapping

    extra = meta.extra if isinstance(meta.extra, dict) else {}
    mapping = extra.get("mapping")
    name = mapping.get("file") if isinstance(mapping, dict) and mapping.get("file") else "mapping.yaml"
    candidates = [path.parent / str(name)]
    if extra.get("source"):  # a rollout: the mapped system it started from
        candidates.append(Path(str(extra["source"])) / "mapping.yaml")
    for c in candidates:
        if c.is_file():
            m = load_mapping(c)
            if m.n_beads == n:
                return np.asarray(m.bead_charges, dtype=np.float64)
    return None


def _mapped_trajectory(directory: Path) -> Path | None:
    """The bead trajectory of a ``cgsim map`` output directory, if it is one."""
    return next((directory / n for n in MAPPED_TRAJECTORY_NAMES if (directory / n).is_file()), None)


def _trajectory_name(path: Path) -> str:
    return path.parent.name if path.stem in _GENERIC_STEMS and path.parent.name else path.stem


def load_set(path: str | Path, file_index: int = 0, stride: int = 1, where: str = "reference") -> list[BeadTrajectory]:
    """Load a trajectory set (module docstring): a file, a dataset, a mapped system, or a glob.

    Parameters
    ----------
    path : path-like
        Trajectory file, directory with ``dataset.json``, ``cgsim map`` output directory, or a
        glob pattern matching any of these.
    file_index : int
        For datasets: which entry of each molecule's ``files`` list to load; -1 = all of them
        (rollout replicas, kept apart by :attr:`BeadTrajectory.replica`).
    stride : int
        Keep every ``stride``-th frame.
    where : str
        Config key named in errors.

    Returns
    -------
    list of BeadTrajectory
        In the dataset's (or the glob's sorted) order.
    """
    if int(stride) != stride or stride < 1:
        raise CgsimInputError("stride", f"expected a positive whole number, got {stride!r}")
    if int(file_index) != file_index or file_index < -1:
        raise CgsimInputError("file_index", f"expected an index >= 0, or -1 for every file, got {file_index!r}")
    text = str(path)
    if any(c in text for c in "*?[") and not Path(text).exists():
        hits = sorted(glob.glob(text))
        if not hits:
            raise CgsimInputError(where, f"pattern {text!r} matches nothing; expected trajectory files or directories")
        return [t for h in hits for t in load_set(h, file_index, stride, where)]
    p = Path(text)
    if p.is_file():
        return [load_trajectory(p, name=_trajectory_name(p), stride=stride)]
    if not p.is_dir():
        raise CgsimInputError(where, f"{p} does not exist; expected a trajectory file or a directory with dataset.json")
    index = p / "dataset.json"
    if not index.is_file():
        mapped = _mapped_trajectory(p)
        if mapped is not None:
            return [load_trajectory(mapped, name=p.name, stride=stride)]
        raise CgsimInputError(where, f"{p} has no dataset.json and no {'/'.join(MAPPED_TRAJECTORY_NAMES)}; expected a "
                                     "trajectory file, a dataset directory or a `cgsim map` output directory")
    try:
        data = json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise CgsimInputError(str(index), f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    molecules = data.get("molecules")
    if data.get("format") != "cgsim-dataset" or not isinstance(molecules, list) or not molecules:
        raise CgsimInputError(str(index), "expected format 'cgsim-dataset' with a non-empty 'molecules' list")
    out = []
    for k, mol in enumerate(molecules):
        files = mol.get("files") or []
        if file_index == -1 and not files:
            raise CgsimInputError(str(index), f"field 'molecules[{k}].files' is empty")
        if file_index >= len(files):
            raise CgsimInputError(str(index), f"field 'molecules[{k}].files' has {len(files)} entries; "
                                              f"file_index={file_index} is out of range")
        chosen = range(len(files)) if file_index == -1 else [file_index]
        for r in chosen:
            t = load_trajectory(p / _entry_path(files[r], index, k), name=str(mol.get("name", k)), stride=stride)
            out.append(replace(t, replica=int(r)))
    return out


def _entry_path(entry: Any, index: Path, k: int) -> str:
    if isinstance(entry, dict) and isinstance(entry.get("trajectory"), str):
        return entry["trajectory"]
    raise CgsimInputError(str(index), f"field 'molecules[{k}].files' holds an entry without a 'trajectory' path")


def _topology_difference(a: BeadTrajectory, b: BeadTrajectory) -> str | None:
    """How ``b``'s topology differs from ``a``'s (bead types in order, bonds), or None if it does not."""
    if a.n_particles != b.n_particles or not np.array_equal(a.types, b.types):
        return f"bead types differ ({a.n_particles} vs {b.n_particles} particles)"
    if not np.array_equal(np.unique(np.sort(a.bonds, axis=1), axis=0), np.unique(np.sort(b.bonds, axis=1), axis=0)):
        return "bonds differ"
    return None


def check_same_topology(reference: list[BeadTrajectory], rollout: list[BeadTrajectory], where: str = "rollout") -> None:
    """Refuse a rollout whose trajectories do not match the reference's one to one.

    Trajectories pair up by name (or by position for single files; every replica of a
    rollout system pairs with the reference of that name; if the names differ but the counts
    agree, in sorted name order provided every pair's topology agrees); each pair must have the
    same bead types in the same order and the same bonds.
    """
    if len(reference) == 1 and len({t.name for t in rollout}) == 1:
        pairs = [(reference[0], t) for t in rollout]
    else:
        ref = {t.name: t for t in reference}
        names = {t.name for t in rollout}
        if set(ref) != names or len(ref) != len(reference):
            missing = sorted(set(ref) - names)[:3]
            extra = sorted(names - set(ref))[:3]
            mismatch = CgsimInputError(where, f"topology does not match the reference: molecules differ (missing "
                                              f"{missing}, extra {extra}); set match_topology=false to compare pooled "
                                              "statistics")
            # other names, same systems (e.g. rollouts from seq_000 against the long reference
            # seq_000_long): pair in sorted name order, accepted only if every pair's topology agrees
            if len(ref) != len(reference) or len(ref) != len(names):
                raise mismatch
            by_order = dict(zip(sorted(names), sorted(ref), strict=True))
            pairs = [(ref[by_order[t.name]], t) for t in rollout]
            if any(_topology_difference(a, b) for a, b in pairs):
                raise mismatch
        else:
            pairs = [(ref[t.name], t) for t in rollout]
    for a, b in pairs:
        difference = _topology_difference(a, b)
        if difference:
            raise CgsimInputError(str(b.path), f"topology does not match the reference {a.path}: {difference}")
