"""Kernels of the convolutions: im2col and col2im, the layout changes around one GEMM.

A 2-D convolution (:mod:`minigrad.conv`) is a matrix product once every patch
of the input that one output pixel sees is laid out as a column:

* ``im2col(x, kernel_size, stride, padding) -> cols``: x is an (N, C, H, W)
  image batch; cols is the (C * kh * kw, N * oh * ow) matrix whose column
  ``(n, oy, ox)`` holds the kh x kw patch of every channel that the output pixel
  (oy, ox) of image n sees, rows ordered ``(c, ki, kj)``:
  ``cols[(c, ki, kj), (n, oy, ox)] = x[n, c, oy*sh - ph + ki, ox*sw - pw + kj]``,
  0 where that index falls into the zero padding.  oh = (H + 2 ph - kh) // sh + 1
  (likewise ow).
* ``col2im(cols, image_shape, kernel_size, stride, padding, out=None) -> image``:
  its adjoint (transpose), not its inverse: every entry of cols is *added* into
  the pixel im2col read it from; entries that came from the padding are dropped.
  ``image_shape`` is (N, C, H, W): several H give the same oh when sh > 1.  With
  ``out`` (an array of that shape and cols' dtype) the image is written there.
* ``conv_forward(y, bias, activation, slope, product=None) -> y``: the layer's
  epilogue, y = act(product + bias) per channel, written into the (N, C, H, W)
  batch y.  ``product`` is the GEMM's (C, N * H * W) result (channels first: a
  conv2d) laid out into y in the same pass; without it y itself is the input (a
  conv_transpose2d's col2im output), in place.  ``bias`` (C,) or None.
* ``conv_backward(grad_y, y, activation, slope, channel_major=False) -> (grad_z,
  grad_bias)``: grad_z = grad_y * act'(y) (derivative from the output, as for the
  dense layer) and grad_bias its sum over batch and pixels (float64, in the same
  pass); grad_z as an (N, C, H, W) batch, or with ``channel_major`` as the
  (C, N * H * W) matrix that a conv2d's backward GEMMs take.

The layout puts the batch inside the columns, so that one GEMM of the weight
matrix, (C_out, C kh kw), with cols covers the whole batch; rows ordered
(c, ki, kj) make a conv2d weight (C_out, C, kh, kw) that matrix by a reshape.

Every pixel of col2im's image sums its contributions in the order (ki, kj)
ascending in all three versions, so they agree to the last bit (but for FTZ).
Both kernels write 0 for a value whose magnitude is below the smallest normal
number of the dtype (see :mod:`minigrad.denormals`).

The NumPy reference comes first, then the Numba version (one row of cols, or
one channel, per thread), then the CuPy one, whose CUDA code is in ``conv.cu``.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..conv import output_size
from ..denormals import flush_subnormals, smallest_normal
from . import _cuda
from ._jit import kernel, prange
from ._math import flush, ftz_enter, ftz_exit
from .dense import ACTIVATION_COST

KERNELS = ("im2col", "col2im", "conv_forward", "conv_backward")


# ----------------------------------------------------------------------------
# NumPy reference
# ----------------------------------------------------------------------------

def im2col_numpy(x, kernel_size, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c = x.shape[:2]
    oh, ow = output_size(x.shape[2:], kernel_size, stride, padding)
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((c, kh, kw, n, oh, ow), dtype=x.dtype)
    for ki in range(kh):
        for kj in range(kw):
            # the pixels that kernel tap (ki, kj) meets, one per output pixel
            window = padded[:, :, ki:ki + sh * (oh - 1) + 1:sh, kj:kj + sw * (ow - 1) + 1:sw]
            cols[:, ki, kj] = window.transpose(1, 0, 2, 3)
    return flush_subnormals(cols.reshape(c * kh * kw, n * oh * ow))


def col2im_numpy(cols, image_shape, kernel_size, stride, padding, out=None):
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = image_shape
    oh, ow = output_size((h, w), kernel_size, stride, padding)
    taps = cols.reshape(c, kh, kw, n, oh, ow)
    padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for ki in range(kh):
        for kj in range(kw):
            window = padded[:, :, ki:ki + sh * (oh - 1) + 1:sh, kj:kj + sw * (ow - 1) + 1:sw]
            window += taps[:, ki, kj].transpose(1, 0, 2, 3)
    image = flush_subnormals(np.ascontiguousarray(padded[:, :, ph:ph + h, pw:pw + w]))
    if out is None:
        return image
    out[...] = image
    return out


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

# Both kernels work on a zero-padded copy of the batch, (N, C, H + 2 ph, W + 2 pw),
# so that no tap ever reads or adds outside it (no test for the border).  In that
# copy, output pixel (n, oy, ox) of tap (ki, kj) of channel c sits at the flat
# offset  start(c, ki, kj) + offsets[(n, oy, ox)]  with
#
#     start(c, ki, kj) = (c Hp + ki) Wp + kj,   offsets[(n, oy, ox)] = (n C Hp + oy sh) Wp + ox sw
#
# (Hp, Wp the padded sides), so a whole row of cols -- all N oh ow entries of one
# (c, ki, kj) -- is one loop over the table ``offsets`` (made once per call by
# :func:`_offsets`): a gather that LLVM vectorizes (AVX2 / AVX-512 gathers), with
# no per-output-row set-up, where loops over rows of ow pixels (7 at the
# autoencoders' second layer) spent most of their time starting and ending.
#
# Parallel versions: im2col one row of cols per iteration (rows are disjoint);
# col2im one channel per iteration (the rows of one channel add into the same
# pixels, those of different channels never), adding the taps in ascending
# (ki, kj) order as the reference does.


@functools.lru_cache(maxsize=32)  # a training step asks for the same few tables
def _offsets(n, channels, padded_size, oh, ow, stride):
    """The table ``offsets`` above, as int64 (n oh ow,), read-only (it is shared)."""
    (hp, wp), (sh, sw) = padded_size, stride
    rows = np.arange(n)[:, None, None] * channels * hp + np.arange(oh)[None, :, None] * sh
    table = (rows * wp + np.arange(ow)[None, None, :] * sw).astype(np.int64).reshape(-1)
    table.flags.writeable = False
    return table


@kernel
def _im2col(x, kh, kw, ph, pw, offsets, tiny, cols):
    zero = x.dtype.type(0)
    n_images, channels, height, width = x.shape
    hp, wp = height + 2 * ph, width + 2 * pw
    padded = np.zeros((n_images, channels, hp, wp), dtype=x.dtype)
    for n in range(n_images):  # flushed once per pixel here, not once per tap
        for c in range(channels):
            for iy in range(height):
                for ix in range(width):
                    padded[n, c, ph + iy, pw + ix] = flush(x[n, c, iy, ix], tiny, zero)
    flat = padded.reshape(-1)
    taps = kh * kw
    for r in prange(channels * taps):
        c, tap = r // taps, r % taps
        start = (c * hp + tap // kw) * wp + tap % kw
        row = cols[r]
        for j in range(offsets.size):
            row[j] = flat[start + offsets[j]]


@kernel
def _col2im(cols, kh, kw, ph, pw, offsets, tiny, image):
    zero = image.dtype.type(0)
    n_images, channels, height, width = image.shape
    hp, wp = height + 2 * ph, width + 2 * pw
    padded = np.zeros((n_images, channels, hp, wp), dtype=image.dtype)
    flat = padded.reshape(-1)
    for c in prange(channels):
        saved = ftz_enter()
        for ki in range(kh):
            for kj in range(kw):
                row = cols[(c * kh + ki) * kw + kj]
                start = (c * hp + ki) * wp + kj
                for j in range(offsets.size):
                    flat[start + offsets[j]] += row[j]
        for n in range(n_images):  # the padding's sums are dropped; a sum of normal
            for iy in range(height):  # numbers can be subnormal
                for ix in range(width):
                    image[n, c, iy, ix] = flush(padded[n, c, ph + iy, pw + ix], tiny, zero)
        ftz_exit(saved)


def _contiguous(a):
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


#: The kernels' ``size`` for the threads' threshold (:data:`._jit.PARALLEL_MIN_SIZE`)
#: is the entries of cols times this cost (a gather or a scatter-add and the share
#: of the padded copy: one, as for the dense kernels' multiply-add).  With the batch
#: in blocks of at most 2 MB of columns (:data:`minigrad.conv.BLOCK_BYTES`) that
#: keeps them serial, as the dense kernels are; benchmarks/conv_step.py times them
#: threaded too (its "minigrad-numba-threads" column), for an idle machine to decide.
COST_PER_ENTRY = 1


def im2col_numba(x, kernel_size, stride, padding):
    x = _contiguous(x)
    (kh, kw), (ph, pw) = kernel_size, padding
    n, c, h, w = x.shape
    oh, ow = output_size((h, w), kernel_size, stride, padding)
    cols = np.empty((c * kh * kw, n * oh * ow), dtype=x.dtype)
    offsets = _offsets(n, c, (h + 2 * ph, w + 2 * pw), oh, ow, tuple(stride))
    _im2col(x, kh, kw, ph, pw, offsets, smallest_normal(x.dtype), cols,
            size=cols.size * COST_PER_ENTRY)
    return cols


def col2im_numba(cols, image_shape, kernel_size, stride, padding, out=None):
    if out is not None and not out.flags.c_contiguous:  # written through in one pass
        out[...] = col2im_numba(cols, image_shape, kernel_size, stride, padding)
        return out
    cols = _contiguous(cols)
    (kh, kw), (ph, pw) = kernel_size, padding
    n, c, h, w = image_shape
    oh, ow = output_size((h, w), kernel_size, stride, padding)
    image = np.empty(tuple(image_shape), dtype=cols.dtype) if out is None else out
    offsets = _offsets(n, c, (h + 2 * ph, w + 2 * pw), oh, ow, tuple(stride))
    _col2im(cols, kh, kw, ph, pw, offsets, smallest_normal(cols.dtype), image,
            size=cols.size * COST_PER_ENTRY)
    return image


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

#: one thread per entry of cols (a grid-stride loop): a copy or a 0.
IM2COL_CUDA = _cuda.Raw("mg_im2col", "conv.cu")
#: one thread per pixel of the image, gathering its entries of cols (no atomics).
COL2IM_CUDA = _cuda.Raw("mg_col2im", "conv.cu")


def _geometry(image_shape, kernel_size, stride, padding):
    """The int arguments every conv.cu kernel takes, in its order."""
    oh, ow = output_size(image_shape[2:], kernel_size, stride, padding)
    return tuple(np.int32(v) for v in (*image_shape, *kernel_size, *stride, *padding, oh, ow))


@_cuda.uses(IM2COL_CUDA)
def im2col_cupy(x, kernel_size, stride, padding):
    _cuda.check_device_arrays("im2col", x)
    cupy = _cuda.cupy_module()
    _cuda.suffix(x.dtype)
    x = cupy.ascontiguousarray(x)
    n, c = x.shape[:2]
    oh, ow = output_size(x.shape[2:], kernel_size, stride, padding)
    cols = cupy.empty((c * kernel_size[0] * kernel_size[1], n * oh * ow), dtype=x.dtype)
    _cuda.launch(IM2COL_CUDA, cols, (x, cols, np.int64(cols.size),
                                     *_geometry(x.shape, kernel_size, stride, padding)))
    return cols


@_cuda.uses(COL2IM_CUDA)
def col2im_cupy(cols, image_shape, kernel_size, stride, padding, out=None):
    _cuda.check_device_arrays("col2im", cols, *(() if out is None else (out,)))
    if out is not None and not out.flags.c_contiguous:  # the kernel writes it as laid out
        out[...] = col2im_cupy(cols, image_shape, kernel_size, stride, padding)
        return out
    cupy = _cuda.cupy_module()
    _cuda.suffix(cols.dtype)
    cols = cupy.ascontiguousarray(cols)
    image = cupy.empty(tuple(image_shape), dtype=cols.dtype) if out is None else out
    _cuda.launch(COL2IM_CUDA, image, (cols, image, np.int64(image.size),
                                      *_geometry(image_shape, kernel_size, stride, padding)))
    return image


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
