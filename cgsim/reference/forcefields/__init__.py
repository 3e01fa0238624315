"""Force-field files shipped with cgsim (OpenMM ForceField XML).

- ``peo_litfsi.xml``: OPLS-AA PEO + Canongia Lopes & Padua TFSI- + Aqvist Li+; see
  :mod:`cgsim.reference.electrolyte` for how it is turned into an OpenMM System.
"""
