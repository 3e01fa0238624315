"""Structured-config schemas of ``cgsim map`` (hydra validates overrides against them).

The root config is ``conf/map.yaml``; ``mapping=NAME`` picks ``conf/mapping/NAME.yaml``, each
with its own schema below. These schemas are the one source of every default: the YAML files
only merge them (and hold hydra's settings and usage comments). Value checks (known modes,
positive numbers, files that exist) happen in :func:`cgsim.mapping.command.run` and raise :class:`cgsim.errors.CgsimInputError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class MapInputConfig:
    """``input.*``: what to map."""

    #: trajectory file: any mdtraj format, or a LAMMPS dump (.lammpstrj, .dump)
    trajectory: str = MISSING
    #: topology file (PDB, GRO, PSF, HDF5, ..., or a LAMMPS data file); null when the
    #: trajectory carries one (HDF5, PDB, GRO)
    topology: str | None = None
    #: auto (from suffixes) | mdtraj | lammps
    format: str = "auto"
    #: mdtraj selection of the atoms to map, e.g. "not water"; null = all atoms
    selection: str | None = None
    #: frames read and mapped at a time (memory ~ chunk x atoms)
    chunk: int = 100
    #: map every stride-th frame
    stride: int = 1
    #: time between frames of the input file, ps; null = from the file
    dt: float | None = None
    #: LAMMPS unit style: real (Angstrom, fs) | metal (Angstrom, ps)
    lammps_units: str = "real"
    #: LAMMPS MD time step in its time unit (gives frame times from dump step numbers)
    lammps_timestep: float | None = None
    #: atom charges (e) for inputs whose topology has none (PDB, GRO, ...): a file with one
    #: charge per atom of the topology, in its atom order (before input.selection; LAMMPS: by
    #: atom id): .npy (NumPy array, shape (n_atoms,)) | .txt/.dat/.csv (numbers separated by
    #: newlines, spaces or commas; '#' starts a comment) | .xml (OpenMM System,
    #: XmlSerializer.serialize(system): its NonbondedForce charges). Bead charge = sum of its
    #: atoms' charges (mapping.yaml, beads.json extra.particle_charges, summary.charges_known).
    #: Given for a LAMMPS data file, it replaces the file's charges; null = from a LAMMPS data
    #: file or the input's cgsim sidecar, else unknown (beads get 0)
    charges: str | None = None


@dataclass
class MoleculeMappingConfig:
    """``mapping=molecule``: one bead per molecule."""

    scheme: str = "molecule"
    #: mass (centre of mass) | geometry (centre of geometry)
    weighting: str = "mass"


@dataclass
class ResidueMappingConfig:
    """``mapping=residue``: one bead per residue (monomer)."""

    scheme: str = "residue"
    weighting: str = "mass"


@dataclass
class MetisMappingConfig:
    """``mapping=metis``: METIS partition of each molecule's bond graph."""

    scheme: str = "metis"
    weighting: str = "mass"
    #: target atoms per bead (a molecule of n atoms gets round(n / atoms_per_bead) beads)
    atoms_per_bead: float = 7.0
    #: molecules with at most this many atoms stay one bead (ions, small anions)
    keep_whole_max_atoms: int = 15
    #: METIS random seed (same seed, same topology -> same beads)
    seed: int = 0


@dataclass
class FileMappingConfig:
    """``mapping=file``: beads by atom names from a YAML file, or a saved mapping.yaml."""

    scheme: str = "file"
    weighting: str = "mass"
    path: str = MISSING


@dataclass
class MapConfig:
    """Root options of ``cgsim map``."""

    input: MapInputConfig = field(default_factory=MapInputConfig)
    mapping: Any = MISSING
    #: output directory: beads.pdb, beads.<trajectory_format>, beads.json, mapping.yaml
    output: str = MISSING
    #: h5 (mdtraj HDF5) | xtc | dcd
    trajectory_format: str = "h5"
    #: auto | images | bonds | none (see cgsim.mapping.apply)
    pbc: str = "auto"
    #: system name for the metadata; null = from the input's sidecar or file name
    name: str | None = None
    #: temperature of the input MD, K, for the metadata; null = from the input's sidecar
    temperature: float | None = None
    #: replace outputs already in the output directory
    overwrite: bool = False
    progress: bool = True


def register() -> None:
    """Put the schemas into hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="map_schema", node=MapConfig)
    cs.store(group="mapping", name="molecule_schema", node=MoleculeMappingConfig)
    cs.store(group="mapping", name="residue_schema", node=ResidueMappingConfig)
    cs.store(group="mapping", name="metis_schema", node=MetisMappingConfig)
    cs.store(group="mapping", name="file_schema", node=FileMappingConfig)
