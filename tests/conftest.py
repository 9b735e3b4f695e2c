"""Fixtures and options (what the tests share otherwise is in ``helpers.py``).

* ``device``: runs a test once per backend (``helpers.DEVICES``), switched for the
  duration of the test and restored afterwards: "numpy" (the plain reference),
  "numba" (the fused CPU kernels), "cupy" (the GPU) and "cupy-emulated" (the
  'cupy' backend on a host stand-in for CuPy, ``support/cupy_emulation.py``; the
  test sees the backend name "cupy").  A run whose backend is missing here is
  skipped with the reason: Numba not installed, no CuPy or no CUDA device, no
  C++20 compiler for the emulation.  A subset: ``@pytest.mark.parametrize(
  "device", helpers.GPU_DEVICES, indirect=True)``.
* ``host_library``: every CUDA kernel compiled for the host (once per session).
* ``pytest --cupy-emulated``: the suite with the emulated 'cupy' backend as
  the default backend -- what ``MINIGRAD_BACKEND=cupy pytest`` does on a GPU.
  The ``device`` tests are deselected there: they choose their backend themselves,
  and the plain run has every one of them, its "cupy-emulated" runs on the same
  emulation.
"""
import os
import tempfile

import pytest

import helpers
import minigrad as mg


@pytest.fixture(scope="session")
def host_library(tmp_path_factory):
    library, why = helpers.build_host_library(str(tmp_path_factory.mktemp("cuda_host")))
    if library is None:
        pytest.skip(why)
    return library


@pytest.fixture(params=helpers.DEVICES)
def device(request, monkeypatch):
    """A :class:`helpers.TestedDevice`, its backend active for the test."""
    param = request.param
    name = "cupy" if param.startswith("cupy") else param
    if param == "numba" and not helpers.HAS_NUMBA:
        pytest.skip("the numba backend needs numba")
    if param == "cupy" and helpers.GPU_MISSING is not None:
        pytest.skip(f"needs CuPy and a CUDA device: {helpers.GPU_MISSING}")
    if param == "cupy-emulated":
        from support import cupy_emulation
        cupy_emulation.install(monkeypatch, request.getfixturevalue("host_library"))
    with mg.set_backend(name) as active:
        yield helpers.TestedDevice(param, active)


def pytest_addoption(parser):
    parser.addoption("--cupy-emulated", action="store_true",
                     help="run the suite (less the device fixture's tests) with the "
                          "'cupy' backend, as MINIGRAD_BACKEND=cupy does on a GPU, on CuPy "
                          "emulated on the host (tests/support/cupy_emulation.py)")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--cupy-emulated"):
        return
    again = [item for item in items
             if getattr(item, "callspec", None) is not None
             and "device" in item.callspec.params]
    if again:
        chosen = set(again)
        config.hook.pytest_deselected(items=again)
        items[:] = [item for item in items if item not in chosen]


def pytest_report_header(config):
    if config.getoption("--cupy-emulated"):
        return ("--cupy-emulated: default backend 'cupy' on emulated CuPy; the tests of "
                "the device fixture are deselected (the plain run has them, emulated 'cupy' "
                "included)")


def pytest_configure(config):
    if not config.getoption("--cupy-emulated"):
        return
    library, why = helpers.build_host_library(tempfile.mkdtemp(prefix="minigrad_cuda_host_"))
    if library is None:
        raise pytest.UsageError(why)
    from support import cupy_emulation
    cupy_emulation.install_for_session(library)
    # as on a GPU machine: the 'cupy' backend is the default, and it is "present"
    os.environ["MINIGRAD_BACKEND"] = "cupy"
    helpers.GPU_MISSING = None
    helpers.needs_gpu = pytest.mark.skipif(False, reason="")
    mg.set_backend("cupy")
