"""What every kernel checks before it runs: the arrays' shapes and dtypes.

The kernels index raw memory (Numba loops, CUDA pointers): a gradient of the wrong
shape would be read past its end -- a crash, or garbage written into the weights --
and NumPy would broadcast it silently.  So each entry point of
:class:`minigrad.kernels.Kernels` runs its check here first; a wrong argument is a
ValueError (shape) or TypeError (dtype) that names the kernel, the argument, what
it is and what was expected.
"""
from __future__ import annotations

import numpy

__all__ = ["CHECKS"]

_FLOATS = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))


def _float(op, name, a):
    if getattr(a, "dtype", None) not in _FLOATS:
        raise TypeError(f"{op}: {name} has dtype {getattr(a, 'dtype', type(a).__name__)}; "
                        f"the kernels compute in float32 or float64")


def _like(op, name, a, ref_name, ref, same_dtype=False):
    """``a`` is a float array of ``ref``'s shape (and dtype, if asked)."""
    _float(op, name, a)
    if tuple(a.shape) != tuple(ref.shape):
        raise ValueError(f"{op}: {name} has shape {tuple(a.shape)}, expected {ref_name}'s "
                         f"shape {tuple(ref.shape)}")
    if same_dtype and a.dtype != ref.dtype:
        raise TypeError(f"{op}: {name} has dtype {a.dtype}, expected {ref_name}'s {ref.dtype}")


def _matrix(op, name, a):
    _float(op, name, a)
    if a.ndim != 2:
        raise ValueError(f"{op}: {name} has shape {tuple(a.shape)}; expected a matrix "
                         f"(batch, features)")


def _activation(op, activation):
    from ..activations import Activation
    if not isinstance(activation, Activation):
        raise TypeError(f"{op}: activation is {activation!r}; expected an entry of "
                        f"minigrad.activations.ACTIVATIONS (minigrad.activations.activation(name))")


def dense_forward(z, bias, activation, slope=0.01):
    _matrix("dense_forward", "z", z)
    _float("dense_forward", "bias", bias)
    if tuple(bias.shape) != (z.shape[1],):
        raise ValueError(f"dense_forward: bias has shape {tuple(bias.shape)}, expected "
                         f"({z.shape[1]},) for z of shape {tuple(z.shape)}")
    _activation("dense_forward", activation)


def dense_backward(grad_y, y, activation, slope=0.01):
    _matrix("dense_backward", "y", y)
    _like("dense_backward", "grad_y", grad_y, "y", y)
    _activation("dense_backward", activation)


def _loss(op):
    def check(pred, target, scale, want_grad=True):
        _float(op, "pred", pred)
        _like(op, "target", target, "pred", pred)
    return check


def sgd_update(param, grad, velocity, lr, momentum, weight_decay, nesterov, out=None):
    _float("sgd_update", "param", param)
    _like("sgd_update", "grad", grad, "param", param)
    for name, a in (("velocity", velocity), ("out", out)):
        if a is not None:
            _like("sgd_update", name, a, "param", param, same_dtype=True)


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, decoupled,
                out=None):
    _float("adam_update", "param", param)
    _like("adam_update", "grad", grad, "param", param)
    for name, a in (("m", m), ("v", v), ("out", out)):
        if a is not None:
            _like("adam_update", name, a, "param", param, same_dtype=True)


#: kernel name -> its check (called with the kernel's own arguments)
CHECKS = {"dense_forward": dense_forward, "dense_backward": dense_backward,
          "bce_with_logits": _loss("bce_with_logits"), "mse": _loss("mse"),
          "sgd_update": sgd_update, "adam_update": adam_update}
