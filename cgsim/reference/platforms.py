"""Which OpenMM platform a reference run uses, and with which properties.

One place for the choice that ``cgsim generate`` (chains and electrolyte), the electrolyte
validation's NVE run and the benchmarks make:

- ``auto``: CUDA where OpenMM finds it, else CPU;
- ``CPU``: ``Threads`` = the requested thread count, and ``OPENMM_CPU_THREADS`` set to it too:
  OpenMM's CPU PME plugin ignores ``Threads`` and reads that variable when a Context is created
  (every core otherwise), which also made PME systems on ``threads=1`` non-deterministic from
  one Context to the next (a resumed run could not continue bitwise);
- ``CUDA`` / ``OpenCL``: ``Precision = mixed`` (forces in single, integration in double
  precision: OpenMM's recommended setting for MD that must conserve energy; its default there
  is ``single``). For an OpenCL implementation that runs on the CPU (pocl, Debian's
  ``pocl-opencl-icd``), the thread count is passed on through pocl's
  ``POCL_MAX_PTHREAD_COUNT`` unless the environment already sets it.

On the 2-core development VM, pocl's OpenCL runs the electrolyte System 1.8x faster per thread
than the CPU platform, with forces equal to 1e-6 (relative rms): BENCHMARKS.md,
"Electrolyte reference MD". OpenMM's energy minimiser, however, crashes the process
(segmentation fault) on pocl, so :func:`minimize_energy` minimises a pocl context on the CPU
platform and hands the positions back: minimisation is a one-off, and its result does not
depend on the platform beyond rounding.
"""

from __future__ import annotations

import os

import openmm

from cgsim.errors import CgsimInputError

#: platforms with a ``Precision`` property, and the precision we run them in
GPU_STYLE = ("CUDA", "OpenCL", "HIP")
PRECISION = "mixed"
POCL_THREADS_ENV = "POCL_MAX_PTHREAD_COUNT"
CPU_THREADS_ENV = "OPENMM_CPU_THREADS"


def available_platforms() -> list[str]:
    """Names of the OpenMM platforms that loaded here, e.g. ``["Reference", "CPU"]``."""
    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def platform_properties(name: str, threads: int) -> dict[str, str]:
    """OpenMM Context properties for platform ``name`` run on ``threads`` CPU threads.

    Parameters
    ----------
    name : str
        A concrete platform name (not ``auto``).
    threads : int
        CPU threads (CPU platform; pocl through the environment, see :func:`select_platform`).

    Returns
    -------
    dict of str to str
        ``{"Threads": "N"}`` for CPU, ``{"Precision": "mixed"}`` for CUDA / OpenCL / HIP, else ``{}``.
    """
    if name == "CPU":
        return {"Threads": str(int(threads))}
    if name in GPU_STYLE:
        return {"Precision": PRECISION}
    return {}


def select_platform(name: str, threads: int = 1, where: str = "platform") -> tuple[openmm.Platform, dict[str, str], str]:
    """The OpenMM platform called ``name`` (or ``auto``), its Context properties, its resolved name.

    Parameters
    ----------
    name : str
        ``auto`` (CUDA if present, else CPU), ``CPU``, ``CUDA``, ``OpenCL``, ``HIP`` or ``Reference``.
    threads : int
        CPU threads for the CPU platform (its ``Threads`` property and ``OPENMM_CPU_THREADS``, which
        its PME reads) and for pocl's CPU OpenCL (set in ``POCL_MAX_PTHREAD_COUNT`` when the
        environment does not set it; pocl reads it when it first starts in a process).
    where : str
        Config key named in the error message.

    Returns
    -------
    tuple
        ``(platform, properties, resolved_name)``.

    Raises
    ------
    CgsimInputError
        If the platform is not available here (the message lists the ones that are).
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise CgsimInputError("threads", f"expected an integer >= 1 (CPU threads of the MD), got {threads!r}")
    names = available_platforms()
    if name == "auto":
        name = "CUDA" if "CUDA" in names else "CPU"
    if name not in names:
        raise CgsimInputError(where, f"OpenMM platform {name!r} is not available here; available: {', '.join(names)}")
    if name == "OpenCL":
        os.environ.setdefault(POCL_THREADS_ENV, str(max(1, int(threads))))
    if name == "CPU":
        os.environ[CPU_THREADS_ENV] = str(max(1, int(threads)))
    return openmm.Platform.getPlatformByName(name), platform_properties(name, threads), name


def minimize_energy(context: openmm.Context, tolerance: float, max_iterations: int, threads: int = 1) -> None:
    """L-BFGS energy minimisation of ``context``'s positions (:class:`openmm.LocalEnergyMinimizer`).

    A context on pocl's OpenCL gets its positions minimised in a CPU-platform copy of the same
    System (same positions and box) and set back, because OpenMM's minimiser crashes there;
    every other context (CPU, Reference, CUDA, OpenCL on a GPU) is minimised in place.

    Parameters
    ----------
    context : openmm.Context
        The context whose positions are minimised; its velocities are left alone.
    tolerance : float
        Convergence tolerance of :meth:`openmm.LocalEnergyMinimizer.minimize`, kJ/mol/nm.
    max_iterations : int
        Iteration cap (0 = until converged).
    threads : int
        CPU threads of the copy.
    """
    if runs_on_pocl(context):
        minimize_in_cpu_copy(context, tolerance, max_iterations, threads)
    else:
        openmm.LocalEnergyMinimizer.minimize(context, tolerance, max_iterations)


def runs_on_pocl(context: openmm.Context) -> bool:
    """True if ``context`` runs on OpenMM's OpenCL platform with pocl as the OpenCL implementation."""
    plat = context.getPlatform()
    if plat.getName() != "OpenCL":
        return False
    return "Portable Computing Language" in plat.getPropertyValue(context, "OpenCLPlatformName")


def minimize_in_cpu_copy(context: openmm.Context, tolerance: float, max_iterations: int, threads: int = 1) -> None:
    """Minimise ``context``'s positions in a CPU-platform copy of its System and set them back.

    Parameters are those of :func:`minimize_energy`, which calls this for contexts on pocl.
    """
    state = context.getState(getPositions=True)
    plat, props, _ = select_platform("CPU", threads)
    copy = openmm.Context(context.getSystem(), openmm.VerletIntegrator(0.001), plat, props)
    copy.setPeriodicBoxVectors(*state.getPeriodicBoxVectors())
    copy.setPositions(state.getPositions())
    openmm.LocalEnergyMinimizer.minimize(copy, tolerance, max_iterations)
    context.setPositions(copy.getState(getPositions=True).getPositions())
