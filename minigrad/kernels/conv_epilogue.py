"""Kernels of the convolution layers' epilogues: bias and activation after the GEMM,
and their derivative before the backward GEMMs (the layout kernels, im2row and
row2im, are in :mod:`minigrad.kernels.conv`).

* ``conv_forward(y, bias, activation, slope, product=None) -> y``: the layer's
  epilogue, y = act(product + bias) per channel, written into the (N, C, H, W)
  batch y.  ``product`` is the GEMM's (C, N * H * W) result (channels first: a
  conv2d) laid out into y in the same pass; without it y itself is the input (a
  conv_transpose2d's row2im output), in place.  ``bias`` (C,) or None.
* ``conv_backward(grad_y, y, activation, slope, channel_major=False) -> (grad_z,
  grad_bias)``: grad_z = grad_y * act'(y) (derivative from the output, as for the
  dense layer) and grad_bias its sum over batch and pixels (float64, in the same
  pass); grad_z as an (N, C, H, W) batch, or with ``channel_major`` as the
  (C, N * H * W) matrix that a conv2d's backward GEMMs take.

Both write 0 for a value whose magnitude is below the smallest normal number of
the dtype (see :mod:`minigrad.denormals`).  The NumPy reference comes first, then
the Numba version (one channel per thread), then the CuPy one, whose CUDA code is
in ``conv.cu``.
"""
from __future__ import annotations

import math

import numpy as np

from ..denormals import flush_subnormals, smallest_normal
from . import _cuda
from ._jit import kernel, prange
from ._math import flush, ftz_enter, ftz_exit
from .conv import _contiguous
from .dense import ACTIVATION_COST

KERNELS = ("conv_forward", "conv_backward")


# ----------------------------------------------------------------------------
# NumPy reference
# ----------------------------------------------------------------------------

def _rows(a):
    """An (N, C, H, W) batch as (N, C, H W) (a view)."""
    return a.reshape(a.shape[:2] + (math.prod(a.shape[2:]),))


def _channels(y, product):
    """The epilogue's input as (N, C, S) (a view): ``product`` (C, N S) transposed, or y."""
    n, c, s = _rows(y).shape
    return _rows(y) if product is None else product.reshape(c, n, s).transpose(1, 0, 2)


def conv_forward_numpy(y, bias, activation, slope=0.01, product=None):
    z = _channels(y, product)
    if bias is not None:
        z = z + bias[:, None]
    y.reshape(z.shape)[...] = activation.forward(z, y.dtype.type(slope))
    return flush_subnormals(y)


def conv_backward_numpy(grad_y, y, activation, slope=0.01, channel_major=False):
    grad_z = flush_subnormals(np.array(grad_y * activation.derivative(y, y.dtype.type(slope)),
                                       dtype=y.dtype))
    grad_bias = grad_z.sum(axis=(0, 2, 3), dtype=np.float64).astype(y.dtype)
    if channel_major:
        grad_z = _as_channel_major(grad_z)
    return grad_z, flush_subnormals(grad_bias)


def _as_channel_major(images):
    n, c, s = _rows(images).shape
    return np.ascontiguousarray(_rows(images).transpose(1, 0, 2)).reshape(c, n * s)


# ----------------------------------------------------------------------------
# Numba
# ----------------------------------------------------------------------------

# The epilogues: one channel per iteration (prange), each channel's rows of S pixels
# one image after the other.  ACT / DERIV are the activation of the specialization
# (see minigrad.kernels.dense).  The bias gradient adds each row into a float64 row
# of S partial sums (an elementwise add, which vectorizes, where a running scalar
# sum could not), summed at the channel's end.

def ACT(x, slope):  # the activation of a kernel specialization
    return x


def DERIV(y, slope):  # ... and its derivative
    return y


@kernel
def _conv_forward(product, bias, slope, tiny, y):
    """y[n, c] = act(product[c, n] + bias[c]): product (C, N, S), y (N, C, S)."""
    zero = y.dtype.type(0)
    n_images, channels = y.shape[:2]
    for c in prange(channels):
        saved = ftz_enter()
        b = bias[c]
        for n in range(n_images):
            source, row = product[c, n], y[n, c]
            for s in range(row.size):
                row[s] = flush(ACT(source[s] + b, slope), tiny, zero)
        ftz_exit(saved)


@kernel
def _conv_forward_in_place(bias, slope, tiny, y):
    """y[n, c] = act(y[n, c] + bias[c]), y (N, C, S).  Its own loop rather than
    _conv_forward with y as its own (transposed) product: that view is strided and
    aliases the output, which keeps LLVM off the vector path (see dense_forward)."""
    zero = y.dtype.type(0)
    n_images, channels = y.shape[:2]
    for c in prange(channels):
        saved = ftz_enter()
        b = bias[c]
        for n in range(n_images):
            row = y[n, c]
            for s in range(row.size):
                row[s] = flush(ACT(row[s] + b, slope), tiny, zero)
        ftz_exit(saved)


@kernel
def _conv_backward(grad_y, y, slope, tiny, channel_major, grad_z, grad_bias):
    """grad_z = grad_y * act'(y) -- grad_z (C, N, S) if channel_major, else (N, C, S)
    -- and grad_bias[c] = its sum over n and s."""
    zero = y.dtype.type(0)
    n_images, channels, size = y.shape
    for c in prange(channels):
        saved = ftz_enter()
        partial = np.zeros(size, dtype=np.float64)
        for n in range(n_images):
            g, out = grad_y[n, c], (grad_z[c, n] if channel_major else grad_z[n, c])
            source = y[n, c]
            for s in range(size):
                out[s] = flush(g[s] * DERIV(source[s], slope), tiny, zero)
            for s in range(size):
                partial[s] += out[s]
        grad_bias[c] = flush(y.dtype.type(partial.sum()), tiny, zero)
        ftz_exit(saved)


def _bias(bias, channels, dtype):
    return np.zeros(channels, dtype) if bias is None else _contiguous(bias).astype(dtype,
                                                                                copy=False)


def conv_forward_numba(y, bias, activation, slope=0.01, product=None):
    if not y.flags.c_contiguous:  # written through in one pass
        y[...] = conv_forward_numba(np.ascontiguousarray(y), bias, activation, slope, product)
        return y
    n, c, s = _rows(y).shape
    args = (_bias(bias, c, y.dtype), y.dtype.type(slope), smallest_normal(y.dtype), _rows(y))
    size = y.size * ACTIVATION_COST[activation.name]
    if product is None:
        _conv_forward_in_place.specialize(activation.name, ACT=activation.forward)(
            *args, size=size)
    else:
        _conv_forward.specialize(activation.name, ACT=activation.forward)(
            _contiguous(product).reshape(c, n, s), *args, size=size)
    return y


def conv_backward_numba(grad_y, y, activation, slope=0.01, channel_major=False):
    grad_y, y = _contiguous(grad_y), _contiguous(y)
    n, c, s = _rows(y).shape
    grad_z = np.empty((c, n, s) if channel_major else y.shape, dtype=y.dtype)
    grad_bias = np.empty(c, dtype=y.dtype)
    _conv_backward.specialize(activation.name, DERIV=activation.derivative)(
        _rows(grad_y), _rows(y), y.dtype.type(slope), smallest_normal(y.dtype), channel_major,
        grad_z if channel_major else _rows(grad_z), grad_bias,
        size=y.size * ACTIVATION_COST[activation.name])
    return (grad_z.reshape(c, n * s) if channel_major else grad_z), grad_bias


# ----------------------------------------------------------------------------
# CuPy (the CUDA code is in conv.cu)
# ----------------------------------------------------------------------------

#: y <- act(source + bias[channel]), a grid-stride loop over y.
CONV_FORWARD_CUDA = _cuda.Raw("mg_conv_forward", "conv.cu")
#: grad_z and grad_bias in one launch: one block per channel.
CONV_BACKWARD_CUDA = _cuda.Raw("mg_conv_backward", "conv.cu")


@_cuda.uses(CONV_FORWARD_CUDA)
def conv_forward_cupy(y, bias, activation, slope=0.01, product=None):
    _cuda.check_device_arrays("conv_forward", y, *(() if bias is None else (bias,)),
                              *(() if product is None else (product,)))
    if not y.flags.c_contiguous:  # the kernel writes it as laid out
        y[...] = conv_forward_cupy(y.copy(), bias, activation, slope, product)
        return y
    cupy = _cuda.cupy_module()
    _cuda.suffix(y.dtype)
    n, c = y.shape[:2]
    bias = cupy.zeros(c, y.dtype) if bias is None else cupy.ascontiguousarray(bias, y.dtype)
    source = y if product is None else cupy.ascontiguousarray(product)
    _cuda.launch(CONV_FORWARD_CUDA, y, (source, bias, y, np.int64(y.size), np.int32(n),
                                        np.int32(c), np.int32(y.size // max(1, n * c)),
                                        np.int32(product is not None),
                                        np.int32(activation.code), y.dtype.type(slope)))
    return y


@_cuda.uses(CONV_BACKWARD_CUDA)
def conv_backward_cupy(grad_y, y, activation, slope=0.01, channel_major=False):
    _cuda.check_device_arrays("conv_backward", grad_y, y)
    cupy = _cuda.cupy_module()
    _cuda.suffix(y.dtype)
    y = cupy.ascontiguousarray(y)
    grad_y = cupy.ascontiguousarray(grad_y, y.dtype)
    n, c = y.shape[:2]
    grad_z = cupy.empty((c, n * math.prod(y.shape[2:])) if channel_major else y.shape,
                        dtype=y.dtype)
    grad_bias = cupy.empty(c, dtype=y.dtype)
    if c:
        CONV_BACKWARD_CUDA.function(y.dtype)(
            (c,), (256,), (grad_y, y, grad_z, grad_bias, np.int32(n), np.int32(c),
                           np.int32(math.prod(y.shape[2:])), np.int32(channel_major),
                           np.int32(activation.code), y.dtype.type(slope)))
    return grad_z, grad_bias
