/* The reconstruction losses' kernels (launched by minigrad/kernels/losses.py).
 *
 * The sum of one term per element in one launch: 256 threads per block, each
 * adding a grid-stride share in double; a tree in shared memory adds a block's 256
 * sums; with several blocks each writes its sum to partial and the last block to
 * finish (a counter, reset by that block) adds them in block order.  No float
 * atomics: the same launch gives the same bits whatever order blocks run in.  With
 * GRAD the same pass also writes the gradient, in the arrays' dtype.
 *
 * BCE with logits: term softplus(x) - x t, gradient (sigmoid(x) - t) * scale,
 * computed as ((1 - t) - sigmoid(-x)) * scale for x >= 0 (see losses.py);
 * MSE: term (p - t)^2, gradient (p - t) * scale (the caller passes 2 / n, say).
 * softplus and sigmoid are the activation table's (mg_act). */
#define MG_SUM_THREADS 256
#define MG_BCE 0
#define MG_MSE 1

template <typename F, int KIND>
__device__ __forceinline__ F mg_loss_grad(F x, F t, F scale) {
    if (KIND != MG_BCE) return (x - t) * scale;
    /* sigmoid(x) - t as (1 - t) - sigmoid(-x) for x >= 0: nothing cancels */
    const F s = mg_act<F>(-mg_fabs(x), MG_SIGMOID, F(0));
    return (x >= F(0) ? (F(1) - t) - s : s - t) * scale;
}

template <int KIND>
__device__ __forceinline__ double mg_loss_term(double x, double t) {
    if (KIND == MG_BCE) return mg_act<double>(x, MG_SOFTPLUS, 0.0) - x * t;
    const double d = x - t;
    return d * d;
}

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
        if (GRAD) grad[i] = mg_flush(mg_loss_grad<F, KIND>(x, t, scale));
        acc += mg_loss_term<KIND>((double)x, (double)t);
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

/* the entry points: <loss>_sum (the sum only) and <loss>_sum_grad, per dtype */
extern "C" __global__ void mg_bce_sum_f32(
        const float* a, const float* b, long long n, double* partial, unsigned int* counter,
        double* out) {
    mg_loss_sum<float, MG_BCE, false>(a, b, n, partial, counter, out, (float*)0, float(0));
}

extern "C" __global__ void mg_bce_sum_grad_f32(
        const float* a, const float* b, long long n, double* partial, unsigned int* counter,
        double* out, float* grad, float scale) {
    mg_loss_sum<float, MG_BCE, true>(a, b, n, partial, counter, out, grad, scale);
}

extern "C" __global__ void mg_bce_sum_f64(
        const double* a, const double* b, long long n, double* partial, unsigned int* counter,
        double* out) {
    mg_loss_sum<double, MG_BCE, false>(a, b, n, partial, counter, out, (double*)0, double(0));
}

extern "C" __global__ void mg_bce_sum_grad_f64(
        const double* a, const double* b, long long n, double* partial, unsigned int* counter,
        double* out, double* grad, double scale) {
    mg_loss_sum<double, MG_BCE, true>(a, b, n, partial, counter, out, grad, scale);
}

extern "C" __global__ void mg_mse_sum_f32(
        const float* a, const float* b, long long n, double* partial, unsigned int* counter,
        double* out) {
    mg_loss_sum<float, MG_MSE, false>(a, b, n, partial, counter, out, (float*)0, float(0));
}

extern "C" __global__ void mg_mse_sum_grad_f32(
        const float* a, const float* b, long long n, double* partial, unsigned int* counter,
        double* out, float* grad, float scale) {
    mg_loss_sum<float, MG_MSE, true>(a, b, n, partial, counter, out, grad, scale);
}

extern "C" __global__ void mg_mse_sum_f64(
        const double* a, const double* b, long long n, double* partial, unsigned int* counter,
        double* out) {
    mg_loss_sum<double, MG_MSE, false>(a, b, n, partial, counter, out, (double*)0, double(0));
}

extern "C" __global__ void mg_mse_sum_grad_f64(
        const double* a, const double* b, long long n, double* partial, unsigned int* counter,
        double* out, double* grad, double scale) {
    mg_loss_sum<double, MG_MSE, true>(a, b, n, partial, counter, out, grad, scale);
}
