// The CUDA built-ins the kernels use, for running them on the host (the emulator device).
// One block runs at a time; its threads are fibers (ucontext) switched at __syncthreads, so
// __shared__ arrays are plain statics and a missing or extra barrier shows up as a wrong
// answer, as on a GPU. Kernels that never synchronise run their threads one after another.
// What a GPU does not promise, the emulator does not give either: between two barriers the
// threads of a block run in a shuffled order (seeded by MODELYARD_EMU_SEED, default 1, so a
// failure is reproducible), which exposes races that in-order execution hides; and shared
// memory is filled with NaN (all bits set: NaN as a float, -1 as an int) before every block,
// so a read of shared memory no thread of the block wrote shows up instead of seeing the
// previous block's values (the emulator's translation unit follows every __shared__
// declaration with emu::poison, which the block's first thread to get there runs). A float4
// is read and written only at 16-byte aligned addresses, as on a GPU: a misaligned one is
// recorded as the emulated context's fault (CUDA_ERROR_MISALIGNED_ADDRESS), which the Rust
// side reports after the launch and keeps for every later call, as a CUDA context does.
// Device memory comes from emu::alloc: each allocation has its own pages, ends where a
// PROT_NONE guard page starts (its size rounded up to 256 bytes, as cudaMalloc's granularity
// lets a GPU read that far too) and has a guard page before its first page, so that a read or
// write past its end, or before its first page, faults; during a launch, the SIGSEGV handler
// records that as CUDA_ERROR_ILLEGAL_ADDRESS and leaves the launch (siglongjmp back to
// emu::run), instead of reading whatever the host heap holds there. Faults that are not a
// launch's are passed on to the handler that was there before (Rust's stack-overflow one).
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <csetjmp>
#include <csignal>
#include <pthread.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#include <utility>
#include <vector>
#include <functional>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__
#define __grid_constant__

struct dim3 { unsigned x, y, z; };

static dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {
// The emulated context's first fault ("" while there is none).
static char fault[512] = "";

static void record_fault(const char* code, const char* what, const void* at) {
    if (fault[0]) return;
    std::snprintf(fault, sizeof fault, "%s: %s at %p (block %u,%u,%u, thread %u,%u,%u)", code,
                  what, at, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y,
                  threadIdx.z);
}

static inline void check_float4(const void* at) {
    if (reinterpret_cast<uintptr_t>(at) % 16 != 0) {
        record_fault("CUDA_ERROR_MISALIGNED_ADDRESS", "a float4 access not 16-byte aligned", at);
    }
}
} // namespace emu

// CUDA's float4 is 16-byte aligned and moved in one access; every copy from or into one is
// checked here (locals are aligned by alignas, so only a misaligned view of memory fires).
struct alignas(16) float4 {
    float x, y, z, w;
    float4() = default;
    float4(float a, float b, float c, float d) : x(a), y(b), z(c), w(d) {}
    float4(const float4& o) : x(o.x), y(o.y), z(o.z), w(o.w) { emu::check_float4(&o); }
    float4& operator=(const float4& o) {
        emu::check_float4(this);
        emu::check_float4(&o);
        x = o.x; y = o.y; z = o.z; w = o.w;
        return *this;
    }
};

static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }

namespace emu {
static bool fibers = false;
static uint64_t rng = 0;

static inline uint64_t next_random() {
    if (rng == 0) {
        const char* s = std::getenv("MODELYARD_EMU_SEED");
        rng = (s ? std::strtoull(s, nullptr, 10) : 1) * 0x9E3779B97F4A7C15ull + 1;
    }
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

// A new random order of the block's threads.
static void shuffle(std::vector<int>& order) {
    for (size_t i = order.size(); i > 1; --i) {
        size_t j = (size_t)(next_random() % i);
        int t = order[i - 1]; order[i - 1] = order[j]; order[j] = t;
    }
}

// Blocks run so far: a shared array is poisoned once per block.
static unsigned long long block_serial = 0;
static std::vector<std::pair<void*, unsigned long long>> poisoned;

static void poison(void* a, size_t bytes) {
    for (auto& p : poisoned) {
        if (p.first == a) {
            if (p.second != block_serial) { std::memset(a, 0xFF, bytes); p.second = block_serial; }
            return;
        }
    }
    std::memset(a, 0xFF, bytes);
    poisoned.push_back({a, block_serial});
}
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

// ---- guarded allocations

static size_t page_size() {
    static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

// The layout of an allocation of `bytes`: its size rounded to 256 and its data pages.
static void guarded_layout(size_t bytes, size_t* rounded, size_t* data) {
    const size_t ps = page_size();
    *rounded = bytes == 0 ? 256 : (bytes + 255) / 256 * 256;
    *data = (*rounded + ps - 1) / ps * ps;
}

// Zeroed memory of `bytes` (256-byte aligned) between two guard pages; nullptr if the host
// has none to give.
static void* alloc(size_t bytes) {
    size_t rounded, data;
    guarded_layout(bytes, &rounded, &data);
    const size_t ps = page_size();
    if (data > SIZE_MAX - 2 * ps) return nullptr;
    char* base = (char*)mmap(nullptr, data + 2 * ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
                             -1, 0);
    if (base == MAP_FAILED) return nullptr;
    if (mprotect(base + ps, data, PROT_READ | PROT_WRITE) != 0) {
        munmap(base, data + 2 * ps);
        return nullptr;
    }
    return base + ps + data - rounded;
}

static void release(void* p, size_t bytes) {
    size_t rounded, data;
    guarded_layout(bytes, &rounded, &data);
    const size_t ps = page_size();
    munmap((char*)p + rounded - data - ps, data + 2 * ps);
}

// ---- faults during a launch

static sigjmp_buf escape;
static volatile sig_atomic_t launching = 0;
static pthread_t launcher;
static struct sigaction before_segv, before_bus;

static void on_fault(int sig, siginfo_t* info, void* uc) {
    if (launching && pthread_equal(pthread_self(), launcher)) {
        launching = 0;
        record_fault("CUDA_ERROR_ILLEGAL_ADDRESS", "an access outside every allocation",
                     info->si_addr);
        siglongjmp(escape, 1);
    }
    struct sigaction* before = sig == SIGBUS ? &before_bus : &before_segv;
    if (before->sa_flags & SA_SIGINFO) {
        before->sa_sigaction(sig, info, uc);
    } else if (before->sa_handler != SIG_DFL && before->sa_handler != SIG_IGN) {
        before->sa_handler(sig);
    } else {
        // Returning re-runs the access, which now ends the process as it would have.
        signal(sig, SIG_DFL);
    }
}

static void catch_faults() {
    static bool installed = false;
    if (installed) return;
    installed = true;
    struct sigaction act;
    std::memset(&act, 0, sizeof act);
    act.sa_sigaction = on_fault;
    act.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&act.sa_mask);
    sigaction(SIGSEGV, &act, &before_segv);
    sigaction(SIGBUS, &act, &before_bus);
}

static void run_blocks(std::function<void()>& f, dim3 g, dim3 b, bool sync);

// Runs the grid; a fault (emu::fault) ends it early, as it ends a kernel on a GPU.
static void run(std::function<void()> f, dim3 g, dim3 b, bool sync) {
    catch_faults();
    launcher = pthread_self();
    if (sigsetjmp(escape, 1) != 0) {
        // Left by on_fault from inside a block: the threads' fibers are abandoned.
        fibers = false;
        return;
    }
    launching = 1;
    run_blocks(f, g, b, sync);
    launching = 0;
}

static void run_blocks(std::function<void()>& f, dim3 g, dim3 b, bool sync) {
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
    std::vector<int> order(nt);
    for (int t = 0; t < nt; ++t) order[t] = t;
    for (unsigned bz = 0; bz < g.z; ++bz)
    for (unsigned by = 0; by < g.y; ++by)
    for (unsigned bx = 0; bx < g.x; ++bx) {
        blockIdx.x = bx; blockIdx.y = by; blockIdx.z = bz;
        ++block_serial;
        shuffle(order);
        if (!sync) {
            for (int t : order) { set_thread(t); f(); }
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
            shuffle(order);
            for (int t : order) {
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
