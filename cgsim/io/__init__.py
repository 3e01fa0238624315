"""File formats cgsim reads and writes that mdtraj does not cover (or not fully).

- :mod:`cgsim.io.lammps`      LAMMPS data files (topology) and dump files (frames, image flags):
  :mod:`cgsim.io.lammps_data` and :mod:`cgsim.io.lammps_dump`
- :mod:`cgsim.io.trajectory`  streamed, atomic writing of trajectories (HDF5 / XTC / DCD)

Everything returned is in MD units (nm, ps, amu, e); conversion happens here, at the edge.
"""
