// 2-D convolution as an implicit GEMM: M = output channels of a group, N = output pixels of
// the whole batch, K = input channels of the group x kernel taps. The input patch matrix is
// never built: each thread gathers its B-tile elements straight from the NCHW input (zero
// outside the padding). 64x64 output tiles, K in steps of 16 through shared memory, 4x4
// outputs per thread in registers; bias and activation fused into the epilogue.

struct ConvParams {
    const float* x;    // [n, c, h, w]
    const float* wt;   // [co, c / group, kh, kw]
    const float* bias; // [co] or null
    float* y;          // [n, co, oh, ow]
    const float* res;  // [n, co, oh, ow] added before the activation (a residual), or null
    int n, c, h, w;
    int co, oh, ow;
    int kh, kw, sh, sw, dh, dw, pt, pl;
    int group;
    int act;
    float a, b;
    float post_mul, post_add; // y = post_mul * act(acc + bias + res) + post_add
};

// Output `i` of `y` from its sum `v` (bias included).
__device__ __forceinline__ float my_conv_out(const ConvParams& p, float v, long long i) {
    if (p.res) v += p.res[i];
    return fmaf(my_act(v, p.act, p.a, p.b), p.post_mul, p.post_add);
}

// Tile shapes: BM output channels x BN pixels per block of 256 threads, each thread TM x TN
// outputs (rows ty*TM + i, columns tx + j*(BN/TN): neighbouring threads take neighbouring
// pixels, so shared-memory reads are conflict-free and stores coalesce). 64x64 (4x4 per
// thread) for wide layers; 16x256 (1x16) when a group has at most 16 output channels (EAST's
// 8-32 channel layers would leave most of a 64-row tile idle).
#define CONV_BK 16

template <int BM, int BN, int TM, int TN, bool ONE_BY_ONE>
__device__ __forceinline__ void my_conv_tile(const ConvParams& p) {
    __shared__ float As[CONV_BK][BM];
    __shared__ float Bs[CONV_BK][BN];
    const int tid = threadIdx.x;
    const int g = blockIdx.z;
    const int cg = p.c / p.group;
    const int mg = p.co / p.group;
    const int khw = p.kh * p.kw;
    const int K = cg * khw;
    const int opix = p.oh * p.ow;
    const int npix = p.n * opix;
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;

    // B loader: one output pixel per thread, B_ROWS consecutive k rows.
    const int B_ROWS = CONV_BK * BN / 256;
    const int bcol = tid % BN;
    const int brow = (tid / BN) * B_ROWS;
    const int pix = n0 + bcol;
    const bool pix_ok = pix < npix;
    int bn = 0, br = 0, boh = 0, bow = 0;
    if (pix_ok) {
        bn = pix / opix;
        br = pix - bn * opix;
        boh = br / p.ow;
        bow = br - boh * p.ow;
    }
    const int ih0 = boh * p.sh - p.pt;
    const int iw0 = bow * p.sw - p.pl;
    const float* xb = p.x + ((long long)bn * p.c + (long long)g * cg) * p.h * p.w;

    // A loader: one output channel per thread, A_COLS consecutive k columns.
    const int A_COLS = CONV_BK * BM / 256;
    const int per_row = CONV_BK / A_COLS;
    const int arow = tid / per_row;
    const int acol = (tid % per_row) * A_COLS;
    const int am = m0 + arow;
    const float* wrow = p.wt + ((long long)g * mg + am) * K;

    const int NT = BN / TN;
    const int tx = tid % NT;
    const int ty = tid / NT;
    float acc[TM][TN];
    for (int i = 0; i < TM; ++i)
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < K; k0 += CONV_BK) {
        for (int j = 0; j < A_COLS; ++j) {
            int k = k0 + acol + j;
            As[acol + j][arow] = (am < mg && k < K) ? wrow[k] : 0.0f;
        }
        for (int j = 0; j < B_ROWS; ++j) {
            int k = k0 + brow + j;
            float v = 0.0f;
            if (pix_ok && k < K) {
                if (ONE_BY_ONE) {
                    v = xb[(long long)k * opix + br];
                } else {
                    int ci = k / khw;
                    int r = k - ci * khw;
                    int ky = r / p.kw;
                    int kx = r - ky * p.kw;
                    int ih = ih0 + ky * p.dh;
                    int iw = iw0 + kx * p.dw;
                    if (ih >= 0 && ih < p.h && iw >= 0 && iw < p.w)
                        v = xb[((long long)ci * p.h + ih) * p.w + iw];
                }
            }
            Bs[brow + j][bcol] = v;
        }
        __syncthreads();
        my_tile_fma<CONV_BK, BM, BN, TM, TN>(As, Bs, acc, tx, ty);
        __syncthreads();
    }

    for (int i = 0; i < TM; ++i) {
        int m = m0 + ty * TM + i;
        if (m >= mg) continue;
        int oc = g * mg + m;
        float bias = p.bias ? p.bias[oc] : 0.0f;
        for (int j = 0; j < TN; ++j) {
            int q = n0 + tx + j * NT;
            if (q >= npix) continue;
            int nb = q / opix;
            int r = q - nb * opix;
            long long at = ((long long)nb * p.co + oc) * opix + r;
            p.y[at] = my_conv_out(p, acc[i][j] + bias, at);
        }
    }
}

// grid (ceil(n*oh*ow / 64), ceil(co/group / 64), group), block 256.
extern "C" __global__ void __launch_bounds__(256) conv2d_f32(const __grid_constant__ ConvParams p) {
    my_conv_tile<64, 64, 4, 4, false>(p);
}

// 1x1 kernel, stride 1, no padding: the B tile is a plain strided read. Same grid.
extern "C" __global__ void __launch_bounds__(256) conv2d_1x1_f32(const __grid_constant__ ConvParams p) {
    my_conv_tile<64, 64, 4, 4, true>(p);
}

// At most 16 output channels per group: grid (ceil(n*oh*ow / 256), ceil(co/group / 16), group).
extern "C" __global__ void __launch_bounds__(256) conv2d_narrow_f32(const __grid_constant__ ConvParams p) {
    my_conv_tile<16, 256, 1, 16, false>(p);
}

// One input channel per group (depthwise and its channel multipliers): direct, one output
// per thread; a GEMM tile would be mostly zeros.
extern "C" __global__ void __launch_bounds__(256) conv2d_depthwise_f32(const __grid_constant__ ConvParams p) {
    const int total = p.n * p.co * p.oh * p.ow;
    const int mg = p.co / p.group;
    const int step = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        int ox = i % p.ow;
        int t = i / p.ow;
        int oy = t % p.oh;
        t /= p.oh;
        int oc = t % p.co;
        int nb = t / p.co;
        int ci = oc / mg;
        const float* xp = p.x + ((long long)nb * p.c + ci) * p.h * p.w;
        const float* wp = p.wt + (long long)oc * p.kh * p.kw;
        float acc = p.bias ? p.bias[oc] : 0.0f;
        for (int ky = 0; ky < p.kh; ++ky) {
            int ih = oy * p.sh - p.pt + ky * p.dh;
            if (ih < 0 || ih >= p.h) continue;
            for (int kx = 0; kx < p.kw; ++kx) {
                int iw = ox * p.sw - p.pl + kx * p.dw;
                if (iw < 0 || iw >= p.w) continue;
                acc += wp[ky * p.kw + kx] * xp[ih * p.w + iw];
            }
        }
        p.y[i] = my_conv_out(p, acc, i);
    }
}

// Transposed convolution (ConvTranspose), one output per thread, gathering the inputs that
// scatter into it: y[oy] takes x[iy] where oy = iy * stride - pad + ky * dilation. The
// weights are [co, c, kh, kw]; one group.
extern "C" __global__ void __launch_bounds__(256) deconv2d_f32(const __grid_constant__ ConvParams p) {
    const int total = p.n * p.co * p.oh * p.ow;
    const int step = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        int ox = i % p.ow;
        int t = i / p.ow;
        int oy = t % p.oh;
        t /= p.oh;
        int oc = t % p.co;
        int nb = t / p.co;
        float acc = p.bias ? p.bias[oc] : 0.0f;
        for (int ic = 0; ic < p.c; ++ic) {
            const float* xp = p.x + ((long long)nb * p.c + ic) * p.h * p.w;
            const float* wp = p.wt + ((long long)oc * p.c + ic) * p.kh * p.kw;
            for (int ky = 0; ky < p.kh; ++ky) {
                int ty = oy + p.pt - ky * p.dh;
                if (ty < 0 || ty % p.sh != 0) continue;
                int iy = ty / p.sh;
                if (iy >= p.h) continue;
                for (int kx = 0; kx < p.kw; ++kx) {
                    int tx = ox + p.pl - kx * p.dw;
                    if (tx < 0 || tx % p.sw != 0) continue;
                    int ix = tx / p.sw;
                    if (ix >= p.w) continue;
                    acc += xp[iy * p.w + ix] * wp[ky * p.kw + kx];
                }
            }
        }
        p.y[i] = my_conv_out(p, acc, i);
    }
}
