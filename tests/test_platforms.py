"""OpenMM platform choice for reference runs (cgsim.reference.platforms)."""

import os

import openmm
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
