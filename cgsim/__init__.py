"""cgsim: coarse-grained multi-scale learned molecular simulation.

Data flow and where each stage lives: ``docs/architecture.md``. Sub-packages, in the order the
data passes through them:

- :mod:`cgsim.reference`    reference MD with OpenMM (``cgsim generate``: chains, PEO + LiTFSI)
- :mod:`cgsim.mapping`      atoms -> beads (``cgsim map``): mappings, streamed bead trajectories
- :mod:`cgsim.io`           file formats mdtraj lacks (LAMMPS) and streamed, atomic writers
- :mod:`cgsim.data`         mapped systems and training windows (history -> next frame)
- :mod:`cgsim.geometry`     neighbour search (periodic radius graphs, Verlet lists)
- :mod:`cgsim.model`        the multi-scale graph network, its coarse level, collective noise, refiner
- :mod:`cgsim.train`        ``cgsim train``: fitting, validation, checkpoints, export
- :mod:`cgsim.rollout`      ``cgsim rollout``: the batched, guarded, resumable rollout engine
- :mod:`cgsim.observables`  pure observables of bead trajectories (RDF, MSD, conductivity, ...)
- :mod:`cgsim.report`       the ``cgsim evaluate`` report: loading, suite, figures, markdown
- :mod:`cgsim.screen`       ``cgsim screen``: transport of new electrolyte compositions (MD, map, rollout, report)

Modules: :mod:`cgsim.evaluate` and :mod:`cgsim.demo` (verbs), :mod:`cgsim.cli` (the ``cgsim``
command), :mod:`cgsim.units`, :mod:`cgsim.metadata` (sidecars), :mod:`cgsim.io_utils` (atomic
writes), :mod:`cgsim.errors`, :mod:`cgsim.checks` (input checks shared by verbs),
:mod:`cgsim.config_compat`, :mod:`cgsim.runtime`.
"""

__version__ = "0.1.0"

from cgsim.errors import CgsimInputError  # noqa: E402

__all__ = ["CgsimInputError", "__version__"]
