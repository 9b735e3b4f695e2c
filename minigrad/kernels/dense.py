"""Kernels of a dense layer: the work around each matrix product, in one pass.

Activations are named ("identity", "relu", "leaky_relu", "sigmoid", "tanh",
"softplus"); every derivative is written in terms of the *output* y, so the
pre-activation need not be kept for backward:

    relu'      = 1 if y > 0 else 0          sigmoid' = y (1 - y)
    leaky'     = 1 if y > 0 else slope      tanh'    = 1 - y^2
    identity'  = 1                          softplus' = sigmoid(x) = 1 - e^-y

Every kernel writes 0 for a value whose magnitude is below the smallest normal
number of its dtype (``tiny``, 1.18e-38 in float32): subnormal activations or
gradients would slow down every matrix product they enter (see
:mod:`minigrad.denormals`).

Kernels (NumPy reference first, then the Numba version, then the CuPy one):

* ``dense_forward(z, bias, activation, slope) -> y``: y = act(z + bias); z is
  the (N, M) product x @ W and is overwritten with y.
* ``dense_backward(grad_y, y, activation, slope) -> (grad_z, grad_bias)``:
  grad_z = grad_y * act'(y), and grad_bias = sum of grad_z over rows, in the same
  pass (each thread sums a block of rows, then the blocks are added: 2.5x
  faster here than splitting by columns).
* ``activation_forward(x, activation, slope) -> y`` and
  ``activation_backward(grad_y, y, activation, slope) -> grad_x``, any shape.
"""
from __future__ import annotations

import numpy as np

from ..denormals import flush_subnormals, smallest_normal
from . import _cuda, register
from . import _jit
from ._jit import kernel, prange, scalar
from ._math import exp_neg, flush, ftz_enter, ftz_exit, log1p_unit, one_minus_exp_neg, tanh

ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "softplus")
_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}


# ----------------------------------------------------------------------------
# NumPy reference
# ----------------------------------------------------------------------------

def _act_numpy(x, activation, slope):
    if activation == "identity":
        return x
    if activation == "relu":
        return np.maximum(x, 0)
    if activation == "leaky_relu":
        return np.where(x > 0, x, x * x.dtype.type(slope))
    if activation == "sigmoid":
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))
    if activation == "tanh":
        return np.tanh(x)
    if activation == "softplus":
        return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))
    raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")


def _deriv_numpy(y, activation, slope):
    one = y.dtype.type(1)
    if activation == "identity":
        return np.ones_like(y)
    if activation == "relu":
        return (y > 0).astype(y.dtype)
    if activation == "leaky_relu":
        return np.where(y > 0, one, y.dtype.type(slope))
    if activation == "sigmoid":
        return y * (one - y)
    if activation == "tanh":
        return one - y * y
    if activation == "softplus":
        return -np.expm1(-y)
    raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")


def activation_forward_numpy(x, activation, slope=0.01):
    y = np.array(_act_numpy(x, activation, slope), dtype=x.dtype)
    return flush_subnormals(y)


def activation_backward_numpy(grad_y, y, activation, slope=0.01):
    grad_x = np.array(grad_y * _deriv_numpy(y, activation, slope), dtype=grad_y.dtype)
    return flush_subnormals(grad_x)


def dense_forward_numpy(z, bias, activation, slope=0.01):
    z += bias
    z[...] = _act_numpy(z, activation, slope)
    return flush_subnormals(z)


def dense_backward_numpy(grad_y, y, activation, slope=0.01):
    grad_z = activation_backward_numpy(grad_y, y, activation, slope)
    return grad_z, flush_subnormals(grad_z.sum(axis=0))


# ----------------------------------------------------------------------------
# Numba
# ----------------------------------------------------------------------------

# Every constant is typed as the arrays' dtype (``zero``, ``one``, ``slope``): a
# Python literal would widen float32 arithmetic to float64 and halve the SIMD
# width.  Each kernel is compiled once per activation (``ACTIVATION`` is frozen by
# ``kernel.specialize``), so each compiled loop holds one activation's code and
# LLVM vectorizes it -- left to hoist a run-time ``if code == ...`` out of the
# loop itself, it did for some loops and not for others (20x slower).  exp,
# log1p and tanh come from :mod:`._math`, whose float32 versions vectorize too.

ACTIVATION = 0  # the activation code of a kernel specialization (see above)


@scalar
def _act(v, code, slope, zero, one):
    if code == 1:
        return zero if v <= zero else v            # NaN passes, as in NumPy
    if code == 2:
        return v if v > zero else v * slope
    if code == 3:                                   # from e^-|v| <= 1: no overflow
        e = exp_neg(abs(v))
        r = one / (one + e)
        return r if v >= zero else e * r
    if code == 4:
        return tanh(v)
    if code == 5:
        return max(v, zero) + log1p_unit(exp_neg(abs(v)))
    return v


@scalar
def _deriv(y, code, slope, zero, one):
    if code == 1:
        return one if y > zero else zero
    if code == 2:
        return one if y > zero else slope
    if code == 3:
        return y * (one - y)
    if code == 4:
        return one - y * y
    if code == 5:
        return one_minus_exp_neg(y)
    return one


@kernel
def _dense_forward(z, bias, slope, tiny, blocks):
    """z[i] = act(z[i] + bias) for every row i, in place (an ``out`` array that is
    z would fail LLVM's run-time overlap check and take its scalar path); one block
    of rows per thread."""
    zero, one = z.dtype.type(0), z.dtype.type(1)
    n = z.shape[0]
    rows = (n + blocks - 1) // blocks
    for b in prange(blocks):
        saved = ftz_enter()
        for i in range(b * rows, min(n, (b + 1) * rows)):
            row = z[i]
            for j in range(row.size):
                row[j] = flush(_act(row[j] + bias[j], ACTIVATION, slope, zero, one), tiny,
                                zero)
        ftz_exit(saved)


@kernel
def _dense_backward(grad_y, y, slope, tiny, grad_z, partial):
    """grad_z = grad_y * act'(y); partial[b] = sum of grad_z over the b-th block of
    rows (one block per thread; the caller adds the blocks)."""
    zero, one = y.dtype.type(0), y.dtype.type(1)
    n = grad_y.shape[0]
    blocks = partial.shape[0]
    rows = (n + blocks - 1) // blocks
    for b in prange(blocks):
        saved = ftz_enter()
        acc = partial[b]
        acc[:] = zero
        for i in range(b * rows, min(n, (b + 1) * rows)):
            g_row, y_row, out = grad_y[i], y[i], grad_z[i]
            for j in range(out.size):
                out[j] = flush(g_row[j] * _deriv(y_row[j], ACTIVATION, slope, zero, one),
                                tiny, zero)
            for j in range(out.size):  # a second pass, still in L1: both loops vectorize
                acc[j] += out[j]
        if blocks == 1:  # the bias gradient: a sum of flushed values can be subnormal
            for j in range(acc.size):
                acc[j] = flush(acc[j], tiny, zero)
        ftz_exit(saved)


def _code(activation):
    try:
        return _CODE[activation]
    except KeyError:
        raise ValueError(f"unknown activation {activation!r}; expected one of "
                         f"{ACTIVATIONS}") from None


def _contiguous(a):
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _rows(a):
    """``a`` as a C-contiguous matrix of rows (a 1-D or 0-d array becomes one row)."""
    a = _contiguous(a)
    return a.reshape(-1, a.shape[-1]) if a.ndim >= 2 else a.reshape(1, -1)


# Elementwise work per element relative to a multiply-add: what makes threads pay.
_COST = {"identity": 1, "relu": 1, "leaky_relu": 1, "sigmoid": 4, "tanh": 5, "softplus": 6}


def _blocks(size, rows):
    """Blocks of rows: one per thread where the parallel version will run, else one."""
    return _jit.threads() if size >= _jit.PARALLEL_MIN_SIZE and rows > 1 else 1


def dense_forward_numba(z, bias, activation, slope=0.01):
    code = _code(activation)
    z = _contiguous(z)
    size = z.size * _COST[activation]
    _dense_forward.specialize(ACTIVATION=code)(
        z, _contiguous(bias).astype(z.dtype, copy=False), z.dtype.type(slope),
        smallest_normal(z.dtype), _blocks(size, z.shape[0]), size=size)
    return z


def dense_backward_numba(grad_y, y, activation, slope=0.01):
    grad_y, y = _contiguous(grad_y), _contiguous(y)
    return _backward(grad_y, y, activation, slope)


def _backward(grad_y, y, activation, slope):
    grad_z = np.empty_like(y)
    size = y.size * _COST[activation]
    blocks = _blocks(size, y.shape[0])
    partial = np.empty((blocks, y.shape[1]), dtype=y.dtype)
    _dense_backward.specialize(ACTIVATION=_code(activation))(
        grad_y, y, y.dtype.type(slope), smallest_normal(y.dtype), grad_z, partial, size=size)
    if blocks == 1:
        return grad_z, partial[0]  # flushed by the kernel
    # the sum of flushed values can itself be subnormal (terms of opposite signs)
    return grad_z, flush_subnormals(partial.sum(axis=0))


def activation_forward_numba(x, activation, slope=0.01):
    code = _code(activation)
    out = np.array(_rows(x), order="C")  # a copy, then in place
    size = out.size * _COST[activation]
    _dense_forward.specialize(ACTIVATION=code)(
        out, np.zeros(out.shape[1], out.dtype), out.dtype.type(slope),
        smallest_normal(out.dtype), _blocks(size, out.shape[0]), size=size)
    return out.reshape(np.shape(x))


def activation_backward_numba(grad_y, y, activation, slope=0.01):
    shape = np.shape(y)
    _code(activation)
    grad_x, _ = _backward(_rows(grad_y), _rows(y), activation, slope)
    return grad_x.reshape(shape)


register("dense_forward", numpy=dense_forward_numpy, numba=dense_forward_numba)
register("dense_backward", numpy=dense_backward_numpy, numba=dense_backward_numba)
register("activation_forward", numpy=activation_forward_numpy, numba=activation_forward_numba)
register("activation_backward", numpy=activation_backward_numpy, numba=activation_backward_numba)


# ----------------------------------------------------------------------------
# CuPy
# ----------------------------------------------------------------------------
# The activations by code, as above: 0 identity, 1 relu, 2 leaky_relu, 3 sigmoid,
# 4 tanh, 5 softplus; derivatives from the output y.  NaN goes through as in NumPy.

ACTIVATION_CUDA = _cuda.MATH + r"""
template <typename F>
__device__ __forceinline__ F mg_act(F v, int code, F slope) {
    const F zero = F(0), one = F(1);
    if (code == 1) return (v > zero || v != v) ? v : zero;
    if (code == 2) return v > zero ? v : v * slope;
    if (code == 3) {  /* sigmoid from e^-|v| <= 1: no overflow */
        const F e = mg_exp(-mg_fabs(v));
        return v >= zero ? one / (one + e) : e / (one + e);
    }
    if (code == 4) return mg_tanh(v);
    if (code == 5) return ((v > zero || v != v) ? v : zero) + mg_log1p(mg_exp(-mg_fabs(v)));
    return v;
}

template <typename F>
__device__ __forceinline__ F mg_deriv(F y, int code, F slope) {
    const F zero = F(0), one = F(1);
    if (code == 1) return y > zero ? one : zero;
    if (code == 2) return y > zero ? one : slope;
    if (code == 3) return y * (one - y);
    if (code == 4) return one - y * y;
    if (code == 5) return -mg_expm1(-y);
    return one;
}
"""

#: z <- act(z + bias[column]) in place; z is C-contiguous (n, m), i its flat index.
DENSE_FORWARD_CUDA = _cuda.Elementwise(
    "mg_dense_forward", "raw T bias, int32 m, int32 code, T slope", "T z",
    "const int j = i <= 2147483647 ? (int)((unsigned int)i % (unsigned int)m)"
    " : (int)(i % m);\n"
    "z = mg_flush(mg_act<T>(z + bias[j], code, slope))",
    preamble=ACTIVATION_CUDA, scalars=("m", "code", "slope"))

ACTIVATION_FORWARD_CUDA = _cuda.Elementwise(
    "mg_activation_forward", "T x, int32 code, T slope", "T y",
    "y = mg_flush(mg_act<T>(x, code, slope))", preamble=ACTIVATION_CUDA,
    scalars=("code", "slope"))

ACTIVATION_BACKWARD_CUDA = _cuda.Elementwise(
    "mg_activation_backward", "T g, T y, int32 code, T slope", "T out",
    "out = mg_flush(g * mg_deriv<T>(y, code, slope))", preamble=ACTIVATION_CUDA,
    scalars=("code", "slope"))

# One launch for grad_z and grad_bias.  Blocks of 32 x 8 threads; blockIdx.x picks
# 32 columns (consecutive threads, consecutive addresses), blockIdx.y a chunk of
# rows.  Each thread sums its column over every 8th row of the chunk in double, the
# block adds its 8 rows of sums in a fixed order, and with several chunks the block
# writes them to ``partial``; the last block of a column tile to finish (a counter
# per tile, reset by that block) adds the chunks' sums in chunk order.  No float
# atomics: the result does not depend on the order in which blocks run.
DENSE_BACKWARD_CUDA = _cuda.Raw("mg_dense_backward", ACTIVATION_CUDA + r"""
#define MG_DB_TX 32
#define MG_DB_TY 8

template <typename F>
__device__ __forceinline__ void mg_dense_backward(
        const F* __restrict__ grad_y, const F* __restrict__ y, F* __restrict__ grad_z,
        F* __restrict__ grad_bias, double* __restrict__ partial, unsigned int* counters,
        int n, int m, int code, F slope) {
    __shared__ double sums[MG_DB_TY][MG_DB_TX];
    __shared__ bool is_last;
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int j = blockIdx.x * MG_DB_TX + tx;
    const int chunk = (n + gridDim.y - 1) / gridDim.y;
    const int r0 = blockIdx.y * chunk;
    const int r1 = mg_imin(n, r0 + chunk);
    double acc = 0.0;
    if (j < m) {
        for (int r = r0 + ty; r < r1; r += MG_DB_TY) {
            const size_t k = (size_t)r * (size_t)m + (size_t)j;
            const F g = mg_flush(grad_y[k] * mg_deriv<F>(y[k], code, slope));
            grad_z[k] = g;
            acc += (double)g;
        }
    }
    sums[ty][tx] = acc;
    __syncthreads();
    double total = 0.0;
    if (ty == 0) {
        for (int t = 0; t < MG_DB_TY; ++t) total += sums[t][tx];
    }
    if (gridDim.y == 1) {
        if (ty == 0 && j < m) grad_bias[j] = mg_flush((F)total);
        return;
    }
    if (ty == 0 && j < m) partial[(size_t)blockIdx.y * (size_t)m + (size_t)j] = total;
    __threadfence();  /* the partial sums are visible before the block counts as done */
    __syncthreads();
    if (tx == 0 && ty == 0) is_last = atomicAdd(&counters[blockIdx.x], 1u) == gridDim.y - 1;
    __syncthreads();
    if (!is_last) return;
    if (ty == 0 && j < m) {
        const volatile double* p = partial;
        double s = 0.0;
        for (unsigned int b = 0; b < gridDim.y; ++b) s += p[(size_t)b * (size_t)m + (size_t)j];
        grad_bias[j] = mg_flush((F)s);
    }
    if (tx == 0 && ty == 0) counters[blockIdx.x] = 0;  /* ready for the next launch */
}

extern "C" __global__ void mg_dense_backward_f32(
        const float* grad_y, const float* y, float* grad_z, float* grad_bias,
        double* partial, unsigned int* counters, int n, int m, int code, float slope) {
    mg_dense_backward<float>(grad_y, y, grad_z, grad_bias, partial, counters, n, m, code,
                             slope);
}

extern "C" __global__ void mg_dense_backward_f64(
        const double* grad_y, const double* y, double* grad_z, double* grad_bias,
        double* partial, unsigned int* counters, int n, int m, int code, double slope) {
    mg_dense_backward<double>(grad_y, y, grad_z, grad_bias, partial, counters, n, m, code,
                              slope);
}
""")

_DB_BLOCK = (32, 8)
_BUFFERS = _cuda.DeviceBuffers()


def dense_backward_grid(n, m, sm_count):
    """``(column tiles, row chunks)`` of the dense_backward launch: about four blocks
    per multiprocessor, each chunk at least 32 rows."""
    tiles = (m + 31) // 32
    chunks = max(1, min((4 * sm_count) // max(tiles, 1), (n + 31) // 32, 65535))
    return tiles, chunks


def _device_contiguous(cupy, a, dtype=None):
    return cupy.ascontiguousarray(a) if dtype is None else cupy.ascontiguousarray(a, dtype=dtype)


@_cuda.uses(DENSE_FORWARD_CUDA)
def dense_forward_cupy(z, bias, activation, slope=0.01):
    _cuda.check_device_arrays("dense_forward", z, bias)
    cupy = _cuda.cupy_module()
    code = _code(activation)
    z = _device_contiguous(cupy, z)
    _cuda.suffix(z.dtype)
    bias = _device_contiguous(cupy, bias, z.dtype)
    DENSE_FORWARD_CUDA(bias, np.int32(z.shape[-1]), np.int32(code), z.dtype.type(slope), z)
    return z


@_cuda.uses(DENSE_BACKWARD_CUDA)
def dense_backward_cupy(grad_y, y, activation, slope=0.01):
    _cuda.check_device_arrays("dense_backward", grad_y, y)
    cupy = _cuda.cupy_module()
    code = _code(activation)
    y = _device_contiguous(cupy, y)
    grad_y = _device_contiguous(cupy, grad_y, y.dtype)
    n, m = y.shape
    grad_z = cupy.empty((n, m), dtype=y.dtype)
    if n == 0 or m == 0:
        return grad_z, cupy.zeros(m, dtype=y.dtype)
    grad_bias = cupy.empty(m, dtype=y.dtype)
    tiles, chunks = dense_backward_grid(n, m, _cuda.sm_count())
    partial = cupy.empty(chunks * m if chunks > 1 else 1, dtype=np.float64)
    counters = _BUFFERS.counters(tiles)
    DENSE_BACKWARD_CUDA.function(y.dtype)(
        (tiles, chunks), _DB_BLOCK,
        (grad_y, y, grad_z, grad_bias, partial, counters, np.int32(n), np.int32(m),
         np.int32(code), y.dtype.type(slope)))
    return grad_z, grad_bias


@_cuda.uses(ACTIVATION_FORWARD_CUDA)
def activation_forward_cupy(x, activation, slope=0.01):
    _cuda.check_device_arrays("activation_forward", x)
    _cuda.suffix(x.dtype)
    return ACTIVATION_FORWARD_CUDA(x, np.int32(_code(activation)), x.dtype.type(slope))


@_cuda.uses(ACTIVATION_BACKWARD_CUDA)
def activation_backward_cupy(grad_y, y, activation, slope=0.01):
    _cuda.check_device_arrays("activation_backward", grad_y, y)
    _cuda.suffix(grad_y.dtype)
    y = y.astype(grad_y.dtype, copy=False)
    return ACTIVATION_BACKWARD_CUDA(grad_y, y, np.int32(_code(activation)),
                                    grad_y.dtype.type(slope))


register("dense_forward", cupy=dense_forward_cupy)
register("dense_backward", cupy=dense_backward_cupy)
register("activation_forward", cupy=activation_forward_cupy)
register("activation_backward", cupy=activation_backward_cupy)
