"""The ``cgsim map`` verb: coarse-grain a trajectory into beads.

::

    cgsim map input.trajectory=PATH input.topology=PATH mapping=SCHEME output=DIR

writes into DIR

- ``mapping.yaml``  the mapping (:mod:`cgsim.mapping.core`), with its hash;
- ``beads.pdb``     CG topology: bead names, residue = molecule, CONECT bead bonds, first frame;
- ``beads.h5``      all frames (or ``beads.xtc`` / ``beads.dcd``), unwrapped, with box;
- ``beads.json``    metadata sidecar: source files, units, time between frames, mapping hash,
  and the bead charges (``extra.particle_charges``, e) when the atom charges are known (a
  LAMMPS data file, ``input.charges=FILE``, or the input's cgsim sidecar).

Frames are streamed in chunks (memory does not grow with trajectory length) into temporary
files renamed into place together at the end, so an error (a full disk included) leaves no
output half-written and an earlier mapping in the same directory (``overwrite=true``) whole.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from cgsim.checks import positive_temperature
from cgsim.errors import CgsimInputError
from cgsim.io.trajectory import TRAJECTORY_FORMATS, TrajectoryWriter, box_lengths_angles
from cgsim.io_utils import (
    atomic_path,
    check_output_directory,
    committed_together,
    remove_stale_temporaries,
)
from cgsim.mapping.apply import PBC_MODES, BeadMapper, bead_topology, clean_box
from cgsim.mapping.builders import SCHEMES, build_mapping
from cgsim.mapping.core import CGMapping, save_mapping
from cgsim.mapping.inputs import FrameChunk, MapInput, open_input
from cgsim.metadata import (
    SystemInfo,
    TrajectoryMetadata,
    command_line,
    now_iso,
    software_versions,
    write_sidecar,
)
from cgsim.units import units_block

log = logging.getLogger(__name__)


def register_configs() -> None:
    """Register the structured-config schemas of ``conf/map.yaml`` and ``conf/mapping/``."""
    from cgsim.mapping.config import register

    register()



def mapping_from_config(inp: MapInput, mcfg: DictConfig | dict[str, Any]) -> CGMapping:
    """Build (or load) the mapping a ``mapping`` config node describes."""
    opts = OmegaConf.to_container(mcfg, resolve=True) if isinstance(mcfg, DictConfig) else dict(mcfg)
    scheme = opts.pop("scheme", None)
    weighting = opts.pop("weighting", "mass")
    if scheme not in SCHEMES:
        raise CgsimInputError("mapping.scheme", f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
    return build_mapping(inp.system, scheme, weighting=weighting, **opts)


class _Clock:
    """Times of output frames and the interval between them (checked to be even)."""

    def __init__(self, dt: float | None, stride: int, where: str, lammps_units: str | None = None) -> None:
        self.dt = dt
        self.stride = stride
        self.where = where
        self.lammps_units = lammps_units  # a LAMMPS dump: its unit style
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.interval: float | None = None

    def times(self, chunk: FrameChunk) -> np.ndarray:
        n = chunk.n_frames
        if self.dt is not None:
            t = (self.count + np.arange(n)) * self.dt * self.stride
        elif chunk.time is None:
            if self.count + n > 1 and self.lammps_units is not None:
                unit = "fs" if self.lammps_units == "real" else "ps"
                raise CgsimInputError("input.lammps_timestep", f"{self.where} is a LAMMPS dump without ITEM: TIME, so its "
                                                               "frames' times are unknown; set input.lammps_timestep=DT, "
                                                               f"the run's timestep in {unit} (units "
                                                               f"{self.lammps_units}: time = step x DT), or input.dt=PS "
                                                               "(time between frames)")
            if self.count + n > 1:
                raise CgsimInputError("input.dt", f"the times of the frames of {self.where} are unknown (DCD, PDB, GRO or a "
                                                  "LAMMPS dump without ITEM: TIME); set input.dt=PS (time between input frames), "
                                                  "or input.lammps_timestep for LAMMPS")
            t = np.zeros(n)
        else:
            t = np.asarray(chunk.time, dtype=np.float64)
        seq = t if self.last is None else np.concatenate([[self.last], t])
        if len(seq) > 1:
            steps = np.diff(seq)
            if self.interval is None:
                self.interval = float(steps[0])
                if not self.interval > 0:
                    raise CgsimInputError(self.where, f"frame times do not increase ({seq[0]:g} then {seq[1]:g} ps); set input.dt")
            tol = 1e-3 * self.interval + 4 * np.finfo(np.float32).eps * float(np.abs(seq).max())
            bad = np.flatnonzero(np.abs(steps - self.interval) > tol)
            if len(bad):
                k = int(bad[0])
                raise CgsimInputError(self.where, f"frames are not evenly spaced in time ({steps[k]:g} ps after {seq[k]:g} ps, "
                                                  f"expected {self.interval:g}); bead trajectories need even spacing")
        if self.first is None:
            self.first = float(t[0])
        self.last = float(t[-1])
        self.count += n
        return t


def _check_config(cfg: DictConfig) -> None:
    required = {("input", "trajectory"): "input.trajectory=PATH (the trajectory to map)",
                ("", "output"): "output=DIR (where the bead files go)",
                ("mapping", "path"): "mapping.path=FILE.yaml (beads by atom names, or a saved mapping.yaml)"}
    for (node, key), what in required.items():
        parent = cfg if not node else cfg.get(node)
        if parent is not None and key in parent.keys() and OmegaConf.is_missing(parent, key):
            raise CgsimInputError(f"{node}.{key}".lstrip("."), f"is required: {what}")
    if cfg.pbc not in PBC_MODES:
        raise CgsimInputError("pbc", f"unknown mode {cfg.pbc!r}; expected one of {PBC_MODES}")
    if cfg.trajectory_format not in TRAJECTORY_FORMATS:
        raise CgsimInputError("trajectory_format", f"{cfg.trajectory_format!r} is not supported; expected one of {TRAJECTORY_FORMATS}")
    if cfg.input.dt is not None and not (math.isfinite(float(cfg.input.dt)) and float(cfg.input.dt) > 0):
        raise CgsimInputError("input.dt", f"expected a positive time in ps, got {cfg.input.dt}")
    positive_temperature(cfg.temperature, "temperature", unit="K, or reduced units for LJ systems")
    check_output_directory(cfg.output)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Map ``cfg.input`` with ``cfg.mapping`` into ``cfg.output`` (module docstring).

    Returns
    -------
    dict
        Summary: output files, atoms, beads, frames, wall time, atom-frames per second.
    """
    t0 = time.perf_counter()
    _check_config(cfg)
    out = Path(cfg.output)
    traj_name = f"beads.{cfg.trajectory_format}"
    targets = [out / n for n in ("mapping.yaml", "beads.pdb", traj_name, "beads.json")]
    existing = [p.name for p in targets if p.exists()]
    if existing and not cfg.overwrite:
        raise CgsimInputError(str(out), f"output dir already holds {', '.join(existing)}; choose another output or set overwrite=true")
    stale = remove_stale_temporaries([*targets, *(out / f"beads.{f}" for f in TRAJECTORY_FORMATS)])
    if stale:
        log.info("%s: removed %d temporary file(s) left by an interrupted run: %s", out, len(stale),
                 ", ".join(p.name for p in stale))

    ic = cfg.input
    inp = open_input(str(ic.trajectory), None if ic.topology is None else str(ic.topology), fmt=str(ic.format),
                     selection=ic.selection, lammps_units=str(ic.lammps_units),
                     lammps_timestep=None if ic.lammps_timestep is None else float(ic.lammps_timestep),
                     charges=None if ic.charges is None else str(ic.charges))
    mapping = mapping_from_config(inp, cfg.mapping)
    msum = _log_mapping(inp, mapping)

    pbc = str(cfg.pbc)
    if pbc == "auto" and inp.sidecar is not None and inp.sidecar.coordinates == "unwrapped":
        # cgsim's own reference MD: molecules already whole and continuous; unwrapping again could
        # only fold a fast molecule that moved more than half a box between frames
        log.info("%s: its sidecar declares unwrapped coordinates; pbc=none", inp.trajectory)
        pbc = "none"
    mapper = BeadMapper(mapping, inp.system.bonds, pbc=pbc, where=inp.trajectory)
    clock = _Clock(None if ic.dt is None else float(ic.dt), int(ic.stride), inp.trajectory,
                   inp.lammps_units if inp.kind == "lammps" else None)
    top = bead_topology(mapping)
    first_xyz = first_box = first_atoms = None
    n_frames = 0
    bar = tqdm(total=inp.n_frames_hint(), unit="frame", desc=f"map {Path(inp.trajectory).name}", disable=not cfg.progress,
               dynamic_ncols=True, mininterval=2.0)
    # every file of the mapped directory replaces its predecessor at the end, together: an error
    # (a full disk included) leaves an earlier mapping in `output` whole
    with committed_together(), TrajectoryWriter(out / traj_name, top) as writer:
        try:
            for chunk in inp.chunks(int(ic.chunk), int(ic.stride)):
                times = clock.times(chunk)
                beads = mapper.map(chunk.xyz, chunk.box, chunk.images, chunk.unwrapped)
                box = clean_box(chunk.box, inp.trajectory, clock.count - chunk.n_frames)
                if first_xyz is None:
                    first_xyz, first_box = beads[:1], None if box is None else box[:1]
                    first_atoms = chunk.xyz[0]
                writer.write(beads, times, box)
                n_frames += len(beads)
                bar.update(len(beads))
        finally:
            bar.close()
        if n_frames == 0:
            raise CgsimInputError(inp.trajectory, "holds no frames")
        save_mapping(mapping, out / "mapping.yaml")
        first = md.Trajectory(first_xyz.astype(np.float32), top)
        if first_box is not None:
            first.unitcell_vectors = first_box.astype(np.float32)
        with atomic_path(out / "beads.pdb") as tmp:
            first.save_pdb(str(tmp))
        elapsed = time.perf_counter() - t0
        rate = mapping.n_atoms * n_frames / max(elapsed, 1e-9)
        meta = _metadata(cfg, inp, mapping, traj_name, n_frames, clock, first_box, elapsed, rate, mapper.mode or "none")
        write_sidecar(meta, out / traj_name)
    units_note = bonded_distance_warning(inp, mapping, first_atoms, first_xyz[0], first_box)
    if units_note is not None:
        log.warning("%s", units_note)
    print(f"map: {mapping.n_atoms} atoms -> {mapping.n_beads} beads ({mapping.n_types} types, {mapping.n_molecules} molecules), "
          f"{n_frames} frames -> {out} in {elapsed:.1f} s ({rate:.3g} atom-frames/s)")
    return {"output": str(out), "trajectory": str(out / traj_name), "n_atoms": mapping.n_atoms, "n_beads": mapping.n_beads,
            "n_types": mapping.n_types, "n_frames": n_frames, "wall_seconds": elapsed, "atom_frames_per_second": rate,
            "mapping_hash": msum["hash"], "pbc": mapper.mode, "warnings": [units_note] if units_note else []}


#: bonded distances plausible in nm (median over the first frame's bonds): outside them, warn
BEAD_BOND_NM = (0.05, 5.0)
ATOM_BOND_NM = (0.05, 0.8)


def _median_bond(xyz: np.ndarray, bonds: np.ndarray, box: np.ndarray | None) -> float | None:
    """Median length (nm) of ``bonds`` (pairs) in one frame, minimum image in an orthorhombic ``box``."""
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    if not len(bonds):
        return None
    d = np.asarray(xyz, dtype=np.float64)[bonds[:, 1]] - np.asarray(xyz, dtype=np.float64)[bonds[:, 0]]
    if box is not None:
        lengths = np.diag(np.asarray(box, dtype=np.float64).reshape(3, 3))
        if np.all(lengths > 0):
            d -= lengths * np.round(d / lengths)
    return float(np.median(np.linalg.norm(d, axis=1)))


def bonded_distance_warning(inp: MapInput, mapping: CGMapping, atoms: np.ndarray | None, beads: np.ndarray,
                            box: np.ndarray | None) -> str | None:
    """One line when the first frame's bonded distances are implausible for nm (coordinates in Angstrom?).

    The rule: the median bead bond outside 0.05-5 nm, or the median atom bond outside 0.05-0.8 nm
    (covalent bonds are 0.1-0.2 nm, coarse-grained input bonds up to ~0.5 nm). Systems in reduced
    LJ units (their sidecar says so) are not judged.
    """
    if inp.sidecar is not None and inp.sidecar.system.units.get("system") == "lj":
        return None
    bead = _median_bond(beads, mapping.bonds, None)  # beads are unwrapped: whole molecules
    atom = None if atoms is None else _median_bond(atoms, inp.system.bonds, None if box is None else box[0])
    bad = []
    if bead is not None and not BEAD_BOND_NM[0] <= bead <= BEAD_BOND_NM[1]:
        bad.append(f"the median bead bond is {bead:.3g} nm (plausible: {BEAD_BOND_NM[0]:g}-{BEAD_BOND_NM[1]:g} nm)")
    if atom is not None and not ATOM_BOND_NM[0] <= atom <= ATOM_BOND_NM[1]:
        bad.append(f"the median atom bond is {atom:.3g} nm (plausible: {ATOM_BOND_NM[0]:g}-{ATOM_BOND_NM[1]:g} nm)")
    if not bad:
        return None
    return (f"map: warning: {inp.trajectory}: in its first frame {' and '.join(bad)}: are the coordinates in Angstrom "
            "(or another unit) rather than nm? Files that hold nm (XTC, TRR, GRO, H5) must not be written in Angstrom; "
            "mdtraj converts PDB and DCD itself. Rollouts of a model refuse such systems")


def _log_mapping(inp: MapInput, mapping: CGMapping) -> dict[str, Any]:
    """Log what the mapping makes of the input; return its summary."""
    msum = mapping.summary()
    log.info("mapping %s: %d atoms -> %d beads of %d types (%.2f atoms per bead), hash %s", mapping.scheme,
             mapping.n_atoms, mapping.n_beads, mapping.n_types, msum["atoms_per_bead"]["mean"], msum["hash"])
    if inp.system.charges_known:
        log.info("bead charges from atom charges of %s: total %.6g e, %d charged beads", inp.system.charges_source,
                 msum["total_charge"], int(np.count_nonzero(np.abs(mapping.bead_charges) > 1e-6)))
    else:
        log.info("atom charges unknown (set input.charges=FILE): bead charges are 0")
    return msum


def _coordinates(inp: MapInput, pbc_mode: str, first_box: np.ndarray | None) -> str:
    """``unwrapped`` when made so here or declared so by the input; ``as_input`` otherwise."""
    if pbc_mode in ("images", "bonds") or first_box is None:
        return "unwrapped"
    if inp.sidecar is not None and inp.sidecar.coordinates == "unwrapped":
        return "unwrapped"
    return "as_input"


def _charges_source(inp: MapInput) -> str | None:
    """Where the atom charges came from (a resolved file path), or None when unknown."""
    if not inp.system.charges_known:
        return None
    src = inp.system.charges_source
    return str(Path(src).resolve()) if src and Path(src).is_file() else (src or None)


def _metadata(cfg: DictConfig, inp: MapInput, mapping: CGMapping, traj_name: str, n_frames: int, clock: _Clock,
              first_box: np.ndarray | None, elapsed: float, rate: float, pbc_mode: str) -> TrajectoryMetadata:
    src = inp.sidecar
    units = src.system.units if src is not None else units_block("md")
    time_unit_ps = 1.0
    if units.get("system") == "lj":
        time_unit_ps = float(units["lj_in_md_units"]["tau_ps"])
    name = cfg.name or (src.system.name if src is not None else Path(inp.trajectory).stem)
    temperature = float(cfg.temperature) if cfg.temperature is not None else (src.system.temperature if src is not None else None)
    md_timestep = src.system.md_timestep if src is not None else (
        None if inp.md_timestep is None else inp.md_timestep / time_unit_ps)
    box = None
    if first_box is not None:
        lengths, angles = box_lengths_angles(first_box.astype(np.float64))
        box = [*map(float, lengths[0]), *map(float, angles[0])]
    info = SystemInfo(name=str(name), units=units, temperature=temperature, md_timestep=md_timestep,
                      periodic=first_box is not None, particle_types=[mapping.type_names[t] for t in mapping.bead_types],
                      particle_masses=mapping.bead_masses.tolist(), box=box)
    interval = None if clock.interval is None else clock.interval / time_unit_ps
    msum = mapping.summary()
    provenance = {
        "command": command_line("map", "cgsim.mapping.command.run"),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "source": {"trajectory": str(Path(inp.trajectory).resolve()), "topology": str(Path(inp.topology).resolve()),
                   "reader": inp.kind, "sidecar_kind": None if src is None else src.kind,
                   "selection": None if inp.atoms is None else cfg.input.selection, "stride": int(cfg.input.stride),
                   "charges": _charges_source(inp)},
        "software": software_versions(),
        "created": now_iso(),
        "wall_seconds": elapsed,
    }
    return TrajectoryMetadata(
        kind="mapped", trajectory=traj_name, topology="beads.pdb", system=info, save_interval=interval,
        n_frames=n_frames, start_time=(clock.first or 0.0) / time_unit_ps, coordinates=_coordinates(inp, pbc_mode, first_box),
        provenance=provenance,
        summary={"n_atoms": mapping.n_atoms, "n_beads": mapping.n_beads, "n_types": mapping.n_types,
                 "n_molecules": mapping.n_molecules, "atoms_per_bead": msum["atoms_per_bead"],
                 "total_mass_amu": msum["total_mass"], "total_charge_e": msum["total_charge"],
                 "charges_known": bool(inp.system.charges_known), "atom_frames_per_second": rate},
        extra={"mapping": {"file": "mapping.yaml", "hash": msum["hash"], "scheme": mapping.scheme,
                           "weighting": mapping.weighting, "options": mapping.options},
               "pbc": {"requested": str(cfg.pbc), "used": pbc_mode},
               "particle_charges": mapping.bead_charges.tolist() if inp.system.charges_known else None,
               "bead_types": mapping.type_names,
               "source_metadata": None if src is None else {"kind": src.kind, "trajectory": src.trajectory,
                                                             "save_interval": src.save_interval}},
    )
