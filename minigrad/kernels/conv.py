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
* ``col2im(cols, image_shape, kernel_size, stride, padding) -> image``: its
  adjoint (transpose), not its inverse: every entry of cols is *added* into the
  pixel im2col read it from; entries that came from the padding are dropped.
  ``image_shape`` is (N, C, H, W): several H give the same oh when sh > 1.

The layout puts the batch inside the columns, so that one GEMM of the weight
matrix, (C_out, C kh kw), with cols covers the whole batch; rows ordered
(c, ki, kj) make a conv2d weight (C_out, C, kh, kw) that matrix by a reshape.

Every pixel of col2im's image sums its contributions in the order (ki, kj)
ascending in all three versions, so they agree to the last bit (but for FTZ).
Both kernels write 0 for a value whose magnitude is below the smallest normal
number of the dtype (see :mod:`minigrad.denormals`).

The NumPy reference comes first, then the Numba version (one batch image per
thread), then the CuPy one, whose CUDA code is in ``conv.cu``.
"""
from __future__ import annotations

import numpy as np

from ..conv import output_size
from ..denormals import flush_subnormals, smallest_normal
from . import _cuda
from ._jit import kernel, prange, scalar
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


def col2im_numpy(cols, image_shape, kernel_size, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = image_shape
    oh, ow = output_size((h, w), kernel_size, stride, padding)
    taps = cols.reshape(c, kh, kw, n, oh, ow)
    padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for ki in range(kh):
        for kj in range(kw):
            window = padded[:, :, ki:ki + sh * (oh - 1) + 1:sh, kj:kj + sw * (ow - 1) + 1:sw]
            window += taps[:, ki, kj].transpose(1, 0, 2, 3)
    return flush_subnormals(np.ascontiguousarray(padded[:, :, ph:ph + h, pw:pw + w]))


# ----------------------------------------------------------------------------
# Numba
# ----------------------------------------------------------------------------

# One batch image per loop iteration (``prange``: one per thread in the parallel
# version; images write disjoint parts of cols / image, so no two threads touch
# one address).  The innermost loop runs over a row of output pixels, over the
# range of ox whose input column is inside the image (computed, not tested per
# pixel), so it has no branch and, for stride 1, reads and writes consecutive
# addresses.


@scalar
def _valid_range(k, stride, pad, size, out):
    """The output indices o in [0, out) with 0 <= o * stride - pad + k < size, as
    [lo, hi) (lo <= hi; both 0 when none)."""
    lo = min(out, max(0, -((k - pad) // stride)))   # ceil((pad - k) / stride)
    hi = min(out, (size - 1 + pad - k) // stride + 1)
    return lo, max(lo, hi)


@kernel
def _im2col(x, kh, kw, sh, sw, ph, pw, oh, ow, tiny, cols):
    zero = x.dtype.type(0)
    n_images, channels, height, width = x.shape
    pixels = oh * ow
    for n in prange(n_images):
        saved = ftz_enter()
        for c in range(channels):
            for ki in range(kh):
                for kj in range(kw):
                    row = cols[(c * kh + ki) * kw + kj]
                    lo, hi = _valid_range(kj, sw, pw, width, ow)
                    for oy in range(oh):
                        out = row[n * pixels + oy * ow:n * pixels + (oy + 1) * ow]
                        iy = oy * sh - ph + ki
                        if iy < 0 or iy >= height:
                            out[:] = zero
                            continue
                        source = x[n, c, iy]
                        for ox in range(lo):
                            out[ox] = zero
                        for ox in range(lo, hi):
                            out[ox] = flush(source[ox * sw - pw + kj], tiny, zero)
                        for ox in range(hi, ow):
                            out[ox] = zero
        ftz_exit(saved)


@kernel
def _col2im(cols, kh, kw, sh, sw, ph, pw, oh, ow, tiny, image):
    zero = image.dtype.type(0)
    n_images, channels, height, width = image.shape
    pixels = oh * ow
    for n in prange(n_images):
        saved = ftz_enter()
        for c in range(channels):
            plane = image[n, c]
            plane[:] = zero
            for ki in range(kh):
                for kj in range(kw):
                    row = cols[(c * kh + ki) * kw + kj]
                    lo, hi = _valid_range(kj, sw, pw, width, ow)
                    for oy in range(oh):
                        iy = oy * sh - ph + ki
                        if iy < 0 or iy >= height:
                            continue
                        source = row[n * pixels + oy * ow:n * pixels + (oy + 1) * ow]
                        target = plane[iy]
                        for ox in range(lo, hi):
                            target[ox * sw - pw + kj] += source[ox]
            for iy in range(height):  # a sum of normal numbers can be subnormal
                target = plane[iy]
                for ix in range(width):
                    target[ix] = flush(target[ix], tiny, zero)
        ftz_exit(saved)


def _contiguous(a):
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def im2col_numba(x, kernel_size, stride, padding):
    x = _contiguous(x)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c = x.shape[:2]
    oh, ow = output_size(x.shape[2:], kernel_size, stride, padding)
    cols = np.empty((c * kh * kw, n * oh * ow), dtype=x.dtype)
    _im2col(x, kh, kw, sh, sw, ph, pw, oh, ow, smallest_normal(x.dtype), cols, size=cols.size)
    return cols


def col2im_numba(cols, image_shape, kernel_size, stride, padding):
    cols = _contiguous(cols)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    oh, ow = output_size(image_shape[2:], kernel_size, stride, padding)
    image = np.empty(tuple(image_shape), dtype=cols.dtype)
    _col2im(cols, kh, kw, sh, sw, ph, pw, oh, ow, smallest_normal(cols.dtype), image,
            size=cols.size)
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
def col2im_cupy(cols, image_shape, kernel_size, stride, padding):
    _cuda.check_device_arrays("col2im", cols)
    cupy = _cuda.cupy_module()
    _cuda.suffix(cols.dtype)
    cols = cupy.ascontiguousarray(cols)
    image = cupy.empty(tuple(image_shape), dtype=cols.dtype)
    _cuda.launch(COL2IM_CUDA, image, (cols, image, np.int64(image.size),
                                      *_geometry(image_shape, kernel_size, stride, padding)))
    return image
