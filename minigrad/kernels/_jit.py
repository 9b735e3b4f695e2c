"""Lazy Numba compilation for the kernel modules.

``@kernel`` leaves a plain Python function in the module (so importing a kernel
module imports no Numba) and compiles it on first call: a serial version, and a
``parallel=True`` one for work large enough to pay for waking threads (see
:data:`PARALLEL_MIN_SIZE`).  ``@scalar`` marks the small helpers the kernels
call, inlined into them.  Everything compiled is cached on disk (``cache=True``),
under names that carry a hash of this module and of ``_math`` (see
:func:`_source_tag`).  Compile options: ``error_model="numpy"`` (a division by
zero gives inf, as in NumPy; Python's error model would need a check that keeps
LLVM from vectorizing the loop) and ``nogil``.

Threading, as chosen here for a 2-core machine:

* Numba's OpenMP layer spins while waiting and then fights OpenBLAS's threads
  for the two cores (a training step measured 83 ms instead of 4 ms).  The
  ``workqueue`` layer does not spin, so it is chosen here unless the user set
  ``NUMBA_THREADING_LAYER`` themselves.
* That layer aborts the whole process when two Python threads launch parallel
  kernels at once, so parallel launches go through one process-wide lock; a
  thread that finds it taken runs the serial version instead of waiting (same
  result, no abort).
* The kernels are vectorized and short next to the matrix products, which keep
  both cores busy through OpenBLAS; measured, a training step was fastest with
  every kernel of it serial, so the threshold for threads is well above what one
  step of the benchmark model has (``MINIGRAD_PARALLEL_MIN_SIZE`` changes it).
"""
from __future__ import annotations

import hashlib
import os
import threading
import types

__all__ = ["kernel", "scalar", "PARALLEL_MIN_SIZE", "prange", "blocks"]

#: Work below this runs the serial version.  The wrappers pass ``size`` as the
#: number of elements times a rough cost per element (1 for a multiply-add, ~8 for
#: an exp and a log).  Measured on the 2-core machine, steps interleaved in one
#: process: the whole training step was fastest with every kernel serial at batch
#: 64, 256 and 1024 (threads at 65k elements: +8% per step; at 262k: +5%) -- the
#: kernels are vectorized and short (a ReLU pass over 200k floats: 30 us), and the
#: second core is busy finishing, or spinning after, OpenBLAS's share of the
#: matrix products.  So threads are kept for much larger work than one training
#: step has.  The BCE kernel (cost 8) on the benchmark's (1024, 784) logits, 6.4M,
#: was still parallel under the earlier 2M threshold and measured slower for it
#: (2026-12-08, Intel Xeon VM, 2 cores; alone, medians of 40 calls: 1,024 rows
#: 0.85 ms serial against 0.75-1.01 on two threads, 4,096 rows 3.6-3.7 against
#: 3.9-4.3, 16,384 rows 28.4-29.5 against 16.9-17.0; in the b1024 step, four
#: process pairs: the BCE node 1.14-1.24 ms serial against 1.29-1.46).  Hence
#: 32M: threads from about 5,300 rows of 784 on.
#: ``MINIGRAD_PARALLEL_MIN_SIZE`` overrides it (0: always threads).
PARALLEL_MIN_SIZE = int(os.environ.get("MINIGRAD_PARALLEL_MIN_SIZE", 1 << 25))

# In plain Python (and before compilation) ``prange`` is ``range``; compiling
# binds the module's ``prange`` to ``numba.prange``, which Numba parallelises.
prange = range

_configured = False

# Held while a parallel kernel runs: the workqueue pool serves one launch at a time.
_parallel_lock = threading.Lock()


def _numba():
    global _configured
    import numba
    if not _configured:
        if "NUMBA_THREADING_LAYER" not in os.environ:
            numba.config.THREADING_LAYER = "workqueue"
        from . import _math
        _math.install(numba)  # the vectorizing float32 exp / log1p / tanh
        _configured = True
    return numba


def _source_tag():
    """A short hash of this module, of ``_math`` and of the activation table: Numba's
    disk cache notices when a kernel's own file changes, not when the compile
    options here or the inlined math functions do, so their hash goes into every
    cached kernel's name."""
    global _TAG
    if _TAG is None:
        digest = hashlib.sha1()
        here = os.path.dirname(os.path.abspath(__file__))
        for name in ("_jit.py", "_math.py", os.path.join("..", "activations.py")):
            with open(os.path.join(here, name), "rb") as f:
                digest.update(f.read())
        _TAG = digest.hexdigest()[:8]
    return _TAG


_TAG = None


def _renamed(fn, suffix, globals_=None, tag=True):
    """A copy of ``fn`` (optionally with other globals) under its own qualified
    name, so that each variant -- serial or parallel, each specialization, each
    version of the helpers (see :func:`_source_tag`) -- gets its own entry in
    Numba's on-disk cache."""
    if tag:
        suffix = f"{suffix}_{_source_tag()}"
    copy = types.FunctionType(fn.__code__, fn.__globals__ if globals_ is None else globals_,
                              fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__module__ = fn.__module__
    return copy


class scalar:
    """Decorator for a scalar helper that kernels call: plain Python until a kernel
    of its module is compiled, then inlined into that kernel by Numba."""

    def __init__(self, fn):
        self.py_func = fn
        self.compiled = None

    def __call__(self, *args):
        return self.py_func(*args)


def _bind_helpers(module_globals, numba):
    """Point the module's ``prange`` and ``@scalar`` helpers at their Numba forms."""
    module_globals["prange"] = numba.prange
    for name, value in list(module_globals.items()):
        if isinstance(value, scalar):
            if value.compiled is None:
                value.compiled = numba.njit(inline="always", cache=True,
                                            error_model="numpy")(value.py_func)
            module_globals[name] = value.compiled


_scalar_functions = {}


def _as_numba_constant(numba, value):
    """A kernel constant as Numba compiles it: a plain Python function (an entry of
    the activation table) becomes an inlined scalar function; other values stay."""
    if not isinstance(value, types.FunctionType):
        return value
    compiled = _scalar_functions.get(value)
    if compiled is None:
        compiled = _scalar_functions[value] = numba.njit(
            inline="always", cache=True, error_model="numpy")(value)
    return compiled


class kernel:
    """Decorator: ``fn`` compiled by Numba on first call (serial and parallel).

    ``k.specialize(name, NAME=value, ...)`` is the same kernel with the module
    globals ``NAME`` frozen to ``value`` (Numba compiles globals as constants; a
    Python function becomes an inlined scalar function), compiled and cached under
    ``name``: one compiled version per activation or loss mode, so each version
    contains only its own loop -- LLVM then vectorizes it for certain -- and only
    the versions a program uses are compiled (one kernel holding all six
    activations took 9 s).
    """

    def __init__(self, fn, constants=None, name=""):
        self.py_func = fn
        self.constants = dict(constants or {})
        self.variant_name = name
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self._serial = self._parallel = None
        self._variants = {}

    def specialize(self, name, **constants):
        variant = self._variants.get(name)
        if variant is None:
            variant = self._variants.setdefault(name, kernel(self.py_func, constants, name))
        return variant

    def _compile(self):
        numba = _numba()
        _bind_helpers(self.py_func.__globals__, numba)
        fn = self.py_func
        if self.constants:
            frozen = {k: _as_numba_constant(numba, v) for k, v in self.constants.items()}
            fn = _renamed(fn, f"_{self.variant_name}", dict(fn.__globals__, **frozen),
                          tag=False)
        # error_model="numpy": x / 0 gives inf or nan as in NumPy instead of raising;
        # the check that raising needs would keep LLVM from vectorizing every loop
        # with a division (Adam's update ran 8x slower for it).
        # fastmath={"contract"}: a * b + c may become one fused multiply-add (one
        # rounding instead of two, as nvcc does by default for the CUDA kernels); the
        # polynomials of _math are chains of them: float32 exp 0.53 -> 0.30 ms per
        # 800k values here.  No other fast-math licence: NaN, inf, signed zeros and
        # the order of operations stay as written.
        options = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
        # _serial is assigned last: another thread that sees it set finds both ready
        self._parallel = numba.njit(parallel=True, **options)(_renamed(fn, "_parallel"))
        self._serial = numba.njit(**options)(_renamed(fn, "_serial"))

    def __call__(self, *args, size=0):
        """Run the serial version, or the parallel one when ``size`` is large."""
        if self._serial is None:
            self._compile()
        if size >= PARALLEL_MIN_SIZE and _parallel_lock.acquire(blocking=False):
            try:
                return self._parallel(*args)
            finally:
                _parallel_lock.release()
        return self._serial(*args)


def blocks(size, rows=2):
    """How many blocks a kernel should split its ``rows`` into: one per thread where
    ``size`` (elements times cost) makes it run the parallel version, else one."""
    return _numba().get_num_threads() if size >= PARALLEL_MIN_SIZE and rows > 1 else 1
