"""Lazy Numba compilation for the kernel modules.

``@kernel`` leaves a plain Python function in the module (so importing a kernel
module imports no Numba) and compiles it on first call, twice over: a serial
version for small arrays and a ``parallel=True`` one for large arrays, where
spreading the loop over threads pays for waking them.  Both are cached on disk.

Threading: Numba's OpenMP layer spins while waiting and then fights OpenBLAS's
threads for the two cores (a training step measured 83 ms instead of 4 ms).
The ``workqueue`` layer does not spin, so it is chosen here unless the user set
``NUMBA_THREADING_LAYER`` themselves.  That layer aborts the whole process when
two Python threads launch parallel kernels at once, so parallel launches go
through one process-wide lock; a thread that finds it taken runs the serial
version instead of waiting (same result, no abort).
"""
from __future__ import annotations

import os
import threading
import types

__all__ = ["kernel", "scalar", "PARALLEL_MIN_SIZE", "prange"]

#: Arrays with fewer elements than this run the serial version.
PARALLEL_MIN_SIZE = 1 << 16

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
        _configured = True
    return numba


def _renamed(fn, suffix):
    """A copy of ``fn`` with its own qualified name, so the two variants get
    separate entries in Numba's on-disk cache."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix,
                              fn.__defaults__, fn.__closure__)
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
                value.compiled = numba.njit(inline="always", cache=True)(value.py_func)
            module_globals[name] = value.compiled


class kernel:
    """Decorator: ``fn`` compiled by Numba on first call (serial and parallel)."""

    def __init__(self, fn):
        self.py_func = fn
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self._serial = self._parallel = None

    def _compile(self):
        numba = _numba()
        _bind_helpers(self.py_func.__globals__, numba)
        # _serial is assigned last: another thread that sees it set finds both ready
        self._parallel = numba.njit(cache=True, nogil=True, parallel=True)(
            _renamed(self.py_func, "_parallel"))
        self._serial = numba.njit(cache=True, nogil=True)(_renamed(self.py_func, "_serial"))

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
