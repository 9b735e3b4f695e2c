"""Where a tensor's data lives, and what computes on it: the :class:`Device`.

A Device is one of three *backends*:

=========  =====  =========  ==========================================================
backend    type   ``xp``     kernels (``device.kernels``, see :mod:`minigrad.kernels`)
=========  =====  =========  ==========================================================
"numpy"    cpu    NumPy      the NumPy references; layers and losses are built from
                             the primitives (``fused`` is False): the readable reference
"numba"    cpu    NumPy      Numba-compiled CPU kernels (the default when Numba imports)
"cupy"     cuda   CuPy       CUDA kernels, GEMMs on cuBLAS
=========  =====  =========  ==========================================================

``tensor.device`` is the Device of the tensor's data: the "cupy" one for a CuPy
array; for a host array the active backend when it computes on the host, else
the default CPU backend.  So a model trained on the GPU still encodes, decodes
and trains after ``set_backend("numba")``, on the GPU.  A Device compares equal
to its type: ``tensor.device == "cpu"``.

Choose the active backend -- where new tensors and layers are made -- with::

    minigrad.set_backend("numpy")            # for the rest of the program
    with minigrad.set_backend("numpy"):      # ... or for one block
        ...

or the environment variable ``MINIGRAD_BACKEND``.  The default is "numba" when
Numba can be imported, else "numpy".  Devices are built on first use, so
``import minigrad`` imports neither Numba nor CuPy and compiles nothing.
Selecting "cupy" without CuPy, or on a machine without a usable CUDA device,
raises an error that says which is missing.  Operands on different devices are
an error that names both; nothing is copied silently.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import threading

import numpy

__all__ = ["Device", "get_backend", "set_backend", "available_backends", "device_of",
           "device_type", "move", "require_cupy"]

BACKENDS = ("numpy", "numba", "cupy")


class Device:
    """A backend: its array namespace ``xp``, its ``kernels`` (built on first use),
    and whether layers and losses take their ``fused`` kernels."""

    def __init__(self, name, type, xp, fused):
        self.name = name    # "numpy", "numba" or "cupy"
        self.type = type    # "cpu" or "cuda": where the arrays are
        self.xp = xp
        self.fused = fused
        self._kernels = None

    @property
    def kernels(self):
        """The fused kernels as attributes: ``device.kernels.dense_forward(...)``."""
        if self._kernels is None:
            if self.type == "cuda":
                require_cupy()  # a clear error where CuPy has no usable GPU
            from .kernels import Kernels
            self._kernels = Kernels(self.name)
        return self._kernels

    def __eq__(self, other):
        if isinstance(other, Device):
            return self.type == other.type
        if isinstance(other, str):
            return self.type == other.lower().split(":")[0]
        return NotImplemented

    def __hash__(self):
        return hash(self.type)

    def __str__(self):
        return self.type

    def __repr__(self):
        return f"Device({self.type!r}, backend={self.name!r})"


_BUILT = {}
_lock = threading.Lock()
_active = None   # the Device set_backend chose (None: not chosen yet)
_host = None     # the Device for host arrays while _active is current
_thread = threading.local()  # .stack: this thread's use_backend blocks, innermost last


def available_backends():
    """The backend names ("numpy", "numba", "cupy"; not necessarily installed)."""
    return list(BACKENDS)


def _make(name):
    if name == "numpy":
        return Device("numpy", "cpu", numpy, fused=False)
    if name == "numba":
        if importlib.util.find_spec("numba") is None:
            raise ImportError("the 'numba' backend needs Numba: pip install numba")
        return Device("numba", "cpu", numpy, fused=True)
    return Device("cupy", "cuda", require_cupy(), fused=True)


def _build(name):
    if name not in BACKENDS:
        raise ValueError(f"set_backend: unknown backend {name!r}; expected one of "
                         f"{list(BACKENDS)}")
    device = _BUILT.get(name)
    if device is None:
        with _lock:
            device = _BUILT.get(name)
            if device is None:
                device = _BUILT[name] = _make(name)
    return device


def _environment_backend():
    """The backend ``MINIGRAD_BACKEND`` names, or None when it is unset."""
    name = os.environ.get("MINIGRAD_BACKEND", "").strip().lower()
    if name and name not in BACKENDS:
        raise ValueError(f"MINIGRAD_BACKEND={name!r} is not a backend; expected one of "
                         f"{list(BACKENDS)}")
    return name or None


def _default_cpu_name():
    name = _environment_backend()
    if name in ("numpy", "numba"):
        return name
    return "numba" if importlib.util.find_spec("numba") is not None else "numpy"


def _activate(device):
    global _active, _host
    _active = device
    _host = None if device is None else (
        device if device.type == "cpu" else _build(_default_cpu_name()))


def get_backend():
    """The active :class:`Device` (where new tensors and layers are made): this
    thread's innermost :func:`use_backend`, else the one :func:`set_backend` chose."""
    stack = getattr(_thread, "stack", None)
    if stack:
        return stack[-1]
    if _active is None:
        _activate(_build(_environment_backend() or _default_cpu_name()))
    return _active


class _BackendSwitch:
    """Returned by :func:`set_backend`: the switch has already happened; used as a
    context manager it restores the previous backend on exit, also on an error."""

    def __init__(self, previous, current):
        self.previous = previous
        self.current = current

    def __enter__(self):
        return self.current

    def __exit__(self, *exc):
        _activate(self.previous)
        return False


def set_backend(name):
    """Make ``name`` ("numpy", "numba", "cupy") the active backend.

    Works as a plain call or as ``with set_backend(name): ...`` for one block.
    """
    device = name if isinstance(name, Device) else _build(str(name).lower())
    previous = _active
    _activate(device)
    return _BackendSwitch(previous, device)


@contextlib.contextmanager
def use_backend(name):
    """``with use_backend("numpy"): ...`` -- ``name`` is the active backend inside the
    block **for this thread only**; other threads keep theirs (``fit(backend=...)``
    and the scikit-learn estimator's ``backend=`` use it, so that two threads can
    train on two backends at once).  :func:`set_backend` sets the process's."""
    device = name if isinstance(name, Device) else _build(str(name).lower())
    stack = _thread.__dict__.setdefault("stack", [])
    stack.append(device)
    try:
        yield device
    finally:
        stack.pop()


def device_of(*arrays):
    """The :class:`Device` that computes on ``arrays``: the "cupy" one if any is a
    CuPy array (CuPy is never imported here: its arrays bring it along), else the
    host Device (see the module docstring)."""
    for a in arrays:
        kind = type(a)
        if kind is numpy.ndarray or not kind.__module__.startswith("cupy"):
            continue
        return _gpu()
    stack = getattr(_thread, "stack", None)
    if stack:  # inside use_backend: its device, or the CPU one for host arrays
        return stack[-1] if stack[-1].type == "cpu" else _build(_default_cpu_name())
    if _host is None:
        get_backend()
    return _host


def _gpu():
    """The "cupy" Device for a CuPy array: the one set_backend built, or else one made
    without asking for a usable GPU (the array is there; errors come when a kernel
    is asked for, see :attr:`Device.kernels`)."""
    import cupy
    device = _BUILT.get("cupy")
    if device is None or device.xp is not cupy:
        device = _unchecked.get(cupy)
        if device is None:
            device = _unchecked[cupy] = Device("cupy", "cuda", cupy, fused=True)
    return device


_unchecked = {}


def device_type(device):
    """"cpu" or "cuda" for a device given as a string ("cuda:0" too) or a Device."""
    name = str(device).lower()
    if name.startswith("cuda"):
        return "cuda"
    if name == "cpu":
        return "cpu"
    raise ValueError(f"to: unknown device {device!r}; expected 'cpu' or 'cuda'")


def move(array, device):
    """``array`` copied to ``device`` ("cpu" or "cuda"); itself if already there."""
    if device_type(device) == "cpu":
        return array.get() if device_of(array) == "cuda" else array
    return require_cupy().asarray(array)


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
