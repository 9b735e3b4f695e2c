/* The math every minigrad CUDA kernel may use, for float and double alike
 * (prefixed mg_, like everything minigrad puts into CUDA code).  Read by
 * minigrad/kernels/_cuda.py and put in front of each kernel source, after it the
 * activation table's mg_act / mg_deriv (generated from minigrad/activations.py). */
#ifndef MG_MATH_DEFINED
#define MG_MATH_DEFINED
__device__ __forceinline__ float mg_exp(float x) { return expf(x); }
__device__ __forceinline__ double mg_exp(double x) { return exp(x); }
__device__ __forceinline__ float mg_expm1(float x) { return expm1f(x); }
__device__ __forceinline__ double mg_expm1(double x) { return expm1(x); }
__device__ __forceinline__ float mg_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double mg_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float mg_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double mg_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float mg_fabs(float x) { return fabsf(x); }
__device__ __forceinline__ double mg_fabs(double x) { return fabs(x); }
__device__ __forceinline__ float mg_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double mg_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ int mg_imin(int a, int b) { return a < b ? a : b; }

/* 0 for a subnormal (|x| below the smallest normal number), else x; NaN passes */
__device__ __forceinline__ float mg_flush(float x) {
    return fabsf(x) < 1.17549435082228750797e-38f ? 0.0f : x;
}
__device__ __forceinline__ double mg_flush(double x) {
    return fabs(x) < 2.22507385850720138309e-308 ? 0.0 : x;
}

/* 1 / (1 + e^-x), from e = e^-|x| <= 1 so that nothing overflows */
template <typename F>
__device__ __forceinline__ F mg_sigmoid(F x) {
    const F one = F(1);
    const F e = mg_exp(-mg_fabs(x));
    const F r = one / (one + e);
    return x >= F(0) ? r : e * r;
}
#endif
