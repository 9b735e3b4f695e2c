/* The dense layer's kernels (launched by minigrad/kernels/dense.py).
 * mg_act / mg_deriv: the activation table, by code (minigrad/activations.py). */

/* z <- act(z + bias[column]) in place, z a C-contiguous (n / m, m) matrix of n
 * elements: a grid-stride loop over the elements. */
template <typename F>
__device__ __forceinline__ void mg_dense_forward(
        F* __restrict__ z, const F* __restrict__ bias, long long n, int m, int code, F slope) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const int j = i <= 2147483647 ? (int)((unsigned int)i % (unsigned int)m)
                                      : (int)(i % m);
        z[i] = mg_flush(mg_act<F>(z[i] + bias[j], code, slope));
    }
}

extern "C" __global__ void mg_dense_forward_f32(
        float* z, const float* bias, long long n, int m, int code, float slope) {
    mg_dense_forward<float>(z, bias, n, m, code, slope);
}

extern "C" __global__ void mg_dense_forward_f64(
        double* z, const double* bias, long long n, int m, int code, double slope) {
    mg_dense_forward<double>(z, bias, n, m, code, slope);
}

/* grad_z = grad_y * act'(y) and grad_bias = grad_z summed over rows, in one launch.
 * Blocks of 32 x 8 threads; blockIdx.x picks 32 columns (consecutive threads,
 * consecutive addresses), blockIdx.y a chunk of rows.  Each thread sums its column
 * over every 8th row of the chunk in double, the block adds its 8 rows of sums in a
 * fixed order, and with several chunks the block writes them to partial; the last
 * block of a column tile to finish (a counter per tile, reset by that block) adds
 * the chunks' sums in chunk order.  No float atomics: the result does not depend on
 * the order in which blocks run. */
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
