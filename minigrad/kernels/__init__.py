"""The fused kernels: one namespace per backend.

``device.kernels`` (see :mod:`minigrad.device`) is a :class:`Kernels`: one attribute
per kernel, ``kernels.dense_forward(...)``.  Each kernel has three versions that
live side by side in one module -- the NumPy reference, the Numba twin and the CuPy
twin (whose CUDA code is in the ``.cu`` file beside the module) -- named
``<kernel>_numpy``, ``<kernel>_numba`` and ``<kernel>_cupy``:

====================  ==================================================
module                kernels (its ``KERNELS``)
====================  ==================================================
``dense.py``          ``dense_forward``, ``dense_backward``
``losses.py``         ``bce_with_logits``, ``mse``, ``value_range``
``optim.py``          ``sgd_update``, ``adam_update``, ``adam_updates``
``conv.py``           ``im2row``, ``row2im``
``conv_epilogue.py``  ``conv_forward``, ``conv_backward``
====================  ==================================================

Each attribute checks its arguments' shapes and dtypes first (:mod:`._checks`).
Kernel modules are imported when a backend first asks for its kernels, never by
``import minigrad``, and the Numba versions compile on their first call (cached
on disk; see :mod:`._jit`).

The kernels (arrays in, arrays out; ``activation`` is an entry of the activation
table, :mod:`minigrad.activations`, ``slope`` the leaky-ReLU slope; derivatives
are taken from the *output* y, so no pre-activation is kept):

====================================  ===============================================
``dense_forward(z, bias, activation,  y = act(z + bias) for the (N, M) product z = x W,
slope) -> y``                         written into z (the dense layer's epilogue)
``dense_backward(grad_y, y,           grad_z = grad_y * act'(y) and grad_bias = grad_z
activation, slope) -> (grad_z,        summed over rows, in one pass (row blocks per
grad_bias)``                          thread, added at the end; the identity's grad_z
                                      is grad_y itself, on Numba: not to be written)
``bce_with_logits(logits, target,     (sum of softplus(x) - x t, float64; the gradient
scale, want_grad) -> (sum, grad)``    (sigmoid(x) - t) * scale, or None), one pass
``mse(pred, target, scale,            (sum of (pred - target)^2; the gradient
want_grad) -> (sum, grad)``           2 (pred - target) * scale, or None), one pass
``value_range(a) -> (min, max)``      the least and greatest value, as floats (NaN
                                      for both where a holds a NaN): NumPy's or
                                      CuPy's min and max
``sgd_update(param, grad, velocity,   in place: weight decay, momentum, Nesterov;
lr, momentum, weight_decay,           velocity None without momentum
nesterov)``
``adam_update(param, grad, m, v, lr,  in place, bias-corrected; decoupled=True is
beta1, beta2, eps, weight_decay,      AdamW.  Moments below the smallest normal
step, decoupled)``                    number are flushed to 0 (no subnormal slowdown)
``adam_updates(params, grads, ms, vs,  the same for a list of parameters, each with its
lr, beta1, beta2, eps, weight_decay,  own step count (what Adam.step calls): on Numba
steps, decoupled)``                   one compiled call per 8 parameters
``im2row(x, kernel_size, stride,      the (N oh ow, kh kw C) matrix of the patches of
padding) -> rows``                    the (N, C, H, W) batch x that each output pixel
                                      sees, channels last (0 in the padding): a
                                      convolution is then one GEMM (kernel_size,
                                      stride, padding: pairs)
``row2im(rows, image_shape,           its adjoint: each entry of rows added into the
kernel_size, stride, padding,         pixel of an (N, C, H, W) = image_shape batch
out=None) -> image``                  that im2row took it from (in a fixed order);
                                      written into ``out`` when given
``conv_forward(y, bias, activation,   y = act(product + bias) per channel into the
slope, product=None) -> y``           (N, C, H, W) batch y: the (C, N H W) GEMM result
                                      laid out in the same pass, or y in place
``conv_backward(grad_y, y,            grad_z = grad_y * act'(y) and grad_bias its sum
activation, slope, channel_major)     per channel (float64), in one pass; grad_z as a
-> (grad_z, grad_bias)``              batch or as the (C, N H W) matrix
====================================  ===============================================

Sums are accumulated in float64 (but row2im's, at most kh kw terms a pixel, in the
data's dtype, as in the matrix products around it); everything else keeps the
input dtype.
"""
from __future__ import annotations

import functools
import importlib

__all__ = ["Kernels", "MODULES", "names"]

#: The kernel modules, each with a ``KERNELS`` tuple of the kernels it defines.
MODULES = ("dense", "losses", "optim", "conv", "conv_epilogue")


def _modules():
    return [importlib.import_module(f"{__name__}.{m}") for m in MODULES]


def names():
    """Every kernel's name."""
    return [name for module in _modules() for name in module.KERNELS]


class Kernels:
    """The versions of every kernel for one backend ("numpy", "numba" or "cupy"), as
    attributes: ``Kernels("numba").dense_forward is dense.dense_forward_numba``."""

    def __init__(self, backend):
        from ._checks import CHECKS
        self.backend = backend
        for module in _modules():
            for name in module.KERNELS:
                setattr(self, name, _checked(CHECKS[name], getattr(module, f"{name}_{backend}")))

    def __repr__(self):
        return f"Kernels({self.backend!r}: {', '.join(names())})"


def _checked(check, kernel):
    """``kernel`` behind its argument check (:mod:`._checks`): an entry point that is
    given a wrong shape or dtype says so instead of reading past an array's end."""
    @functools.wraps(kernel)  # name, docstring, and the CUDA specs it records
    def checked(*args, **kwargs):
        check(*args, **kwargs)
        return kernel(*args, **kwargs)
    return checked
