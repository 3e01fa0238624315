"""Reference molecular dynamics with OpenMM.

- :mod:`cgsim.reference.sequence`  monomer sequences of graft copolymer chains
- :mod:`cgsim.reference.chain`     the bead-spring chain model (OpenMM System + topology)
- :mod:`cgsim.reference.electrolyte` all-atom PEO + LiTFSI: composition, topology, force field
- :mod:`cgsim.reference.electrolyte_geometry` its molecule geometry and packmol packing
- :mod:`cgsim.reference.electrolyte_settings` the options of an electrolyte run, validated
- :mod:`cgsim.reference.electrolyte_equilibration` minimise, compress, NPT until the density settles
- :mod:`cgsim.reference.electrolyte_generate` ``cgsim generate system=electrolyte``
- :mod:`cgsim.reference.electrolyte_validate` physical validation of a run (``python -m``), reading it
  through :mod:`~cgsim.reference.electrolyte_run` and measuring with
  :mod:`~cgsim.reference.electrolyte_analysis` and :mod:`~cgsim.reference.nve`
- :mod:`cgsim.reference.runner`    resumable, chunked, checkpointed MD runs
- :mod:`cgsim.reference.platforms` the OpenMM platform and its properties
- :mod:`cgsim.reference.generate`  the ``cgsim generate`` verb
"""
