/* The convolution's layout kernels (launched by minigrad/kernels/conv.py, which
 * describes the layout) and the layers' epilogues (launched by conv_epilogue.py):
 * x or image is an (n, c, h, w) batch, rows the (n * oh * ow, kh * kw * c) matrix,
 * both C-contiguous.  Every kernel takes the geometry as the same twelve ints: n, c,
 * h, w, kh, kw, sh, sw, ph, pw, oh, ow. */

/* rows[(b, oy, ox), (ki, kj, ch)] = x[b, ch, oy*sh - ph + ki, ox*sw - pw + kj], or 0
 * in the padding: a grid-stride loop over the entries of rows (consecutive threads
 * write consecutive entries of one row). */
template <typename F>
__device__ __forceinline__ void mg_im2row(
        const F* __restrict__ x, F* __restrict__ rows, long long total, int n, int c,
        int h, int w, int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow) {
    const int width = kh * kw * c;
    const int pixels = oh * ow;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long row = i / width;
        const int k = (int)(i - row * width);
        const int b = (int)(row / pixels);
        const int pixel = (int)(row - (long long)b * pixels);
        const int oy = pixel / ow, ox = pixel - oy * ow;
        const int ch = k % c, kj = (k / c) % kw, ki = k / (c * kw);
        const int iy = oy * sh - ph + ki, ix = ox * sw - pw + kj;
        F v = F(0);
        if (iy >= 0 && iy < h && ix >= 0 && ix < w)
            v = x[(((size_t)b * c + ch) * h + iy) * w + ix];
        rows[i] = mg_flush(v);
    }
}

extern "C" __global__ void mg_im2row_f32(
        const float* x, float* rows, long long total, int n, int c, int h, int w, int kh,
        int kw, int sh, int sw, int ph, int pw, int oh, int ow) {
    mg_im2row<float>(x, rows, total, n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow);
}

extern "C" __global__ void mg_im2row_f64(
        const double* x, double* rows, long long total, int n, int c, int h, int w, int kh,
        int kw, int sh, int sw, int ph, int pw, int oh, int ow) {
    mg_im2row<double>(x, rows, total, n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow);
}

/* image[b, ch, iy, ix] = the sum of the entries of rows that im2row copied from that
 * pixel: one thread per pixel gathers them, taps (ki, kj) in ascending order as the
 * NumPy reference adds them (no atomics: the same sum on every run). */
template <typename F>
__device__ __forceinline__ void mg_row2im(
        const F* __restrict__ rows, F* __restrict__ image, long long total, int n, int c,
        int h, int w, int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow) {
    const size_t width = (size_t)kh * kw * c;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const int ix = (int)(i % w);
        const int iy = (int)((i / w) % h);
        const int ch = (int)((i / ((long long)w * h)) % c);
        const int b = (int)(i / ((long long)w * h * c));
        F acc = F(0);
        for (int ki = 0; ki < kh; ++ki) {
            const int ty = iy + ph - ki;  /* = oy * sh for the output row that meets it */
            if (ty < 0 || ty % sh != 0 || ty / sh >= oh) continue;
            const int oy = ty / sh;
            for (int kj = 0; kj < kw; ++kj) {
                const int tx = ix + pw - kj;
                if (tx < 0 || tx % sw != 0 || tx / sw >= ow) continue;
                const int ox = tx / sw;
                const size_t row = ((size_t)b * oh + oy) * ow + ox;
                acc += rows[row * width + ((size_t)ki * kw + kj) * c + ch];
            }
        }
        image[i] = mg_flush(acc);
    }
}

extern "C" __global__ void mg_row2im_f32(
        const float* rows, float* image, long long total, int n, int c, int h, int w, int kh,
        int kw, int sh, int sw, int ph, int pw, int oh, int ow) {
    mg_row2im<float>(rows, image, total, n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow);
}

extern "C" __global__ void mg_row2im_f64(
        const double* rows, double* image, long long total, int n, int c, int h, int w,
        int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow) {
    mg_row2im<double>(rows, image, total, n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow);
}

/* The layer's epilogue: y[b, ch, s] = act(source + bias[ch]) with source the GEMM's
 * product[ch, b, s] (channel_major = 1: a conv2d's (c, n * S) result, laid out into
 * the batch in the same pass) or y[b, ch, s] itself (channel_major = 0, in place:
 * product is y, so neither pointer is __restrict__).  A grid-stride loop over y. */
template <typename F>
__device__ __forceinline__ void mg_conv_forward(
        const F* product, const F* __restrict__ bias, F* y, long long total, int n, int c,
        int pixels, int channel_major, int code, F slope) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const int s = (int)(i % pixels);
        const int ch = (int)((i / pixels) % c);
        const long long b = i / ((long long)pixels * c);
        const long long k = channel_major ? ((long long)ch * n + b) * pixels + s : i;
        y[i] = mg_flush(mg_act<F>(product[k] + bias[ch], code, slope));
    }
}

extern "C" __global__ void mg_conv_forward_f32(
        const float* product, const float* bias, float* y, long long total, int n, int c,
        int pixels, int channel_major, int code, float slope) {
    mg_conv_forward<float>(product, bias, y, total, n, c, pixels, channel_major, code, slope);
}

extern "C" __global__ void mg_conv_forward_f64(
        const double* product, const double* bias, double* y, long long total, int n, int c,
        int pixels, int channel_major, int code, double slope) {
    mg_conv_forward<double>(product, bias, y, total, n, c, pixels, channel_major, code, slope);
}

/* grad_z = grad_y * act'(y) and grad_bias[ch] = its sum over the batch and pixels: one
 * block of MG_CB_THREADS per channel (blockIdx.x); each thread sums its entries in
 * double, and the threads' sums are added in a fixed order (no atomics: the same sum
 * on every run).  grad_z is (n, c, S), or (c, n, S) with channel_major. */
#define MG_CB_THREADS 256

template <typename F>
__device__ __forceinline__ void mg_conv_backward(
        const F* __restrict__ grad_y, const F* __restrict__ y, F* __restrict__ grad_z,
        F* __restrict__ grad_bias, int n, int c, int pixels, int channel_major, int code,
        F slope) {
    __shared__ double sums[MG_CB_THREADS];
    const int ch = blockIdx.x;
    const long long count = (long long)n * pixels;
    double acc = 0.0;
    for (long long j = threadIdx.x; j < count; j += MG_CB_THREADS) {
        const long long b = j / pixels;
        const int s = (int)(j - b * pixels);
        const long long k = (b * c + ch) * pixels + s;
        const F g = mg_flush(grad_y[k] * mg_deriv<F>(y[k], code, slope));
        grad_z[channel_major ? (long long)ch * count + j : k] = g;
        acc += (double)g;
    }
    sums[threadIdx.x] = acc;
    __syncthreads();
    /* one thread adds the block's sums in thread order: one barrier, not a tree of
     * eight (a few hundred shared-memory reads, once per channel) */
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int t = 0; t < MG_CB_THREADS; ++t) total += sums[t];
        grad_bias[ch] = mg_flush((F)total);
    }
}

extern "C" __global__ void mg_conv_backward_f32(
        const float* grad_y, const float* y, float* grad_z, float* grad_bias, int n, int c,
        int pixels, int channel_major, int code, float slope) {
    mg_conv_backward<float>(grad_y, y, grad_z, grad_bias, n, c, pixels, channel_major, code,
                            slope);
}

extern "C" __global__ void mg_conv_backward_f64(
        const double* grad_y, const double* y, double* grad_z, double* grad_bias, int n,
        int c, int pixels, int channel_major, int code, double slope) {
    mg_conv_backward<double>(grad_y, y, grad_z, grad_bias, n, c, pixels, channel_major, code,
                             slope);
}
