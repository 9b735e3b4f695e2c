"""Kernels of a dense layer: the work around each matrix product, in one pass.

The activation and its derivative -- written from the *output* y, so the
pre-activation need not be kept for backward -- come from the activation table
(:mod:`minigrad.activations`), as ``entry.forward(x, slope)`` and
``entry.derivative(y, slope)``.

Every kernel writes 0 for a value whose magnitude is below the smallest normal
number of its dtype (``tiny``, 1.18e-38 in float32): subnormal activations or
gradients would slow down every matrix product they enter (see
:mod:`minigrad.denormals`).

* ``dense_forward(z, bias, activation, slope) -> y``: y = act(z + bias); z is
  the (N, M) product x @ W and is overwritten with y.
* ``dense_backward(grad_y, y, activation, slope) -> (grad_z, grad_bias)``:
  grad_z = grad_y * act'(y), and grad_bias = sum of grad_z over rows, in the same
  pass (each thread sums a block of rows, then the blocks are added: 2.5x
  faster here than splitting by columns).  For the identity the Numba version
  returns grad_y itself as grad_z (unless it holds subnormals: then a flushed
  copy), so grad_z must not be written in place.

``activation`` is an :class:`~minigrad.activations.Activation` (a table entry).
The NumPy reference comes first, then the Numba version, then the CuPy one,
whose CUDA code is in ``dense.cu``.
"""
from __future__ import annotations

import numpy as np

from ..denormals import flush_subnormals, smallest_normal
from . import _cuda, _jit
from ._jit import kernel, prange
from ._math import flush, ftz_enter, ftz_exit

KERNELS = ("dense_forward", "dense_backward")


# ----------------------------------------------------------------------------
# NumPy reference
# ----------------------------------------------------------------------------

def dense_forward_numpy(z, bias, activation, slope=0.01):
    z += bias
    z[...] = activation.forward(z, z.dtype.type(slope))
    return flush_subnormals(z)


def dense_backward_numpy(grad_y, y, activation, slope=0.01):
    grad_z = np.array(grad_y * activation.derivative(y, y.dtype.type(slope)), dtype=y.dtype)
    flush_subnormals(grad_z)
    return grad_z, flush_subnormals(grad_z.sum(axis=0))


# ----------------------------------------------------------------------------
# Numba
# ----------------------------------------------------------------------------

# Each kernel is compiled once per activation: ``ACT`` / ``DERIV`` are frozen to
# the table entry's functions by ``kernel.specialize``, so each compiled loop holds
# one activation's code and LLVM vectorizes it (a run-time choice between six
# inside the loop was vectorized for some loops and not for others: 20x slower).
# Every constant is typed as the arrays' dtype (``zero``, ``slope``): a Python
# literal would widen float32 arithmetic to float64 and halve the SIMD width.

def ACT(x, slope):  # the activation of a kernel specialization (see above)
    return x


def DERIV(y, slope):  # ... and its derivative
    return y


@kernel
def _dense_forward(z, bias, slope, tiny, blocks):
    """z[i] = act(z[i] + bias) for every row i, in place (an ``out`` array that is
    z would fail LLVM's run-time overlap check and take its scalar path); one block
    of rows per thread."""
    zero = z.dtype.type(0)
    n = z.shape[0]
    rows = (n + blocks - 1) // blocks
    for b in prange(blocks):
        saved = ftz_enter()
        for i in range(b * rows, min(n, (b + 1) * rows)):
            row = z[i]
            for j in range(row.size):
                row[j] = flush(ACT(row[j] + bias[j], slope), tiny, zero)
        ftz_exit(saved)


@kernel
def _dense_backward(grad_y, y, slope, tiny, grad_z, partial):
    """grad_z = grad_y * act'(y); partial[b] = sum of grad_z over the b-th block of
    rows (one block per thread; the caller adds the blocks)."""
    zero = y.dtype.type(0)
    n = grad_y.shape[0]
    blocks = partial.shape[0]
    rows = (n + blocks - 1) // blocks
    for b in prange(blocks):
        saved = ftz_enter()
        acc = partial[b]
        acc[:] = zero
        for i in range(b * rows, min(n, (b + 1) * rows)):
            g_row, y_row, out = grad_y[i], y[i], grad_z[i]
            for j in range(out.size):
                out[j] = flush(g_row[j] * DERIV(y_row[j], slope), tiny, zero)
            for j in range(out.size):  # a second pass, still in L1: both loops vectorize
                acc[j] += out[j]
        if blocks == 1:  # the bias gradient: a sum of flushed values can be subnormal
            for j in range(acc.size):
                acc[j] = flush(acc[j], tiny, zero)
        ftz_exit(saved)


@kernel
def _column_sums(grad_y, bits, exponent, magnitude, tiny, partial):
    """The identity's backward: grad_z is grad_y itself, so only partial[b] = sum of
    grad_y over the b-th block of rows; returns how many entries of grad_y are
    subnormal (the caller then flushes a copy: what enters a product has none).
    They are counted from ``bits``, grad_y's memory as integers: a zero exponent
    field and a magnitude (all bits but the sign) that is not zero.  Comparing the floats would not see them,
    under the DAZ bit that ftz_enter sets (a subnormal operand is read as 0)."""
    zero = grad_y.dtype.type(0)
    nothing = bits.dtype.type(0)
    n = grad_y.shape[0]
    blocks = partial.shape[0]
    rows = (n + blocks - 1) // blocks
    subnormal = 0
    for b in prange(blocks):
        saved = ftz_enter()
        acc = partial[b]
        acc[:] = zero
        found = 0
        for i in range(b * rows, min(n, (b + 1) * rows)):
            g_row, b_row = grad_y[i], bits[i]
            for j in range(g_row.size):
                acc[j] += g_row[j]
            for j in range(g_row.size):
                m = b_row[j] & magnitude
                found += ((m & exponent) == nothing) & (m != nothing)
        subnormal += found
        if blocks == 1:
            for j in range(acc.size):
                acc[j] = flush(acc[j], tiny, zero)
        ftz_exit(saved)
    return subnormal


def _contiguous(a):
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


#: Elementwise work per element relative to a multiply-add: what makes threads pay.
ACTIVATION_COST = {"identity": 1, "relu": 1, "leaky_relu": 1, "sigmoid": 4, "tanh": 5, "softplus": 6}


def dense_forward_numba(z, bias, activation, slope=0.01):
    z = _contiguous(z)
    size = z.size * ACTIVATION_COST[activation.name]
    _dense_forward.specialize(activation.name, ACT=activation.forward)(
        z, _contiguous(bias).astype(z.dtype, copy=False), z.dtype.type(slope),
        smallest_normal(z.dtype), _jit.blocks(size, z.shape[0]), size=size)
    return z


#: Each float dtype's exponent field and its bits but the sign, as integers of its width.
_FIELDS = {np.float32: (np.int32(0x7F800000), np.int32(0x7FFFFFFF)),
           np.float64: (np.int64(0x7FF0000000000000), np.int64(0x7FFFFFFFFFFFFFFF))}


def dense_backward_numba(grad_y, y, activation, slope=0.01):
    grad_y, y = _contiguous(grad_y), _contiguous(y)
    size = y.size * ACTIVATION_COST[activation.name]
    blocks = _jit.blocks(size, y.shape[0])
    # on one block the kernel's partial sums are the bias gradient itself: an array of
    # its own (the leaf adopts it, where a view of a bigger array would be copied)
    grad_bias = np.empty(y.shape[1], dtype=y.dtype)
    partial = grad_bias[None] if blocks == 1 else np.empty((blocks, y.shape[1]), y.dtype)
    if activation.name == "identity" and grad_y.dtype == y.dtype:
        # grad_z = grad_y: no pass that copies it (an output layer's 784 columns at
        # batch 1024: 0.24 -> 0.12 ms); a copy only to flush subnormals it brought
        bits = grad_y.view(np.int32 if y.dtype == np.float32 else np.int64)
        if _column_sums(grad_y, bits, *_FIELDS[y.dtype.type], smallest_normal(y.dtype),
                        partial, size=size):
            grad_z = flush_subnormals(grad_y.copy())
        else:
            grad_z = grad_y
    else:
        grad_z = np.empty_like(y)
        _dense_backward.specialize(activation.name, DERIV=activation.derivative)(
            grad_y, y, y.dtype.type(slope), smallest_normal(y.dtype), grad_z, partial,
            size=size)
    if blocks == 1:
        return grad_z, grad_bias  # flushed by the kernel
    # the sum of flushed values can itself be subnormal (terms of opposite signs)
    return grad_z, flush_subnormals(partial.sum(axis=0, out=grad_bias))


# ----------------------------------------------------------------------------
# CuPy (the CUDA code is in dense.cu)
# ----------------------------------------------------------------------------

#: z <- act(z + bias[column]) in place, a grid-stride loop.
DENSE_FORWARD_CUDA = _cuda.Raw("mg_dense_forward", "dense.cu")
#: grad_z and grad_bias in one launch.
DENSE_BACKWARD_CUDA = _cuda.Raw("mg_dense_backward", "dense.cu")

_DB_BLOCK = (32, 8)
_BUFFERS = _cuda.DeviceBuffers()


def dense_backward_grid(n, m, sm_count):
    """``(column tiles, row chunks)`` of the dense_backward launch: about four blocks
    per multiprocessor, each chunk at least 32 rows."""
    tiles = (m + 31) // 32
    chunks = max(1, min((4 * sm_count) // max(tiles, 1), (n + 31) // 32, 65535))
    return tiles, chunks


def _device_contiguous(cupy, a, dtype=None):
    return cupy.ascontiguousarray(a) if dtype is None else cupy.ascontiguousarray(a, dtype=dtype)


@_cuda.uses(DENSE_FORWARD_CUDA)
def dense_forward_cupy(z, bias, activation, slope=0.01):
    _cuda.check_device_arrays("dense_forward", z, bias)
    cupy = _cuda.cupy_module()
    code = activation.code
    z = _device_contiguous(cupy, z)
    _cuda.suffix(z.dtype)
    bias = _device_contiguous(cupy, bias, z.dtype)
    _cuda.launch(DENSE_FORWARD_CUDA, z, (z, bias, np.int64(z.size), np.int32(z.shape[-1]),
                                         np.int32(code), z.dtype.type(slope)))
    return z


@_cuda.uses(DENSE_BACKWARD_CUDA)
def dense_backward_cupy(grad_y, y, activation, slope=0.01):
    _cuda.check_device_arrays("dense_backward", grad_y, y)
    cupy = _cuda.cupy_module()
    code = activation.code
    y = _device_contiguous(cupy, y)
    grad_y = _device_contiguous(cupy, grad_y, y.dtype)
    n, m = y.shape
    grad_z = cupy.empty((n, m), dtype=y.dtype)
    if n == 0 or m == 0:
        return grad_z, cupy.zeros(m, dtype=y.dtype)
    grad_bias = cupy.empty(m, dtype=y.dtype)
    tiles, chunks = dense_backward_grid(n, m, _cuda.sm_count())
    partial = cupy.empty(chunks * m if chunks > 1 else 1, dtype=np.float64)
    counters = _BUFFERS.counters(tiles)
    DENSE_BACKWARD_CUDA.function(y.dtype)(
        (tiles, chunks), _DB_BLOCK,
        (grad_y, y, grad_z, grad_bias, partial, counters, np.int32(n), np.int32(m),
         np.int32(code), y.dtype.type(slope)))
    return grad_z, grad_bias
