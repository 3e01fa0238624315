"""LAMMPS data files (topology) and dump files (frames), read into MD units.

Data files
    :func:`read_data` reads the header (atom count, box), ``Masses``, ``Atoms`` (styles
    ``full``, ``molecular``/``bond``/``angle``, ``charge``, ``atomic``, with or without image
    flags) and ``Bonds``; other sections (coefficients, angles, velocities, ...) are skipped.
    :func:`lammps_topology` turns the result into an :class:`mdtraj.Topology` (elements guessed
    from masses, one residue per molecule, bonds).

Dump files
    :func:`iter_dump` streams a text dump (``dump atom`` / ``dump custom``, optionally gzipped)
    in chunks of frames. It needs the ``id`` column and one coordinate set: ``x y z`` (wrapped,
    plus image flags ``ix iy iz`` when present), ``xu yu zu`` (unwrapped), ``xs ys zs`` or
    ``xsu ysu zsu`` (scaled). Orthorhombic and (restricted) triclinic periodic boxes are read;
    a box that is periodic in some directions only, or LAMMPS's general triclinic
    ``abc origin`` form, is refused. Atoms are returned sorted by id, which is the order of
    the data file.

Units: the LAMMPS ``real`` and ``metal`` unit styles are supported (both use Angstrom, g/mol
and e; time is fs in ``real`` and ps in ``metal``). Everything returned is nm, ps, amu, e.

The readers live in :mod:`cgsim.io.lammps_data` and :mod:`cgsim.io.lammps_dump`; their public
names are importable from here.
"""

from cgsim.io.lammps_data import (
    ATOM_STYLES,
    LAMMPS_UNITS,
    LammpsData,
    box_from_bounds,
    element_from_mass,
    lammps_topology,
    read_data,
)
from cgsim.io.lammps_dump import DumpFrames, iter_dump

__all__ = [
    "ATOM_STYLES",
    "LAMMPS_UNITS",
    "DumpFrames",
    "LammpsData",
    "box_from_bounds",
    "element_from_mass",
    "iter_dump",
    "lammps_topology",
    "read_data",
]
