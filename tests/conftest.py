"""Shared fixtures and Hypothesis strategies.

* ``backend``: runs a test once per CPU backend ("numpy", the plain reference, and
  "numba", the fused kernels), restoring the previous backend afterwards; the
  Numba run is skipped when Numba is not installed.
* ``arrays(shape, dtype, low, high, strided=None)``: float arrays, sometimes a
  non-contiguous view (every other row of a larger array).
* ``FLOAT_DTYPES``, ``float_dtypes``, ``small_shapes``, ``matrix_shapes``.

Test modules import the strategies with ``from conftest import ...`` (pytest puts
this folder on ``sys.path``).
"""
import importlib.util

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minigrad as mg

HAS_NUMBA = importlib.util.find_spec("numba") is not None
BACKENDS = ["numpy", "numba"]
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


def tolerance(dtype):
    """assert_allclose tolerances for comparing two implementations in ``dtype``."""
    if np.dtype(dtype) == np.float32:
        return dict(rtol=2e-5, atol=2e-6)
    return dict(rtol=1e-12, atol=1e-12)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The name of the active backend, switched for the duration of the test."""
    if request.param == "numba" and not HAS_NUMBA:
        pytest.skip("the numba backend needs numba")
    with mg.set_backend(request.param):
        yield request.param
