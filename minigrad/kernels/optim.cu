/* The optimizer updates (launched by minigrad/kernels/optim.py): grid-stride loops
 * over a parameter's n elements, in place -- the parameter and its buffers are
 * read and written.  The arithmetic follows the NumPy reference operation by
 * operation, in the same precisions (T is the parameter's dtype; in Adam the last
 * division is in double, as NumPy promotes it), and with --fmad=false it rounds
 * the same way: on the GPU these updates equal the reference bit for bit. */

/* g <- g + wd p (decay);  v <- mu v + g (momentum; flushed below tiny);
 * p <- p - lr (g + mu v if nesterov else v)   (p <- p - lr g without momentum). */
template <typename T>
__device__ __forceinline__ void mg_sgd_update(
        const T* __restrict__ g, T* __restrict__ p, T* __restrict__ v, long long n, T wd,
        T lr, T mu, T tiny, int decay, int momentum, int nesterov) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const T gi = decay ? g[i] + wd * p[i] : g[i];
        if (!momentum) {
            p[i] = mg_flush(p[i] - lr * gi);
            continue;
        }
        T vi = v[i] * mu;
        vi = vi + gi;
        if (mg_fabs(vi) < tiny) vi = T(0);
        v[i] = vi;
        p[i] = mg_flush(p[i] - lr * (nesterov ? gi + mu * vi : vi));
    }
}

/* Adam (mode 1: L2 in the gradient) or AdamW (mode 2: p <- p - lr wd p); mode 0: no
 * weight decay.  c1 = 1 - b1, c2 = 1 - b2, lrwd = lr wd,
 * step_size = lr / (1 - b1^t), root_correction = sqrt(1 - b2^t). */
template <typename T>
__device__ __forceinline__ void mg_adam_update(
        const T* __restrict__ g, T* __restrict__ p, T* __restrict__ m, T* __restrict__ v,
        long long n, T wd, T b1, T c1, T b2, T c2, T lrwd, T step_size,
        double root_correction, double eps, T tiny, int mode) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const T gi = mode == 1 ? g[i] + wd * p[i] : g[i];
        T mi = m[i] * b1;
        mi = mi + c1 * gi;
        T vi = v[i] * b2;
        vi = vi + c2 * (gi * gi);
        if (mg_fabs(mi) < tiny) mi = T(0);
        if (mg_fabs(vi) < tiny) vi = T(0);
        m[i] = mi;
        v[i] = vi;
        T pi = p[i];
        if (mode == 2) pi = pi - lrwd * pi;
        const double denom = (double)mg_sqrt(vi) / root_correction + eps;
        p[i] = mg_flush(pi - (T)((double)(step_size * mi) / denom));
    }
}

extern "C" __global__ void mg_sgd_update_f32(
        const float* g, float* p, float* v, long long n, float wd, float lr, float mu,
        float tiny, int decay, int momentum, int nesterov) {
    mg_sgd_update<float>(g, p, v, n, wd, lr, mu, tiny, decay, momentum, nesterov);
}

extern "C" __global__ void mg_sgd_update_f64(
        const double* g, double* p, double* v, long long n, double wd, double lr, double mu,
        double tiny, int decay, int momentum, int nesterov) {
    mg_sgd_update<double>(g, p, v, n, wd, lr, mu, tiny, decay, momentum, nesterov);
}

extern "C" __global__ void mg_adam_update_f32(
        const float* g, float* p, float* m, float* v, long long n, float wd, float b1,
        float c1, float b2, float c2, float lrwd, float step_size, double root_correction,
        double eps, float tiny, int mode) {
    mg_adam_update<float>(g, p, m, v, n, wd, b1, c1, b2, c2, lrwd, step_size,
                          root_correction, eps, tiny, mode);
}

extern "C" __global__ void mg_adam_update_f64(
        const double* g, double* p, double* m, double* v, long long n, double wd, double b1,
        double c1, double b2, double c2, double lrwd, double step_size,
        double root_correction, double eps, double tiny, int mode) {
    mg_adam_update<double>(g, p, m, v, n, wd, b1, c1, b2, c2, lrwd, step_size,
                           root_correction, eps, tiny, mode);
}
