/* The convolution's layout kernels (launched by minigrad/kernels/conv.py, which
 * describes the layout): x or image is an (n, c, h, w) batch, cols the
 * (c * kh * kw, n * oh * ow) matrix, both C-contiguous.  Every kernel takes the
 * geometry as the same twelve ints: n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow. */

/* cols[(ch, ki, kj), (b, oy, ox)] = x[b, ch, oy*sh - ph + ki, ox*sw - pw + kj], or 0
 * in the padding: a grid-stride loop over the entries of cols (consecutive threads
 * write consecutive output pixels of one row). */
template <typename F>
__device__ __forceinline__ void mg_im2col(
        const F* __restrict__ x, F* __restrict__ cols, long long total, int n, int c,
        int h, int w, int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow) {
    const long long columns = (long long)n * oh * ow;
    const int pixels = oh * ow;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const int row = (int)(i / columns);
        const long long column = i - (long long)row * columns;
        const int b = (int)(column / pixels);
        const int pixel = (int)(column - (long long)b * pixels);
        const int oy = pixel / ow, ox = pixel - oy * ow;
        const int kj = row % kw, ki = (row / kw) % kh, ch = row / (kw * kh);
        const int iy = oy * sh - ph + ki, ix = ox * sw - pw + kj;
        F v = F(0);
        if (iy >= 0 && iy < h && ix >= 0 && ix < w)
            v = x[(((size_t)b * c + ch) * h + iy) * w + ix];
        cols[i] = mg_flush(v);
    }
}

extern "C" __global__ void mg_im2col_f32(
        const float* x, float* cols, long long total, int n, int c, int h, int w, int kh,
        int kw, int sh, int sw, int ph, int pw, int oh, int ow) {
    mg_im2col<float>(x, cols, total, n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow);
}

extern "C" __global__ void mg_im2col_f64(
        const double* x, double* cols, long long total, int n, int c, int h, int w, int kh,
        int kw, int sh, int sw, int ph, int pw, int oh, int ow) {
    mg_im2col<double>(x, cols, total, n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow);
}

/* image[b, ch, iy, ix] = the sum of the entries of cols that im2col copied from that
 * pixel: one thread per pixel gathers them, taps (ki, kj) in ascending order as the
 * NumPy reference adds them (no atomics: the same sum on every run). */
template <typename F>
__device__ __forceinline__ void mg_col2im(
        const F* __restrict__ cols, F* __restrict__ image, long long total, int n, int c,
        int h, int w, int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow) {
    const long long columns = (long long)n * oh * ow;
    const int pixels = oh * ow;
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
                const size_t row = ((size_t)ch * kh + ki) * kw + kj;
                acc += cols[row * (size_t)columns + (size_t)b * pixels + (size_t)oy * ow + ox];
            }
        }
        image[i] = mg_flush(acc);
    }
}

extern "C" __global__ void mg_col2im_f32(
        const float* cols, float* image, long long total, int n, int c, int h, int w, int kh,
        int kw, int sh, int sw, int ph, int pw, int oh, int ow) {
    mg_col2im<float>(cols, image, total, n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow);
}

extern "C" __global__ void mg_col2im_f64(
        const double* cols, double* image, long long total, int n, int c, int h, int w,
        int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow) {
    mg_col2im<double>(cols, image, total, n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow);
}
