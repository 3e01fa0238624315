"""Coarse-graining existing trajectories into beads (the ``cgsim map`` stage).

Python API::

    from cgsim.mapping import system_from_topology, build_mapping, apply_mapping, save_mapping

    traj = mdtraj.load("md.xtc", top="md.pdb")
    system = system_from_topology(traj.topology)          # masses, molecules, atom labels
    # atom charges (e), which a PDB lacks, from a file: .npy, .txt/.dat/.csv or OpenMM System .xml
    # (or system_from_topology(traj.topology, charges=...), or build_mapping(..., charges=...))
    system = system.with_charges("system.xml")
    mapping = build_mapping(system, "metis", atoms_per_bead=7, keep_whole_max_atoms=15)
    beads = apply_mapping(traj, mapping)                  # molecules whole, unwrapped in time
    save_mapping(mapping, "mapping.yaml")

Modules:

- :mod:`cgsim.mapping.system`    the fine system (:class:`AtomSystem`) from mdtraj or LAMMPS
- :mod:`cgsim.mapping.charges`   atom charges from .npy, text or OpenMM System XML files
- :mod:`cgsim.mapping.core`      :class:`CGMapping` and its YAML file with a hash
- :mod:`cgsim.mapping.builders`  schemes ``molecule``, ``residue``, ``metis``, ``file``; bead types
- :mod:`cgsim.mapping.spec`      user mapping files (beads by atom names per residue type)
- :mod:`cgsim.mapping.pbc`       minimum image, molecules made whole and continuous in time
- :mod:`cgsim.mapping.apply`     :class:`BeadMapper` (streaming), :func:`apply_mapping`
- :mod:`cgsim.mapping.inputs`    opening trajectories + topologies (mdtraj formats, LAMMPS)
- :mod:`cgsim.mapping.command`   the ``cgsim map`` verb
"""

from cgsim.mapping.apply import BeadMapper, apply_mapping, bead_topology
from cgsim.mapping.builders import SCHEMES, build_mapping
from cgsim.mapping.charges import read_charges
from cgsim.mapping.core import CGMapping, load_mapping, save_mapping
from cgsim.mapping.system import AtomSystem, system_from_lammps, system_from_topology

__all__ = [
    "SCHEMES",
    "AtomSystem",
    "BeadMapper",
    "CGMapping",
    "apply_mapping",
    "bead_topology",
    "build_mapping",
    "load_mapping",
    "read_charges",
    "save_mapping",
    "system_from_lammps",
    "system_from_topology",
]
