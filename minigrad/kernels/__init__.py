"""The table of named kernels.

Each kernel is registered once with its NumPy reference and, where written, its
Numba and CuPy twins, which live next to the reference in the same module so the
three are easy to compare.  A backend's table maps each name to the version for
that backend.  Kernel modules are imported when a table is first built, never by
``import minigrad``, and the Numba versions compile on their first call (cached
on disk; see :mod:`._jit`).

The table (arrays in, arrays out; ``activation`` is one of "identity", "relu",
"leaky_relu", "sigmoid", "tanh", "softplus", ``slope`` the leaky-ReLU slope;
derivatives are taken from the *output* y, so no pre-activation is kept):

====================================  ===============================================
``dense_forward(z, bias, activation,  y = act(z + bias) for the (N, M) product z = x W,
slope) -> y``                         written into z (the dense layer's epilogue)
``dense_backward(grad_y, y,           grad_z = grad_y * act'(y) and grad_bias = grad_z
activation, slope) -> (grad_z,        summed over rows, in one pass (row blocks per
grad_bias)``                          thread, added at the end)
``activation_forward(x, activation,   y = act(x), any shape
slope) -> y``
``activation_backward(grad_y, y,      grad_y * act'(y), any shape
activation, slope) -> grad_x``
``bce_with_logits_forward(logits,     sum of max(x, 0) - x t + log1p(e^-|x|) (float)
target) -> float``
``bce_with_logits_backward(logits,    (sigmoid(x) - t) * scale
target, scale) -> grad``
``bce_with_logits_forward_backward(   both in one pass (the loss node's forward uses it
logits, target, scale)``              when a gradient will be wanted)
``mse_forward(pred, target)``         sum of (pred - target)^2 (float)
``mse_backward(pred, target, scale)``  2 (pred - target) * scale
``mse_forward_backward(pred, target,  both in one pass
scale)``
``sgd_update(param, grad, velocity,   in place: weight decay, momentum, Nesterov;
lr, momentum, weight_decay,           velocity None without momentum
nesterov)``
``adam_update(param, grad, m, v, lr,  in place, bias-corrected; decoupled=True is
beta1, beta2, eps, weight_decay,      AdamW.  Moments below the smallest normal
step, decoupled)``                    number are flushed to 0 (no subnormal slowdown)
====================================  ===============================================

Sums are accumulated in float64; everything else keeps the input dtype.
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
