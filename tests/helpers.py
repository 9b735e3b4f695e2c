"""What the tests share: Hypothesis strategies, host/device helpers, tolerances, and
what this machine can run.  Test modules import from here (``from helpers import
...``); ``conftest.py`` holds only the fixtures and options.

* ``arrays(shape, dtype, low, high, strided=None)``: float arrays, sometimes a
  non-contiguous view (every other row of a larger array).
* ``FLOAT_DTYPES``, ``float_dtypes``, ``small_shapes``, ``matrix_shapes``.
* ``host(a)`` / ``put(tensor, values)``: read and write data on any device.
* ``tolerance(dtype)``: for comparing two implementations.
* ``DEVICES`` / ``CPU_DEVICES`` / ``GPU_DEVICES``: the parameters of the ``device``
  fixture (pass a subset with ``@pytest.mark.parametrize("device", GPU_DEVICES,
  indirect=True)``); ``TestedDevice`` is what the fixture gives.
* ``HAS_NUMBA``, ``GPU_MISSING`` (None, or why the real GPU cannot run here),
  ``needs_gpu`` (a skip mark; import these two after conftest has run, i.e. at
  test-module level, since ``--cupy-emulated`` sets them), ``build_host_library``.
* ``check_loss_gradients(model, batch, seed)``: an autoencoder's full loss against
  central differences w.r.t. every parameter; ``write_fashion_like(root, n_train,
  n_test)``: small IDX files in the Fashion-MNIST layout.
"""
import contextlib
import importlib.util
import io

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


HAS_NUMBA = importlib.util.find_spec("numba") is not None
FLOAT_DTYPES = [np.float32, np.float64]

#: the ``device`` fixture's parameters: minigrad's three backends, and the 'cupy'
#: backend on CuPy emulated on the host (support/cupy_emulation.py)
DEVICES = ["numpy", "numba", "cupy", "cupy-emulated"]
CPU_DEVICES = ["numpy", "numba"]
GPU_DEVICES = ["cupy", "cupy-emulated"]

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
    from minigrad.device import require_cupy
    try:
        require_cupy()
        return None
    except (ImportError, RuntimeError) as error:
        return str(error)


GPU_MISSING = gpu_missing()

needs_gpu = pytest.mark.skipif(GPU_MISSING is not None,
                               reason=f"needs CuPy and a CUDA device: {GPU_MISSING}")


def build_host_library(folder):
    """Every CUDA kernel compiled for the host, or the reason it cannot be."""
    from support import cuda_sources as cs
    compiler = cs.host_compiler()
    if compiler is None:
        return None, "cupy-emulated needs a C++ compiler (g++ or clang++ on PATH, or $CXX)"
    try:
        return cs.HostLibrary(cs.all_specs(), folder, compiler), None
    except RuntimeError as error:
        return None, (f"cupy-emulated: the host compiler could not build the kernels "
                      f"(C++20 <barrier> needed): {error}")


class TestedDevice:
    """What the ``device`` fixture gives: the backend a test runs on.

    ``param`` is the fixture parameter ("numpy", "numba", "cupy", "cupy-emulated"),
    ``name`` minigrad's backend name ("cupy" for both GPU parameters), ``xp`` the
    array module (NumPy, or the CuPy the 'cupy' backend runs on: real or emulated),
    ``kernels`` the backend's fused kernels (the NumPy references for "numpy").
    """

    __test__ = False  # not a test class, despite the name

    def __init__(self, param, minigrad_device):
        self.param = param
        self.name = minigrad_device.name
        self.xp = minigrad_device.xp
        self.kernels = minigrad_device.kernels
        self.emulated = param == "cupy-emulated"
        self.gpu = minigrad_device.type == "cuda"

    def to_device(self, a):
        """A copy of host array ``a`` on this device."""
        return self.xp.array(a, copy=True) if self.gpu else np.array(a, copy=True)

    def to_host(self, a):
        return host(a)

    def __repr__(self):
        return self.param


def check_loss_gradients(model, batch, seed):
    """An autoencoder's total loss against central differences w.r.t. every
    parameter (float64), on a random batch; the noise is fixed by giving each call a
    fresh generator with the same seed."""
    import minigrad as mg
    rng = np.random.default_rng(seed)
    # Biases start at 0: behind a layer of dead ReLUs a pre-activation would then be
    # exactly 0, on the kink, where a central difference sees neither side.
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.data += rng.normal(0.0, 0.1, p.shape)
    x = rng.random((batch, model.input_dim))
    names = [name for name, _ in model.named_parameters()]

    def total(*params):
        return model.loss(x, rng=np.random.default_rng(seed + 1))[0]

    assert mg.gradcheck(total, model.parameters(), names=names)


def write_fashion_like(root, n_train, n_test):
    """Four small IDX files in the Fashion-MNIST layout under ``root``: class-dependent
    bars (so codes carry some label information) with noise; returns ``root``."""
    from autoencoders import datasets
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = np.zeros((n, 28, 28), np.float64)
        for i, label in enumerate(labels):
            r = 3 + 2 * label
            images[i, r:r + 6, 4:24] = 1.0
        images = np.clip(images * 200 + rng.integers(0, 55, images.shape), 0, 255)
        datasets.write_idx(root / f"{split}-images-idx3-ubyte.gz", images.astype(np.uint8))
        datasets.write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


def usage_error(argv):
    """Run the command line (``python -m autoencoders argv``); it must exit with status
    2 and one line on stderr, which is returned."""
    from autoencoders import cli
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2, err.getvalue()
    text = err.getvalue()
    assert "Traceback" not in text and text.count("\n") <= 1 + text.count("usage:") * 20
    return text
