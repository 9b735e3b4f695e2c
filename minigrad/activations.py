"""The activations, each written once.

Every place that computes an activation or its derivative takes the maths from
:data:`ACTIVATIONS`: the primitive :class:`minigrad.functions.Activate` (and so
``minigrad.relu``, ``nn.ReLU``, ...), the fused kernels of the dense and the
convolution layers -- NumPy reference, Numba and CUDA -- and the contractive
autoencoder's Jacobian.

An entry holds four forms of one activation:

* ``forward(x, slope)`` -- y = act(x);
* ``derivative(y, slope)`` -- act'(x) written from the *output* y, so a layer
  need not keep its pre-activation for backward;
* ``cuda_forward`` / ``cuda_derivative`` -- the same two as CUDA C expressions in
  ``v`` (resp. ``y``), ``slope``, ``zero`` and ``one`` (of the kernel's float type).

``slope`` is leaky ReLU's slope for x < 0 (ignored by the others).  The Python
forms are written with the few functions below -- :func:`where`, :func:`maximum`,
:func:`exp_neg`, :func:`log1p_unit`, :func:`tanh`, :func:`one_minus_exp_neg` and
:func:`const` -- which mean the same thing on three kinds of operand:

* arrays (NumPy's, and CuPy's through NumPy's dispatch): NumPy's functions;
* Tensors: minigrad's primitives, so a derivative is itself differentiable (the
  contractive penalty trains through s'(h));
* float scalars inside a Numba kernel: branch-free scalar code that LLVM
  vectorizes (registered by :func:`minigrad.kernels._math.install`).

``tests/test_activations.py`` checks the four forms of every entry against each
other and against finite differences, at the extremes too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy

__all__ = ["Activation", "ACTIVATIONS", "activation", "where", "maximum", "exp_neg",
           "log1p_unit", "tanh", "one_minus_exp_neg", "const", "cuda_source"]


# ----------------------------------------------------------------------------
# The vocabulary of the table (see the module docstring)
# ----------------------------------------------------------------------------

def _is_tensor(*values):
    from .tensor import Tensor
    return any(isinstance(v, Tensor) for v in values)


def const(x, value):
    """``value`` as a number of x's float type (a bare Python number would widen
    float32 arithmetic to float64 inside a Numba kernel)."""
    dtype = getattr(x, "dtype", None)
    return dtype.type(value) if dtype is not None else float(value)


def where(condition, a, b):
    """``a`` where ``condition``, else ``b``."""
    if _is_tensor(a, b):
        from .functions import where as tensor_where
        return tensor_where(condition, a, b)
    if _is_tensor(condition):  # constant branches: a Tensor without a gradient
        from .replay import note
        from .tensor import Tensor
        select = _Select(a, b)
        return note(select, (condition,), Tensor._wrap(select.forward(condition.data), False))
    return numpy.where(condition, a, b)


class _Select:
    """``where`` with constant branches on a condition Tensor, recomputed when a
    recorded step is replayed (:func:`minigrad.replay.note`)."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def forward(self, condition):
        return numpy.where(condition, self.a, self.b)


def maximum(a, b):
    """The larger of a and b; a NaN in ``a`` passes through."""
    if _is_tensor(a, b):
        from .functions import maximum as tensor_maximum
        return tensor_maximum(a, b)
    return numpy.maximum(a, b)


def exp_neg(x):
    """e^-x (the activations only need x >= 0: e^-|v| never overflows)."""
    return (-x).exp() if _is_tensor(x) else numpy.exp(-x)


def log1p_unit(e):
    """ln(1 + e) for 0 <= e <= 1."""
    return numpy.log1p(e)


def tanh(x):
    return x.tanh() if _is_tensor(x) else numpy.tanh(x)


def one_minus_exp_neg(y):
    """1 - e^-y, accurate for small y too."""
    return 1.0 - (-y).exp() if _is_tensor(y) else -numpy.expm1(-y)


# ----------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Activation:
    """One activation in its four forms (see the module docstring)."""

    name: str
    forward: object
    derivative: object
    cuda_forward: str
    cuda_derivative: str

    @property
    def code(self):
        """Its index in :data:`ACTIVATIONS`: the number the CUDA kernels switch on."""
        return list(ACTIVATIONS).index(self.name)


def _identity(x, slope):
    return x


def _identity_derivative(y, slope):
    one = const(y, 1)
    return where(y == y, one, one)  # 1 shaped like y (NaN included)


def _relu(x, slope):
    return maximum(x, const(x, 0))


def _relu_derivative(y, slope):
    return where(y > const(y, 0), const(y, 1), const(y, 0))


def _leaky_relu(x, slope):
    return where(x > const(x, 0), x, x * slope)


def _leaky_relu_derivative(y, slope):
    return where(y > const(y, 0), const(y, 1), slope)


def _sigmoid(x, slope):
    # from e = e^-|x| <= 1, so no exponential overflows: 1 / (1 + e) for x >= 0,
    # e / (1 + e) for x < 0
    e = exp_neg(abs(x))
    r = const(x, 1) / (const(x, 1) + e)
    return where(x >= const(x, 0), r, e * r)


def _sigmoid_derivative(y, slope):
    return y * (const(y, 1) - y)


def _tanh(x, slope):
    return tanh(x)


def _tanh_derivative(y, slope):
    return const(y, 1) - y * y


def _softplus(x, slope):
    # ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|): no overflow, no cancellation
    return maximum(x, const(x, 0)) + log1p_unit(exp_neg(abs(x)))


def _softplus_derivative(y, slope):
    # softplus'(x) = sigmoid(x) = 1 - e^-y
    return one_minus_exp_neg(y)


ACTIVATIONS = {a.name: a for a in (
    Activation("identity", _identity, _identity_derivative,
               "v", "one"),
    Activation("relu", _relu, _relu_derivative,
               "(v > zero || v != v) ? v : zero", "y > zero ? one : zero"),
    Activation("leaky_relu", _leaky_relu, _leaky_relu_derivative,
               "v > zero ? v : v * slope", "y > zero ? one : slope"),
    Activation("sigmoid", _sigmoid, _sigmoid_derivative,
               "mg_sigmoid(v)", "y * (one - y)"),
    Activation("tanh", _tanh, _tanh_derivative,
               "mg_tanh(v)", "one - y * y"),
    Activation("softplus", _softplus, _softplus_derivative,
               "((v > zero || v != v) ? v : zero) + mg_log1p(mg_exp(-mg_fabs(v)))",
               "-mg_expm1(-y)"),
)}


def activation(name):
    """The :class:`Activation` called ``name`` (None means "identity"); a ValueError
    lists the names otherwise."""
    key = "identity" if name is None else str(name).lower()
    try:
        return ACTIVATIONS[key]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of "
                         f"{list(ACTIVATIONS)} or None") from None


def cuda_source():
    """``mg_act`` and ``mg_deriv`` for the CUDA kernels, generated from the table:
    ``switch (code)`` over the entries' CUDA expressions, ``code`` being an entry's
    :attr:`Activation.code` (so Python and CUDA agree on the numbers by construction),
    which is also defined by name (``MG_SIGMOID``, ...)."""
    def function(name, form, var):
        cases = "".join(f"        case {i}: return {getattr(a, form)};  /* {a.name} */\n"
                        for i, a in enumerate(ACTIVATIONS.values()))
        return (f"template <typename F>\n"
                f"__device__ __forceinline__ F {name}(F {var}, int code, F slope) {{\n"
                f"    const F zero = F(0), one = F(1);\n"
                f"    (void)zero; (void)one; (void)slope;\n"
                f"    switch (code) {{\n{cases}    }}\n    return {var};\n}}\n")
    codes = "".join(f"#define MG_{a.name.upper()} {i}\n"
                    for i, a in enumerate(ACTIVATIONS.values()))
    return (codes + "\n" + function("mg_act", "cuda_forward", "v") + "\n"
            + function("mg_deriv", "cuda_derivative", "y"))
