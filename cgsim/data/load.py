"""Load mapped bead trajectories (the output of ``cgsim map``) as training systems.

A mapped system is a directory holding ``mapping.yaml`` (with the fine topology the model's
chemistry embedding reads: atom labels and atom bonds), ``beads.pdb``, a bead trajectory
(``beads.h5``, ``beads.xtc`` or ``beads.dcd``) and its JSON sidecar. Nothing is recomputed:
the mapping is read, never rebuilt.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mdtraj as md
import numpy as np
import torch

from cgsim.checks import finite_frames
from cgsim.data.windows import BeadTrajectory
from cgsim.errors import CgsimInputError
from cgsim.mapping.core import CGMapping, load_mapping
from cgsim.metadata import read_sidecar
from cgsim.model.batch import SystemGraph

TRAJECTORY_NAMES = ("beads.h5", "beads.xtc", "beads.dcd")


@dataclass
class SystemSet:
    """Loaded systems of one split.

    Attributes
    ----------
    trajectories : list of BeadTrajectory
        One per system.
    atom_types : list of str
        Fine type vocabulary (index = type id the model sees).
    mapping_hashes : list of str
        Content hash of each system's mapping.
    save_interval : float
        Time between frames, in ``time_unit`` (the same for all systems).
    time_unit : str
        ``"ps"`` or ``"tau"``.
    """

    trajectories: list[BeadTrajectory]
    atom_types: list[str]
    mapping_hashes: list[str] = field(default_factory=list)
    save_interval: float = float("nan")
    time_unit: str = "ps"


def expand_paths(patterns: Sequence[str], where: str) -> list[Path]:
    """Expand globs; each pattern must match at least one directory."""
    out: list[Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(str(pat))) if any(c in str(pat) for c in "*?[") else [str(pat)]
        if not hits or not all(Path(h).exists() for h in hits):
            raise CgsimInputError(where, f"no mapped system at {pat!r}; expected directories written by `cgsim map`")
        out += [Path(h) for h in hits]
    return out


def system_graph(mapping: CGMapping, atom_types: Sequence[str], where: str, box: np.ndarray | None = None) -> SystemGraph:
    """The model's topology of a mapped system, fine types indexed in ``atom_types``."""
    if mapping.atom_labels is None or mapping.atom_bonds is None:
        raise CgsimInputError(where, "mapping has no fine topology ('atoms' block with labels and bonds); "
                                     "re-run `cgsim map` with this version of cgsim")
    index = {name: k for k, name in enumerate(atom_types)}
    unknown = sorted(set(mapping.atom_labels) - set(index))
    if unknown:
        raise CgsimInputError(where, f"fine atom types {unknown[:5]} are unknown to the model (it knows {list(atom_types)[:10]})")
    ab = np.asarray(mapping.atom_bonds, dtype=np.int64).reshape(-1, 2)
    bb = mapping.bonds
    return SystemGraph(
        atom_type=torch.tensor([index[x] for x in mapping.atom_labels], dtype=torch.long),
        atom_bonds=torch.from_numpy(np.concatenate([ab, ab[:, ::-1]]).T.copy()),
        atom_to_bead=torch.from_numpy(mapping.atom_bead.copy()),
        bead_bonds=torch.from_numpy(np.concatenate([bb, bb[:, ::-1]]).T.copy()),
        n_beads=mapping.n_beads,
        box=None if box is None else torch.tensor(box, dtype=torch.float32),
    )


def _count_particles(path: Path) -> int:
    """Number of particles per frame of a trajectory file, read without a topology."""
    with md.open(str(path)) as fh:
        if path.suffix == ".h5":
            return int(fh.topology.n_atoms)
        return int(fh.read(n_frames=1)[0].shape[1])


def load_systems(paths: Sequence[str], where: str, atom_types: Sequence[str] | None = None) -> SystemSet:
    """Load every mapped system under ``paths`` (directories or globs).

    Parameters
    ----------
    paths : sequence of str
        Mapped-system directories (globs allowed).
    where : str
        Config key named in errors (``data.train``).
    atom_types : sequence of str, optional
        Fine type vocabulary to use (validation/test systems use the training one); by
        default the sorted union over these systems.

    Raises
    ------
    CgsimInputError
        A missing mapping or trajectory, a trajectory whose bead count differs from its
        mapping's, triclinic boxes, or systems with different save intervals.
    """
    dirs = expand_paths(paths, where)
    loaded = []
    for d in dirs:
        mpath = d / "mapping.yaml"
        if not mpath.is_file():
            raise CgsimInputError(str(d), "no mapping.yaml; expected a directory written by `cgsim map`")
        mapping = load_mapping(mpath)
        traj_path = next((d / n for n in TRAJECTORY_NAMES if (d / n).is_file()), None)
        if traj_path is None:
            raise CgsimInputError(str(d), f"no bead trajectory; expected one of {TRAJECTORY_NAMES}")
        meta = read_sidecar(traj_path)
        n_in_file = _count_particles(traj_path)
        if n_in_file != mapping.n_beads:
            raise CgsimInputError(str(traj_path), f"trajectory has {n_in_file} beads, mapping.yaml has {mapping.n_beads}")
        try:
            traj = md.load(str(traj_path), top=str(d / "beads.pdb")) if traj_path.suffix != ".h5" else md.load(str(traj_path))
        except Exception as exc:  # noqa: BLE001 - mdtraj/pytables raise many types for a damaged file
            raise CgsimInputError(str(traj_path), f"cannot be read (truncated or damaged: {type(exc).__name__}); "
                                                  "map the system again") from None
        finite_frames(traj.xyz, str(traj_path))
        box = None
        if traj.unitcell_vectors is not None and meta.system.periodic:
            vec = traj.unitcell_vectors[0]
            # relative: float32 box vectors of a 90 degree cell carry ~4e-8 x its length off the diagonal
            if np.abs(vec - np.diag(np.diag(vec))).max() > 1e-6 * np.abs(vec).max():
                raise CgsimInputError(str(traj_path), "triclinic box; the learned dynamics support orthorhombic boxes only")
            box = np.diag(vec).astype(np.float64)
        if meta.coordinates not in ("unwrapped",):
            raise CgsimInputError(str(traj_path), f"coordinates are {meta.coordinates!r}; the dynamics need unwrapped bead trajectories")
        loaded.append((d, mapping, traj, meta, box))
    vocab = list(atom_types) if atom_types is not None else sorted({x for _, m, *_ in loaded for x in (m.atom_labels or [])})
    intervals = {float(meta.save_interval) for *_, meta, _ in loaded}
    if len(intervals) > 1:
        raise CgsimInputError(where, f"systems have different save intervals {sorted(intervals)}; one learned time step needs one")
    trajectories = [
        BeadTrajectory(name=str(d), graph=system_graph(m, vocab, str(d / "mapping.yaml"), box),
                       positions=traj.xyz.astype(np.float32), save_interval=float(meta.save_interval))
        for d, m, traj, meta, box in loaded
    ]
    units = loaded[0][3].system.units if loaded else {}
    return SystemSet(trajectories=trajectories, atom_types=vocab, mapping_hashes=[m.content_hash() for _, m, *_ in loaded],
                     save_interval=intervals.pop() if intervals else float("nan"),
                     time_unit="tau" if units.get("system") == "lj" else "ps")
