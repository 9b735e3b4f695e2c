"""Lazy CuPy kernels for the kernel modules (the CUDA counterpart of ``_jit``).

The CUDA code of a kernel module lives in a ``.cu`` file beside it (``dense.cu``
next to ``dense.py``), shipped with the package and read at first use; every
source starts with :func:`common_source` (``math.cuh`` and the activation
table).  The file defines ``extern "C"`` kernels, one per dtype, named
``<name>_f32`` and ``<name>_f64``; the module names each kernel it launches in a
:class:`Raw` spec (a ``cupy.RawModule`` on the file, one per file and device),
which needs neither CuPy nor a GPU to read or to compile.

Nothing here imports CuPy until a kernel is first called; the CUDA code is then
compiled by CuPy (NVRTC) on first use on each device and cached on disk by CuPy.
The CuPy version of each kernel records the specs it launches (:func:`uses`), so
``tests/test_cuda_compile.py`` compiles the source of every registered CuPy kernel
with NVRTC on a machine without a GPU.

Every kernel is compiled with ``--fmad=false``: NumPy rounds ``a * b + c`` twice,
and so does the GPU then, which keeps the kernels made of + - * / and sqrt alone
(SGD, Adam, MSE) bit for bit equal to their NumPy references.  And with
``--ftz=true``: float32 arithmetic flushes subnormal operands and results to 0,
as the CPU does inside :func:`minigrad.flush_denormals`; what a kernel writes is
flushed explicitly too (``mg_flush``), in float64 as well, as on the CPU.
"""
from __future__ import annotations

import os
import threading

import numpy

from .. import activations

__all__ = ["Raw", "launch", "uses", "OPTIONS", "DTYPES", "read", "common_source", "suffix",
           "cupy_module",
           "check_device_arrays", "sm_count", "DeviceBuffers"]

#: NVRTC options of every kernel (CuPy adds its include paths and ``-std=c++17``).
OPTIONS = ("--fmad=false", "--ftz=true")

#: The dtypes every kernel is written for, and the suffix of their raw kernels.
DTYPES = {"float32": "f32", "float64": "f64"}

_FOLDER = os.path.dirname(os.path.abspath(__file__))
_sources = {}


def read(filename):
    """The text of a CUDA source file of this folder (read once, at first use)."""
    text = _sources.get(filename)
    if text is None:
        with open(os.path.join(_FOLDER, filename), encoding="utf-8") as f:
            text = _sources[filename] = f.read()
    return text


def common_source():
    """What every kernel source starts with: ``math.cuh`` (mg_exp, mg_flush, ...) and
    the activation table's ``mg_act`` / ``mg_deriv`` (:mod:`minigrad.activations`)."""
    return (read("math.cuh") + "\n#ifndef MG_ACTIVATIONS_DEFINED\n#define MG_ACTIVATIONS_DEFINED\n"
            + activations.cuda_source() + "#endif\n")


_lock = threading.Lock()


def cupy_module():
    """The ``cupy`` module (imported here, on first use, never at import time)."""
    import cupy
    return cupy


def suffix(dtype):
    """``"f32"`` or ``"f64"`` for a float dtype; a TypeError names any other."""
    name = numpy.dtype(dtype).name
    try:
        return DTYPES[name]
    except KeyError:
        raise TypeError(f"the CuPy kernels are written for float32 and float64, "
                        f"not {name}") from None


def check_device_arrays(kernel, *arrays):
    """A clear error when a CuPy kernel is given host arrays (a model left on the CPU
    while the 'cupy' backend is active)."""
    for a in arrays:
        if not type(a).__module__.startswith("cupy"):
            raise TypeError(
                f"{kernel}: the 'cupy' backend's kernels run on the GPU (cuda) but got a "
                f"{type(a).__module__}.{type(a).__name__} on the host (cpu); move the model "
                f"with model.to('cuda') (fit(..., backend='cupy') does it), or select a CPU "
                f"backend with minigrad.set_backend('numba')")


def uses(*specs):
    """Decorator for a kernel's CuPy version: record the CUDA specs it launches."""
    def mark(fn):
        fn.cuda_specs = tuple(specs)
        return fn
    return mark


def uses_cupy_only(fn):
    """Decorator for a kernel's CuPy version that launches no CUDA code of ours (only
    CuPy's own functions): it says so, where :func:`uses` would list the specs."""
    fn.cuda_specs = ()
    fn.cupy_only = True
    return fn


class Raw:
    """``extern "C"`` kernels ``<name>_f32`` and ``<name>_f64`` in one CUDA source,
    compiled by a ``cupy.RawModule`` on first use."""

    kind = "raw"

    def __init__(self, name, file):
        self.name = name
        self.file = file
        self.options = OPTIONS
        self._functions = {}

    @property
    def source(self):
        """:func:`common_source` and the kernel's ``.cu`` file."""
        return common_source() + read(self.file)

    def kernel_names(self):
        return [f"{self.name}_{s}" for s in DTYPES.values()]

    def function(self, dtype):
        """The ``cupy.RawKernel`` for arrays of ``dtype`` on the current device."""
        cupy = cupy_module()
        key = (cupy.cuda.runtime.getDevice(), suffix(dtype))
        fn = self._functions.get(key)
        if fn is None:
            with _lock:
                # one module per file and device, whichever of its kernels comes first
                module = _modules.get((key[0], self.file))
                if module is None:
                    module = _modules[(key[0], self.file)] = cupy.RawModule(
                        code=self.source, options=self.options)
                fn = self._functions[key] = module.get_function(f"{self.name}_{key[1]}")
        return fn

    def __repr__(self):
        return f"Raw({self.name!r})"


_modules = {}  # (device, file) -> the cupy.RawModule of that file

#: threads per block of a grid-stride launch (:func:`launch`)
THREADS = 256


def launch(spec, like, args):
    """Launch ``spec``'s kernel for the dtype of array ``like`` as a grid-stride loop
    over its ``like.size`` elements: 256 threads per block, at most 8 blocks per
    multiprocessor (2048 threads, as many as one can keep resident); nothing to do
    for an empty array."""
    if like.size:
        blocks = max(1, min(-(-like.size // THREADS), 8 * sm_count()))
        spec.function(like.dtype)((blocks,), (THREADS,), args)
_sm_counts = {}


def sm_count():
    """Number of streaming multiprocessors of the current device (cached per device)."""
    cupy = cupy_module()
    device = cupy.cuda.runtime.getDevice()
    count = _sm_counts.get(device)
    if count is None:
        try:
            count = int(cupy.cuda.runtime.getDeviceProperties(device)["multiProcessorCount"])
        except (KeyError, TypeError):  # older CuPy: the device attribute instead
            count = int(cupy.cuda.Device(device).attributes["MultiProcessorCount"])
        _sm_counts[device] = count
    return count


class DeviceBuffers:
    """Per-device scratch arrays that survive calls: the completion counters of the
    single-launch reductions (zero between launches: the last block resets them).

    The counters assume that launches of one kernel do not overlap, which holds on
    one stream (minigrad issues everything on the current stream)."""

    def __init__(self):
        self._counters = {}

    def counters(self, n):
        """A zeroed uint32 device array of at least ``n`` entries."""
        cupy = cupy_module()
        device = cupy.cuda.runtime.getDevice()
        buf = self._counters.get(device)
        if buf is None or buf.size < n:
            with _lock:
                buf = self._counters.get(device)
                if buf is None or buf.size < n:
                    buf = self._counters[device] = cupy.zeros(max(n, 64), dtype=numpy.uint32)
        return buf
