"""The seam between the engine and the arrays it computes on.

A *backend* is three things:

* ``xp`` -- the array namespace the tensors' data live in (``numpy`` or ``cupy``);
* ``device`` -- ``"cpu"`` or ``"cuda"``;
* ``kernels`` -- a table of named, fused kernels for the hot paths of a dense
  network (see :mod:`minigrad.kernels`).  Ops never branch on the backend: they
  call ``xp`` for plain array code, and the few fused ops ask the table for a
  kernel by name.

Backends are built lazily on first use, so ``import minigrad`` imports neither
Numba nor CuPy and compiles nothing.  Choose one with::

    minigrad.set_backend("numpy")            # for the rest of the program
    with minigrad.set_backend("numpy"):      # ... or for one block
        ...

or the environment variable ``MINIGRAD_BACKEND``.  The default is ``"numba"``
when Numba can be imported, else ``"numpy"``.

``"cupy"`` runs on the GPU: its ``xp`` is CuPy, its kernels the CUDA ones of
:mod:`minigrad.kernels` (compiled by CuPy on first use), its GEMMs cuBLAS through
``cupy.matmul``.  Selecting it without CuPy, or on a machine without a usable
CUDA device, raises an error that says which is missing.  Under it, tensors made
from Python data or NumPy arrays are created on the GPU, and new layers put their
parameters there; a model made before the switch moves with ``model.to("cuda")``.

Operations run where their data is (:func:`backend_for`): the fused layers,
losses and optimizer updates take the active backend's kernels when it computes
on their data's device, else that device's own -- CuPy's for GPU data, the
default CPU backend's for host data.  So a model trained on the GPU still
encodes, decodes and trains after ``set_backend("numba")``, on the GPU.  Operands
on different devices are an error that names both; nothing is copied silently.
"""
from __future__ import annotations

import importlib.util
import os
import threading

import numpy

__all__ = ["Backend", "get_backend", "set_backend", "backend_for", "register_backend",
           "available_backends", "array_namespace", "device_of"]


class Backend:
    """An array namespace plus a table of named kernels."""

    def __init__(self, name, xp, device, kernels, fused):
        self.name = name
        self.xp = xp
        self.device = device
        self.kernels = kernels
        # Layers and losses take their fused kernel paths only where this is set;
        # on the NumPy reference backend they are built from the primitives.
        self.fused = fused

    def kernel(self, name):
        """The implementation of kernel ``name`` on this backend."""
        try:
            return self.kernels[name]
        except KeyError:
            raise KeyError(f"backend {self.name!r} has no kernel {name!r}; "
                           f"it has: {sorted(self.kernels)}") from None

    def __repr__(self):
        return f"Backend({self.name!r}, device={self.device!r})"


# name -> zero-argument factory returning a Backend.  Factories import their
# heavy dependencies (numba, cupy) only when called.
_FACTORIES = {}
_BUILT = {}
_lock = threading.Lock()
_active = None


def register_backend(name, factory):
    """Make ``factory()`` (returning a :class:`Backend`) selectable as ``name``."""
    _FACTORIES[name] = factory
    _BUILT.pop(name, None)


def available_backends():
    """Names of the backends that are registered (not necessarily installed)."""
    return sorted(_FACTORIES)


def _build(name):
    if name not in _FACTORIES:
        raise ValueError(f"set_backend: unknown backend {name!r}; "
                         f"expected one of {available_backends()}")
    with _lock:
        if name not in _BUILT:
            _BUILT[name] = _FACTORIES[name]()
        return _BUILT[name]


def _default_name():
    name = os.environ.get("MINIGRAD_BACKEND", "").strip().lower()
    if name:
        if name not in _FACTORIES:
            raise ValueError(f"MINIGRAD_BACKEND={name!r} is not a backend; "
                             f"expected one of {available_backends()}")
        return name
    return _default_cpu_name()


def _default_cpu_name():
    name = os.environ.get("MINIGRAD_BACKEND", "").strip().lower()
    if name in ("numpy", "numba"):
        return name
    if "numba" in _FACTORIES and importlib.util.find_spec("numba") is not None:
        return "numba"
    return "numpy"


def get_backend():
    """The active :class:`Backend` (built on first use)."""
    global _active
    if _active is None:
        _active = _build(_default_name())
    return _active


def backend_for(device):
    """The backend whose kernels compute on ``device`` ("cpu" or "cuda").

    The active backend when it computes there; otherwise the device's own:
    "cupy" for "cuda", and for "cpu" the CPU backend ``MINIGRAD_BACKEND`` names,
    else "numba" when Numba is installed, else "numpy".
    """
    active = get_backend()
    if active.device == device:
        return active
    return _build("cupy" if device == "cuda" else _default_cpu_name())


class _BackendSwitch:
    """Returned by :func:`set_backend`: the switch has already happened; used as a
    context manager it restores the previous backend on exit, also on an error."""

    def __init__(self, previous, current):
        self.previous = previous
        self.current = current

    def __enter__(self):
        return self.current

    def __exit__(self, *exc):
        global _active
        _active = self.previous
        return False


def set_backend(name):
    """Switch the active backend to ``name`` ("numpy", "numba", "cupy").

    Works as a plain call or as ``with set_backend(name): ...`` for one block.
    """
    global _active
    if isinstance(name, Backend):
        backend = name
    else:
        backend = _build(str(name).lower())
    previous = _active if _active is not None else None
    _active = backend
    return _BackendSwitch(previous, backend)


def array_namespace(*arrays):
    """``cupy`` if any of ``arrays`` is a CuPy array, else ``numpy``.

    Ops take the namespace from their data rather than from the active backend,
    so a tensor moved to another device keeps working.  CuPy is never imported
    here: a CuPy array brings its module along.
    """
    for a in arrays:
        kind = type(a)
        if kind is numpy.ndarray:
            continue
        if kind.__module__.startswith("cupy"):
            import cupy
            return cupy
    return numpy


def device_of(array):
    """"cuda" for a CuPy array, "cpu" otherwise."""
    kind = type(array)
    return "cpu" if kind is numpy.ndarray or not kind.__module__.startswith("cupy") else "cuda"


def _numpy_backend():
    from . import kernels
    return Backend("numpy", numpy, "cpu", kernels.table("numpy"), fused=False)


def _numba_backend():
    try:
        import numba  # noqa: F401  (the kernels compile on first call, not here)
    except ImportError:
        raise ImportError("the 'numba' backend needs Numba: pip install numba") from None
    from . import kernels
    return Backend("numba", numpy, "cpu", kernels.table("numba"), fused=True)


def _cupy_backend():
    cupy = require_cupy()  # a clear ImportError / RuntimeError without CuPy or a GPU
    from . import kernels
    return Backend("cupy", cupy, "cuda", kernels.table("cupy"), fused=True)


register_backend("numpy", _numpy_backend)
register_backend("numba", _numba_backend)
register_backend("cupy", _cupy_backend)


def require_cupy():
    """The ``cupy`` module, or an ImportError/RuntimeError that says what is missing."""
    try:
        import cupy
    except ImportError as error:
        raise ImportError(f"the GPU needs CuPy, which is not installed ({error}); install the "
                          f"'gpu' extra: pip install 'minigrad-autoencoders[gpu]' (or "
                          f"cupy-cuda12x / cupy-cuda13x to match your CUDA)") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDA driver missing or broken
        raise RuntimeError(f"CuPy is installed but no CUDA device is usable: {error}") from None
    if count == 0:
        raise RuntimeError("CuPy is installed but this machine has no CUDA device")
    return cupy
