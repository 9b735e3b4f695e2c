"""2-D convolutions on (batch, channels, height, width) tensors: conv2d,
conv_transpose2d (PyTorch's semantics and weight layouts) and nearest upsample2d.

**im2row.** conv2d is a cross-correlation: output pixel (oy, ox) of channel o is

    y[n, o, oy, ox] = b[o] + sum over c, ki, kj of
                      W[o, c, ki, kj] * x[n, c, oy*sh - ph + ki, ox*sw - pw + kj]

(x is 0 outside the image: the padding).  Lay every patch that one output pixel
sees out as a row -- ``rows = im2row(x)``, an (N oh ow, kh kw C) matrix, rows
(n, oy, ox), columns (ki, kj, c), channels last; see :mod:`minigrad.kernels.conv`
-- and the sum is one matrix product for the whole batch,

    Y = Wr @ rows^T + b,   Wr = W as a (C_out, kh kw C) matrix,   Y: (C_out, N oh ow),

(Wr: W's axes put in the order (o, ki, kj, c), then reshaped), which is then put
back into (N, C_out, oh, ow) order.  oh = (H + 2 ph - kh) // sh + 1.  (This is the
textbook im2col with its matrix transposed; the channels-last order makes the
layout kernels copy long runs.)

**row2im** is im2row's adjoint (its transpose as a linear map): each entry of an
(N oh ow, kh kw C) matrix is *added* into the pixel im2row copied it from (pixels
shared by overlapping patches collect several).  The VJPs of Y = Wr @ rows^T follow:

    dL/dWr = G @ rows,   dL/db = G summed over its columns,
    dL/dx  = row2im(G^T @ Wr),           G = dL/dY as a (C_out, N oh ow) matrix,

and dL/dW is dL/dWr with its axes put back.

**conv_transpose2d** is that input gradient, used as a layer: its forward is
``row2im(X^T @ Wr)`` with X the input as a (C_in, N H W) matrix, W of shape
(C_in, C_out, kh, kw) being exactly a conv2d weight with C_in outputs (Wr its
(C_in, kh kw C_out) matrix).  So its VJP for the input is conv2d's forward (im2row
of dL/dy, then Wr @ that^T), and for the weight ``X @ im2row(dL/dy)``: the two
primitives below are made of the same two halves (im2row then a GEMM, a GEMM then
row2im), in swapped roles.  Its output size is (H - 1) sh - 2 ph + kh +
output_padding, output_padding < stride choosing among the sizes that a stride-sh
conv2d maps to H.

On the CPU the batch goes through in blocks of images (:data:`BLOCK_BYTES` of
rows each), one GEMM per block, so that rows stays in the cache; the products
are laid out into the (N, C, H, W) output block by block (the bias added in that
same pass); backward reuses the blocks' rows, or recomputes them when the whole
batch's would take more than :data:`KEEP_ROWS_BYTES`.  Inside
:func:`minigrad.threads.split_work` the blocks are shared by minigrad's threads
(each block's kernels and product on one core); the weight and bias gradients are
summed over the blocks in block order either way.

The kernels ``im2row`` / ``row2im`` are those of the device the data is on
(``self.device.kernels``): NumPy, Numba or CUDA.  The GEMMs are the array
library's (BLAS, cuBLAS).
"""
from __future__ import annotations

import numbers

import numpy as np

from . import threads
from .activations import activation as _activation_entry
from .tensor import Function, as_tensor

IDENTITY = _activation_entry("identity")

__all__ = ["conv2d", "conv_transpose2d", "upsample2d", "Conv2dFunction",
           "ConvTranspose2dFunction", "Upsample2dFunction", "pair", "check_input",
           "output_size", "transposed_output_size"]


# ----------------------------------------------------------------------------
# arguments and shapes (the layers' own are in minigrad.conv_layers)
# ----------------------------------------------------------------------------

def is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def pair(op, name, value, least):
    """``value`` -- an int, or a pair of ints (height, width) -- as a pair of ints
    >= ``least``; otherwise a ValueError naming ``op``, the argument and its value."""
    values = (value, value) if is_int(value) else value
    if not (isinstance(values, (tuple, list)) and len(values) == 2
            and all(is_int(v) and v >= least for v in values)):
        raise ValueError(f"{op}: {name}={value!r}; expected an integer >= {least} or a "
                         f"pair (height, width) of them")
    return int(values[0]), int(values[1])


def output_size(size, kernel_size, stride, padding):
    """(oh, ow) out of a conv2d of an input of ``size`` (height, width)."""
    return tuple((s + 2 * p - k) // st + 1
                 for s, k, st, p in zip(size, kernel_size, stride, padding))


def transposed_output_size(size, kernel_size, stride, padding, output_padding):
    """(H, W) out of a conv_transpose2d of an input of ``size`` (height, width)."""
    return tuple((s - 1) * st - 2 * p + k + op for s, k, st, p, op in
                 zip(size, kernel_size, stride, padding, output_padding))


def check_output_padding(op, output_padding, stride):
    if any(p >= s for p, s in zip(output_padding, stride)):
        raise ValueError(f"{op}: output_padding={output_padding} must be smaller than "
                         f"stride={stride} in each dimension")


def check_input(op, shape, channels, kernel_size, stride, padding, output_padding=None,
                unbatched=False):
    """The output (height, width) of a convolution of an input of ``shape`` (batch,
    channels, height, width) -- or (channels, height, width) too if ``unbatched`` --
    transposed when ``output_padding`` is given; a ValueError that names ``op``, the
    shape and what was expected otherwise."""
    shape = tuple(shape)
    if len(shape) not in ((3, 4) if unbatched else (4,)):
        either = f"({channels}, height, width) or " if unbatched else ""
        raise ValueError(f"{op}: input has shape {shape} ({len(shape)} dimensions); expected "
                         f"{either}a 4-D batch (batch, {channels}, height, width)")
    if shape[-3] != channels:
        expected = ("batch, " if len(shape) == 4 else "") + f"{channels}, height, width"
        raise ValueError(f"{op}: input has shape {shape} with {shape[-3]} channels; expected "
                         f"({expected})")
    if output_padding is not None:
        check_output_padding(op, output_padding, stride)
        out = transposed_output_size(shape[-2:], kernel_size, stride, padding, output_padding)
        if min(out) < 1:
            raise ValueError(f"{op}: input of shape {shape} gives an output of height x width "
                             f"{out[0]}x{out[1]}; expected at least 1x1 (reduce padding="
                             f"{padding})")
        return out
    (h, w), (kh, kw), (ph, pw) = shape[-2:], kernel_size, padding
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(f"{op}: input of shape {shape} has height x width {h}x{w}, "
                         f"{h + 2 * ph}x{w + 2 * pw} with padding={padding}, smaller than "
                         f"the kernel {kh}x{kw}; expected at least the kernel's size")
    return output_size((h, w), kernel_size, stride, padding)


def _check_operands(op, x, weight, bias, channels_axis):
    """weight is 4-D, bias (if any) matches its output channels, all one dtype;
    returns ``weight.shape[channels_axis]``, the input channels it expects."""
    if weight.ndim != 4:
        raise ValueError(f"{op}: weight has shape {weight.shape}; expected 4 dimensions "
                         + ("(in_channels, out_channels, kh, kw)" if channels_axis == 0 else
                            "(out_channels, in_channels, kh, kw)"))
    out_channels = weight.shape[1 - channels_axis]
    if bias is not None and bias.shape != (out_channels,):
        raise ValueError(f"{op}: bias has shape {bias.shape}; expected ({out_channels},) "
                         f"for weight of shape {weight.shape}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but the input {x.dtype}; "
                            f"expected one dtype (convert with x.astype or build the layer "
                            f"with dtype={str(x.dtype)!r})")
    return weight.shape[channels_axis]


# ----------------------------------------------------------------------------
# blocks of images, and the layout changes around the GEMMs
# ----------------------------------------------------------------------------

#: A batch is convolved in blocks of images whose rows take at most this many
#: bytes, so that they stay in the L2 cache from im2row to the GEMM (and from the
#: GEMM to row2im) instead of going out to memory and back.  Measured on the
#: 2-core machine (one thread, interleaved): the autoencoders' second layer (128
#: images of 32 x 14 x 14, 7 MB of im2col's columns) ran forward and backward 25% faster in
#: blocks of 16 to 32 images than in one.  On the GPU the batch is one block.
BLOCK_BYTES = 2 << 20

#: conv2d keeps every block's rows for backward while the whole batch's take at
#: most this many bytes, and recomputes them block by block above it (memory then
#: stays bounded by one block's).  Recomputing was a quarter of the layer's backward
#: time: on a 2-vCPU Intel Xeon VM (2026-12-08, with the im2col layout of then) the
#: autoencoders' second layer at batch 128 (7 MB of columns in 4 blocks) took 6.9-7.7
#: ms backward recomputing, 5.4-5.5 ms with the columns kept.
KEEP_ROWS_BYTES = 32 << 20


def _blocks(xp, n, bytes_per_image):
    """``[(start, stop), ...]``: the batch of ``n`` images in blocks whose rows
    (``bytes_per_image`` each) take at most :data:`BLOCK_BYTES` (one block on the GPU),
    as many as a multiple of the cores (:func:`minigrad.threads.cores`: the blocks are
    the same whether or not threads share them), of sizes that differ by at most one
    image."""
    if xp is not np:
        return [(0, n)]
    count = -(-n // max(1, BLOCK_BYTES // max(1, bytes_per_image)))
    count = -(-count // threads.cores()) * threads.cores()
    bounds = threads.even_bounds(n, max(1, min(n, count)))
    return list(zip(bounds[:-1], bounds[1:]))


def _as_matrix(xp, images):
    """(N, C, H, W) -> the (C, N H W) matrix (a copy, in that order)."""
    n, c, h, w = images.shape
    return xp.ascontiguousarray(images.transpose(1, 0, 2, 3)).reshape(c, n * h * w)


def _weight_rows(weight):
    """A weight (A, B, kh, kw) as the (A, kh kw B) matrix whose columns are ordered
    (ki, kj, b), as im2row's are (a copy)."""
    a, b, kh, kw = weight.shape
    return weight.transpose(0, 2, 3, 1).reshape(a, kh * kw * b)


def _weight_from_rows(xp, matrix, shape):
    """:func:`_weight_rows` undone: the (A, kh kw B) matrix as a weight of ``shape``."""
    a, b, kh, kw = shape
    return xp.ascontiguousarray(matrix.reshape(a, kh, kw, b).transpose(0, 3, 1, 2))


# ----------------------------------------------------------------------------
# the primitives
# ----------------------------------------------------------------------------

class Conv2dFunction(Function):
    """y = act(conv2d(x, W) + b): Y = act(Wr @ im2row(x)^T + b), one GEMM per block of
    images, the bias and activation added as the product is laid out into y
    (``kernels.conv_forward``).

    backward (G = g * act'(y) as a (C_out, N oh ow) matrix, ``kernels.conv_backward``):
        gx = row2im(G^T @ Wr);   gWr = G @ im2row(x);   gb = sum of G's columns
    """

    def forward(self, x, weight, *bias, stride, padding, activation=IDENTITY, slope=0.01):
        xp, kernels = self.xp, self.device.kernels
        self.geometry = (weight.shape[2:], stride, padding)
        self.activation, self.slope = activation, slope
        oh, ow = output_size(x.shape[2:], *self.geometry)
        wr = _weight_rows(weight)
        per_image = wr.shape[1] * oh * ow * x.dtype.itemsize  # bytes of rows
        self.blocks = blocks = _blocks(xp, x.shape[0], per_image)
        y = xp.empty((x.shape[0], weight.shape[0], oh, ow), dtype=x.dtype)
        keep = xp is not np or per_image * x.shape[0] <= KEEP_ROWS_BYTES
        b = bias[0] if bias else None

        def block(k):
            start, stop = blocks[k]
            rows = kernels.im2row(x[start:stop], *self.geometry)
            kernels.conv_forward(y[start:stop], b, activation, slope, product=wr @ rows.T)
            return rows if keep else None

        kept = threads.each_block(block, len(blocks))  # for backward: KEEP_ROWS_BYTES
        self.save_for_backward(x, weight, wr, kept if keep else None, y)
        return y

    def backward(self, g):
        x, weight, wr, kept, y = self.saved
        xp, kernels, need = self.xp, self.device.kernels, self.needs_input_grad
        gx = xp.empty(x.shape, dtype=g.dtype) if need[0] else None
        blocks = self.blocks

        def block(k):
            start, stop = blocks[k]
            g2, gb = kernels.conv_backward(g[start:stop], y[start:stop], self.activation,
                                           self.slope, channel_major=True)
            if need[0]:
                image = gx[start:stop]
                kernels.row2im(g2.T @ wr, image.shape, *self.geometry, out=image)
            if not need[1]:
                return gb, None
            rows = kernels.im2row(x[start:stop], *self.geometry) if kept is None else kept[k]
            return gb, g2 @ rows

        shares = threads.each_block(block, len(blocks))
        gw = _weight_from_rows(xp, threads.sum_in_order([s[1] for s in shares]), weight.shape) \
            if need[1] else None
        if len(need) == 2:
            return gx, gw
        return gx, gw, (threads.sum_in_order([s[0] for s in shares]) if need[2] else None)


class ConvTranspose2dFunction(Function):
    """y = act(conv_transpose2d(x, W) + b) = act(row2im(X^T @ Wr) + b): conv2d's input
    gradient, W of shape (C_in, C_out, kh, kw), Wr = W as a (C_in, kh kw C_out)
    matrix; bias and activation in one pass over each block (``kernels.conv_forward``).

    backward (X = x as a (C_in, N H W) matrix, G = g * act'(y), rows = im2row(G)):
        gx = Wr @ rows^T (conv2d's forward);   gWr = X @ rows;   gb = sum of G over
        batch and pixels
    """

    def forward(self, x, weight, *bias, stride, padding, output_padding, activation=IDENTITY,
                slope=0.01):
        xp, kernels = self.xp, self.device.kernels
        n, _, h, w = x.shape
        self.geometry = (weight.shape[2:], stride, padding)
        self.activation, self.slope = activation, slope
        size = transposed_output_size((h, w), *self.geometry, output_padding)
        wr = _weight_rows(weight)
        self.blocks = blocks = _blocks(xp, n, wr.shape[1] * h * w * x.dtype.itemsize)
        y = xp.empty((n, weight.shape[1], *size), dtype=x.dtype)
        b = bias[0] if bias else None

        def block(k):
            start, stop = blocks[k]
            image, matrix = y[start:stop], _as_matrix(xp, x[start:stop])
            kernels.row2im(matrix.T @ wr, image.shape, *self.geometry, out=image)
            kernels.conv_forward(image, b, activation, slope)  # while it is in the cache
            return matrix

        # each block of x as a (C_in, n H W) matrix, kept for gW
        self.save_for_backward(threads.each_block(block, len(blocks)), weight, wr, y)
        self.input_shape = x.shape
        return y

    def backward(self, g):
        matrices, weight, wr, y = self.saved
        xp, kernels, need = self.xp, self.device.kernels, self.needs_input_grad
        gx = xp.empty(self.input_shape, dtype=g.dtype) if need[0] else None
        blocks = self.blocks

        def block(k):
            start, stop = blocks[k]
            gz, gb = kernels.conv_backward(g[start:stop], y[start:stop], self.activation,
                                           self.slope)
            rows = kernels.im2row(gz, *self.geometry)
            if need[0]:
                kernels.conv_forward(gx[start:stop], None, IDENTITY, product=wr @ rows.T)
            return gb, (matrices[k] @ rows if need[1] else None)

        shares = threads.each_block(block, len(blocks))
        gw = _weight_from_rows(xp, threads.sum_in_order([s[1] for s in shares]), weight.shape) \
            if need[1] else None
        if len(need) == 2:
            return gx, gw
        return gx, gw, (threads.sum_in_order([s[0] for s in shares]) if need[2] else None)


class Upsample2dFunction(Function):
    """y = x with every pixel repeated (sh x sw times) (nearest neighbour).

    backward: g summed over each sh x sw block -- as sw strided column views added,
    then sh row views: elementwise adds.  (A sum over the block axes of g reshaped to
    (n, c, h, sh, w, sw) gives the same numbers, 20x slower in NumPy: it reduced axes
    of length 2 deep inside the array, and was most of a conv denoiser's step.)"""

    def forward(self, x, scale):
        self.scale = scale
        return x.repeat(scale[0], axis=2).repeat(scale[1], axis=3)

    def backward(self, g):
        sh, sw = self.scale
        columns = g[..., 0::sw]
        for j in range(1, sw):
            columns = columns + g[..., j::sw]
        blocks = columns[:, :, 0::sh]
        for i in range(1, sh):
            blocks = blocks + columns[:, :, i::sh]
        return blocks


# ----------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------

def conv2d(x, weight, bias=None, stride=1, padding=0, activation=None, negative_slope=0.01):
    """The 2-D cross-correlation of x (N, C_in, H, W) with weight (C_out, C_in, kh, kw),
    plus bias (C_out,) if given: (N, C_out, oh, ow), oh = (H + 2 ph - kh) // sh + 1.
    ``stride`` and ``padding`` (zeros): an int or a pair (height, width).
    ``activation`` (a name of the activation table, e.g. "relu"): applied to the result
    in the same node, its derivative taken from the output."""
    x, weight = as_tensor(x), as_tensor(weight)
    bias = None if bias is None else as_tensor(bias)
    channels = _check_operands("conv2d", x, weight, bias, channels_axis=1)
    stride, padding = pair("conv2d", "stride", stride, 1), pair("conv2d", "padding", padding, 0)
    check_input("conv2d", x.shape, channels, weight.shape[2:], stride, padding)
    operands = (x, weight) if bias is None else (x, weight, bias)
    return Conv2dFunction.apply(*operands, stride=stride, padding=padding,
                                activation=_activation_entry(activation),
                                slope=float(negative_slope))


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0,
                     activation=None, negative_slope=0.01):
    """The transposed convolution (conv2d's input gradient) of x (N, C_in, H, W) with
    weight (C_in, C_out, kh, kw), plus bias (C_out,): (N, C_out, H_out, W_out),
    H_out = (H - 1) sh - 2 ph + kh + output_padding (output_padding < stride);
    ``activation`` as for :func:`conv2d`."""
    x, weight = as_tensor(x), as_tensor(weight)
    bias = None if bias is None else as_tensor(bias)
    op = "conv_transpose2d"
    channels = _check_operands(op, x, weight, bias, channels_axis=0)
    stride, padding = pair(op, "stride", stride, 1), pair(op, "padding", padding, 0)
    output_padding = pair(op, "output_padding", output_padding, 0)
    check_input(op, x.shape, channels, weight.shape[2:], stride, padding, output_padding)
    operands = (x, weight) if bias is None else (x, weight, bias)
    return ConvTranspose2dFunction.apply(*operands, stride=stride, padding=padding,
                                         output_padding=output_padding,
                                         activation=_activation_entry(activation),
                                         slope=float(negative_slope))


def upsample2d(x, scale):
    """Nearest-neighbour upsampling of x (N, C, H, W) by ``scale`` (an int or a pair):
    (N, C, H sh, W sw)."""
    x = as_tensor(x)
    scale = pair("upsample2d", "scale", scale, 1)
    if x.ndim != 4:
        raise ValueError(f"upsample2d: input has shape {x.shape}; expected a 4-D batch "
                         f"(batch, channels, height, width)")
    return Upsample2dFunction.apply(x, scale=scale)
