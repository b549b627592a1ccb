// Reductions over any set of axes (one output per thread, or one block per output when the
// outputs are few and long) and softmax along one axis (one block per row).

#define RED_SUM 0
#define RED_MAX 1
#define RED_MIN 2
#define RED_PROD 3
#define RED_SUM_SQUARES 4

struct ReduceParams {
    const float* x;
    float* y;
    int n_out;
    int rank;       // axes of the output (reduced axes have size 1)
    int out_dims[MY_MAX_RANK];
    MyView vout;    // input strides of the kept axes (0 for reduced ones)
    int red_rank;
    int red_dims[MY_MAX_RANK];
    int red_strides[MY_MAX_RANK];
    int op;
    float scale;    // applied at the end (1/count for a mean)
    int per_block;  // one block per output (blockDim.x = 256), else one thread per output
};

static __device__ __forceinline__ float red_init(int op) {
    return op == RED_MAX ? -MY_INF : (op == RED_MIN ? MY_INF : (op == RED_PROD ? 1.0f : 0.0f));
}

// `acc` with element `v` folded in.
static __device__ __forceinline__ float red_step(int op, float acc, float v) {
    switch (op) {
    case RED_MAX: return fmaxf(acc, v);
    case RED_MIN: return fminf(acc, v);
    case RED_PROD: return acc * v;
    case RED_SUM_SQUARES: return acc + v * v;
    default: return acc + v;
    }
}

// Two partial results combined (a sum of squares adds its partial sums).
static __device__ __forceinline__ float red_combine(int op, float a, float b) {
    switch (op) {
    case RED_MAX: return fmaxf(a, b);
    case RED_MIN: return fminf(a, b);
    case RED_PROD: return a * b;
    default: return a + b;
    }
}

// Offset of the j-th reduced element of the output whose kept axes start at `base`.
static __device__ __forceinline__ int red_offset(const ReduceParams& p, int base, int j) {
    int off = base;
    for (int d = p.red_rank - 1; d >= 0; --d) {
        off += (j % p.red_dims[d]) * p.red_strides[d];
        j /= p.red_dims[d];
    }
    return off;
}

extern "C" __global__ void __launch_bounds__(256) reduce_f32(const __grid_constant__ ReduceParams p) {
    int red_n = 1;
    for (int d = 0; d < p.red_rank; ++d) red_n *= p.red_dims[d];
    if (p.per_block) {
        // A GlobalAveragePool over 1,320 pixels or a max over 6,625 classes: the block's
        // threads strided along the reduced elements, folded in shared memory.
        __shared__ float red[256];
        const int t = threadIdx.x, nt = blockDim.x;
        for (int i = blockIdx.x; i < p.n_out; i += gridDim.x) {
            int base = my_offset(i, p.rank, p.out_dims, p.vout);
            float acc = red_init(p.op);
            for (int j = t; j < red_n; j += nt) acc = red_step(p.op, acc, p.x[red_offset(p, base, j)]);
            red[t] = acc;
            __syncthreads();
            for (int s = nt / 2; s > 0; s >>= 1) {
                if (t < s) red[t] = red_combine(p.op, red[t], red[t + s]);
                __syncthreads();
            }
            if (t == 0) p.y[i] = red[0] * p.scale;
            // Thread 0 has read red[0] before the next output writes red.
            __syncthreads();
        }
        return;
    }
    const int step = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n_out; i += step) {
        int base = my_offset(i, p.rank, p.out_dims, p.vout);
        float acc = red_init(p.op);
        for (int j = 0; j < red_n; ++j) acc = red_step(p.op, acc, p.x[red_offset(p, base, j)]);
        p.y[i] = acc * p.scale;
    }
}

struct SoftmaxParams {
    const float* x;
    float* y;
    int outer, axis, inner;
    int log;
};

// One block per row (PaddleOCR rec: 40 rows of 6625 classes, 26 per thread), the block's
// threads strided along the axis, max and sum folded in shared memory (blockDim.x = 256).
extern "C" __global__ void __launch_bounds__(256) softmax_f32(const __grid_constant__ SoftmaxParams p) {
    __shared__ float red[256];
    const int rows = p.outer * p.inner;
    const int t = threadIdx.x, nt = blockDim.x;
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        int o = r / p.inner;
        int in = r - o * p.inner;
        long long base = (long long)o * p.axis * p.inner + in;
        float mx = -MY_INF;
        for (int j = t; j < p.axis; j += nt) mx = fmaxf(mx, p.x[base + (long long)j * p.inner]);
        red[t] = mx;
        __syncthreads();
        for (int s = nt / 2; s > 0; s >>= 1) {
            if (t < s) red[t] = fmaxf(red[t], red[t + s]);
            __syncthreads();
        }
        mx = red[0];
        __syncthreads();
        float sum = 0.0f;
        for (int j = t; j < p.axis; j += nt) sum += expf(p.x[base + (long long)j * p.inner] - mx);
        red[t] = sum;
        __syncthreads();
        for (int s = nt / 2; s > 0; s >>= 1) {
            if (t < s) red[t] += red[t + s];
            __syncthreads();
        }
        sum = red[0];
        // Every thread has read red[0] before the next row writes red.
        __syncthreads();
        const float lsum = logf(sum);
        for (int j = t; j < p.axis; j += nt) {
            float v = p.x[base + (long long)j * p.inner] - mx;
            p.y[base + (long long)j * p.inner] = p.log ? v - lsum : expf(v) / sum;
        }
    }
}
