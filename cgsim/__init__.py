"""cgsim: coarse-grained multi-scale learned molecular simulation.

Sub-packages (each one stage of the data flow in DESIGN.md):

- :mod:`cgsim.units`      units used inside the package and declared alternatives
- :mod:`cgsim.metadata`   dataclasses describing systems and trajectory files (sidecars)
- :mod:`cgsim.reference`  reference MD generators (OpenMM)
"""

__version__ = "0.1.0"

from cgsim.errors import CgsimInputError  # noqa: E402

__all__ = ["CgsimInputError", "__version__"]
