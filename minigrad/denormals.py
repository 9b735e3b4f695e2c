"""Subnormal numbers, kept out of training.

Why: a float32 below the smallest normal number, ``tiny`` = 2^-126 ~ 1.18e-38, is
*subnormal*, and on many x86 CPUs every instruction that reads or produces one
takes a slow microcode path -- a matrix product over a gradient with a few
percent of subnormal entries ran 16-50x slower.  Training gets there by itself:
once a sigmoid-output autoencoder has learnt a black background, its logits fall
below about -87 and the gradient sigmoid(z) - x underflows into that range.

What minigrad does about it, in two layers:

1. **The kernels flush what they write.**  Every fused kernel (dense forward and
   backward, activations, loss gradients, optimizer updates; NumPy reference,
   Numba and CUDA alike) writes 0 instead of any value with |v| < tiny.  This
   holds on every CPU and on the GPU, whatever the thread's flags.
2. **Training sets flush-to-zero on every thread that does the arithmetic.**
   ``with flush_denormals():`` sets the x86 MXCSR bits FTZ (results that would
   be subnormal become 0) and DAZ (subnormal inputs are read as 0) on the
   calling thread and on the BLAS's worker threads -- the matrix products run
   there -- and restores both on exit, so code outside the block computes as
   before.  ``Autoencoder.fit`` trains inside it; wrap your own training loop in
   it too.  This is what JAX does on every CPU thread it runs.

Numerical effect: inside the block, and in the kernels' outputs, float32 values
below 1.18e-38 in magnitude (float64: below 2.2e-308) are 0.  Nothing in training
depends on them: a weight update built from such a gradient is below 1e-41.

How the BLAS threads get the flags: x86 threads inherit the floating-point
control word of the thread that creates them, and OpenBLAS (NumPy's BLAS)
creates its worker threads on the first threaded call after
``blas_thread_shutdown_``.  So entering the block sets the flags here and asks
every OpenBLAS loaded in the process to end its workers; the next matrix product
starts them again, with the flags.  Leaving does the same with the flags
restored.  A BLAS other than OpenBLAS (MKL, Accelerate) keeps its threads as
they are: there, layer 1 still applies.  The BLAS pool is shared by the whole
process: while one thread is inside the block, matrix products that other
threads start also flush subnormals in their worker threads' share.

The flags exist on x86-64 only; elsewhere (e.g. ARM) ``flush_denormals()`` sets
nothing (``supported()`` is False) and layer 1 is the protection.
"""
from __future__ import annotations

import contextlib
import ctypes
import sys
import threading

import numpy

from .kernels._math import DAZ, FTZ, X86_64  # plain Python: imports no Numba

__all__ = ["flush_denormals", "flush_subnormals", "smallest_normal", "supported",
           "thread_flags", "blas_libraries", "FTZ", "DAZ"]

_state = threading.local()      # per thread: depth of nested blocks, saved MXCSR
_blas_lock = threading.Lock()   # the BLAS workers are shared by the process
_blas_users = 0                 # threads currently inside a block
_mxcsr = None                   # (get, set), compiled by Numba on first use
_blas = None                    # [(path, shutdown function)] of the OpenBLAS libraries


def smallest_normal(dtype):
    """The smallest normal number of a float ``dtype``, as a scalar of that dtype."""
    value = _TINY.get(dtype)
    if value is None:
        as_dtype = numpy.dtype(dtype)
        value = _TINY[dtype] = as_dtype.type(numpy.finfo(as_dtype).tiny)
    return value


_TINY = {}


def flush_subnormals(a):
    """Set every entry of ``a`` (a NumPy or CuPy float array) whose magnitude is below
    the smallest normal number of its dtype to 0, in place; NaN stays.  Returns ``a``.
    What every kernel does to what it writes (the NumPy references call this)."""
    a[abs(a) < smallest_normal(a.dtype)] = 0
    return a


def supported():
    """True where the flush-to-zero flags can be set: x86-64, with Numba (which
    compiles the two instructions that read and write them)."""
    global _supported
    if _supported is None:
        try:
            _supported = X86_64 and _mxcsr_functions() is not None
        except ImportError:  # no Numba: the kernels' own flushing is what remains
            _supported = False
    return _supported


_supported = None


def _mxcsr_functions():
    """``get() -> int`` and ``set(int)`` of the calling thread's MXCSR register,
    compiled by Numba from the LLVM intrinsics ``llvm.x86.sse.stmxcsr`` and
    ``ldmxcsr`` (see :mod:`minigrad.kernels._math`; no C compiler needed)."""
    global _mxcsr
    if _mxcsr is None:
        from .kernels import _jit, _math
        numba = _jit._numba()  # installs the intrinsics

        @numba.njit(cache=True, nogil=True)
        def get_mxcsr():
            return _math.read_mxcsr()

        @numba.njit(cache=True, nogil=True)
        def set_mxcsr(value):
            _math.write_mxcsr(numba.uint32(value))

        _mxcsr = (get_mxcsr, set_mxcsr)
    return _mxcsr


def thread_flags():
    """``(ftz, daz)`` of the calling thread (``(False, False)`` where unsupported)."""
    if not supported():
        return False, False
    value = int(_mxcsr_functions()[0]())
    return bool(value & FTZ), bool(value & DAZ)


def blas_libraries():
    """Paths of the OpenBLAS libraries loaded in this process whose worker threads
    :func:`flush_denormals` restarts (empty on other BLAS or systems without
    ``/proc/self/maps``)."""
    return [path for path, _ in _openblas()]


def _openblas():
    global _blas
    if _blas is None:
        found, seen = [], set()
        try:
            with open("/proc/self/maps") as maps:
                paths = [line.split()[-1] for line in maps if "openblas" in line.lower()]
        except OSError:
            paths = []
        for path in paths:
            if path in seen or not path.startswith("/"):
                continue
            seen.add(path)
            try:
                shutdown = ctypes.CDLL(path).blas_thread_shutdown_
            except (OSError, AttributeError):
                continue
            shutdown.restype = ctypes.c_int
            shutdown.argtypes = []
            found.append((path, shutdown))
        _blas = found
    return _blas


def _restart_blas_workers():
    """End the OpenBLAS worker threads; the next threaded call starts them afresh,
    from the calling thread, with its flags."""
    for _, shutdown in _openblas():
        shutdown()


@contextlib.contextmanager
def flush_denormals():
    """Inside: FTZ and DAZ set on this thread and the BLAS worker threads (see the
    module doc); on exit both are as before.  Nests; thread-safe."""
    if not supported():
        yield
        return
    get_mxcsr, set_mxcsr = _mxcsr_functions()
    depth = getattr(_state, "depth", 0)
    if depth == 0:
        _state.saved = int(get_mxcsr())
        _enter_blas(lambda: set_mxcsr(_state.saved | FTZ | DAZ))
    _state.depth = depth + 1
    try:
        yield
    finally:
        _state.depth = depth
        if depth == 0:
            _leave_blas(lambda: set_mxcsr(_state.saved))


def _enter_blas(set_flags):
    global _blas_users
    with _blas_lock:
        if _blas_users == 0:
            _ensure_numba_threads()
        set_flags()
        if _blas_users == 0:
            _restart_blas_workers()
        _blas_users += 1


def _leave_blas(restore_flags):
    global _blas_users
    with _blas_lock:
        restore_flags()
        _blas_users -= 1
        if _blas_users == 0:
            _restart_blas_workers()


def _ensure_numba_threads():
    """Start Numba's worker threads (if Numba is in use) before the flags are set
    anywhere they could be inherited: threads started inside the block would keep
    the flags for good.  The kernels set the flags for their own duration, so those
    threads need none."""
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.get_num_threads()
