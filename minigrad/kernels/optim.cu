/* The optimizer updates, one element each (launched by minigrad/kernels/optim.py).
 * In place: the parameter and its buffers are the kernels' output arguments.  The
 * arithmetic follows the NumPy reference operation by operation, in the same
 * precisions (T is the parameter's dtype; in Adam the last division is in double,
 * as NumPy promotes it), and with --fmad=false it rounds the same way: on the GPU
 * these updates equal the reference bit for bit. */

/* p <- p - lr (g + wd p)   (the weight-decay term only where decay). */
template <typename T>
__device__ __forceinline__ void mg_sgd_element(T g, T wd, T lr, int decay, T& p) {
    const T gi = decay ? g + wd * p : g;
    p = mg_flush(p - lr * gi);
}

/* v <- mu v + g (flushed below tiny);  p <- p - lr (g + mu v if nesterov else v). */
template <typename T>
__device__ __forceinline__ void mg_sgd_momentum_element(
        T g, T wd, T lr, T mu, T tiny, int decay, int nesterov, T& p, T& v) {
    const T gi = decay ? g + wd * p : g;
    T vi = v * mu;
    vi = vi + gi;
    if (mg_fabs(vi) < tiny) vi = T(0);
    v = vi;
    p = mg_flush(p - lr * (nesterov ? gi + mu * vi : vi));
}

/* Adam (mode 1: L2 in the gradient) or AdamW (mode 2: p <- p - lr wd p); mode 0: no
 * weight decay.  c1 = 1 - b1, c2 = 1 - b2, lrwd = lr wd,
 * step_size = lr / (1 - b1^t), root_correction = sqrt(1 - b2^t). */
template <typename T>
__device__ __forceinline__ void mg_adam_element(
        T g, T wd, T b1, T c1, T b2, T c2, T lrwd, T step_size, double root_correction,
        double eps, T tiny, int mode, T& p, T& m, T& v) {
    const T gi = mode == 1 ? g + wd * p : g;
    T mi = m * b1;
    mi = mi + c1 * gi;
    T vi = v * b2;
    vi = vi + c2 * (gi * gi);
    if (mg_fabs(mi) < tiny) mi = T(0);
    if (mg_fabs(vi) < tiny) vi = T(0);
    m = mi;
    v = vi;
    T pi = p;
    if (mode == 2) pi = pi - lrwd * pi;
    const double denom = (double)mg_sqrt(vi) / root_correction + eps;
    p = mg_flush(pi - (T)((double)(step_size * mi) / denom));
}
