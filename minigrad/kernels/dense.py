"""Kernels of a dense layer: the work around each matrix product, in one pass.

Activations are named ("identity", "relu", "leaky_relu", "sigmoid", "tanh",
"softplus"); every derivative is written in terms of the *output* y, so the
pre-activation need not be kept for backward:

    relu'      = 1 if y > 0 else 0          sigmoid' = y (1 - y)
    leaky'     = 1 if y > 0 else slope      tanh'    = 1 - y^2
    identity'  = 1                          softplus' = sigmoid(x) = 1 - e^-y

Kernels (NumPy reference first, Numba version below it):

* ``dense_forward(z, bias, activation, slope) -> y``: y = act(z + bias); z is
  the (N, M) product x @ W and is overwritten with y.
* ``dense_backward(grad_y, y, activation, slope) -> (grad_z, grad_bias)``:
  grad_z = grad_y * act'(y), and grad_bias = sum of grad_z over rows, in the same
  pass (each thread sums a block of rows, then the blocks are added: 2.5x
  faster here than splitting by columns).
* ``activation_forward(x, activation, slope) -> y`` and
  ``activation_backward(grad_y, y, activation, slope) -> grad_x``, any shape.
"""
from __future__ import annotations

import math

import numpy as np

from . import register
from ._jit import PARALLEL_MIN_SIZE, kernel, prange, scalar

ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "softplus")
_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}


# ----------------------------------------------------------------------------
# NumPy reference
# ----------------------------------------------------------------------------

def _act_numpy(x, activation, slope):
    if activation == "identity":
        return x
    if activation == "relu":
        return np.maximum(x, 0)
    if activation == "leaky_relu":
        return np.where(x > 0, x, x * x.dtype.type(slope))
    if activation == "sigmoid":
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))
    if activation == "tanh":
        return np.tanh(x)
    if activation == "softplus":
        return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))
    raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")


def _deriv_numpy(y, activation, slope):
    one = y.dtype.type(1)
    if activation == "identity":
        return np.ones_like(y)
    if activation == "relu":
        return (y > 0).astype(y.dtype)
    if activation == "leaky_relu":
        return np.where(y > 0, one, y.dtype.type(slope))
    if activation == "sigmoid":
        return y * (one - y)
    if activation == "tanh":
        return one - y * y
    if activation == "softplus":
        return -np.expm1(-y)
    raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")


def activation_forward_numpy(x, activation, slope=0.01):
    return _act_numpy(x, activation, slope).astype(x.dtype, copy=False)


def activation_backward_numpy(grad_y, y, activation, slope=0.01):
    return (grad_y * _deriv_numpy(y, activation, slope)).astype(grad_y.dtype, copy=False)


def dense_forward_numpy(z, bias, activation, slope=0.01):
    z += bias
    z[...] = _act_numpy(z, activation, slope)
    return z


def dense_backward_numpy(grad_y, y, activation, slope=0.01):
    grad_z = activation_backward_numpy(grad_y, y, activation, slope)
    return grad_z, grad_z.sum(axis=0)


# ----------------------------------------------------------------------------
# Numba
# ----------------------------------------------------------------------------

@scalar
def _act(v, code, slope):
    if code == 1:
        return v if v > 0 else v * 0
    if code == 2:
        return v if v > 0 else v * slope
    if code == 3:  # sigmoid from e^-|v| <= 1: no overflow
        e = math.exp(-abs(v))
        return 1 / (1 + e) if v >= 0 else e / (1 + e)
    if code == 4:
        return math.tanh(v)
    if code == 5:
        return max(v, v * 0) + math.log1p(math.exp(-abs(v)))
    return v


@scalar
def _deriv(y, code, slope):
    if code == 1:
        return 1.0 if y > 0 else 0.0
    if code == 2:
        return 1.0 if y > 0 else slope
    if code == 3:
        return y * (1 - y)
    if code == 4:
        return 1 - y * y
    if code == 5:
        return -math.expm1(-y)
    return 1.0


@kernel
def _dense_forward(z, bias, code, slope):
    n, m = z.shape
    for i in prange(n):
        for j in range(m):
            z[i, j] = _act(z[i, j] + bias[j], code, slope)


@kernel
def _dense_backward(grad_y, y, code, slope, grad_z, partial):
    n, m = grad_y.shape
    blocks = partial.shape[0]
    rows = (n + blocks - 1) // blocks
    for b in prange(blocks):
        acc = partial[b]
        acc[:] = 0
        for i in range(b * rows, min(n, (b + 1) * rows)):
            for j in range(m):
                g = grad_y[i, j] * _deriv(y[i, j], code, slope)
                grad_z[i, j] = g
                acc[j] += g


@kernel
def _activation_forward(x, out, code, slope):
    for i in prange(x.size):
        out[i] = _act(x[i], code, slope)


@kernel
def _activation_backward(grad_y, y, out, code, slope):
    for i in prange(y.size):
        out[i] = grad_y[i] * _deriv(y[i], code, slope)


def _code(activation):
    try:
        return _CODE[activation]
    except KeyError:
        raise ValueError(f"unknown activation {activation!r}; expected one of "
                         f"{ACTIVATIONS}") from None


def _contiguous(a):
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def dense_forward_numba(z, bias, activation, slope=0.01):
    z = _contiguous(z)
    _dense_forward(z, _contiguous(bias), _code(activation), z.dtype.type(slope), size=z.size)
    return z


def dense_backward_numba(grad_y, y, activation, slope=0.01):
    grad_y, y = _contiguous(grad_y), _contiguous(y)
    grad_z = np.empty_like(y)
    # one block of rows per thread for large inputs, a single block otherwise
    blocks = 1 if y.size < PARALLEL_MIN_SIZE else _threads()
    partial = np.empty((blocks, y.shape[1]), dtype=y.dtype)
    _dense_backward(grad_y, y, _code(activation), y.dtype.type(slope), grad_z, partial,
                    size=y.size)
    return grad_z, (partial[0] if blocks == 1 else partial.sum(axis=0))


def activation_forward_numba(x, activation, slope=0.01):
    x = _contiguous(x)
    out = np.empty_like(x)
    _activation_forward(x.reshape(-1), out.reshape(-1), _code(activation),
                        x.dtype.type(slope), size=x.size)
    return out


def activation_backward_numba(grad_y, y, activation, slope=0.01):
    grad_y, y = _contiguous(grad_y), _contiguous(y)
    out = np.empty_like(y)
    _activation_backward(grad_y.reshape(-1), y.reshape(-1), out.reshape(-1),
                         _code(activation), y.dtype.type(slope), size=y.size)
    return out


def _threads():
    import numba
    return numba.get_num_threads()


register("dense_forward", numpy=dense_forward_numpy, numba=dense_forward_numba)
register("dense_backward", numpy=dense_backward_numpy, numba=dense_backward_numba)
register("activation_forward", numpy=activation_forward_numpy, numba=activation_forward_numba)
register("activation_backward", numpy=activation_backward_numpy, numba=activation_backward_numba)
