"""OpenMM platform choice for reference runs (cgsim.reference.platforms)."""

import os

import numpy as np
import openmm
import openmm.unit
import pytest

from cgsim.errors import CgsimInputError
from cgsim.reference import platforms as pf


def test_properties_per_platform():
    assert pf.platform_properties("CPU", 3) == {"Threads": "3"}
    for name in ("CUDA", "OpenCL", "HIP"):  # single-precision forces, double-precision integration
        assert pf.platform_properties(name, 1) == {"Precision": "mixed"}
    assert pf.platform_properties("Reference", 4) == {}


def test_auto_resolves_to_cuda_or_cpu():
    _, props, name = pf.select_platform("auto", threads=2)
    expected = "CUDA" if "CUDA" in pf.available_platforms() else "CPU"
    assert name == expected
    assert props == pf.platform_properties(expected, 2)


def test_selected_platform_builds_a_context():
    system = openmm.System()
    system.addParticle(1.0)
    plat, props, name = pf.select_platform("CPU", threads=1)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), plat, props)
    assert ctx.getPlatform().getName() == name == "CPU"
    assert ctx.getPlatform().getPropertyValue(ctx, "Threads") == "1"


def test_unknown_platform_is_one_line_error():
    with pytest.raises(CgsimInputError) as err:
        pf.select_platform("NoSuchPlatform", where="platform")
    msg = str(err.value)
    assert "platform" in msg and "NoSuchPlatform" in msg and "CPU" in msg and "\n" not in msg


def test_opencl_passes_the_thread_count_to_pocl(monkeypatch):
    # without an OpenCL runtime the platform is refused; with one, pocl gets the thread count
    monkeypatch.delenv(pf.POCL_THREADS_ENV, raising=False)
    if "OpenCL" not in pf.available_platforms():
        with pytest.raises(CgsimInputError, match="OpenCL"):
            pf.select_platform("OpenCL", threads=1)
        assert pf.POCL_THREADS_ENV not in os.environ
    else:
        _, props, name = pf.select_platform("OpenCL", threads=1)
        assert (name, props) == ("OpenCL", {"Precision": "mixed"})
        assert os.environ[pf.POCL_THREADS_ENV] == "1"
        monkeypatch.setenv(pf.POCL_THREADS_ENV, "7")  # the user's own setting wins
        pf.select_platform("OpenCL", threads=1)
        assert os.environ[pf.POCL_THREADS_ENV] == "7"


def _lj_pair_context(platform: str, distance: float) -> openmm.Context:
    """Two LJ particles (sigma 0.3 nm, epsilon 1 kJ/mol) ``distance`` apart, no cutoff."""
    system = openmm.System()
    nb = openmm.NonbondedForce()
    for _ in range(2):
        system.addParticle(10.0)
        nb.addParticle(0.0, 0.3, 1.0)
    system.addForce(nb)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))
    ctx.setPositions([[0, 0, 0], [distance, 0, 0]])
    return ctx


@pytest.mark.parametrize("start", [0.31, 0.38])
def test_minimize_energy_finds_the_lj_minimum(start):
    # analytic minimum of a LJ pair: r = 2^(1/6) sigma, E = -epsilon (from inside the well:
    # OpenMM's L-BFGS stops early from far outside it, whatever the platform)
    ctx = _lj_pair_context("Reference", start)
    pf.minimize_energy(ctx, 1e-6, 0)
    st = ctx.getState(getPositions=True, getEnergy=True)
    pos = st.getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer)
    assert np.linalg.norm(pos[1] - pos[0]) == pytest.approx(2 ** (1 / 6) * 0.3, rel=1e-4)
    assert st.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole) == pytest.approx(-1.0, rel=1e-6)


def test_minimize_in_cpu_copy_sets_the_minimised_positions_back():
    # the path taken for OpenCL / CUDA contexts, checked on a Reference context: the copy runs on
    # the CPU platform and only positions come back
    ctx = _lj_pair_context("Reference", 0.31)
    ctx.setVelocities([[1.0, 0, 0], [0, 0, 0]])
    pf.minimize_in_cpu_copy(ctx, 1e-6, 0, threads=1)
    st = ctx.getState(getPositions=True, getVelocities=True)
    pos = st.getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer)
    assert np.linalg.norm(pos[1] - pos[0]) == pytest.approx(2 ** (1 / 6) * 0.3, rel=1e-4)
    vel = st.getVelocities(asNumpy=True).value_in_unit(openmm.unit.nanometer / openmm.unit.picosecond)
    assert vel[0, 0] == pytest.approx(1.0)


def test_only_pocl_contexts_minimise_in_a_copy():
    assert not pf.runs_on_pocl(_lj_pair_context("Reference", 0.31))
    assert not pf.runs_on_pocl(_lj_pair_context("CPU", 0.31))
    if "OpenCL" in pf.available_platforms():  # with pocl installed (optional): the minimiser path that crashed
        ctx = _lj_pair_context("OpenCL", 0.31)
        if pf.runs_on_pocl(ctx):
            pf.minimize_energy(ctx, 1e-6, 0)
            pos = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer)
            assert np.linalg.norm(pos[1] - pos[0]) == pytest.approx(2 ** (1 / 6) * 0.3, rel=1e-4)
