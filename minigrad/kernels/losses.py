"""Kernels of the reconstruction losses: one pass over the batch each way.

* ``bce_with_logits_forward(logits, target) -> float``: the sum over all elements
  of  max(x, 0) - x t + ln(1 + e^-|x|)  (binary cross-entropy of sigmoid(x)
  against t, finite for any logit), accumulated in float64;
* ``bce_with_logits_backward(logits, target, scale) -> grad``:
  (sigmoid(x) - t) * scale, scale being d(loss)/d(sum), e.g. 1 / batch;
* ``mse_forward(pred, target) -> float``: sum of (pred - target)^2;
* ``mse_backward(pred, target, scale) -> grad``: 2 (pred - target) * scale.

NumPy reference first, then the Numba version, then the CuPy one (whose forward
sums stay on the GPU as 0-d float64 arrays; see there).
"""
from __future__ import annotations

import math

import numpy as np

from . import _cuda, register
from ._jit import kernel, prange


# ----------------------------------------------------------------------------
# NumPy reference
# ----------------------------------------------------------------------------

def bce_with_logits_forward_numpy(logits, target):
    x, t = logits.astype(np.float64), target.astype(np.float64)
    return float(np.sum(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))))


def bce_with_logits_backward_numpy(logits, target, scale):
    e = np.exp(-np.abs(logits))
    sig = np.where(logits >= 0, 1 / (1 + e), e / (1 + e))
    return ((sig - target) * logits.dtype.type(scale)).astype(logits.dtype, copy=False)


def mse_forward_numpy(pred, target):
    diff = pred.astype(np.float64) - target
    return float(np.sum(diff * diff))


def mse_backward_numpy(pred, target, scale):
    return ((pred - target) * pred.dtype.type(2 * scale)).astype(pred.dtype, copy=False)


# ----------------------------------------------------------------------------
# Numba
# ----------------------------------------------------------------------------

@kernel
def _bce_forward(x, t):
    total = 0.0
    for i in prange(x.size):
        v = float(x[i])
        total += max(v, 0.0) - v * t[i] + math.log1p(math.exp(-abs(v)))
    return total


@kernel
def _bce_backward(x, t, scale, out):
    for i in prange(x.size):
        e = math.exp(-abs(x[i]))
        s = 1 / (1 + e) if x[i] >= 0 else e / (1 + e)
        out[i] = (s - t[i]) * scale


@kernel
def _mse_forward(p, t):
    total = 0.0
    for i in prange(p.size):
        d = float(p[i]) - t[i]
        total += d * d
    return total


@kernel
def _mse_backward(p, t, scale, out):
    for i in prange(p.size):
        out[i] = (p[i] - t[i]) * scale


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


def bce_with_logits_forward_numba(logits, target):
    return float(_bce_forward(_flat(logits), _flat(target), size=logits.size))


def bce_with_logits_backward_numba(logits, target, scale):
    out = np.empty(logits.shape, dtype=logits.dtype)
    _bce_backward(_flat(logits), _flat(target), logits.dtype.type(scale), out.reshape(-1),
                  size=logits.size)
    return out


def mse_forward_numba(pred, target):
    return float(_mse_forward(_flat(pred), _flat(target), size=pred.size))


def mse_backward_numba(pred, target, scale):
    out = np.empty(pred.shape, dtype=pred.dtype)
    _mse_backward(_flat(pred), _flat(target), pred.dtype.type(2 * scale), out.reshape(-1),
                  size=pred.size)
    return out


register("bce_with_logits_forward", numpy=bce_with_logits_forward_numpy,
         numba=bce_with_logits_forward_numba)
register("bce_with_logits_backward", numpy=bce_with_logits_backward_numpy,
         numba=bce_with_logits_backward_numba)
register("mse_forward", numpy=mse_forward_numpy, numba=mse_forward_numba)
register("mse_backward", numpy=mse_backward_numpy, numba=mse_backward_numba)


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
_SUM_CUDA = r"""
#define MG_SUM_THREADS 256

template <typename F, int KIND>
__device__ __forceinline__ void mg_loss_sum(
        const F* __restrict__ a, const F* __restrict__ b, long long n,
        double* __restrict__ partial, unsigned int* counter, double* out) {
    __shared__ double s[MG_SUM_THREADS];
    __shared__ bool is_last;
    const unsigned int tid = threadIdx.x;
    double acc = 0.0;
    for (long long i = (long long)blockIdx.x * MG_SUM_THREADS + tid; i < n;
         i += (long long)gridDim.x * MG_SUM_THREADS) {
        acc += KIND == 0 ? mg_bce_term((double)a[i], (double)b[i])
                         : mg_mse_term((double)a[i], (double)b[i]);
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


def _sum_entry_points(name, kind):
    return "".join(
        f"""
extern "C" __global__ void {name}_{suffix}(
        const {ctype}* a, const {ctype}* b, long long n, double* partial,
        unsigned int* counter, double* out) {{
    mg_loss_sum<{ctype}, {kind}>(a, b, n, partial, counter, out);
}}
""" for ctype, suffix in (("float", "f32"), ("double", "f64")))


#: sum of max(x, 0) - x t + ln(1 + e^-|x|) in double.
BCE_SUM_CUDA = _cuda.Raw("mg_bce_sum", LOSS_CUDA + _SUM_CUDA
                         + _sum_entry_points("mg_bce_sum", 0))
#: sum of (p - t)^2 in double.
MSE_SUM_CUDA = _cuda.Raw("mg_mse_sum", LOSS_CUDA + _SUM_CUDA
                         + _sum_entry_points("mg_mse_sum", 1))

BCE_BACKWARD_CUDA = _cuda.Elementwise(
    "mg_bce_with_logits_backward", "T x, T t, T scale", "T out",
    "out = (mg_sigmoid<T>(x) - t) * scale", preamble=LOSS_CUDA, scalars=("scale",))

MSE_BACKWARD_CUDA = _cuda.Elementwise(
    "mg_mse_backward", "T p, T t, T scale2", "T out", "out = (p - t) * scale2",
    preamble=LOSS_CUDA, scalars=("scale2",))

_SUM_THREADS = 256
_BUFFERS = _cuda.DeviceBuffers()


def loss_sum_blocks(n, sm_count):
    """Blocks of the loss-sum launch: two per multiprocessor at most, and at least
    1024 elements (four per thread) per block."""
    return max(1, min(2 * sm_count, -(-n // (4 * _SUM_THREADS))))


def _sum_cupy(spec, op, a, b):
    _cuda.check_device_arrays(op, a, b)
    cupy = _cuda.cupy_module()
    _cuda.suffix(a.dtype)
    a = cupy.ascontiguousarray(a).reshape(-1)
    b = cupy.ascontiguousarray(b, dtype=a.dtype).reshape(-1)
    out = cupy.empty((), dtype=np.float64)
    if a.size == 0:
        out.fill(0)
        return out
    blocks = loss_sum_blocks(a.size, _cuda.sm_count())
    partial = cupy.empty(blocks, dtype=np.float64)
    spec.function(a.dtype)((blocks,), (_SUM_THREADS,),
                           (a, b, np.int64(a.size), partial, _BUFFERS.counters(1), out))
    return out


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


@_cuda.uses(MSE_SUM_CUDA)
def mse_forward_cupy(pred, target):
    return _sum_cupy(MSE_SUM_CUDA, "mse_forward", pred, target)


@_cuda.uses(MSE_BACKWARD_CUDA)
def mse_backward_cupy(pred, target, scale):
    _cuda.check_device_arrays("mse_backward", pred, target)
    _cuda.suffix(pred.dtype)
    return MSE_BACKWARD_CUDA(pred, target.astype(pred.dtype, copy=False),
                             _scale_arg(2 * scale, pred.dtype))


register("bce_with_logits_forward", cupy=bce_with_logits_forward_cupy)
register("bce_with_logits_backward", cupy=bce_with_logits_backward_cupy)
register("mse_forward", cupy=mse_forward_cupy)
register("mse_backward", cupy=mse_backward_cupy)
