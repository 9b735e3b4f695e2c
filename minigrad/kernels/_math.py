"""Elementwise math for the Numba kernels: exp, log1p and tanh that vectorize.

Numba compiles ``math.exp`` and friends to calls into the C library, one element
at a time; NumPy's own float32 ufuncs are SIMD and were 5-30x faster here
(``log1pf`` alone cost 10 ns an element).  So that a fused kernel does not lose
to the unfused NumPy code it replaces, the float32 versions below are written
with arithmetic, comparisons and selects only -- no calls, no branches that
depend on data -- which LLVM turns into AVX instructions.  exp and tanh are the
Cephes single-precision algorithms (range reduction plus a minimax polynomial;
2^-k is made from its exponent bits); log1p on [0, 1] is one fitted polynomial.
All are accurate to a few ulp over the ranges the kernels use them on (checked
against float64 in ``tests/test_kernels.py``).  float64
inputs use the C library, exactly.

The functions themselves are those of :mod:`minigrad.activations` (NumPy on
arrays, so this module imports no Numba); :func:`install` registers their typed
Numba implementations -- the float32 ones below, the C library for float64, and
selects for ``where`` / ``maximum`` -- and is run by :mod:`minigrad.kernels._jit`
before the first kernel compiles.

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
import platform

import numpy as np

from ..activations import const, exp_neg, log1p_unit, maximum, one_minus_exp_neg, tanh, where
from ._jit import scalar

__all__ = ["exp_neg", "log1p_unit", "tanh", "one_minus_exp_neg", "where", "maximum", "const",
           "two_to_minus", "flush", "ftz_enter", "ftz_exit", "read_mxcsr", "write_mxcsr", "FTZ",
           "DAZ", "X86_64", "install"]


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
    """ln(1 + e), 0 <= e <= 1, as e q(e): q is a degree-8 polynomial fitted to
    ln(1 + e) / e on [0, 1] (Chebyshev least squares; within 2e-7 relative, about
    2 ulp).  Nine multiply-adds and no division or select: about three times faster
    here than a range-reduced log with its correction step."""
    f = np.float32
    q = f(0.005253457929939032)
    q = q * e + f(-0.02958850748836994)
    q = q * e + f(0.07836166769266129)
    q = q * e + f(-0.13674770295619965)
    q = q * e + f(0.19111430644989014)
    q = q * e + f(-0.24844369292259216)
    q = q * e + f(0.33319270610809326)
    q = q * e + f(-0.49999502301216125)
    q = q * e + f(1.0)
    return e * q


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


# ----------------------------------------------------------------------------
# Flush-to-zero for the duration of a kernel
# ----------------------------------------------------------------------------
# A kernel's intermediate results can be subnormal even when its inputs and
# outputs are not (e^-88 times 0.5, say), and on x86 each instruction that
# produces or reads one takes a slow path.  So every Numba kernel sets the
# FTZ and DAZ bits of the x86 MXCSR register for its own duration -- on whichever
# thread runs it, a Numba worker thread included -- and restores the register
# before it returns: ``saved = ftz_enter()`` ... ``ftz_exit(saved)``, once per
# block of work (ldmxcsr is not free).  Elsewhere than x86-64 both do nothing.

X86_64 = platform.machine().lower() in ("x86_64", "amd64")
FTZ = 0x8000  # MXCSR bit 15: results that would be subnormal are written as 0
DAZ = 0x0040  # MXCSR bit 6: subnormal operands are read as 0


@scalar
def flush(v, tiny, zero):
    """0 for |v| < tiny (a subnormal, ``tiny`` being the smallest normal number of the
    dtype), else v; NaN passes.  What every kernel applies to what it writes."""
    return zero if abs(v) < tiny else v


def read_mxcsr():
    """The calling thread's MXCSR register (0 in plain Python and off x86-64)."""
    return 0


def write_mxcsr(value):
    """Load ``value`` into the calling thread's MXCSR register (compiled code only)."""


def ftz_enter():
    """Set FTZ and DAZ on the calling thread; returns the MXCSR value to restore."""
    return 0


def ftz_exit(saved):
    """Restore the MXCSR value that :func:`ftz_enter` returned."""


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
    _install_selects(overload, types)
    _install_mxcsr(intrinsic, overload, types, ir)
    _installed = True


def _install_selects(overload, types):
    """The scalar forms of the activation table's where / maximum / const: selects
    and typed constants (see :mod:`minigrad.activations`)."""
    from numba.np.numpy_support import as_dtype

    @overload(where, inline="always")
    def _where(condition, a, b):
        if isinstance(condition, types.Boolean):
            return lambda condition, a, b: a if condition else b
        return None

    @overload(maximum, inline="always")
    def _maximum(a, b):
        if isinstance(a, types.Float):
            return lambda a, b: b if a <= b else a  # a NaN in a passes
        return None

    @overload(const, inline="always")
    def _const(x, value):
        if isinstance(x, types.Float):
            kind = as_dtype(x).type
            return lambda x, value: kind(value)
        return None


def _install_mxcsr(intrinsic, overload, types, ir):
    """MXCSR access from the LLVM intrinsics llvm.x86.sse.stmxcsr / ldmxcsr (which
    take the address of a 32-bit slot), and the kernels' ftz_enter / ftz_exit."""
    i32, i8p = ir.IntType(32), ir.IntType(8).as_pointer()

    def call(builder, name, slot):
        fn = builder.module.declare_intrinsic(name, fnty=ir.FunctionType(ir.VoidType(), [i8p]))
        builder.call(fn, [builder.bitcast(slot, i8p)])

    @intrinsic
    def stmxcsr(typingctx):
        def codegen(context, builder, signature, args):
            slot = builder.alloca(i32)
            call(builder, "llvm.x86.sse.stmxcsr", slot)
            return builder.load(slot)
        return types.uint32(), codegen

    @intrinsic
    def ldmxcsr(typingctx, value):
        if not isinstance(value, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            slot = builder.alloca(i32)
            v = args[0]
            v = builder.trunc(v, i32) if v.type.width > 32 else builder.zext(v, i32) \
                if v.type.width < 32 else v
            builder.store(v, slot)
            call(builder, "llvm.x86.sse.ldmxcsr", slot)
            return context.get_dummy_value()
        return types.void(value), codegen

    if X86_64:
        overload(read_mxcsr, inline="always")(lambda: lambda: stmxcsr())
        overload(write_mxcsr, inline="always")(lambda value: lambda value: ldmxcsr(value))

        def enter():
            saved = stmxcsr()
            ldmxcsr(saved | np.uint32(FTZ | DAZ))
            return saved
        overload(ftz_enter, inline="always")(lambda: enter)
        overload(ftz_exit, inline="always")(lambda saved: lambda saved: ldmxcsr(saved))
    else:
        overload(read_mxcsr, inline="always")(lambda: lambda: np.uint32(0))
        overload(write_mxcsr, inline="always")(lambda value: lambda value: None)
        overload(ftz_enter, inline="always")(lambda: lambda: np.uint32(0))
        overload(ftz_exit, inline="always")(lambda saved: lambda saved: None)
