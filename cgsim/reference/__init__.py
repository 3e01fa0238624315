"""Reference molecular dynamics with OpenMM.

- :mod:`cgsim.reference.sequence`  monomer sequences of graft copolymer chains
- :mod:`cgsim.reference.chain`     the bead-spring chain model (OpenMM System + topology)
- :mod:`cgsim.reference.electrolyte` all-atom PEO + LiTFSI: force field, builder, packing
- :mod:`cgsim.reference.electrolyte_generate` ``cgsim generate system=electrolyte``
- :mod:`cgsim.reference.runner`    resumable, chunked, checkpointed MD runs
- :mod:`cgsim.reference.generate`  the ``cgsim generate`` verb
"""
