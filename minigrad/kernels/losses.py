"""Kernels of the reconstruction losses: the loss sum and its gradient in one pass.

* ``bce_with_logits(logits, target, scale, want_grad) -> (sum, grad or None)``:
  the sum over all elements of  softplus(x) - x t  (binary cross-entropy of
  sigmoid(x) against t, finite for any logit), accumulated in float64, and the
  gradient  (sigmoid(x) - t) * scale,  scale being d(loss)/d(sum), e.g. 1 / batch,
  written as  (1 - t) - sigmoid(-x)  for x >= 0: sigmoid(x) - 1 would cancel, and
  a confident right answer's gradient (t = 1, x = 15: -3.06e-7) would come out as a
  multiple of float32's 6e-8 near 1 (-2.98e-7 here before, -3.58e-7 in PyTorch),
  or 0 from x = 17 on;
* ``mse(pred, target, scale, want_grad) -> (sum, grad or None)``: the sum of
  (pred - target)^2 and the gradient 2 (pred - target) * scale;
* ``value_range(a) -> (min, max)``: the least and greatest values of ``a`` as
  Python floats, NaN for both if ``a`` holds a NaN (what the losses check their
  arguments with; on the host, NumPy's min and max, which were the fastest).

softplus and sigmoid are the activation table's (:mod:`minigrad.activations`).
Gradients of magnitude below the smallest normal number of their dtype are
written as 0 (the gradient of a saturated logit, sigmoid(x) - 0 for x < -87, is
otherwise a float32 subnormal; see :mod:`minigrad.denormals`).

NumPy reference first, then the Numba version, then the CuPy one (CUDA code in
``losses.cu``; its sums stay on the GPU as 0-d float64 arrays, see there).
"""
from __future__ import annotations

import numpy as np

from ..activations import ACTIVATIONS
from ..denormals import flush_subnormals, smallest_normal
from . import _cuda, _jit
from ._jit import kernel, prange, scalar
from ._math import exp_neg, flush, ftz_enter, ftz_exit, log1p_unit

KERNELS = ("bce_with_logits", "mse", "value_range")

_SIGMOID, _SOFTPLUS = ACTIVATIONS["sigmoid"].forward, ACTIVATIONS["softplus"].forward


# ----------------------------------------------------------------------------
# NumPy reference
# ----------------------------------------------------------------------------

def bce_with_logits_numpy(logits, target, scale, want_grad=True):
    x, t = logits.astype(np.float64), target.astype(np.float64)
    total = float(np.sum(_SOFTPLUS(x, 0.0) - x * t))
    if not want_grad:
        return total, None
    one = logits.dtype.type(1)
    s = _SIGMOID(-np.abs(logits), 0.0)  # sigmoid(-|x|), exact however small
    grad = np.where(logits >= 0, (one - target) - s, s - target) * logits.dtype.type(scale)
    return total, flush_subnormals(np.array(grad, dtype=logits.dtype))


def mse_numpy(pred, target, scale, want_grad=True):
    diff = pred.astype(np.float64) - target
    total = float(np.sum(diff * diff))
    if not want_grad:
        return total, None
    grad = (pred - target) * pred.dtype.type(2 * scale)
    return total, flush_subnormals(np.array(grad, dtype=pred.dtype))


def value_range_numpy(a):
    return float(np.min(a)), float(np.max(a))


# ----------------------------------------------------------------------------
# Numba
# ----------------------------------------------------------------------------

# One kernel per loss computes the loss sum, or the sum and the gradient in one
# pass (``MODE``): the exponential e^-|x| that BCE's value (softplus) and gradient
# (sigmoid) share is computed once -- the table's two formulas, with e in
# common.  The input is taken as rows (the batch); each thread owns a block of
# rows and adds every element's term to a float64 sum *per column* -- an
# elementwise add that vectorizes, where one running scalar sum would not -- and
# the caller adds those up.  As in the
# dense kernels, ``MODE`` is frozen per compiled version (``kernel.specialize``)
# and every constant has the arrays' dtype.

LOSS, BOTH = 2, 3
MODE = BOTH  # the mode of a kernel specialization


@scalar
def _add_row(acc, terms):
    """acc += terms, float64 += the arrays' dtype.  A loop of its own: folded into
    the loop of the terms, the mixed widths kept LLVM from vectorizing that one."""
    for j in range(acc.size):
        acc[j] += terms[j]


@kernel
def _bce(x, t, grad, partial, scale, tiny):
    zero, one = x.dtype.type(0), x.dtype.type(1)
    n, m = x.shape
    blocks = partial.shape[0]
    rows = (n + blocks - 1) // blocks
    for b in prange(blocks):
        saved = ftz_enter()
        acc = partial[b]
        acc[:] = 0
        terms = np.empty(m, dtype=x.dtype)
        for i in range(b * rows, min(n, (b + 1) * rows)):
            xr, tr, gr = x[i], t[i], grad[i]
            # Two short loops over the row (it stays in L1), each of which LLVM
            # vectorizes; one loop doing both ran slower than the two.
            for j in range(m):
                v = xr[j]
                e = exp_neg(abs(v))                # e^-|x| <= 1: nothing overflows
                if MODE == BOTH:                   # sigmoid(x) - t, no cancellation:
                    s = e / (one + e)              # sigmoid(-|x|)
                    g = ((one - tr[j]) - s) if v >= zero else (s - tr[j])
                    gr[j] = flush(g * scale, tiny, zero)
                terms[j] = e                       # handed to the second loop
            for j in range(m):                     # softplus(x) - x t
                v = xr[j]
                terms[j] = max(v, zero) - v * tr[j] + log1p_unit(terms[j])
            _add_row(acc, terms)
        ftz_exit(saved)


@kernel
def _mse(p, t, grad, partial, scale, tiny):
    zero = p.dtype.type(0)
    n, m = p.shape
    blocks = partial.shape[0]
    rows = (n + blocks - 1) // blocks
    for b in prange(blocks):
        saved = ftz_enter()
        acc = partial[b]
        acc[:] = 0
        terms = np.empty(m, dtype=p.dtype)
        for i in range(b * rows, min(n, (b + 1) * rows)):
            pr, tr, gr = p[i], t[i], grad[i]
            for j in range(m):
                d = pr[j] - tr[j]
                if MODE == BOTH:
                    gr[j] = flush(d * scale, tiny, zero)
                terms[j] = d * d
            _add_row(acc, terms)
        ftz_exit(saved)


def _rows(a, dtype=None):
    """``a`` as a C-contiguous matrix of rows (a 1-D or 0-d array becomes one row)."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return a.reshape(-1, a.shape[-1]) if a.ndim >= 2 else a.reshape(1, -1)


#: work per element relative to a multiply-add (what makes threads pay)
_COST = {_bce: 8, _mse: 1}


def _run(kernel_, pred, target, scale, mode):
    """(loss sum or None, gradient or None) of ``pred`` against ``target``."""
    x = _rows(pred)
    t = _rows(target, x.dtype)
    grad = np.empty_like(x) if mode != LOSS else x  # x: never written in LOSS mode
    size = x.size * _COST[kernel_]
    blocks = _jit.blocks(size, x.shape[0])
    partial = np.empty((blocks, x.shape[1]), dtype=np.float64)
    kernel_.specialize(f"mode{mode}", MODE=mode)(x, t, grad, partial, x.dtype.type(scale),
                                  smallest_normal(x.dtype), size=size)
    total = float(partial.sum())
    return total, (grad.reshape(np.shape(pred)) if mode != LOSS else None)


def bce_with_logits_numba(logits, target, scale, want_grad=True):
    return _run(_bce, logits, target, scale, BOTH if want_grad else LOSS)


def mse_numba(pred, target, scale, want_grad=True):
    return _run(_mse, pred, target, 2 * scale, BOTH if want_grad else LOSS)


# NumPy's own reductions: SIMD, and NaN comes out of them as the answer.  A one-pass
# Numba kernel (per-column min, max and a NaN probe) was 1.6-1.9x slower on an AMD
# EPYC (Zen 4) at 64 to 1024 rows of 784: two vectorized passes over data in cache
# beat one pass that does three things per element.
value_range_numba = value_range_numpy


# ----------------------------------------------------------------------------
# CuPy (the CUDA code is in losses.cu)
# ----------------------------------------------------------------------------
# The sums are returned as 0-d float64 *device* arrays rather than Python floats:
# float() of one would wait for the GPU in the middle of every training step.  It
# multiplies and converts like a float; float(result) gives the number.

BCE_SUM_CUDA = _cuda.Raw("mg_bce_sum", "losses.cu")
BCE_SUM_GRAD_CUDA = _cuda.Raw("mg_bce_sum_grad", "losses.cu")
MSE_SUM_CUDA = _cuda.Raw("mg_mse_sum", "losses.cu")
MSE_SUM_GRAD_CUDA = _cuda.Raw("mg_mse_sum_grad", "losses.cu")

_SUM_THREADS = 256
_BUFFERS = _cuda.DeviceBuffers()


def loss_sum_blocks(n, sm_count):
    """Blocks of the loss-sum launch: two per multiprocessor at most, and at least
    1024 elements (four per thread) per block."""
    return max(1, min(2 * sm_count, -(-n // (4 * _SUM_THREADS))))


def _sum_cupy(spec, op, a, b, scale=None):
    """(the loss sum as a 0-d float64 device array, the gradient or None); the
    gradient is computed where ``scale`` is given."""
    _cuda.check_device_arrays(op, a, b)
    cupy = _cuda.cupy_module()
    _cuda.suffix(a.dtype)
    shape = a.shape
    a = cupy.ascontiguousarray(a).reshape(-1)
    b = cupy.ascontiguousarray(b, dtype=a.dtype).reshape(-1)
    out = cupy.empty((), dtype=np.float64)
    grad = None if scale is None else cupy.empty(shape, dtype=a.dtype)
    if a.size == 0:
        out.fill(0)
        return out, grad
    blocks = loss_sum_blocks(a.size, _cuda.sm_count())
    partial = cupy.empty(blocks, dtype=np.float64)
    args = (a, b, np.int64(a.size), partial, _BUFFERS.counters(1), out)
    if grad is not None:
        args += (grad.reshape(-1), a.dtype.type(float(scale)))  # float(): a 0-d array too
    spec.function(a.dtype)((blocks,), (_SUM_THREADS,), args)
    return out, grad


@_cuda.uses(BCE_SUM_CUDA, BCE_SUM_GRAD_CUDA)
def bce_with_logits_cupy(logits, target, scale, want_grad=True):
    if want_grad:
        return _sum_cupy(BCE_SUM_GRAD_CUDA, "bce_with_logits", logits, target, scale)
    return _sum_cupy(BCE_SUM_CUDA, "bce_with_logits", logits, target)


@_cuda.uses(MSE_SUM_CUDA, MSE_SUM_GRAD_CUDA)
def mse_cupy(pred, target, scale, want_grad=True):
    if want_grad:
        return _sum_cupy(MSE_SUM_GRAD_CUDA, "mse", pred, target, 2 * scale)
    return _sum_cupy(MSE_SUM_CUDA, "mse", pred, target)


@_cuda.uses_cupy_only  # CuPy's min and max reductions
def value_range_cupy(a):
    _cuda.check_device_arrays("value_range", a)
    cupy = _cuda.cupy_module()
    low, high = cupy.stack((cupy.min(a), cupy.max(a))).get()  # one read from the GPU
    return float(low), float(high)
