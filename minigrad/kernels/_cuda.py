"""Lazy CuPy kernels for the kernel modules (the CUDA counterpart of ``_jit``).

A kernel module keeps the CUDA code of its CuPy kernels in module-level *specs*,
plain strings that need neither CuPy nor a GPU to read or to compile:

* :class:`Elementwise` -- a ``cupy.ElementwiseKernel``: the parameter lists, the
  loop body, and a preamble of ``__device__`` helpers;
* :class:`Raw` -- a ``cupy.RawModule`` whose source defines ``extern "C"`` kernels,
  one per dtype, named ``<name>_f32`` and ``<name>_f64``.

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

import threading

import numpy

__all__ = ["Elementwise", "Raw", "uses", "OPTIONS", "DTYPES", "MATH", "suffix", "cupy_module",
           "check_device_arrays", "sm_count", "DeviceBuffers"]

#: NVRTC options of every kernel (CuPy adds its include paths and ``-std=c++17``).
OPTIONS = ("--fmad=false", "--ftz=true")

#: The dtypes every kernel is written for, and the suffix of their raw kernels.
DTYPES = {"float32": "f32", "float64": "f64"}

#: ``__device__`` overloads of the libm functions the kernels use, for float and
#: double alike (prefixed ``mg_``, like everything minigrad puts into CUDA code).
MATH = r"""
#ifndef MG_MATH_DEFINED
#define MG_MATH_DEFINED
__device__ __forceinline__ float mg_exp(float x) { return expf(x); }
__device__ __forceinline__ double mg_exp(double x) { return exp(x); }
__device__ __forceinline__ float mg_expm1(float x) { return expm1f(x); }
__device__ __forceinline__ double mg_expm1(double x) { return expm1(x); }
__device__ __forceinline__ float mg_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double mg_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float mg_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double mg_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float mg_fabs(float x) { return fabsf(x); }
__device__ __forceinline__ double mg_fabs(double x) { return fabs(x); }
__device__ __forceinline__ float mg_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double mg_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ int mg_imin(int a, int b) { return a < b ? a : b; }
/* 0 for a subnormal (|x| below the smallest normal number), else x; NaN passes */
__device__ __forceinline__ float mg_flush(float x) {
    return fabsf(x) < 1.17549435082228750797e-38f ? 0.0f : x;
}
__device__ __forceinline__ double mg_flush(double x) {
    return fabs(x) < 2.22507385850720138309e-308 ? 0.0 : x;
}
#endif
"""

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


class Elementwise:
    """A ``cupy.ElementwiseKernel`` built on first call.

    ``in_params`` / ``out_params`` / ``operation`` are CuPy's; ``T`` is the array
    dtype (float32 or float64).  Output parameters are read and written in place.
    ``scalars`` names the parameters that the kernel's wrapper passes as numbers
    (the tests compile the kernel for exactly that call).
    """

    kind = "elementwise"

    def __init__(self, name, in_params, out_params, operation, preamble="", scalars=None):
        self.name = name
        self.in_params = in_params
        self.out_params = out_params
        self.operation = operation
        self.preamble = preamble
        # the parameters the wrapper passes as scalars (the rest are arrays); by
        # default those of a fixed type (int32, float64) and ``T`` ones named here
        self.scalars = tuple(scalars) if scalars is not None else tuple(
            p.split()[-1] for p in in_params.split(",") if p.split()[-2] != "T")
        self.options = OPTIONS
        self._kernel = None

    def build(self):
        if self._kernel is None:
            cupy = cupy_module()
            with _lock:
                if self._kernel is None:
                    self._kernel = cupy.ElementwiseKernel(
                        self.in_params, self.out_params, self.operation, name=self.name,
                        preamble=self.preamble, options=self.options)
        return self._kernel

    def __call__(self, *args, **kwargs):
        return self.build()(*args, **kwargs)

    def __repr__(self):
        return f"Elementwise({self.name!r})"


class Raw:
    """``extern "C"`` kernels ``<name>_f32`` and ``<name>_f64`` in one CUDA source,
    compiled by a ``cupy.RawModule`` on first use."""

    kind = "raw"

    def __init__(self, name, source):
        self.name = name
        self.source = source
        self.options = OPTIONS
        self._module = None
        self._functions = {}

    def kernel_names(self):
        return [f"{self.name}_{s}" for s in DTYPES.values()]

    def function(self, dtype):
        """The ``cupy.RawKernel`` for arrays of ``dtype`` on the current device."""
        cupy = cupy_module()
        key = (cupy.cuda.runtime.getDevice(), suffix(dtype))
        fn = self._functions.get(key)
        if fn is None:
            with _lock:
                if self._module is None:
                    self._module = cupy.RawModule(code=self.source, options=self.options)
                fn = self._functions[key] = self._module.get_function(f"{self.name}_{key[1]}")
        return fn

    def __repr__(self):
        return f"Raw({self.name!r})"


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
