"""The primitives: each one's forward and backward (vector-Jacobian product) side by side.

Notation in the docstrings: ``y`` is the output, ``g = dL/dy`` the incoming
gradient, and each line after ``backward:`` gives ``dL/d(input)``.  Backward
results may keep the broadcast shape: the engine sums them back to each input's
shape in one place (:func:`minigrad.tensor.unbroadcast`).

Gradients that pass through a "masked" branch (``where``, ``maximum``, ``clip``)
are exact zeros; the primitives whose derivative can be infinite (``log``,
``sqrt``, ``/``, ``**``) turn a zero incoming gradient into a zero outgoing one,
so an ``inf`` or ``nan`` of the branch that was not taken never reaches a
gradient (``0 * inf`` would be ``nan``).

The public functions at the bottom (``exp``, ``sum``, ``matmul``, ...) are also
attached to :class:`~minigrad.tensor.Tensor` as methods and operators.
"""
from __future__ import annotations

import builtins
import math
import numbers
import operator

import numpy

from .tensor import Function, Tensor, as_tensor

# This module defines sum, max, abs and pow for tensors; the builtins stay reachable.
_builtin_max = builtins.max

# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


def _nonzero_denominator(xp, grad, denominator):
    """``denominator`` with 1 wherever ``grad`` is 0, so ``grad / d`` is 0 there."""
    return xp.where(grad == 0, xp.ones_like(denominator), denominator)


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
# arithmetic
# ----------------------------------------------------------------------------

class Add(Function):
    """y = a + b.   backward: g, g"""

    def forward(self, a, b):
        _check_broadcast("add", a, b)
        return a + b

    def backward(self, g):
        return g, g


class Sub(Function):
    """y = a - b.   backward: g, -g"""

    def forward(self, a, b):
        _check_broadcast("sub", a, b)
        return a - b

    def backward(self, g):
        return g, (-g if self.needs_input_grad[1] else None)


class Mul(Function):
    """y = a * b.   backward: g * b, g * a"""

    def forward(self, a, b):
        _check_broadcast("mul", a, b)
        self.save_for_backward(a, b)
        return a * b

    def backward(self, g):
        a, b = self.saved
        need_a, need_b = self.needs_input_grad  # (x * 2.0: no gradient for the 2.0)
        return (g * b if need_a else None), (g * a if need_b else None)


class Div(Function):
    """y = a / b.   backward: g / b, -(g / b) * (a / b)"""

    def forward(self, a, b):
        _check_broadcast("div", a, b)
        self.save_for_backward(a, b)
        return a / b

    def backward(self, g):
        a, b = self.saved
        b = _nonzero_denominator(self.xp, g, b)
        g_over_b = g / b
        return g_over_b, (-g_over_b * (a / b) if self.needs_input_grad[1] else None)


class Neg(Function):
    """y = -x.   backward: -g"""

    def forward(self, x):
        return -x

    def backward(self, g):
        return -g


class Pow(Function):
    """y = x ** p for a constant exponent p.   backward: g * p * x^(p-1)"""

    def forward(self, x, exponent):
        self.exponent = exponent
        self.save_for_backward(x)
        return x ** exponent

    def backward(self, g):
        x, = self.saved
        p = self.exponent
        if p == 0:
            return self.xp.zeros_like(g)
        if p >= 1 or float(p).is_integer():
            return g * (p * x ** (p - 1))
        # x^(p-1) is infinite at x = 0 for p < 1: keep 0 * inf out of the gradient.
        base = _nonzero_denominator(self.xp, g, x)
        return g * (p * base ** (p - 1))


# ----------------------------------------------------------------------------
# elementwise functions
# ----------------------------------------------------------------------------

class Exp(Function):
    """y = e^x.   backward: g * y"""

    def forward(self, x):
        y = self.xp.exp(x)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        y, = self.saved
        return g * y


class Log(Function):
    """y = ln x.   backward: g / x"""

    def forward(self, x):
        self.save_for_backward(x)
        return self.xp.log(x)

    def backward(self, g):
        x, = self.saved
        return g / _nonzero_denominator(self.xp, g, x)


class Sqrt(Function):
    """y = sqrt(x).   backward: g / (2 y)"""

    def forward(self, x):
        y = self.xp.sqrt(x)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        y, = self.saved
        return g / (2 * _nonzero_denominator(self.xp, g, y))


class Abs(Function):
    """y = |x|.   backward: g * sign(x)   (0 at x = 0)"""

    def forward(self, x):
        self.save_for_backward(x)
        return self.xp.abs(x)

    def backward(self, g):
        x, = self.saved
        return g * self.xp.sign(x)


class Tanh(Function):
    """y = tanh x.   backward: g * (1 - y^2)"""

    def forward(self, x):
        y = self.xp.tanh(x)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        y, = self.saved
        return g * (1 - y * y)


class Sigmoid(Function):
    """y = 1 / (1 + e^-x).   backward: g * y * (1 - y)

    Computed from e = e^-|x| <= 1 so that no exponential overflows:
    y = 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0.
    """

    def forward(self, x):
        xp = self.xp
        e = xp.exp(-xp.abs(x))
        y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
        self.save_for_backward(y)
        return y

    def backward(self, g):
        y, = self.saved
        return g * y * (1 - y)


class Relu(Function):
    """y = max(x, 0).   backward: g where x > 0, else 0"""

    def forward(self, x):
        xp = self.xp
        self.save_for_backward(x)
        return xp.maximum(x, xp.zeros((), dtype=x.dtype))

    def backward(self, g):
        x, = self.saved
        return self.xp.where(x > 0, g, 0).astype(g.dtype, copy=False)


class LeakyRelu(Function):
    """y = x for x > 0, slope * x otherwise.   backward: g or slope * g"""

    def forward(self, x, negative_slope):
        self.slope = negative_slope
        self.save_for_backward(x)
        return self.xp.where(x > 0, x, x * negative_slope).astype(x.dtype, copy=False)

    def backward(self, g):
        x, = self.saved
        return self.xp.where(x > 0, g, g * self.slope).astype(g.dtype, copy=False)


class Softplus(Function):
    """y = ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|).   backward: g * sigmoid(x)"""

    def forward(self, x):
        xp = self.xp
        e = xp.exp(-xp.abs(x))
        self.save_for_backward(x, e)
        return xp.maximum(x, 0).astype(x.dtype, copy=False) + xp.log1p(e)

    def backward(self, g):
        x, e = self.saved
        sig = self.xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return g * sig


class LogSigmoid(Function):
    """y = ln sigmoid(x) = min(x, 0) - ln(1 + e^-|x|).   backward: g * sigmoid(-x)"""

    def forward(self, x):
        xp = self.xp
        e = xp.exp(-xp.abs(x))
        self.save_for_backward(x, e)
        return xp.minimum(x, 0).astype(x.dtype, copy=False) - xp.log1p(e)

    def backward(self, g):
        x, e = self.saved
        sig_neg = self.xp.where(x >= 0, e / (1 + e), 1 / (1 + e))
        return g * sig_neg


class Clip(Function):
    """y = min(max(x, low), high).   backward: g where low <= x <= high, else 0"""

    def forward(self, x, low, high):
        xp = self.xp
        inside = xp.ones(x.shape, dtype=bool)
        y = x
        if low is not None:
            inside &= x >= low
            y = xp.maximum(y, x.dtype.type(low))
        if high is not None:
            inside &= x <= high
            y = xp.minimum(y, x.dtype.type(high))
        self.save_for_backward(inside)
        return y

    def backward(self, g):
        inside, = self.saved
        return self.xp.where(inside, g, 0).astype(g.dtype, copy=False)


class Maximum(Function):
    """y = max(a, b) elementwise.   backward: g to the larger; ties split g / 2 each"""

    def forward(self, a, b):
        _check_broadcast("maximum", a, b)
        self.save_for_backward(a, b)
        return self.xp.maximum(a, b)

    def backward(self, g):
        a, b = self.saved
        return _split_by_winner(self.xp, g, a > b, a == b)


class Minimum(Function):
    """y = min(a, b) elementwise.   backward: g to the smaller; ties split g / 2 each"""

    def forward(self, a, b):
        _check_broadcast("minimum", a, b)
        self.save_for_backward(a, b)
        return self.xp.minimum(a, b)

    def backward(self, g):
        a, b = self.saved
        return _split_by_winner(self.xp, g, a < b, a == b)


def _split_by_winner(xp, g, a_wins, tie):
    half = g / 2
    zero = g.dtype.type(0)
    ga = xp.where(a_wins, g, xp.where(tie, half, zero))
    gb = xp.where(a_wins, zero, xp.where(tie, half, g))
    return ga, gb


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


# ============================================================================
# Public functions (each also a Tensor method).  Composites are built from the
# primitives above; their gradients come from the chain rule.
# ============================================================================

def add(a, b): return Add.apply(a, b)
def sub(a, b): return Sub.apply(a, b)
def mul(a, b): return Mul.apply(a, b)
def div(a, b): return Div.apply(a, b)
def neg(x): return Neg.apply(x)


def pow(x, exponent):
    """``x ** exponent`` for a constant (Python number) exponent."""
    if isinstance(exponent, Tensor) or not isinstance(exponent, numbers.Real):
        raise TypeError(f"pow: the exponent must be a Python number, got "
                        f"{type(exponent).__name__}; for a tensor exponent use exp(b * log(a))")
    return Pow.apply(x, exponent=exponent)


def exp(x): return Exp.apply(x)
def log(x): return Log.apply(x)
def sqrt(x): return Sqrt.apply(x)
def abs(x): return Abs.apply(x)
def tanh(x): return Tanh.apply(x)
def sigmoid(x): return Sigmoid.apply(x)
def relu(x): return Relu.apply(x)
def softplus(x): return Softplus.apply(x)
def log_sigmoid(x): return LogSigmoid.apply(x)


def leaky_relu(x, negative_slope=0.01):
    return LeakyRelu.apply(x, negative_slope=float(negative_slope))


def clip(x, low=None, high=None):
    """``x`` limited to [low, high] (either bound may be None)."""
    if low is None and high is None:
        raise ValueError("clip: give at least one of low and high")
    if low is not None and high is not None and low > high:
        raise ValueError(f"clip: low={low} is greater than high={high}")
    return Clip.apply(x, low=low, high=high)


def maximum(a, b): return Maximum.apply(a, b)
def minimum(a, b): return Minimum.apply(a, b)


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


def logsumexp(x, axis=None, keepdims=False):
    """ln sum exp(x) over ``axis``, as m + ln sum exp(x - m) with m = max x.

    m is a constant to the gradient (detached): the result does not depend on
    it, and the gradient that remains is softmax(x), finite for any input.
    """
    x = as_tensor(x)
    m = x.detach().max(axis=axis, keepdims=True)
    m = Tensor._wrap(x.xp.where(x.xp.isfinite(m.data), m.data, 0), False)
    out = log(sum(exp(x - m), axis=axis, keepdims=True)) + m
    if keepdims:
        return out
    axes = _normalize_axis("logsumexp", axis, x.ndim)
    return reshape(out, _drop_axes(out.shape, axes))


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


# ----------------------------------------------------------------------------
# Tensor methods and operators
# ----------------------------------------------------------------------------

def _compare(op):
    def compare(self, other):
        other = other.data if isinstance(other, Tensor) else other
        return Tensor._wrap(op(self.data, other), False)
    return compare


def _reflected(fn):
    return lambda self, other: fn(other, self)


Tensor.__add__ = add
Tensor.__radd__ = _reflected(add)
Tensor.__sub__ = sub
Tensor.__rsub__ = _reflected(sub)
Tensor.__mul__ = mul
Tensor.__rmul__ = _reflected(mul)
Tensor.__truediv__ = div
Tensor.__rtruediv__ = _reflected(div)
Tensor.__matmul__ = matmul
Tensor.__rmatmul__ = _reflected(matmul)
Tensor.__pow__ = pow
Tensor.__neg__ = neg
Tensor.__getitem__ = getitem
Tensor.__lt__ = _compare(operator.lt)
Tensor.__le__ = _compare(operator.le)
Tensor.__gt__ = _compare(operator.gt)
Tensor.__ge__ = _compare(operator.ge)
Tensor.__eq__ = _compare(operator.eq)
Tensor.__ne__ = _compare(operator.ne)

for _fn in (exp, log, sqrt, abs, tanh, sigmoid, relu, leaky_relu, softplus, log_sigmoid,
            clip, maximum, minimum, sum, mean, max, logsumexp, reshape, transpose,
            broadcast_to, matmul):
    setattr(Tensor, _fn.__name__, _fn)
del _fn

Tensor.__abs__ = abs
Tensor.T = property(lambda self: transpose(self))
Tensor.where = lambda self, condition, other: where(condition, self, other)
Tensor.where.__doc__ = "``self`` where ``condition``, else ``other``."
Tensor.concatenate = lambda self, others, axis=0: concatenate([self, *others], axis=axis)
