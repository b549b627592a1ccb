// Batched GEMM with arbitrary strides: c(b, m, n) = act(sum_k a(b, m, k) * b(b, k, n)).
// Covers MatMul, Gemm and the EinSum forms tract declutters 1x1 convolutions and linear
// layers into (the strides absorb the transposes). Same 64x64x16 tiling as the convolution.

struct GemmParams {
    const float* a;
    const float* b;
    float* c;
    int batch, m, n, k;
    int sab, sam, sak;
    int sbb, sbk, sbn;
    int scb, scm, scn;
    int act;
};

// BM x BN tile per block of 256 threads, TM x TN per thread (columns strided by BN / TN, as
// in conv.cu). 64x64 in general; 256x16 when n <= 16 (a 1x1 convolution with few output
// channels: m = pixels, n = channels).
template <int BM, int BN, int TM, int TN>
__device__ __forceinline__ void my_gemm_tile(const GemmParams& p) {
    __shared__ float As[16][BM];
    __shared__ float Bs[16][BN];
    const int tid = threadIdx.x;
    const int bz = blockIdx.z;
    // M on grid.x (2^31 - 1 tiles: a 1x1 convolution's pixels), N on grid.y (65,535).
    const int m0 = blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;
    const float* a = p.a + (long long)bz * p.sab;
    const float* b = p.b + (long long)bz * p.sbb;
    const int A_COLS = 16 * BM / 256;
    const int per_row = 16 / A_COLS;
    const int arow = tid / per_row;
    const int acol = (tid % per_row) * A_COLS;
    const int B_ROWS = 16 * BN / 256;
    const int bcol = tid % BN;
    const int brow = (tid / BN) * B_ROWS;
    const int NT = BN / TN;
    const int tx = tid % NT;
    const int ty = tid / NT;
    float acc[TM][TN];
    for (int i = 0; i < TM; ++i)
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < p.k; k0 += 16) {
        for (int j = 0; j < A_COLS; ++j) {
            int k = k0 + acol + j;
            int m = m0 + arow;
            As[acol + j][arow] = (m < p.m && k < p.k) ? a[(long long)m * p.sam + (long long)k * p.sak] : 0.0f;
        }
        for (int j = 0; j < B_ROWS; ++j) {
            int k = k0 + brow + j;
            int n = n0 + bcol;
            Bs[brow + j][bcol] = (n < p.n && k < p.k) ? b[(long long)k * p.sbk + (long long)n * p.sbn] : 0.0f;
        }
        __syncthreads();
        my_tile_fma<16, BM, BN, TM, TN>(As, Bs, acc, tx, ty);
        __syncthreads();
    }
    float* c = p.c + (long long)bz * p.scb;
    for (int i = 0; i < TM; ++i) {
        int m = m0 + ty * TM + i;
        if (m >= p.m) continue;
        for (int j = 0; j < TN; ++j) {
            int n = n0 + tx + j * NT;
            if (n >= p.n) continue;
            c[(long long)m * p.scm + (long long)n * p.scn] = my_act(acc[i][j], p.act, 0.0f, 0.0f);
        }
    }
}

// grid (ceil(n / 64), ceil(m / 64), batch), block 256.
extern "C" __global__ void __launch_bounds__(256) gemm_f32(const __grid_constant__ GemmParams p) {
    my_gemm_tile<64, 64, 4, 4>(p);
}

// n <= 16: grid (ceil(n / 16), ceil(m / 256), batch), block 256.
extern "C" __global__ void __launch_bounds__(256) gemm_narrow_f32(const __grid_constant__ GemmParams p) {
    my_gemm_tile<256, 16, 16, 1>(p);
}
