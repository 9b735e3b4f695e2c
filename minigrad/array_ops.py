"""The primitives that select, reduce, reshape, index and multiply: forward and backward
side by side (the notation is that of :mod:`minigrad.functions`).

Reductions re-insert the axes they removed before broadcasting ``g`` back;
``getitem`` scatters ``g`` into zeros (adding where an index repeats); ``matmul``
follows NumPy's semantics for 1-D, 2-D and batched operands.
"""
from __future__ import annotations

import builtins
import math
import numbers

import numpy

from .tensor import Function, Tensor, as_tensor

_builtin_max = builtins.max


def _check_broadcast(op, a, b):
    try:
        return numpy.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{op}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be "
                         f"broadcast together (NumPy rules: trailing axes must be equal "
                         f"or 1)") from None


def _normalize_axis(op, axis, ndim):
    """``axis`` (None, int or tuple) as a sorted tuple of non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, numbers.Integral) or not -ndim <= a < _builtin_max(ndim, 1):
            raise ValueError(f"{op}: axis {a!r} is out of range for a tensor with {ndim} "
                             f"dimensions")
        out.append(int(a) % _builtin_max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: repeated axis in {axis!r}")
    return tuple(sorted(out))


def _expand_reduced(grad, axes, keepdims):
    """Re-insert the reduced ``axes`` (as length 1) so ``grad`` broadcasts to the input."""
    if keepdims or not axes:
        return grad
    return grad.reshape(_keepdims_shape(grad.shape, axes))


def _keepdims_shape(reduced_shape, axes):
    shape = list(reduced_shape)
    for a in axes:  # ascending, so each insert lands at its final place
        shape.insert(a, 1)
    return tuple(shape)


# ----------------------------------------------------------------------------
# reductions
# ----------------------------------------------------------------------------

class Sum(Function):
    """y = sum of x over ``axis``.   backward: g copied along the summed axes"""

    def forward(self, x, axis, keepdims):
        self.axes = _normalize_axis("sum", axis, x.ndim)
        self.keepdims = keepdims
        self.input_shape = x.shape
        return x.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, g):
        g = _expand_reduced(g, self.axes, self.keepdims)
        return self.xp.broadcast_to(g, self.input_shape)


class Max(Function):
    """y = max of x over ``axis``.   backward: g to the maxima, split evenly between ties"""

    def forward(self, x, axis, keepdims):
        self.axes = _normalize_axis("max", axis, x.ndim)
        if x.size == 0:
            raise ValueError(f"max: cannot reduce an empty tensor of shape {tuple(x.shape)}")
        self.keepdims = keepdims
        y = x.max(axis=self.axes, keepdims=True)
        self.save_for_backward(x, y)
        return y if keepdims else y.reshape(_drop_axes(x.shape, self.axes))

    def backward(self, g):
        x, y = self.saved
        is_max = (x == y)
        count = is_max.sum(axis=self.axes, keepdims=True)
        g = _expand_reduced(g, self.axes, self.keepdims)
        return self.xp.where(is_max, g / count, 0).astype(g.dtype, copy=False)


def _drop_axes(shape, axes):
    return tuple(n for i, n in enumerate(shape) if i not in axes)


# ----------------------------------------------------------------------------
# shape
# ----------------------------------------------------------------------------

class Reshape(Function):
    """y = x viewed with a new shape.   backward: g reshaped to x's shape"""

    def forward(self, x, shape):
        self.input_shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {tuple(x.shape)} "
                             f"({x.size} elements) into shape {shape}") from None

    def backward(self, g):
        return g.reshape(self.input_shape)


class Transpose(Function):
    """y = x with axes permuted.   backward: g with the inverse permutation"""

    def forward(self, x, axes):
        if axes is None:
            axes = tuple(reversed(range(x.ndim)))
        axes = tuple(int(a) for a in axes)
        if sorted(a % _builtin_max(x.ndim, 1) for a in axes) != list(range(x.ndim)) or len(axes) != x.ndim:
            raise ValueError(f"transpose: axes {axes} are not a permutation of the "
                             f"{x.ndim} axes of a tensor of shape {tuple(x.shape)}")
        self.axes = tuple(a % x.ndim for a in axes)
        return x.transpose(self.axes)

    def backward(self, g):
        return g.transpose(tuple(numpy.argsort(self.axes)))


class BroadcastTo(Function):
    """y = x broadcast to ``shape``.   backward: g (the engine sums it back to x's shape)"""

    def forward(self, x, shape):
        try:
            return self.xp.broadcast_to(x, shape)
        except ValueError:
            raise ValueError(f"broadcast_to: cannot broadcast a tensor of shape "
                             f"{tuple(x.shape)} to shape {tuple(shape)}") from None

    def backward(self, g):
        return g


class Concatenate(Function):
    """y = [x1, x2, ...] joined along ``axis``.   backward: g split back into pieces"""

    def forward(self, *xs, axis):
        if not xs:
            raise ValueError("concatenate: needs at least one tensor")
        ndim = xs[0].ndim
        if ndim == 0:
            raise ValueError("concatenate: 0-d tensors cannot be concatenated")
        self.axis = _normalize_axis("concatenate", axis, ndim)[0]
        for i, x in enumerate(xs):
            rest = lambda s: s[:self.axis] + s[self.axis + 1:]
            if x.ndim != ndim or rest(x.shape) != rest(xs[0].shape):
                raise ValueError(f"concatenate: tensor {i} has shape {tuple(x.shape)}, which "
                                 f"does not match tensor 0's {tuple(xs[0].shape)} outside "
                                 f"axis {self.axis}")
        self.bounds = numpy.cumsum([x.shape[self.axis] for x in xs])[:-1].tolist()
        return self.xp.concatenate(xs, axis=self.axis)

    def backward(self, g):
        return tuple(self.xp.split(g, self.bounds, axis=self.axis))


class GetItem(Function):
    """y = x[index].   backward: g scattered into zeros of x's shape (added for repeats)"""

    def forward(self, x, index):
        self.index = index
        self.input_shape = x.shape
        return x[index]

    def backward(self, g):
        xp = self.xp
        out = xp.zeros(self.input_shape, dtype=g.dtype)
        if _has_array(self.index):
            # an index array may repeat a row: add, do not overwrite.
            xp.add.at(out, self.index, g)
        else:
            out[self.index] = g
        return out


def _has_array(index):
    parts = index if isinstance(index, tuple) else (index,)
    return any(hasattr(p, "shape") and getattr(p, "ndim", 0) > 0 for p in parts)


def _check_index(index, shape, xp):
    """Basic slicing, plus an integer (or boolean) array on the first axis only."""
    parts = index if isinstance(index, tuple) else (index,)
    out = []
    for pos, p in enumerate(parts):
        if isinstance(p, Tensor):
            p = p.data
        if isinstance(p, list):
            p = numpy.asarray(p)
        if hasattr(p, "dtype") and getattr(p, "ndim", 0) > 0:
            if pos != 0:
                raise IndexError(f"getitem: an index array is supported on the first axis "
                                 f"only (got one at position {pos} for shape {shape})")
            if p.dtype == bool:
                if p.shape != tuple(shape[:1]):
                    raise IndexError(f"getitem: boolean mask of shape {p.shape} does not "
                                     f"match the first axis of shape {shape}")
                p = xp.nonzero(xp.asarray(p))[0]
            elif not numpy.issubdtype(p.dtype, numpy.integer):
                raise IndexError(f"getitem: index array of dtype {p.dtype}; expected "
                                 f"integers or booleans")
            p = xp.asarray(p)
            if p.size and shape and (int(p.max()) >= shape[0] or int(p.min()) < -shape[0]):
                raise IndexError(f"getitem: index {int(p.max()) if int(p.max()) >= shape[0] else int(p.min())} "
                                 f"is out of bounds for axis 0 with size {shape[0]}")
        elif not (p is None or p is Ellipsis or isinstance(p, (slice, numbers.Integral))):
            raise IndexError(f"getitem: unsupported index {p!r}; use integers, slices, "
                             f"None, ... or an integer array on the first axis")
        out.append(p)
    return tuple(out) if isinstance(index, tuple) else out[0]


# ----------------------------------------------------------------------------
# matrix product
# ----------------------------------------------------------------------------

class MatMul(Function):
    """y = a @ b (NumPy semantics: 1-D, 2-D and batched with broadcast batch axes).

    backward: dA = g @ B^T, dB = A^T @ g on the last two axes.  A 1-D operand
    is treated as a matrix with one row (a) or one column (b) and the extra
    axis removed again from its gradient.
    """

    def forward(self, a, b):
        _check_matmul(a, b)
        self.save_for_backward(a, b)
        return self.xp.matmul(a, b)

    def backward(self, g):
        a, b = self.saved
        xp = self.xp
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        # give g back the row / column axis that a 1-D operand dropped from y
        g2 = g.reshape(g.shape[:-1] + (1,) + g.shape[-1:]) if a.ndim == 1 else g
        g2 = g2[..., None] if b.ndim == 1 else g2
        need_a, need_b = self.needs_input_grad
        ga = xp.matmul(g2, xp.swapaxes(b2, -1, -2)) if need_a else None
        gb = xp.matmul(xp.swapaxes(a2, -1, -2), g2) if need_b else None
        if a.ndim == 1 and need_a:
            ga = ga[..., 0, :]
        if b.ndim == 1 and need_b:
            gb = gb[..., 0]
        return ga, gb


def _check_matmul(a, b):
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must have at least 1 dimension, got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    k_a = a.shape[-1]
    k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if k_a != k_b:
        raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not "
                         f"align: {k_a} != {k_b}")
    if a.ndim > 2 and b.ndim > 2 or (a.ndim > 2 and b.ndim == 2) or (b.ndim > 2 and a.ndim == 2):
        try:
            numpy.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except ValueError:
            raise ValueError(f"matmul: batch dimensions {tuple(a.shape[:-2])} and "
                             f"{tuple(b.shape[:-2])} of shapes {tuple(a.shape)} and "
                             f"{tuple(b.shape)} cannot be broadcast") from None


class Where(Function):
    """y = a where condition, else b.   backward: g where condition else 0; 0 else g"""

    def forward(self, a, b, condition):
        _check_broadcast("where", a, b)
        try:
            numpy.broadcast_shapes(condition.shape, numpy.broadcast_shapes(a.shape, b.shape))
        except ValueError:
            raise ValueError(f"where: condition of shape {tuple(condition.shape)} does not "
                             f"broadcast with values of shapes {tuple(a.shape)} and "
                             f"{tuple(b.shape)}") from None
        self.save_for_backward(condition)
        return self.xp.where(condition, a, b)

    def backward(self, g):
        condition, = self.saved
        need_a, need_b = self.needs_input_grad[:2]
        zero = g.dtype.type(0)
        return (self.xp.where(condition, g, zero) if need_a else None,
                self.xp.where(condition, zero, g) if need_b else None)


# ----------------------------------------------------------------------------
# public functions (also Tensor methods, see minigrad.functions)
# ----------------------------------------------------------------------------

def sum(x, axis=None, keepdims=False):
    return Sum.apply(x, axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    """Sum divided by the number of summed elements."""
    x = as_tensor(x)
    axes = _normalize_axis("mean", axis, x.ndim)
    count = math.prod(x.shape[a] for a in axes)
    if count == 0:
        raise ValueError(f"mean: no elements to average over axis {axis} of shape {x.shape}")
    return Sum.apply(x, axis=axis, keepdims=keepdims) * (1.0 / count)


def max(x, axis=None, keepdims=False):
    return Max.apply(x, axis=axis, keepdims=keepdims)


def reshape(x, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return Reshape.apply(x, shape=tuple(int(s) for s in shape))


def transpose(x, axes=None):
    return Transpose.apply(x, axes=axes)


def broadcast_to(x, shape):
    return BroadcastTo.apply(x, shape=tuple(shape))


def concatenate(tensors, axis=0):
    tensors = list(tensors)
    return Concatenate.apply(*tensors, axis=axis)


def matmul(a, b): return MatMul.apply(a, b)


def getitem(x, index):
    x = as_tensor(x)
    return GetItem.apply(x, index=_check_index(index, x.shape, x.xp))


def where(condition, a, b):
    """``a`` where ``condition`` is true, else ``b`` (condition is not differentiated)."""
    if isinstance(condition, Tensor):
        condition = condition.data
    ref = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
    xp = ref.xp if ref is not None else numpy
    condition = xp.asarray(condition)
    if condition.dtype != bool:
        raise TypeError(f"where: condition has dtype {condition.dtype}; expected bool "
                        f"(e.g. x > 0)")
    return Where.apply(a, b, condition=condition)
