"""The table of named kernels.

Each kernel is registered once with its NumPy reference and, where written, its
Numba and CuPy twins, which live next to the reference in the same module so the
three are easy to compare.  A backend's table maps each name to the version for
that backend.  Kernel modules are imported when a table is first built, never by
``import minigrad``.
"""
from __future__ import annotations

import importlib

__all__ = ["register", "table", "names", "KERNEL_MODULES"]

# name -> {"numpy": callable, "numba": callable or None, "cupy": callable or None}
_REGISTRY: dict[str, dict[str, object]] = {}

# Modules that register kernels when imported.
KERNEL_MODULES: list[str] = ["minigrad.kernels.dense", "minigrad.kernels.losses",
                              "minigrad.kernels.optim"]


def register(name, **implementations):
    """Register kernel ``name``: ``numpy=reference``, ``numba=...``, ``cupy=...``.

    Calls for the same name add to each other, so a backend's versions may be
    registered by another module.
    """
    entry = _REGISTRY.setdefault(name, {"numpy": None, "numba": None, "cupy": None})
    for backend, fn in implementations.items():
        if backend not in entry:
            raise ValueError(f"register: unknown backend {backend!r} for kernel {name!r}")
        entry[backend] = fn


def _load_all():
    for module in KERNEL_MODULES:
        importlib.import_module(module)


def names():
    """All registered kernel names."""
    _load_all()
    return sorted(_REGISTRY)


def table(backend):
    """``{name: implementation}`` for ``backend`` ("numpy", "numba" or "cupy")."""
    _load_all()
    out = {}
    for name, impls in _REGISTRY.items():
        impl = impls.get(backend)
        if impl is None:
            raise NotImplementedError(f"kernel {name!r} has no {backend!r} version")
        out[name] = impl
    return out
