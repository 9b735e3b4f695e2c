"""The primitives: each one's forward and backward (vector-Jacobian product) side by side.

Notation in the docstrings: ``y`` is the output, ``g = dL/dy`` the incoming
gradient, and each line after ``backward:`` gives ``dL/d(input)``.  Backward
results may keep the broadcast shape: the engine sums them back to each input's
shape in one place (:func:`minigrad.backward.unbroadcast`).  The primitives
that reduce, reshape, index and multiply matrices are in :mod:`minigrad.array_ops`.

A gradient masked to exact zeros (the branch ``where``, ``maximum`` or ``clip``
did not take) stays zero through every elementwise primitive, even where its own
derivative is infinite (``log`` and ``/`` at 0, ``**``, an overflowed ``exp``,
``*`` by inf; ``0 * inf`` would be ``nan``): ``where(x > 0, log(x), 0)`` has
gradient 0 at x = 0.  Not so through a matrix product or a fused kernel (dense
layers, losses, the VAE's reparameterization and KL), where an infinite operand
meets the zeros in a sum: there mask the *input* too,
``where(c, f(where(c, x, safe_x)), 0)``.

The public functions at the bottom (``exp``, ``where``, ...), and those of
:mod:`minigrad.array_ops` (``sum``, ``matmul``, ...), are also attached to
:class:`~minigrad.tensor.Tensor` as methods and operators.
"""
from __future__ import annotations

import numbers
import operator

import numpy

from . import activations, replay
from .array_ops import (_check_broadcast, _drop_axes, _normalize_axis, broadcast_to,
                        concatenate, getitem, matmul, max, mean, reshape, sum, transpose, where)
from .tensor import Function, Tensor

# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


def _times(xp, grad, local):
    """``grad * local``, with 0 wherever ``grad`` is 0 (see the module docstring)."""
    return xp.where(grad == 0, 0.0, grad * local)


def _nonzero_denominator(xp, grad, denominator):
    """``denominator`` with 1 wherever ``grad`` is 0, so ``grad / d`` is 0 there."""
    return xp.where(grad == 0, xp.ones_like(denominator), denominator)


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
        return (_times(self.xp, g, b) if need_a else None), \
            (_times(self.xp, g, a) if need_b else None)


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
        return g_over_b, (_times(self.xp, g_over_b, -(a / b))
                          if self.needs_input_grad[1] else None)


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
        # x^(p-1) is infinite at x = 0 for p < 1: where g is 0, base 1 keeps it finite
        base = x if p >= 1 else _nonzero_denominator(self.xp, g, x)
        return _times(self.xp, g, p * base ** (p - 1))


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
        return _times(self.xp, g, y)


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


class Activate(Function):
    """y = act(x) for an activation of the table (:mod:`minigrad.activations`: relu,
    leaky_relu, sigmoid, tanh, softplus, identity -- each one's formula is there).

    backward: g * act'(x), the derivative written from the output y
    """

    def forward(self, x, activation, slope):
        self.activation, self.slope = activation, x.dtype.type(slope)
        y = self.xp.asarray(activation.forward(x, self.slope), dtype=x.dtype)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        y, = self.saved
        d = self.activation.derivative(y, self.slope)
        if d.shape != g.shape or d.dtype != g.dtype:
            return g * d
        d *= g  # the derivative is a new array: the product goes into it (no temporary)
        return d


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


class LogSumExp(Function):
    """y = ln s + m over ``axis``, with m = max x and s = sum_i e^(x_i - m).

    backward: g * softmax(x) = g * e^(x - m) / s; where y is infinite (an entry +inf,
    or all -inf) softmax's limit, equal shares among the entries equal to the max."""

    def forward(self, x, axis, keepdims):
        xp = self.xp
        axes = _normalize_axis("logsumexp", axis, x.ndim)
        m = x.max(axis=axes, keepdims=True)
        shift = xp.where(xp.isfinite(m), m, 0)
        with numpy.errstate(divide="ignore", invalid="ignore", over="ignore"):
            e = xp.exp(x - shift)
            total = e.sum(axis=axes, keepdims=True)
            y = xp.log(total) + shift
        self.save_for_backward(x, m, e, total, y)
        self.axes = axes
        return y if keepdims else y.reshape(_drop_axes(y.shape, axes))

    def backward(self, g):
        xp = self.xp
        x, m, e, total, y = self.saved
        g, finite, at_max = g.reshape(y.shape), xp.isfinite(y), x == m
        limit = at_max / at_max.sum(axis=self.axes, keepdims=True)
        softmax = e / xp.where(finite, total, 1)
        return g * xp.where(finite, softmax, limit)


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
def activate(x, activation, negative_slope=0.01):
    """``x`` through the activation called ``activation`` ("relu", ...; None: identity)."""
    return Activate.apply(x, activation=activations.activation(activation),
                          slope=float(negative_slope))


def tanh(x): return activate(x, "tanh")
def sigmoid(x): return activate(x, "sigmoid")
def relu(x): return activate(x, "relu")
def softplus(x): return activate(x, "softplus")
def leaky_relu(x, negative_slope=0.01): return activate(x, "leaky_relu", negative_slope)


def log_sigmoid(x):
    """ln sigmoid(x) = -softplus(-x)."""
    return -softplus(-x)


def clip(x, low=None, high=None):
    """``x`` limited to [low, high] (either bound may be None)."""
    if low is None and high is None:
        raise ValueError("clip: give at least one of low and high")
    if low is not None and high is not None and low > high:
        raise ValueError(f"clip: low={low} is greater than high={high}")
    return Clip.apply(x, low=low, high=high)


def maximum(a, b): return Maximum.apply(a, b)
def minimum(a, b): return Minimum.apply(a, b)


def logsumexp(x, axis=None, keepdims=False):
    return LogSumExp.apply(x, axis=axis, keepdims=keepdims)


# ----------------------------------------------------------------------------
# Tensor methods and operators
# ----------------------------------------------------------------------------

class _Comparison:
    """``a < b`` and the like: a boolean Tensor, outside the graph (no gradient), but
    recomputed when a recorded step is replayed (:func:`minigrad.replay.note`)."""

    def __init__(self, op, constant=None):
        self.op, self.constant = op, constant  # constant: the other operand, if not a Tensor

    def forward(self, *arrays):
        return self.op(*arrays) if len(arrays) == 2 else self.op(arrays[0], self.constant)


def _compare(op):
    def compare(self, other):
        if isinstance(other, Tensor):
            tensors, node = (self, other), _Comparison(op)
        else:
            tensors, node = (self,), _Comparison(op, other)
        result = Tensor._wrap(node.forward(*[t.data for t in tensors]), False)
        return replay.note(node, tensors, result)
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
