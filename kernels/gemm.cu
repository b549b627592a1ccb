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

// grid (ceil(n / 64), ceil(m / 64), batch), block 256.
extern "C" __global__ void __launch_bounds__(256) gemm_f32(const GemmParams p) {
    __shared__ float As[16][64];
    __shared__ float Bs[16][64];
    const int tid = threadIdx.x;
    const int bz = blockIdx.z;
    const int m0 = blockIdx.y * 64;
    const int n0 = blockIdx.x * 64;
    const float* a = p.a + (long long)bz * p.sab;
    const float* b = p.b + (long long)bz * p.sbb;
    const int arow = tid >> 2;
    const int acol = (tid & 3) * 4;
    const int bcol = tid & 63;
    const int brow = (tid >> 6) * 4;
    const int tx = tid & 15;
    const int ty = tid >> 4;
    float acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < p.k; k0 += 16) {
        for (int j = 0; j < 4; ++j) {
            int k = k0 + acol + j;
            int m = m0 + arow;
            As[acol + j][arow] = (m < p.m && k < p.k) ? a[(long long)m * p.sam + (long long)k * p.sak] : 0.0f;
        }
        for (int j = 0; j < 4; ++j) {
            int k = k0 + brow + j;
            int n = n0 + bcol;
            Bs[brow + j][bcol] = (n < p.n && k < p.k) ? b[(long long)k * p.sbk + (long long)n * p.sbn] : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < 16; ++kk) {
            float av[4], bv[4];
            for (int i = 0; i < 4; ++i) av[i] = As[kk][ty * 4 + i];
            for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx * 4 + j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
        }
        __syncthreads();
    }
    float* c = p.c + (long long)bz * p.scb;
    for (int i = 0; i < 4; ++i) {
        int m = m0 + ty * 4 + i;
        if (m >= p.m) continue;
        for (int j = 0; j < 4; ++j) {
            int n = n0 + tx * 4 + j;
            if (n >= p.n) continue;
            c[(long long)m * p.scm + (long long)n * p.scn] = my_act(acc[i][j], p.act, 0.0f, 0.0f);
        }
    }
}
