"""Shared fixtures and Hypothesis strategies.

* ``backend``: runs a test once per backend, restoring the previous backend
  afterwards: "numpy" (the plain reference), "numba" (the fused CPU kernels),
  "cupy" (the GPU) and "cupy-emulated" (the 'cupy' backend on a host stand-in for
  CuPy, see ``cupy_emulation.py``; the test sees the name "cupy").  A run whose
  backend is missing here is skipped with the reason: Numba not installed, no
  CuPy or no CUDA device, no C++20 compiler for the emulation.
* ``host_library``: every CUDA kernel compiled for the host (once per session).
* ``gpu``: the ``cupy`` module the 'cupy' backend runs on, once real (skipped
  without a GPU) and once the host stand-in ("cupy-emulated").
* ``pytest --cupy-emulated``: the whole suite with the emulated 'cupy' backend as
  the default backend -- what ``MINIGRAD_BACKEND=cupy pytest`` does on a GPU.
* ``arrays(shape, dtype, low, high, strided=None)``: float arrays, sometimes a
  non-contiguous view (every other row of a larger array).
* ``FLOAT_DTYPES``, ``float_dtypes``, ``small_shapes``, ``matrix_shapes``.
* ``host(a)`` / ``put(tensor, values)``: read and write data on any device.

Test modules import the strategies with ``from conftest import ...`` (pytest puts
this folder on ``sys.path``).
"""
import importlib.util
import os
import tempfile

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minigrad as mg

HAS_NUMBA = importlib.util.find_spec("numba") is not None
BACKENDS = ["numpy", "numba", "cupy", "cupy-emulated"]
FLOAT_DTYPES = [np.float32, np.float64]

float_dtypes = st.sampled_from(FLOAT_DTYPES)
small_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6)
matrix_shapes = hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=37)


@st.composite
def arrays(draw, shape, dtype, low=-4.0, high=4.0, strided=None):
    """A ``dtype`` array of ``shape`` with values in [low, high]; when ``strided``
    (drawn if None) a non-contiguous view of every other row of a larger array."""
    strided = draw(st.booleans()) if strided is None else strided
    shape = tuple(shape)
    full = (shape[0] * 2,) + shape[1:] if strided and shape else shape
    a = draw(hnp.arrays(dtype, full, elements=st.floats(low, high, width=32)))
    return a[::2] if strided and shape else a


def host(a):
    """A host NumPy copy of an array or Tensor, wherever it lives (CuPy arrays do not
    convert to NumPy implicitly)."""
    if hasattr(a, "numpy"):
        return a.numpy()
    return a.get() if hasattr(a, "get") else np.array(a, copy=True)


def put(tensor, values):
    """Write host ``values`` into ``tensor``'s data, on the tensor's device."""
    tensor.data[...] = tensor.xp.asarray(values, dtype=tensor.dtype)


def tolerance(dtype):
    """assert_allclose tolerances for comparing two implementations in ``dtype``."""
    if np.dtype(dtype) == np.float32:
        return dict(rtol=2e-5, atol=2e-6)
    return dict(rtol=1e-12, atol=1e-12)


def gpu_missing():
    """None when the real 'cupy' backend can run here, else why not."""
    from minigrad.backend import require_cupy
    try:
        require_cupy()
        return None
    except (ImportError, RuntimeError) as error:
        return str(error)


GPU_MISSING = gpu_missing()


def build_host_library(folder):
    """Every CUDA kernel compiled for the host, or the reason it cannot be."""
    import cuda_sources as cs
    compiler = cs.host_compiler()
    if compiler is None:
        return None, "cupy-emulated needs a C++ compiler (g++ or clang++ on PATH, or $CXX)"
    try:
        return cs.HostLibrary(cs.all_specs(), folder, compiler), None
    except RuntimeError as error:
        return None, (f"cupy-emulated: the host compiler could not build the kernels "
                      f"(C++20 <barrier> needed): {error}")


@pytest.fixture(scope="session")
def host_library(tmp_path_factory):
    library, why = build_host_library(str(tmp_path_factory.mktemp("cuda_host")))
    if library is None:
        pytest.skip(why)
    return library


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """The name of the active backend, switched for the duration of the test."""
    name = request.param
    if name == "numba" and not HAS_NUMBA:
        pytest.skip("the numba backend needs numba")
    if name == "cupy" and GPU_MISSING is not None:
        pytest.skip(f"needs CuPy and a CUDA device: {GPU_MISSING}")
    if name == "cupy-emulated":
        if request.config.getoption("--cupy-emulated"):
            pytest.skip("--cupy-emulated: the 'cupy' run is the emulated one already")
        import cupy_emulation
        cupy_emulation.install(monkeypatch, request.getfixturevalue("host_library"))
        name = "cupy"
    with mg.set_backend(name):
        yield name


@pytest.fixture(params=["cupy", "cupy-emulated"])
def gpu(request, monkeypatch):
    """The ``cupy`` module the 'cupy' backend runs on: the real one on a GPU, or the
    host stand-in (``cupy_emulation.py``), which takes the same code paths."""
    if request.param == "cupy":
        if GPU_MISSING is not None:
            pytest.skip(f"needs CuPy and a CUDA device: {GPU_MISSING}")
        import cupy
        return cupy
    if request.config.getoption("--cupy-emulated"):
        pytest.skip("--cupy-emulated: the 'cupy' run is the emulated one already")
    import cupy_emulation
    return cupy_emulation.install(monkeypatch, request.getfixturevalue("host_library"))


def pytest_addoption(parser):
    parser.addoption("--cupy-emulated", action="store_true",
                     help="run the whole suite with the 'cupy' backend, as "
                          "MINIGRAD_BACKEND=cupy does on a GPU, on CuPy emulated on the "
                          "host (tests/cupy_emulation.py)")


def pytest_configure(config):
    if not config.getoption("--cupy-emulated"):
        return
    library, why = build_host_library(tempfile.mkdtemp(prefix="minigrad_cuda_host_"))
    if library is None:
        raise pytest.UsageError(why)
    import cupy_emulation
    cupy_emulation.install_for_session(library)
    # as on a GPU machine: the 'cupy' backend is the default, and it is "present"
    os.environ["MINIGRAD_BACKEND"] = "cupy"
    global GPU_MISSING
    GPU_MISSING = None
    mg.set_backend("cupy")
