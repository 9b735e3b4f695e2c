"""Kernels of the convolutions: im2row and row2im, the layout changes around one GEMM
(the epilogues, bias and activation, are in :mod:`minigrad.kernels.conv_epilogue`).

A 2-D convolution (:mod:`minigrad.conv`) is a matrix product once every patch
of the input that one output pixel sees is laid out as a row:

* ``im2row(x, kernel_size, stride, padding) -> rows``: x is an (N, C, H, W)
  image batch; rows is the (N * oh * ow, kh * kw * C) matrix whose row
  ``(n, oy, ox)`` holds the kh x kw patch that the output pixel (oy, ox) of image
  n sees, channels last -- columns ordered ``(ki, kj, c)``:
  ``rows[(n, oy, ox), (ki, kj, c)] = x[n, c, oy*sh - ph + ki, ox*sw - pw + kj]``,
  0 where that index falls into the zero padding.  oh = (H + 2 ph - kh) // sh + 1
  (likewise ow).
* ``row2im(rows, image_shape, kernel_size, stride, padding, out=None) -> image``:
  its adjoint (transpose), not its inverse: every entry of rows is *added* into
  the pixel im2row read it from; entries that came from the padding are dropped.
  ``image_shape`` is (N, C, H, W): several H give the same oh when sh > 1.  With
  ``out`` (an array of that shape and rows' dtype) the image is written there.

This is the classic im2col's matrix transposed, with the channels innermost:
within a patch, the kw taps of one kernel row and all their channels are kw * C
consecutive values both in the image laid out channels last and in the row, so
both kernels copy (or add) runs of kw * C values, where im2col's layout -- rows
(c, ki, kj), columns (n, oy, ox) -- has no run longer than ow pixels (7 at the
autoencoders' second layer): its kernels gathered and scattered single values
(a 37-image block of that layer: 0.36 and 0.53 ms, against im2row's 0.19 and
row2im's 0.23).
A weight (C_out, C, kh, kw) becomes the matching (C_out, kh kw C) matrix by a
transpose (see :mod:`minigrad.conv`).

Every pixel of row2im's image sums its contributions in the order (ki, kj)
ascending in all three versions, so they agree to the last bit (but for FTZ).
Both kernels write 0 for a value whose magnitude is below the smallest normal
number of the dtype (see :mod:`minigrad.denormals`).

The NumPy reference comes first, then the Numba version (one image per thread),
then the CuPy one, whose CUDA code is in ``conv.cu``.
"""
from __future__ import annotations

import numpy as np

from ..conv import output_size
from ..denormals import flush_subnormals, smallest_normal
from . import _cuda
from ._jit import kernel, prange, scalar
from ._math import flush, ftz_enter, ftz_exit

KERNELS = ("im2row", "row2im")


# ----------------------------------------------------------------------------
# NumPy reference
# ----------------------------------------------------------------------------

def _window(padded, ki, kj, stride, oh, ow):
    """The pixels of a channels-last (N, Hp, Wp, C) batch that kernel tap (ki, kj)
    meets, one per output pixel: an (N, oh, ow, C) view."""
    sh, sw = stride
    return padded[:, ki:ki + sh * (oh - 1) + 1:sh, kj:kj + sw * (ow - 1) + 1:sw]


def im2row_numpy(x, kernel_size, stride, padding):
    (kh, kw), (ph, pw) = kernel_size, padding
    n, c = x.shape[:2]
    oh, ow = output_size(x.shape[2:], kernel_size, stride, padding)
    padded = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    rows = np.empty((n, oh, ow, kh, kw, c), dtype=x.dtype)
    for ki in range(kh):
        for kj in range(kw):
            rows[:, :, :, ki, kj] = _window(padded, ki, kj, stride, oh, ow)
    return flush_subnormals(rows.reshape(n * oh * ow, kh * kw * c))


def row2im_numpy(rows, image_shape, kernel_size, stride, padding, out=None):
    (kh, kw), (ph, pw) = kernel_size, padding
    n, c, h, w = image_shape
    oh, ow = output_size((h, w), kernel_size, stride, padding)
    taps = rows.reshape(n, oh, ow, kh, kw, c)
    padded = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=rows.dtype)
    for ki in range(kh):
        for kj in range(kw):
            _window(padded, ki, kj, stride, oh, ow)[...] += taps[:, :, :, ki, kj]
    image = padded[:, ph:ph + h, pw:pw + w].transpose(0, 3, 1, 2)
    image = flush_subnormals(np.ascontiguousarray(image))
    if out is None:
        return image
    out[...] = image
    return out


# ----------------------------------------------------------------------------
# Numba
# ----------------------------------------------------------------------------

# Both kernels go image by image through a zero-padded channels-last copy of it,
# (H + 2 ph, W + 2 pw, C), so that no tap reads or adds outside it (no test for
# the border), and in which the kw taps of kernel row ki at output pixel
# (oy, ox) are the kw * C consecutive values from padded[oy sh + ki, ox sw] on:
# one run, copied to (or added from) columns ki kw C ... (ki + 1) kw C of the row.
#
# row2im adds the runs of kernel row ki for the output pixels of a row oy in
# *descending* ox: a pixel met by several of them gets tap kj = px - ox sw from
# each, so kj ascending, as the reference adds them.
#
# Every loop indexes slices by its own counter (``target[j] += source[j]``), never by
# a sum (``target[start + j]``): Numba cannot tell that such a sum is not negative
# and wraps it around like a Python index, a branch that keeps LLVM from
# vectorizing the loop (the adds of row2im ran 3.8x slower that way).
#
# Parallel versions: one image per iteration (images never share a row or a pixel).


@scalar
def _transposed(source, target, tiny, zero):
    """target[i, j] = source[j, i], flushed (two 2-D views), with the longer of the
    two loops innermost: an image row (C, W) to channels last (W, C), or back."""
    rows, cols = target.shape
    if rows < cols:
        for i in range(rows):
            for j in range(cols):
                target[i, j] = flush(source[j, i], tiny, zero)
    else:
        for j in range(cols):
            for i in range(rows):
                target[i, j] = flush(source[j, i], tiny, zero)


@kernel
def _im2row(x, kh, kw, sh, sw, ph, pw, tiny, rows):
    zero = x.dtype.type(0)
    n_images, channels, height, width = x.shape
    hp, wp = height + 2 * ph, width + 2 * pw
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    run = kw * channels
    for n in prange(n_images):
        padded = np.zeros((hp, wp, channels), dtype=x.dtype)
        for iy in range(height):  # flushed once per pixel here, not once per tap
            _transposed(x[n, :, iy], padded[ph + iy, pw:pw + width], tiny, zero)
        lines = padded.reshape(hp, wp * channels)
        for oy in range(oh):
            for ox in range(ow):
                row = rows[(n * oh + oy) * ow + ox]
                for ki in range(kh):
                    source = lines[oy * sh + ki, ox * sw * channels:ox * sw * channels + run]
                    target = row[ki * run:(ki + 1) * run]
                    for j in range(run):
                        target[j] = source[j]


@kernel
def _row2im(rows, kh, kw, sh, sw, ph, pw, tiny, image):
    zero = image.dtype.type(0)
    n_images, channels, height, width = image.shape
    hp, wp = height + 2 * ph, width + 2 * pw
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    run = kw * channels
    for n in prange(n_images):
        saved = ftz_enter()
        padded = np.zeros((hp, wp, channels), dtype=image.dtype)
        lines = padded.reshape(hp, wp * channels)
        for ki in range(kh):
            for oy in range(oh):
                line = lines[oy * sh + ki]
                for ox in range(ow - 1, -1, -1):
                    source = rows[(n * oh + oy) * ow + ox, ki * run:(ki + 1) * run]
                    target = line[ox * sw * channels:ox * sw * channels + run]
                    for j in range(run):
                        target[j] += source[j]
        for iy in range(height):  # the padding's sums are dropped; a sum of normal
            # numbers can be subnormal
            _transposed(padded[ph + iy, pw:pw + width], image[n, :, iy], tiny, zero)
        ftz_exit(saved)


def _contiguous(a):
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


#: The kernels' ``size`` for the threads' threshold (:data:`._jit.PARALLEL_MIN_SIZE`)
#: is the entries of rows times this cost (a copy or an add and the share of the
#: padded copy: one, as for the dense kernels' multiply-add).  With the batch in
#: blocks of at most 2 MB of rows (:data:`minigrad.conv.BLOCK_BYTES`) that keeps
#: them serial, as the dense kernels are: threaded, they fought OpenBLAS's spinning
#: workers (the conv step 28.09 against 27.11 ms, 2026-12-08); the blocks are shared
#: by threads instead inside :func:`minigrad.threads.split_work`.
COST_PER_ENTRY = 1


def im2row_numba(x, kernel_size, stride, padding):
    x = _contiguous(x)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c = x.shape[:2]
    oh, ow = output_size(x.shape[2:], kernel_size, stride, padding)
    rows = np.empty((n * oh * ow, kh * kw * c), dtype=x.dtype)
    _im2row(x, kh, kw, sh, sw, ph, pw, smallest_normal(x.dtype), rows,
            size=rows.size * COST_PER_ENTRY)
    return rows


def row2im_numba(rows, image_shape, kernel_size, stride, padding, out=None):
    if out is not None and not out.flags.c_contiguous:  # written through in one pass
        out[...] = row2im_numba(rows, image_shape, kernel_size, stride, padding)
        return out
    rows = _contiguous(rows)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    image = np.empty(tuple(image_shape), dtype=rows.dtype) if out is None else out
    _row2im(rows, kh, kw, sh, sw, ph, pw, smallest_normal(rows.dtype), image,
            size=rows.size * COST_PER_ENTRY)
    return image


# ----------------------------------------------------------------------------
# CuPy (the CUDA code is in conv.cu)
# ----------------------------------------------------------------------------

#: one thread per entry of rows (a grid-stride loop): a copy or a 0.
IM2ROW_CUDA = _cuda.Raw("mg_im2row", "conv.cu")
#: one thread per pixel of the image, gathering its entries of rows (no atomics).
ROW2IM_CUDA = _cuda.Raw("mg_row2im", "conv.cu")


def _geometry(image_shape, kernel_size, stride, padding):
    """The int arguments every conv.cu kernel takes, in its order."""
    oh, ow = output_size(image_shape[2:], kernel_size, stride, padding)
    return tuple(np.int32(v) for v in (*image_shape, *kernel_size, *stride, *padding, oh, ow))


@_cuda.uses(IM2ROW_CUDA)
def im2row_cupy(x, kernel_size, stride, padding):
    _cuda.check_device_arrays("im2row", x)
    cupy = _cuda.cupy_module()
    _cuda.suffix(x.dtype)
    x = cupy.ascontiguousarray(x)
    n, c = x.shape[:2]
    oh, ow = output_size(x.shape[2:], kernel_size, stride, padding)
    rows = cupy.empty((n * oh * ow, kernel_size[0] * kernel_size[1] * c), dtype=x.dtype)
    _cuda.launch(IM2ROW_CUDA, rows, (x, rows, np.int64(rows.size),
                                     *_geometry(x.shape, kernel_size, stride, padding)))
    return rows


@_cuda.uses(ROW2IM_CUDA)
def row2im_cupy(rows, image_shape, kernel_size, stride, padding, out=None):
    _cuda.check_device_arrays("row2im", rows, *(() if out is None else (out,)))
    if out is not None and not out.flags.c_contiguous:  # the kernel writes it as laid out
        out[...] = row2im_cupy(rows, image_shape, kernel_size, stride, padding)
        return out
    cupy = _cuda.cupy_module()
    _cuda.suffix(rows.dtype)
    rows = cupy.ascontiguousarray(rows)
    image = cupy.empty(tuple(image_shape), dtype=rows.dtype) if out is None else out
    _cuda.launch(ROW2IM_CUDA, image, (rows, image, np.int64(image.size),
                                      *_geometry(image_shape, kernel_size, stride, padding)))
    return image
