// Shared by every kernel file: parameter structs (mirrored by #[repr(C)] structs in
// src/backend/cuda/kernels.rs), activations and index helpers. Plain CUDA C++ without includes:
// the files are concatenated, common.cu first, and compiled with NVRTC at model load (or, in
// the emulator, by the host C++ compiler with a prelude that defines the CUDA built-ins).

#define MY_MAX_RANK 6
#define MY_INF __int_as_float(0x7f800000)

// Activations fused into epilogues and applied by the unary kernel.
#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_SIGMOID 2
#define ACT_HARD_SIGMOID 3 // clamp(a * x + b, 0, 1)
#define ACT_CLIP 4         // clamp(x, a, b)
#define ACT_TANH 5
#define ACT_EXP 6
#define ACT_SQRT 7
#define ACT_RECIP 8
#define ACT_ABS 9
#define ACT_NEG 10
#define ACT_LOG 11
#define ACT_HARD_SWISH 12 // x * clamp(a * x + b, 0, 1)
#define ACT_ERF 13
#define ACT_FLOOR 14
#define ACT_CEIL 15
#define ACT_SQUARE 16
#define ACT_RSQRT 17
#define ACT_LEAKY_RELU 18 // x >= 0 ? x : a * x
#define ACT_COS 19
#define ACT_SIN 20
#define ACT_ROUND 21
#define ACT_SILU 22      // x * sigmoid(x) (tract fuses the pair into one op)
#define ACT_RSQRT_ADD 23 // 1 / sqrt(x + a) (RmsNorm: a is epsilon)

__device__ __forceinline__ float my_act(float v, int act, float a, float b) {
    switch (act) {
    case ACT_RELU: return fmaxf(v, 0.0f);
    case ACT_SIGMOID: return 1.0f / (1.0f + expf(-v));
    case ACT_HARD_SIGMOID: return fminf(fmaxf(a * v + b, 0.0f), 1.0f);
    case ACT_CLIP: return fminf(fmaxf(v, a), b);
    case ACT_TANH: return tanhf(v);
    case ACT_EXP: return expf(v);
    case ACT_SQRT: return sqrtf(v);
    case ACT_RECIP: return 1.0f / v;
    case ACT_ABS: return fabsf(v);
    case ACT_NEG: return -v;
    case ACT_LOG: return logf(v);
    case ACT_HARD_SWISH: return v * fminf(fmaxf(a * v + b, 0.0f), 1.0f);
    case ACT_ERF: return erff(v);
    case ACT_FLOOR: return floorf(v);
    case ACT_CEIL: return ceilf(v);
    case ACT_SQUARE: return v * v;
    case ACT_RSQRT: return 1.0f / sqrtf(v);
    case ACT_LEAKY_RELU: return v >= 0.0f ? v : a * v;
    case ACT_COS: return cosf(v);
    case ACT_SIN: return sinf(v);
    case ACT_ROUND: return rintf(v);
    case ACT_SILU: return v / (1.0f + expf(-v));
    case ACT_RSQRT_ADD: return 1.0f / sqrtf(v + a);
    default: return v;
    }
}

// Binary operators.
#define BIN_ADD 0
#define BIN_SUB 1
#define BIN_MUL 2
#define BIN_DIV 3
#define BIN_MAX 4
#define BIN_MIN 5
#define BIN_POW 6

__device__ __forceinline__ float my_bin(float x, float y, int op) {
    switch (op) {
    case BIN_ADD: return x + y;
    case BIN_SUB: return x - y;
    case BIN_MUL: return x * y;
    case BIN_DIV: return x / y;
    case BIN_MAX: return fmaxf(x, y);
    case BIN_MIN: return fminf(x, y);
    case BIN_POW: return powf(x, y);
    default: return x;
    }
}

// A strided view of at most MY_MAX_RANK axes: element (i0..ir) is at
// offset + sum(i_d * strides[d]); strides may be 0 (broadcast).
struct MyView {
    int offset;
    int strides[MY_MAX_RANK];
};

// Offset in `v` of the element whose linear index in a row-major array of `dims` is `idx`.
__device__ __forceinline__ int my_offset(int idx, int rank, const int* dims, const MyView& v) {
    int off = v.offset;
    for (int d = rank - 1; d >= 0; --d) {
        int i = idx % dims[d];
        idx /= dims[d];
        off += i * v.strides[d];
    }
    return off;
}

// One K-step of a register-blocked tile: thread (tx, ty) accumulates rows ty*TM + i of As and
// columns tx + j*(BN/TN) of Bs (shared by the convolution and GEMM tiles).
template <int BK, int BM, int BN, int TM, int TN>
__device__ __forceinline__ void my_tile_fma(const float (*As)[BM], const float (*Bs)[BN],
                                            float (*acc)[TN], int tx, int ty) {
    const int NT = BN / TN;
    for (int kk = 0; kk < BK; ++kk) {
        float av[TM], bv[TN];
        for (int i = 0; i < TM; ++i) av[i] = As[kk][ty * TM + i];
        for (int j = 0; j < TN; ++j) bv[j] = Bs[kk][tx + j * NT];
        for (int i = 0; i < TM; ++i)
            for (int j = 0; j < TN; ++j) acc[i][j] += av[i] * bv[j];
    }
}
