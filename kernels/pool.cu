// Max / average pooling over the last two axes of NCHW (one output per thread) and the
// resize (nearest and bilinear, ONNX coordinate modes) the EAST and DB necks need.

#define POOL_AVG 0
#define POOL_MAX 1
#define POOL_SUM 2

struct PoolParams {
    const float* x;
    float* y;
    int nc, h, w, oh, ow;
    int kh, kw, sh, sw, dh, dw, pt, pl;
    int mode;      // POOL_AVG, POOL_MAX or POOL_SUM
    int count_pad; // average: divide by kh*kw instead of the taps inside the input
};

extern "C" __global__ void __launch_bounds__(256) pool2d_f32(const __grid_constant__ PoolParams p) {
    const int total = p.nc * p.oh * p.ow;
    const int step = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        int ox = i % p.ow;
        int t = i / p.ow;
        int oy = t % p.oh;
        int plane = t / p.oh;
        const float* xp = p.x + (long long)plane * p.h * p.w;
        const bool is_max = p.mode == POOL_MAX;
        float acc = is_max ? -MY_INF : 0.0f;
        int taps = 0;
        for (int ky = 0; ky < p.kh; ++ky) {
            int ih = oy * p.sh - p.pt + ky * p.dh;
            if (ih < 0 || ih >= p.h) continue;
            for (int kx = 0; kx < p.kw; ++kx) {
                int iw = ox * p.sw - p.pl + kx * p.dw;
                if (iw < 0 || iw >= p.w) continue;
                float v = xp[ih * p.w + iw];
                acc = is_max ? fmaxf(acc, v) : acc + v;
                ++taps;
            }
        }
        if (p.mode == POOL_AVG) acc /= (float)(p.count_pad ? p.kh * p.kw : (taps > 0 ? taps : 1));
        p.y[i] = acc;
    }
}

#define COORD_HALF_PIXEL 0
#define COORD_ASYMMETRIC 1
#define COORD_ALIGN_CORNERS 2
#define COORD_PYTORCH_HALF_PIXEL 3

#define NEAREST_ROUND_PREFER_FLOOR 0
#define NEAREST_ROUND_PREFER_CEIL 1
#define NEAREST_FLOOR 2
#define NEAREST_CEIL 3

struct ResizeParams {
    const float* x;
    float* y;
    int nc, h, w, oh, ow;
    float scale_h, scale_w; // output / input
    int coord;
    int linear;
    int nearest;
};

__device__ __forceinline__ float my_source_coord(int o, float scale, int in_len, int out_len, int mode) {
    switch (mode) {
    case COORD_ASYMMETRIC: return o / scale;
    case COORD_ALIGN_CORNERS: return out_len == 1 ? 0.0f : o * (float)(in_len - 1) / (float)(out_len - 1);
    case COORD_PYTORCH_HALF_PIXEL: return out_len > 1 ? (o + 0.5f) / scale - 0.5f : 0.0f;
    default: return (o + 0.5f) / scale - 0.5f;
    }
}

__device__ __forceinline__ int my_nearest(float v, int mode, int len) {
    int i;
    float f = floorf(v);
    switch (mode) {
    case NEAREST_FLOOR: i = (int)f; break;
    case NEAREST_CEIL: i = (int)ceilf(v); break;
    case NEAREST_ROUND_PREFER_CEIL: i = (v - f == 0.5f) ? (int)f + 1 : (int)rintf(v); break;
    default: i = (v - f == 0.5f) ? (int)f : (int)rintf(v); break;
    }
    return i < 0 ? 0 : (i >= len ? len - 1 : i);
}

extern "C" __global__ void __launch_bounds__(256) resize2d_f32(const __grid_constant__ ResizeParams p) {
    const int total = p.nc * p.oh * p.ow;
    const int step = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        int ox = i % p.ow;
        int t = i / p.ow;
        int oy = t % p.oh;
        int plane = t / p.oh;
        const float* xp = p.x + (long long)plane * p.h * p.w;
        float sy = my_source_coord(oy, p.scale_h, p.h, p.oh, p.coord);
        float sx = my_source_coord(ox, p.scale_w, p.w, p.ow, p.coord);
        if (!p.linear) {
            p.y[i] = xp[my_nearest(sy, p.nearest, p.h) * p.w + my_nearest(sx, p.nearest, p.w)];
            continue;
        }
        sy = fminf(fmaxf(sy, 0.0f), (float)(p.h - 1));
        sx = fminf(fmaxf(sx, 0.0f), (float)(p.w - 1));
        int y0 = (int)floorf(sy);
        int x0 = (int)floorf(sx);
        int y1 = y0 + 1 < p.h ? y0 + 1 : p.h - 1;
        int x1 = x0 + 1 < p.w ? x0 + 1 : p.w - 1;
        float fy = sy - y0;
        float fx = sx - x0;
        float top = xp[y0 * p.w + x0] * (1.0f - fx) + xp[y0 * p.w + x1] * fx;
        float bot = xp[y1 * p.w + x0] * (1.0f - fx) + xp[y1 * p.w + x1] * fx;
        p.y[i] = top * (1.0f - fy) + bot * fy;
    }
}
