"""Elementwise math for the Numba kernels: exp, log1p and tanh that vectorize.

Numba compiles ``math.exp`` and friends to calls into the C library, one element
at a time; NumPy's own float32 ufuncs are SIMD and were 5-30x faster here
(``log1pf`` alone cost 10 ns an element).  So that a fused kernel does not lose
to the unfused NumPy code it replaces, the float32 versions below are written
with arithmetic, comparisons and selects only -- no calls, no branches that
depend on data -- which LLVM turns into AVX instructions.  They are the Cephes
single-precision algorithms (range reduction plus a minimax polynomial; 2^-k is
made from its exponent bits), accurate to a few ulp over the ranges the kernels
use them on (checked against float64 in ``tests/test_kernels.py``).  float64
inputs use the C library, exactly.

The functions are plain Python here (``math`` based, so the module imports no
Numba); :func:`install` registers their typed Numba implementations and is run
by :mod:`minigrad.kernels._jit` before the first kernel compiles.

* ``exp_neg(x)``     e^-x for x >= 0 (the only exponentials the kernels need:
  e^-|v|, which never overflows); results below the smallest normal float32
  are returned as that number's neighbourhood, never as subnormals;
* ``log1p_unit(e)``  ln(1 + e) for 0 <= e <= 1;
* ``tanh(x)``        tanh x;
* ``one_minus_exp_neg(y)``  1 - e^-y for y >= 0, accurate for small y too.

Numba's disk cache keys a kernel on its own source file: after editing this
module, delete ``minigrad/kernels/__pycache__`` (or touch the kernel modules).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["exp_neg", "log1p_unit", "tanh", "one_minus_exp_neg", "two_to_minus", "install"]


# ----------------------------------------------------------------------------
# The reference semantics (plain Python, used before compilation and for float64)
# ----------------------------------------------------------------------------

def exp_neg(x):
    return math.exp(-x)


def log1p_unit(e):
    return math.log1p(e)


def tanh(x):
    return math.tanh(x)


def one_minus_exp_neg(y):
    return -math.expm1(-y)


# ----------------------------------------------------------------------------
# float32, branch-free (compiled by Numba, which also runs them on float32
# scalars in plain Python; every constant is a float32 so nothing widens)
# ----------------------------------------------------------------------------

def _exp_neg_f32(x):
    """e^-x, x >= 0: e^-x = 2^-k e^-r with k = round(x / ln 2), |r| <= ln2 / 2."""
    f = np.float32
    x = min(x, f(87.33))                    # e^-87.33 is about the smallest normal
    k = np.floor(x * f(1.44269504088896341) + f(0.5))
    # -x + k ln2, ln2 split in two so that the product is exact
    r = k * f(0.693359375) - x
    r = r - k * f(2.12194440e-4)
    r2 = r * r
    p = f(1.9875691500e-4)
    p = p * r + f(1.3981999507e-3)
    p = p * r + f(8.3334519073e-3)
    p = p * r + f(4.1665795894e-2)
    p = p * r + f(1.6666665459e-1)
    p = p * r + f(5.0000001201e-1)
    p = p * r2 + r + f(1.0)
    # times 2^-k, k in [0, 126]: a float32 built from its exponent bits
    p = p * two_to_minus(np.int32(k))
    return max(p, f(1.1754943508222875e-38))  # never a subnormal


def two_to_minus(k):
    """2^-k as a float32, for an integer 0 <= k <= 126 (Numba: one shift and a bit
    cast, see :func:`install`)."""
    return np.float32(2.0 ** -int(k))


def _log1p_unit_f32(e):
    """ln(1 + e), 0 <= e <= 1: with u = 1 + e (rounded), ln u from the Cephes
    polynomial, then ln(u) * e / (u - 1) corrects the rounding of 1 + e."""
    f = np.float32
    one = f(1.0)
    u = one + e
    big = u > f(1.41421356237)               # u in (sqrt 2, 2]: ln u = ln(u / 2) + ln 2
    x = (u * f(0.5) if big else u) - one      # x in [-0.293, 0.415]
    z = x * x
    y = f(7.0376836292e-2)
    y = y * x - f(1.1514610310e-1)
    y = y * x + f(1.1676998740e-1)
    y = y * x - f(1.2420140846e-1)
    y = y * x + f(1.4249322787e-1)
    y = y * x - f(1.6668057665e-1)
    y = y * x + f(2.0000714765e-1)
    y = y * x - f(2.4999993993e-1)
    y = y * x + f(3.3333331174e-1)
    y = y * x * z
    kf = one if big else f(0.0)
    y = y + kf * f(-2.12194440e-4)
    y = y - f(0.5) * z
    ln_u = x + y + kf * f(0.693359375)
    d = u - one
    return e if d == f(0.0) else ln_u * (e / d)


def _tanh_f32(x):
    """tanh x: an odd polynomial for |x| < 0.625, else 1 - 2 / (e^2|x| + 1)."""
    f = np.float32
    a = abs(x)
    z = x * x
    small = f(-5.70498872745e-3)
    small = small * z + f(2.06390887954e-2)
    small = small * z - f(5.37397155531e-2)
    small = small * z + f(1.33314422036e-1)
    small = small * z - f(3.33332819422e-1)
    small = small * z * x + x
    e = _exp_neg_f32(f(2.0) * a)               # e^-2|x| in (0, 1]
    large = (f(1.0) - e) / (f(1.0) + e)
    large = large if x >= f(0.0) else -large
    return small if a < f(0.625) else large


def _one_minus_exp_neg_f32(y):
    """1 - e^-y, y >= 0; a Taylor polynomial below 1/8, where the subtraction would
    cancel."""
    f = np.float32
    series = f(-1.0 / 720.0)                 # y - y^2/2 + y^3/6 - ... - y^6/720
    series = f(1.0 / 120.0) + series * y
    series = f(-1.0 / 24.0) + series * y
    series = f(1.0 / 6.0) + series * y
    series = f(-0.5) + series * y
    series = f(1.0) + series * y
    series = series * y
    direct = f(1.0) - _exp_neg_f32(y)
    return series if y < f(0.125) else direct


_FLOAT32 = {exp_neg: _exp_neg_f32, log1p_unit: _log1p_unit_f32, tanh: _tanh_f32,
            one_minus_exp_neg: _one_minus_exp_neg_f32}
_installed = False


def install(numba):
    """Register the Numba implementations: float32 -> the versions above,
    float64 -> the C library."""
    global _installed
    if _installed:
        return
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic, overload, register_jitable

    @intrinsic
    def int32_bits_as_float32(typingctx, bits):
        """The float32 whose bit pattern is the low 32 bits of the integer ``bits``."""
        if not isinstance(bits, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            low = builder.trunc(args[0], ir.IntType(32)) if bits.bitwidth > 32 else args[0]
            return builder.bitcast(low, ir.FloatType())
        return types.float32(bits), codegen

    @overload(two_to_minus, inline="always")
    def _two_to_minus(k):
        if k == types.int32:
            # biased exponent 127 - k in bits 23..30, mantissa 0
            return lambda k: int32_bits_as_float32((np.int32(127) - k) << np.int32(23))
        return None

    compiled = {name: register_jitable(inline="always")(fn) for name, fn in
                (("exp", _exp_neg_f32), ("log1p", _log1p_unit_f32),
                 ("tanh", _tanh_f32), ("one_minus", _one_minus_exp_neg_f32))}

    def define(public, f32, f64):
        @overload(public, inline="always")
        def implementation(x):
            if x == types.float32:
                return lambda x: f32(x)
            if isinstance(x, types.Float):
                return f64
            return None
        return implementation

    define(exp_neg, compiled["exp"], lambda x: math.exp(-x))
    define(log1p_unit, compiled["log1p"], lambda x: math.log1p(x))
    define(tanh, compiled["tanh"], lambda x: math.tanh(x))
    define(one_minus_exp_neg, compiled["one_minus"], lambda x: -math.expm1(-x))
    _installed = True
