// The CUDA built-ins the kernels use, for running them on the host (the emulator device).
// One block runs at a time; its threads are fibers (ucontext) switched at __syncthreads, so
// __shared__ arrays are plain statics and a missing or extra barrier shows up as a wrong
// answer, as on a GPU. Kernels that never synchronise run their threads one after another.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ucontext.h>
#include <vector>
#include <functional>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__

struct dim3 { unsigned x, y, z; };
struct float4 { float x, y, z, w; };

static dim3 threadIdx, blockIdx, blockDim, gridDim;

static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }

namespace emu {
static bool fibers = false;
static ucontext_t scheduler;
static std::vector<ucontext_t> contexts;
static std::vector<char> finished;
static std::vector<char> stacks;
static int current = 0;
static std::function<void()>* body = nullptr;
static const size_t STACK = 64 * 1024;

static void entry() {
    (*body)();
    finished[current] = 1;
}

static void set_thread(int t) {
    threadIdx.x = t % blockDim.x;
    threadIdx.y = (t / blockDim.x) % blockDim.y;
    threadIdx.z = t / (blockDim.x * blockDim.y);
}

static void run(std::function<void()> f, dim3 g, dim3 b, bool sync) {
    gridDim = g;
    blockDim = b;
    body = &f;
    const int nt = (int)(b.x * b.y * b.z);
    fibers = sync;
    if (sync) {
        contexts.resize(nt);
        finished.resize(nt);
        stacks.resize((size_t)nt * STACK);
    }
    for (unsigned bz = 0; bz < g.z; ++bz)
    for (unsigned by = 0; by < g.y; ++by)
    for (unsigned bx = 0; bx < g.x; ++bx) {
        blockIdx.x = bx; blockIdx.y = by; blockIdx.z = bz;
        if (!sync) {
            for (int t = 0; t < nt; ++t) { set_thread(t); f(); }
            continue;
        }
        for (int t = 0; t < nt; ++t) {
            getcontext(&contexts[t]);
            contexts[t].uc_stack.ss_sp = &stacks[(size_t)t * STACK];
            contexts[t].uc_stack.ss_size = STACK;
            contexts[t].uc_link = &scheduler;
            makecontext(&contexts[t], entry, 0);
            finished[t] = 0;
        }
        bool live = true;
        while (live) {
            live = false;
            for (int t = 0; t < nt; ++t) {
                if (finished[t]) continue;
                current = t;
                set_thread(t);
                swapcontext(&scheduler, &contexts[t]);
                if (!finished[t]) live = true;
            }
        }
    }
    fibers = false;
}
} // namespace emu

static inline void __syncthreads() {
    if (emu::fibers) swapcontext(&emu::contexts[emu::current], &emu::scheduler);
}
