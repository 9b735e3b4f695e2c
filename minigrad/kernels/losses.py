"""Kernels of the reconstruction losses: one pass over the batch each way.

* ``bce_with_logits_forward(logits, target) -> float``: the sum over all elements
  of  max(x, 0) - x t + ln(1 + e^-|x|)  (binary cross-entropy of sigmoid(x)
  against t, finite for any logit), accumulated in float64;
* ``bce_with_logits_backward(logits, target, scale) -> grad``:
  (sigmoid(x) - t) * scale, scale being d(loss)/d(sum), e.g. 1 / batch;
* ``mse_forward(pred, target) -> float``: sum of (pred - target)^2;
* ``mse_backward(pred, target, scale) -> grad``: 2 (pred - target) * scale;
* ``bce_with_logits_forward_backward(logits, target, scale) -> (float, grad)`` and
  ``mse_forward_backward(pred, target, scale) -> (float, grad)``: both of the
  above in one pass (the NumPy version calls the two kernels).

Gradients of magnitude below the smallest normal number of their dtype are
written as 0 (the gradient of a saturated logit, sigmoid(x) - 0 for x < -87, is
otherwise a float32 subnormal; see :mod:`minigrad.denormals`).

NumPy reference first, then the Numba version, then the CuPy one (whose forward
sums stay on the GPU as 0-d float64 arrays; see there).
"""
from __future__ import annotations

import numpy as np

from ..denormals import flush_subnormals, smallest_normal
from . import _cuda, _jit, register
from ._jit import kernel, prange, scalar
from ._math import exp_neg, flush, ftz_enter, ftz_exit, log1p_unit


# ----------------------------------------------------------------------------
# NumPy reference
# ----------------------------------------------------------------------------

def bce_with_logits_forward_numpy(logits, target):
    x, t = logits.astype(np.float64), target.astype(np.float64)
    return float(np.sum(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))))


def bce_with_logits_backward_numpy(logits, target, scale):
    e = np.exp(-np.abs(logits))
    sig = np.where(logits >= 0, 1 / (1 + e), e / (1 + e))
    grad = np.array((sig - target) * logits.dtype.type(scale), dtype=logits.dtype)
    return flush_subnormals(grad)


def mse_forward_numpy(pred, target):
    diff = pred.astype(np.float64) - target
    return float(np.sum(diff * diff))


def mse_backward_numpy(pred, target, scale):
    grad = np.array((pred - target) * pred.dtype.type(2 * scale), dtype=pred.dtype)
    return flush_subnormals(grad)


# ----------------------------------------------------------------------------
# Numba
# ----------------------------------------------------------------------------

# One kernel per loss computes the loss sum, the gradient, or both in one pass
# (``MODE``): the fused loss node asks for both in its forward, so the exponential
# that the BCE value and its gradient share is computed once.  The input is taken
# as rows (the batch); each thread owns a block of rows and adds every element's
# term to a float64 sum *per column* -- an elementwise add that vectorizes, where
# one running scalar sum would not -- and the caller adds those up.  As in the
# dense kernels, ``MODE`` is frozen per compiled version (``kernel.specialize``)
# and every constant has the arrays' dtype.

GRAD, LOSS, BOTH = 1, 2, 3
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
                if MODE != LOSS:
                    r = one / (one + e)
                    gr[j] = flush(((r if v >= zero else e * r) - tr[j]) * scale, tiny, zero)
                if MODE != GRAD:
                    terms[j] = e                   # handed to the second loop
            if MODE != GRAD:
                for j in range(m):
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
                if MODE != LOSS:
                    gr[j] = flush(d * scale, tiny, zero)
                if MODE != GRAD:
                    terms[j] = d * d
            if MODE != GRAD:
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
    blocks = _jit.threads() if size >= _jit.PARALLEL_MIN_SIZE and x.shape[0] > 1 else 1
    partial = np.empty((blocks, x.shape[1]), dtype=np.float64)
    kernel_.specialize(MODE=mode)(x, t, grad, partial, x.dtype.type(scale),
                                  smallest_normal(x.dtype), size=size)
    total = float(partial.sum()) if mode != GRAD else None
    return total, (grad.reshape(np.shape(pred)) if mode != LOSS else None)


def bce_with_logits_forward_numba(logits, target):
    return _run(_bce, logits, target, 0.0, LOSS)[0]


def bce_with_logits_backward_numba(logits, target, scale):
    return _run(_bce, logits, target, scale, GRAD)[1]


def bce_with_logits_forward_backward_numba(logits, target, scale):
    return _run(_bce, logits, target, scale, BOTH)


def mse_forward_numba(pred, target):
    return _run(_mse, pred, target, 0.0, LOSS)[0]


def mse_backward_numba(pred, target, scale):
    return _run(_mse, pred, target, 2 * scale, GRAD)[1]


def mse_forward_backward_numba(pred, target, scale):
    return _run(_mse, pred, target, 2 * scale, BOTH)


def _forward_backward(forward, backward):
    """The fused kernel's contract from the two separate kernels (NumPy, CuPy)."""
    def forward_backward(pred, target, scale):
        return forward(pred, target), backward(pred, target, scale)
    forward_backward.__name__ = forward.__name__.replace("_forward", "_forward_backward")
    # the CUDA sources it launches (tests/test_cuda_compile.py compiles them)
    forward_backward.cuda_specs = (getattr(forward, "cuda_specs", ())
                                   + getattr(backward, "cuda_specs", ()))
    return forward_backward


register("bce_with_logits_forward", numpy=bce_with_logits_forward_numpy,
         numba=bce_with_logits_forward_numba)
register("bce_with_logits_backward", numpy=bce_with_logits_backward_numpy,
         numba=bce_with_logits_backward_numba)
register("mse_forward", numpy=mse_forward_numpy, numba=mse_forward_numba)
register("mse_backward", numpy=mse_backward_numpy, numba=mse_backward_numba)
register("bce_with_logits_forward_backward",
         numpy=_forward_backward(bce_with_logits_forward_numpy, bce_with_logits_backward_numpy),
         numba=bce_with_logits_forward_backward_numba)
register("mse_forward_backward",
         numpy=_forward_backward(mse_forward_numpy, mse_backward_numpy),
         numba=mse_forward_backward_numba)


# ----------------------------------------------------------------------------
# CuPy
# ----------------------------------------------------------------------------
# The forward sums return a 0-d float64 *device* array rather than a Python float:
# float() of it would wait for the GPU in the middle of every training step.  It
# multiplies and converts like a float; float(result) gives the number.

LOSS_CUDA = _cuda.MATH + r"""
template <typename F>
__device__ __forceinline__ F mg_sigmoid(F x) {  /* from e^-|x| <= 1: no overflow */
    const F one = F(1);
    const F e = mg_exp(-mg_fabs(x));
    return x >= F(0) ? one / (one + e) : e / (one + e);
}

__device__ __forceinline__ double mg_bce_term(double x, double t) {
    return ((x > 0.0 || x != x) ? x : 0.0) - x * t + mg_log1p(mg_exp(-mg_fabs(x)));
}

__device__ __forceinline__ double mg_mse_term(double p, double t) {
    const double d = p - t;
    return d * d;
}
"""

# The sum of one term per element in one launch: 256 threads per block, each
# adding a grid-stride share in double; a tree in shared memory adds a block's
# 256 sums; with several blocks each writes its sum to ``partial`` and the last
# block to finish (a counter, reset by that block) adds them in block order.  No
# float atomics: the same launch gives the same bits whatever order blocks run in.
# With GRAD the same pass also writes the gradient (in the arrays' dtype, exactly
# as the elementwise backward kernels below compute it).
_SUM_CUDA = r"""
#define MG_SUM_THREADS 256

template <typename F, int KIND, bool GRAD>
__device__ __forceinline__ void mg_loss_sum(
        const F* __restrict__ a, const F* __restrict__ b, long long n,
        double* __restrict__ partial, unsigned int* counter, double* out,
        F* __restrict__ grad, F scale) {
    __shared__ double s[MG_SUM_THREADS];
    __shared__ bool is_last;
    const unsigned int tid = threadIdx.x;
    double acc = 0.0;
    for (long long i = (long long)blockIdx.x * MG_SUM_THREADS + tid; i < n;
         i += (long long)gridDim.x * MG_SUM_THREADS) {
        const F x = a[i], t = b[i];
        if (GRAD) grad[i] = mg_flush(KIND == 0 ? (mg_sigmoid<F>(x) - t) * scale
                                               : (x - t) * scale);
        acc += KIND == 0 ? mg_bce_term((double)x, (double)t)
                         : mg_mse_term((double)x, (double)t);
    }
    s[tid] = acc;
    __syncthreads();
    for (unsigned int half = MG_SUM_THREADS / 2; half > 0; half >>= 1) {
        if (tid < half) s[tid] += s[tid + half];
        __syncthreads();
    }
    if (gridDim.x == 1) {
        if (tid == 0) *out = s[0];
        return;
    }
    if (tid == 0) partial[blockIdx.x] = s[0];
    __threadfence();  /* the block's sum is visible before the block counts as done */
    __syncthreads();
    if (tid == 0) is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!is_last) return;
    const volatile double* p = partial;
    double t = 0.0;
    for (unsigned int k = tid; k < gridDim.x; k += MG_SUM_THREADS) t += p[k];
    s[tid] = t;
    __syncthreads();
    for (unsigned int half = MG_SUM_THREADS / 2; half > 0; half >>= 1) {
        if (tid < half) s[tid] += s[tid + half];
        __syncthreads();
    }
    if (tid == 0) {
        *out = s[0];
        *counter = 0;  /* ready for the next launch */
    }
}
"""


def _sum_entry_points(name, kind, grad):
    extra = ", {ctype}* grad, {ctype} scale" if grad else ""
    call = "grad, scale" if grad else "({ctype}*)0, {ctype}(0)"
    return "".join(
        f"""
extern "C" __global__ void {name}_{suffix}(
        const {ctype}* a, const {ctype}* b, long long n, double* partial,
        unsigned int* counter, double* out{extra.format(ctype=ctype)}) {{
    mg_loss_sum<{ctype}, {kind}, {'true' if grad else 'false'}>(
        a, b, n, partial, counter, out, {call.format(ctype=ctype)});
}}
""" for ctype, suffix in (("float", "f32"), ("double", "f64")))


def _sum_spec(name, kind, grad):
    return _cuda.Raw(name, LOSS_CUDA + _SUM_CUDA + _sum_entry_points(name, kind, grad))


#: sum of max(x, 0) - x t + ln(1 + e^-|x|) in double.
BCE_SUM_CUDA = _sum_spec("mg_bce_sum", 0, grad=False)
#: ... and, in the same pass, grad = (sigmoid(x) - t) * scale.
BCE_SUM_GRAD_CUDA = _sum_spec("mg_bce_sum_grad", 0, grad=True)
#: sum of (p - t)^2 in double.
MSE_SUM_CUDA = _sum_spec("mg_mse_sum", 1, grad=False)
#: ... and, in the same pass, grad = (p - t) * scale2.
MSE_SUM_GRAD_CUDA = _sum_spec("mg_mse_sum_grad", 1, grad=True)

BCE_BACKWARD_CUDA = _cuda.Elementwise(
    "mg_bce_with_logits_backward", "T x, T t, T scale", "T out",
    "out = mg_flush((mg_sigmoid<T>(x) - t) * scale)", preamble=LOSS_CUDA, scalars=("scale",))

MSE_BACKWARD_CUDA = _cuda.Elementwise(
    "mg_mse_backward", "T p, T t, T scale2", "T out", "out = mg_flush((p - t) * scale2)",
    preamble=LOSS_CUDA, scalars=("scale2",))

_SUM_THREADS = 256
_BUFFERS = _cuda.DeviceBuffers()


def loss_sum_blocks(n, sm_count):
    """Blocks of the loss-sum launch: two per multiprocessor at most, and at least
    1024 elements (four per thread) per block."""
    return max(1, min(2 * sm_count, -(-n // (4 * _SUM_THREADS))))


def _sum_cupy(spec, op, a, b, scale=None):
    """The loss sum (a 0-d float64 device array); with ``scale`` also the gradient."""
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
        return out if grad is None else (out, grad)
    blocks = loss_sum_blocks(a.size, _cuda.sm_count())
    partial = cupy.empty(blocks, dtype=np.float64)
    args = (a, b, np.int64(a.size), partial, _BUFFERS.counters(1), out)
    if grad is not None:
        args += (grad.reshape(-1), a.dtype.type(scale))
    spec.function(a.dtype)((blocks,), (_SUM_THREADS,), args)
    return out if grad is None else (out, grad)


def _scale_arg(scale, dtype):
    """A scale for an elementwise kernel: a number of ``dtype``, or a 0-d device array
    (a gradient seed still on the GPU: no wait for it)."""
    if type(scale).__module__.startswith("cupy"):
        return scale.astype(dtype, copy=False)
    return np.dtype(dtype).type(scale)


@_cuda.uses(BCE_SUM_CUDA)
def bce_with_logits_forward_cupy(logits, target):
    return _sum_cupy(BCE_SUM_CUDA, "bce_with_logits_forward", logits, target)


@_cuda.uses(BCE_BACKWARD_CUDA)
def bce_with_logits_backward_cupy(logits, target, scale):
    _cuda.check_device_arrays("bce_with_logits_backward", logits, target)
    _cuda.suffix(logits.dtype)
    return BCE_BACKWARD_CUDA(logits, target.astype(logits.dtype, copy=False),
                             _scale_arg(scale, logits.dtype))


@_cuda.uses(BCE_SUM_GRAD_CUDA)
def bce_with_logits_forward_backward_cupy(logits, target, scale):
    return _sum_cupy(BCE_SUM_GRAD_CUDA, "bce_with_logits_forward_backward", logits, target,
                     scale)


@_cuda.uses(MSE_SUM_CUDA)
def mse_forward_cupy(pred, target):
    return _sum_cupy(MSE_SUM_CUDA, "mse_forward", pred, target)


@_cuda.uses(MSE_BACKWARD_CUDA)
def mse_backward_cupy(pred, target, scale):
    _cuda.check_device_arrays("mse_backward", pred, target)
    _cuda.suffix(pred.dtype)
    return MSE_BACKWARD_CUDA(pred, target.astype(pred.dtype, copy=False),
                             _scale_arg(2 * scale, pred.dtype))


@_cuda.uses(MSE_SUM_GRAD_CUDA)
def mse_forward_backward_cupy(pred, target, scale):
    return _sum_cupy(MSE_SUM_GRAD_CUDA, "mse_forward_backward", pred, target, 2 * scale)


register("bce_with_logits_forward", cupy=bce_with_logits_forward_cupy)
register("bce_with_logits_backward", cupy=bce_with_logits_backward_cupy)
register("mse_forward", cupy=mse_forward_cupy)
register("mse_backward", cupy=mse_backward_cupy)
register("bce_with_logits_forward_backward", cupy=bce_with_logits_forward_backward_cupy)
register("mse_forward_backward", cupy=mse_forward_backward_cupy)
