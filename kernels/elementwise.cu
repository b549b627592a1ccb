// Memory-bound element-wise kernels: activations (sigmoid and friends) with a float4 path,
// broadcast binary ops, and a strided copy that does transposes, slices, concat slots,
// broadcasts and tiles.

struct UnaryParams {
    const float* x;
    float* y;
    int n;
    int act;
    float a;
    float b;
    int vec4; // x and y 16-byte aligned: move float4s
};

extern "C" __global__ void __launch_bounds__(256) unary_f32(const __grid_constant__ UnaryParams p) {
    int tid = blockIdx.x * blockDim.x + threadIdx.x;
    int step = gridDim.x * blockDim.x;
    if (p.vec4) {
        int n4 = p.n / 4;
        const float4* x4 = (const float4*)p.x;
        float4* y4 = (float4*)p.y;
        for (int i = tid; i < n4; i += step) {
            float4 v = x4[i];
            v.x = my_act(v.x, p.act, p.a, p.b);
            v.y = my_act(v.y, p.act, p.a, p.b);
            v.z = my_act(v.z, p.act, p.a, p.b);
            v.w = my_act(v.w, p.act, p.a, p.b);
            y4[i] = v;
        }
        for (int i = n4 * 4 + tid; i < p.n; i += step) {
            p.y[i] = my_act(p.x[i], p.act, p.a, p.b);
        }
    } else {
        for (int i = tid; i < p.n; i += step) {
            p.y[i] = my_act(p.x[i], p.act, p.a, p.b);
        }
    }
}

struct BinaryParams {
    const float* a;
    const float* b;
    float* y;
    int n;
    int rank;
    int op;
    int act; // applied after the op
    int dims[MY_MAX_RANK];
    MyView va;
    MyView vb;
};

extern "C" __global__ void __launch_bounds__(256) binary_f32(const __grid_constant__ BinaryParams p) {
    int step = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += step) {
        float x = p.a[my_offset(i, p.rank, p.dims, p.va)];
        float z = p.b[my_offset(i, p.rank, p.dims, p.vb)];
        p.y[i] = my_act(my_bin(x, z, p.op), p.act, 0.0f, 0.0f);
    }
}

// Same shapes, both contiguous: float4 when aligned.
struct BinarySameParams {
    const float* a;
    const float* b;
    float* y;
    int n;
    int op;
    int act;
    int vec4;
};

extern "C" __global__ void __launch_bounds__(256) binary_same_f32(const __grid_constant__ BinarySameParams p) {
    int tid = blockIdx.x * blockDim.x + threadIdx.x;
    int step = gridDim.x * blockDim.x;
    int start = 0;
    if (p.vec4) {
        int n4 = p.n / 4;
        const float4* a4 = (const float4*)p.a;
        const float4* b4 = (const float4*)p.b;
        float4* y4 = (float4*)p.y;
        for (int i = tid; i < n4; i += step) {
            float4 u = a4[i];
            float4 v = b4[i];
            u.x = my_act(my_bin(u.x, v.x, p.op), p.act, 0.0f, 0.0f);
            u.y = my_act(my_bin(u.y, v.y, p.op), p.act, 0.0f, 0.0f);
            u.z = my_act(my_bin(u.z, v.z, p.op), p.act, 0.0f, 0.0f);
            u.w = my_act(my_bin(u.w, v.w, p.op), p.act, 0.0f, 0.0f);
            y4[i] = u;
        }
        start = n4 * 4;
    }
    for (int i = start + tid; i < p.n; i += step) {
        p.y[i] = my_act(my_bin(p.a[i], p.b[i], p.op), p.act, 0.0f, 0.0f);
    }
}

// y[view_y(i)] = x[view_x(i % x_dims)] for every index i of `dims`: transposes (permuted
// strides), slices and strided slices (offset, strides), concat slots (view_y into the
// output), broadcasts (stride 0) and tiles (x_dims smaller than dims).
struct CopyParams {
    const float* x;
    float* y;
    int n;
    int rank;
    int dims[MY_MAX_RANK];
    int x_dims[MY_MAX_RANK];
    MyView vx;
    MyView vy;
};

extern "C" __global__ void __launch_bounds__(256) copy_f32(const __grid_constant__ CopyParams p) {
    int step = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += step) {
        int idx = i;
        int ox = p.vx.offset;
        int oy = p.vy.offset;
        for (int d = p.rank - 1; d >= 0; --d) {
            int c = idx % p.dims[d];
            idx /= p.dims[d];
            ox += (c % p.x_dims[d]) * p.vx.strides[d];
            oy += c * p.vy.strides[d];
        }
        p.y[oy] = p.x[ox];
    }
}

// Constant padding: y (dims) from x (x_dims) placed at `before`.
struct PadParams {
    const float* x;
    float* y;
    int n;
    int rank;
    float value;
    int dims[MY_MAX_RANK];
    int x_dims[MY_MAX_RANK];
    int before[MY_MAX_RANK];
};

extern "C" __global__ void __launch_bounds__(256) pad_f32(const __grid_constant__ PadParams p) {
    int step = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += step) {
        int idx = i;
        int ox = 0;
        int mul = 1;
        bool inside = true;
        for (int d = p.rank - 1; d >= 0; --d) {
            int c = idx % p.dims[d] - p.before[d];
            idx /= p.dims[d];
            if (c < 0 || c >= p.x_dims[d]) inside = false;
            ox += c * mul;
            mul *= p.x_dims[d];
        }
        p.y[i] = inside ? p.x[ox] : p.value;
    }
}

// A fused chain of element-wise operators: up to 8 input tensors, each read through its own
// broadcast view of the output shape, and up to 16 operators over registers (0-7: the inputs,
// 8 + i: the result of operator i; the last one is stored). Operator i is binary
// (code = BIN_*) on registers a[i] and b[i], or an activation (code = PW_ACT_BASE + ACT_*, params
// ca[i], cb[i]) of register a[i]. Folded batch norms, bias adds and hard-swish chains become
// one pass over memory instead of one launch per node.
#define PW_MAX_IN 8
#define PW_MAX_OPS 16
#define PW_ACT_BASE 100 // pointwise codes at or above it are PW_ACT_BASE + ACT_*

struct PointwiseParams {
    const float* in[PW_MAX_IN];
    float* y;
    int n;
    int rank;
    int n_in;
    int n_ops;
    int dims[MY_MAX_RANK];
    MyView views[PW_MAX_IN];
    int code[PW_MAX_OPS];
    int a[PW_MAX_OPS];
    int b[PW_MAX_OPS];
    float ca[PW_MAX_OPS];
    float cb[PW_MAX_OPS];
};

extern "C" __global__ void __launch_bounds__(256) pointwise_f32(const __grid_constant__ PointwiseParams p) {
    int step = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += step) {
        int coord[MY_MAX_RANK];
        int idx = i;
        for (int d = p.rank - 1; d >= 0; --d) {
            coord[d] = idx % p.dims[d];
            idx /= p.dims[d];
        }
        float r[PW_MAX_IN + PW_MAX_OPS];
        for (int k = 0; k < p.n_in; ++k) {
            int off = p.views[k].offset;
            for (int d = 0; d < p.rank; ++d) off += coord[d] * p.views[k].strides[d];
            r[k] = p.in[k][off];
        }
        for (int o = 0; o < p.n_ops; ++o) {
            int c = p.code[o];
            float x = r[p.a[o]];
            r[PW_MAX_IN + o] = c >= PW_ACT_BASE ? my_act(x, c - PW_ACT_BASE, p.ca[o], p.cb[o]) : my_bin(x, r[p.b[o]], c);
        }
        p.y[i] = r[PW_MAX_IN + p.n_ops - 1];
    }
}
