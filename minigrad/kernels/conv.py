"""Kernels of the convolutions: im2col and col2im, the layout changes around one GEMM
(the epilogues, bias and activation, are in :mod:`minigrad.kernels.conv_epilogue`).

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

import numpy as np

from ..conv import output_size
from ..denormals import flush_subnormals, smallest_normal
from . import _cuda
from ._jit import kernel, prange
from ._math import flush, ftz_enter, ftz_exit

KERNELS = ("im2col", "col2im")


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
