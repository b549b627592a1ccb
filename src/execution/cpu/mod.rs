//! The CPU as a second device of the lowered program: the same [`Program`] the GPU runs
//! (launches with parameters resolved at load, an arena laid out by liveness, element-wise
//! fusion, tract islands), its kernels written in Rust over host memory. "Device memory" is
//! 64-byte aligned host memory and the copies are `memcpy`s.
//!
//! This is the first step of the native CPU engine: every kernel the lowering emits has a
//! portable Rust implementation here with the `.cu` kernel's exact semantics (one thread,
//! loop orders the compiler can vectorise along contiguous rows). It is opt-in
//! (`parameters { key: "engine" value: { string_value: "native" } }`) until it beats tract's
//! plan on every model; packed-panel SIMD microkernels, the depthwise kernel and the thread
//! pool come next, behind the same `launch`.
//!
//! [`Program`]: super::lower::Program

use super::program::device::{
    host_memory_methods, DevPtr, Device, DeviceError, DeviceResult, HostMemory, SideBySide,
};
use super::program::kernels::{self as k, act, bin, Kernel};
use std::collections::HashMap;
use std::sync::Arc;

mod elementwise;
mod gemm;
mod isa;
mod lanes;
mod pool;
mod winograd;

use isa::{copy_short, gather_stride2, zero_short};

use elementwise::{activate_row, affine_row, binary, binary_same, copy, pointwise, reduce, unary};

/// Host memory standing in for device memory, and the Rust kernels.
pub(crate) struct CpuDevice {
    memory: &'static HostMemory,
    /// Threads a launch may use (its caller's included), from `intra_op_thread_count`.
    threads: usize,
}

/// The process's CPU device for launches on `threads` threads (0: the machine's cores). One
/// device per thread count; they share one pool of workers ([`pool`]).
pub(crate) fn device(threads: usize) -> &'static dyn Device {
    static DEVICES: std::sync::OnceLock<parking_lot::Mutex<Vec<&'static CpuDevice>>> =
        std::sync::OnceLock::new();
    let threads = if threads == 0 { pool::cores() } else { threads };
    let mut devices = DEVICES.get_or_init(Default::default).lock();
    if let Some(d) = devices.iter().find(|d| d.threads == threads) {
        return *d;
    }
    let d: &'static CpuDevice = Box::leak(Box::new(CpuDevice {
        memory: memory(),
        threads,
    }));
    devices.push(d);
    d
}

/// The CPU devices' one memory: arenas, weights and staging of every native model, capped at
/// three quarters of the machine's physical memory, so a shape whose arena would not fit is
/// refused (`ResourceExhausted`, naming the model) before anything is allocated, instead of
/// the kernel's out-of-memory killer ending the process when the pages are touched.
fn memory() -> &'static HostMemory {
    static MEMORY: std::sync::OnceLock<HostMemory> = std::sync::OnceLock::new();
    MEMORY.get_or_init(|| HostMemory::new(64, physical_memory().map_or(usize::MAX, |b| b / 4 * 3)))
}

/// `MemTotal` of `/proc/meminfo` in bytes (Linux), else `None`.
fn physical_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The parameter struct `T` from its bytes.
fn params<T: k::Params>(bytes: &[u8]) -> DeviceResult<T> {
    if bytes.len() != std::mem::size_of::<T>() {
        return Err(DeviceError::Internal(format!(
            "{}: {} parameter bytes, {} expected",
            T::C_NAME,
            bytes.len(),
            std::mem::size_of::<T>()
        )));
    }
    // SAFETY: `T` is a `Params` struct (integers and floats, every bit pattern valid) and
    // `bytes` holds exactly its size; the read is unaligned-safe.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// Convolution weights in the GEMM's strip-major layout ([`gemm::pack_a_whole`]), packed on
/// their first launch and kept until their allocation is freed, keyed by the allocation's
/// address, the group's first row and the layout (the products' `deep`, their depth blocks, or
/// Winograd's transform, [`winograd::transform_weights`]). Sound because a convolution's weights are always a
/// program constant (`Operand::Const` in the lowering): uploaded once before any launch,
/// never written again, and freed through this device's `free`, which drops their packs
/// first (so a later allocation at the same address never meets a stale pack). The packs
/// live beside the weights, outside the memory cap (one more copy of the conv weights).
type Packs = HashMap<(DevPtr, usize, Layout), Arc<Vec<f32>>>;

/// How a pack lays out its weights.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Layout {
    /// [`gemm::pack_a_whole`] with this `deep`.
    Strips { deep: bool },
    /// [`winograd::transform_weights`] (3x3 kernels).
    Winograd,
    /// [`lanes::pack_weights`].
    Lanes,
}

fn packs() -> &'static parking_lot::Mutex<Packs> {
    static PACKS: std::sync::OnceLock<parking_lot::Mutex<Packs>> = std::sync::OnceLock::new();
    PACKS.get_or_init(Default::default)
}

/// Rows `row0 .. row0 + m` of the `k`-wide weights at `base`, packed (once) in `layout`.
///
/// # Safety
/// `base` is a live constant weight allocation holding at least `(row0 + m)·k` floats.
unsafe fn packed_weights(
    base: DevPtr,
    row0: usize,
    m: usize,
    k: usize,
    layout: Layout,
) -> Arc<Vec<f32>> {
    let key = (base, row0, layout);
    if let Some(p) = packs().lock().get(&key) {
        return p.clone();
    }
    let w = (base as *const f32).add(row0 * k);
    let packed = Arc::new(match layout {
        Layout::Strips { deep } => gemm::pack_a_whole(w, m, k, k, deep),
        Layout::Winograd => winograd::transform_weights(w, m, k / 9),
        Layout::Lanes => lanes::pack_weights(w, m, k),
    });
    packs().lock().entry(key).or_insert(packed).clone()
}

/// Drops the packs of the allocation at `ptr` (before it is freed).
fn forget_packs(ptr: DevPtr) {
    let mut packs = packs().lock();
    if !packs.is_empty() {
        packs.retain(|(base, _, _), _| *base != ptr);
    }
}

impl Device for CpuDevice {
    fn direct_copies(&self) -> bool {
        // `upload` and `download` are memcpys (`host_memory_methods!`).
        true
    }

    fn describe(&self) -> String {
        "cpu (native kernels)".into()
    }

    host_memory_methods!(memory, forget_packs);

    fn side_by_side(&self) -> Option<SideBySide> {
        // One image per thread, each on a one-thread device: an image's activations stay in
        // its core's caches, and no launch waits for the other core. Measured (A/B, 2-core
        // EPYC, 1 MiB L2 per core, 32 MiB L3): PP-OCR rec 6x3x48x320 (2.5 MB of activations
        // an image) 2 threads 39-45 -> 34-39 ms, 1 thread 74-80 -> 67-73 ms; the orientation
        // classifier 6x3x48x192 (0.5 MB an image) 2 threads 1.7 -> 1.4-1.5 ms, but 1 thread
        // 2.2 -> 2.3 ms: its whole batch fits the caches, and one image at a time only adds
        // launches. Hence one thread splits only batches of more than 8 MiB.
        Some(SideBySide {
            parts: self.threads,
            alone_above: 8 << 20,
            device: device(1),
            run: pool::parallel,
        })
    }

    fn launch(
        &self,
        _stream: u64,
        kernel: Kernel,
        _grid: [u32; 3],
        _block: [u32; 3],
        bytes: &[u8],
    ) -> DeviceResult<()> {
        // SAFETY (every arm): the lowering built the parameters from the program's values;
        // each pointer names a live arena slot, weight or input of the size and layout the
        // parameters describe (the same contract the CUDA kernels rely on).
        let t0 = std::time::Instant::now();
        unsafe {
            match kernel {
                Kernel::Unary => unary(&params(bytes)?),
                Kernel::Pointwise => pointwise(&params(bytes)?, self.threads),
                Kernel::Binary => binary(&params(bytes)?, self.threads),
                Kernel::BinarySame => binary_same(&params(bytes)?),
                Kernel::Copy => copy(&params(bytes)?),
                Kernel::Pad => pad(&params(bytes)?),
                Kernel::Conv | Kernel::Conv1x1 | Kernel::ConvNarrow | Kernel::ConvDepthwise => {
                    conv(&params(bytes)?, self.threads)
                }
                Kernel::Deconv => deconv(&params(bytes)?, self.threads),
                Kernel::Gemm | Kernel::GemmNarrow => matmul(&params(bytes)?, self.threads),
                Kernel::Pool => pool(&params(bytes)?, self.threads),
                Kernel::Resize => resize(&params(bytes)?, self.threads),
                Kernel::Reduce => reduce(&params(bytes)?),
                Kernel::Softmax => softmax(&params(bytes)?, self.threads),
            }
        }
        if profiling() {
            profile_line(kernel, bytes, t0.elapsed())?;
        }
        Ok(())
    }
}

/// `MODELYARD_CPU_PROFILE=1`: every launch prints `PROF <kernel> <µs> <shape>` to stderr, a
/// developer's per-kernel profile (sum the lines per kernel to see where the time goes).
fn profiling() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("MODELYARD_CPU_PROFILE").is_some_and(|v| v == "1"))
}

fn profile_line(kernel: Kernel, bytes: &[u8], took: std::time::Duration) -> DeviceResult<()> {
    let shape = match kernel {
        Kernel::Conv
        | Kernel::Conv1x1
        | Kernel::ConvNarrow
        | Kernel::ConvDepthwise
        | Kernel::Deconv => {
            let p: k::ConvParams = params(bytes)?;
            format!(
                "{}x{}x{}x{} -> {}x{}x{} k{}x{} s{} g{}{}",
                p.n,
                p.c,
                p.h,
                p.w,
                p.co,
                p.oh,
                p.ow,
                p.kh,
                p.kw,
                p.sh,
                p.group,
                if p.res == 0 { "" } else { " +res" }
            )
        }
        Kernel::Gemm | Kernel::GemmNarrow => {
            let p: k::GemmParams = params(bytes)?;
            format!(
                "{}x[{}x{}x{}] a {},{} b {},{} c {},{}",
                p.batch, p.m, p.n, p.k, p.sam, p.sak, p.sbk, p.sbn, p.scm, p.scn
            )
        }
        Kernel::Reduce => {
            let p: k::ReduceParams = params(bytes)?;
            let r = p.red_rank.max(0) as usize;
            format!(
                "out {} red {:?} strides {:?} op {}",
                p.n_out,
                &p.red_dims[..r],
                &p.red_strides[..r],
                p.op
            )
        }
        Kernel::Pointwise => {
            let p: k::PointwiseParams = params(bytes)?;
            let r = p.rank.max(0) as usize;
            format!(
                "n {} dims {:?} in {} ops {:?}",
                p.n,
                &p.dims[..r],
                p.n_in,
                &p.code[..p.n_ops.max(0) as usize]
            )
        }
        Kernel::Softmax => {
            let p: k::SoftmaxParams = params(bytes)?;
            format!("outer {} axis {} inner {}", p.outer, p.axis, p.inner)
        }
        Kernel::Copy => {
            let p: k::CopyParams = params(bytes)?;
            let r = p.rank.max(0) as usize;
            format!(
                "n {} dims {:?} from {:?} strides {:?} -> {:?}",
                p.n,
                &p.dims[..r],
                &p.x_dims[..r],
                &p.vx.strides[..r],
                &p.vy.strides[..r]
            )
        }
        Kernel::Pool => {
            let p: k::PoolParams = params(bytes)?;
            format!(
                "{}x{}x{} -> {}x{} k{}x{} s{}x{} mode {}",
                p.nc, p.h, p.w, p.oh, p.ow, p.kh, p.kw, p.sh, p.sw, p.mode
            )
        }
        Kernel::Resize => {
            let p: k::ResizeParams = params(bytes)?;
            format!(
                "{}x{}x{} -> {}x{} linear {} coord {}",
                p.nc, p.h, p.w, p.oh, p.ow, p.linear, p.coord
            )
        }
        _ => String::new(),
    };
    eprintln!("PROF {kernel:?} {} {shape}", took.as_micros());
    Ok(())
}

/// `my_act` of common.cu.
#[inline(always)]
fn activate(v: f32, code: i32, a: f32, b: f32) -> f32 {
    match code {
        act::RELU => v.max(0.0),
        act::SIGMOID => 1.0 / (1.0 + (-v).exp()),
        act::HARD_SIGMOID => (a * v + b).clamp(0.0, 1.0),
        act::CLIP => v.max(a).min(b),
        act::TANH => v.tanh(),
        act::EXP => v.exp(),
        act::SQRT => v.sqrt(),
        act::RECIP => 1.0 / v,
        act::ABS => v.abs(),
        act::NEG => -v,
        act::LOG => v.ln(),
        act::HARD_SWISH => v * (a * v + b).clamp(0.0, 1.0),
        act::ERF => erf(v),
        act::FLOOR => v.floor(),
        act::CEIL => v.ceil(),
        act::SQUARE => v * v,
        act::RSQRT => 1.0 / v.sqrt(),
        act::LEAKY_RELU => {
            if v >= 0.0 {
                v
            } else {
                a * v
            }
        }
        act::COS => v.cos(),
        act::SIN => v.sin(),
        act::ROUND => v.round_ties_even(),
        act::SILU => v / (1.0 + (-v).exp()),
        act::RSQRT_ADD => 1.0 / (v + a).sqrt(),
        _ => v,
    }
}

/// `erff` (Rust's `f32::erf` is unstable): Numerical Recipes' Chebyshev fit of erfc,
/// evaluated in f64, relative error below 1.2e-7.
fn erf(x: f32) -> f32 {
    let x = x as f64;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = t
        * (-x * x - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    (if x >= 0.0 { 1.0 - y } else { y - 1.0 }) as f32
}

/// `my_bin` of common.cu.
#[inline(always)]
fn combine(x: f32, y: f32, op: i32) -> f32 {
    match op {
        bin::ADD => x + y,
        bin::SUB => x - y,
        bin::MUL => x * y,
        bin::DIV => x / y,
        bin::MAX => x.max(y),
        bin::MIN => x.min(y),
        bin::POW => x.powf(y),
        _ => x,
    }
}

unsafe fn pad(p: &k::PadParams) {
    let (x, y) = (p.x as *const f32, p.y as *mut f32);
    let rank = p.rank as usize;
    for i in 0..p.n.max(0) as usize {
        let mut idx = i;
        let (mut ox, mut mul) = (0isize, 1isize);
        let mut inside = true;
        for d in (0..rank).rev() {
            let n = p.dims[d].max(1) as usize;
            let c = (idx % n) as isize - p.before[d] as isize;
            idx /= n;
            if c < 0 || c >= p.x_dims[d] as isize {
                inside = false;
            }
            ox += c * mul;
            mul *= p.x_dims[d] as isize;
        }
        *y.add(i) = if inside { *x.offset(ox) } else { p.value };
    }
}

/// Every convolution kernel (tiled, 1x1, narrow, depthwise): NCHW, weights `[co, c/group,
/// kh, kw]`, bias and activation in the epilogue. Depthwise convolutions (one input channel
/// per output channel) run [`depthwise`]; the others are one [`gemm`] product per image and
/// group, `W_g[co/group, c/group·kh·kw] · patches`, the patches packed panel by panel from
/// the image, but the 3x3 stride-1 ones with many channels, which run by Winograd
/// ([`winograd::applies`]).
unsafe fn conv(p: &k::ConvParams, threads: usize) {
    let g = Geometry::of(p);
    if g.cg == 1 && g.mg == 1 {
        return depthwise(p, &g, threads);
    }
    let method = Method::of(&g);
    let method = &*method;
    // A batch of at least one image per thread: each thread its own images (its data stays
    // in its core's caches, one dispatch per launch), each product on that thread alone.
    let by_image = threads > 1 && g.n >= threads;
    if by_image {
        let parts = threads.min(g.n);
        return pool::parallel(parts, &|i| {
            conv_images(p, &g, method, 1, pool::range(g.n, parts, i))
        });
    }
    conv_images(p, &g, method, threads, 0..g.n)
}

thread_local! {
    /// The methods of the convolution geometries this thread launched (their padded
    /// layouts' offset tables were 2 % of STR's time when built at every launch).
    static METHODS: std::cell::RefCell<HashMap<[usize; 16], Arc<Method>>> =
        std::cell::RefCell::new(HashMap::new());
}

impl Method {
    /// How convolution `g` runs (decided once per geometry and thread).
    fn of(g: &Geometry) -> Arc<Method> {
        let key = [
            g.n,
            g.c,
            g.h,
            g.w,
            g.co,
            g.oh,
            g.ow,
            g.kh,
            g.kw,
            g.sh,
            g.sw,
            g.dh,
            g.dw,
            g.pt as usize,
            g.pl as usize,
            g.group,
        ];
        if let Some(m) = METHODS.with(|m| m.borrow().get(&key).cloned()) {
            return m;
        }
        let method = Arc::new(if winograd::applies(g) {
            Method::Winograd
        } else if let Some(pd) = lanes::applies(g) {
            Method::Lanes(pd)
        } else {
            Method::Gemm(Padded::worth_it(g))
        });
        METHODS.with(|m| {
            let mut m = m.borrow_mut();
            // (A bound: a model planned at many shapes keeps only recent geometries.)
            if m.len() >= 1024 {
                m.clear();
            }
            m.insert(key, method.clone());
        });
        method
    }
}

/// How a (non-depthwise) convolution runs.
enum Method {
    /// Winograd F(2x2, 3x3) ([`winograd::applies`]).
    Winograd,
    /// Output channels along the lanes, from the padded copy ([`lanes::applies`]).
    Lanes(Padded),
    /// One packed-panel product per image and group, reading the zero-padded copy where
    /// there is one.
    Gemm(Option<Padded>),
}

/// Images `images` of the (non-depthwise) convolution `p`, each product on `threads`.
unsafe fn conv_images(
    p: &k::ConvParams,
    g: &Geometry,
    method: &Method,
    threads: usize,
    images: std::ops::Range<usize>,
) {
    let x = p.x as *const f32;
    let kk = g.cg * g.kh * g.kw;
    let padded = match method {
        Method::Winograd => {
            let u = packed_weights(p.wt, 0, g.mg, kk, Layout::Winograd);
            for b in images {
                winograd::conv_image(p, g, &u, threads, b);
            }
            return;
        }
        Method::Lanes(pd) => {
            let packs: Vec<Arc<Vec<f32>>> = (0..g.group)
                .map(|grp| packed_weights(p.wt, grp * g.mg, g.mg, kk, Layout::Lanes))
                .collect();
            return PADDED.with(|cell| {
                let mut scratch = cell.borrow_mut();
                for b in images {
                    lanes::conv_image(p, g, pd, &packs, threads, b, &mut scratch);
                }
            });
        }
        Method::Gemm(padded) => padded,
    };
    // Each group's weights, packed (looked up once, not per image).
    let deep = padded.as_ref().is_some_and(|pd| pd.deep);
    let packs: Vec<Arc<Vec<f32>>> = (0..g.group)
        .map(|grp| packed_weights(p.wt, grp * g.mg, g.mg, kk, Layout::Strips { deep }))
        .collect();
    // Bands of output rows, each one product (one band unless the padded copy of the whole
    // image would be too large).
    let band = padded.as_ref().map_or(g.oh, |pd| pd.band).max(1);
    // A 1x1 convolution's rows lie a plane apart ([`gemm::packs_scattered_panels`]).
    let packs_pointwise = g.pointwise() && gemm::packs_scattered_panels();
    PADDED.with(|cell| {
        let mut scratch = cell.borrow_mut();
        for b in images {
            for (grp, packed) in packs.iter().enumerate() {
                let xg = x.add((b * g.c + grp * g.cg) * g.h * g.w);
                for oy0 in (0..g.oh).step_by(band) {
                    let pad = padded.as_ref().map(|pd| pd.fill(g, xg, oy0, &mut scratch));
                    // The band's first pixel: panels count from it.
                    let base = oy0 * g.ow;
                    let n = band.min(g.oh - oy0) * g.ow;
                    let xg = gemm::Shared(xg);
                    let pack = |k0: usize,
                                kc: usize,
                                n0: usize,
                                nc: usize,
                                dst: &mut [f32],
                                rows: &mut [*const f32]| {
                        if let (Some(pd), Some(buf)) = (&padded, pad) {
                            pd.rows(g, buf.get(), k0, n0, &mut rows[..kc]);
                            return true;
                        }
                        let n0 = base + n0;
                        if nc == gemm::NR
                            && !packs_pointwise
                            && patch_rows(g, xg.get(), k0, n0, &mut rows[..kc])
                        {
                            return true;
                        }
                        pack_patches(g, xg.get(), k0, kc, n0, nc, dst);
                        false
                    };
                    conv_band(
                        p,
                        g,
                        threads,
                        padded.as_ref(),
                        packed,
                        grp,
                        b,
                        base,
                        n,
                        &pack,
                    );
                }
            }
        }
    })
}

/// The product of output pixels `base .. base + n` (whole rows) of image `b`, group `grp`.
#[allow(clippy::too_many_arguments)]
unsafe fn conv_band(
    p: &k::ConvParams,
    g: &Geometry,
    threads: usize,
    padded: Option<&Padded>,
    packed: &[f32],
    grp: usize,
    b: usize,
    base: usize,
    n: usize,
    pack: &gemm::Pack,
) {
    let (w, y) = (p.wt as *const f32, p.y as *mut f32);
    let bias = p.bias as *const f32;
    let kk = g.cg * g.kh * g.kw;
    let plane = g.oh * g.ow;
    let prob = gemm::Problem {
        m: g.mg,
        n,
        k: kk,
        a: w.add(grp * g.mg * kk),
        a_packed: packed.as_ptr(),
        // Every panel from the padded copy is read in place.
        deep: padded.is_some_and(|pd| pd.deep),
        rs_a: kk,
        c: y.add((b * g.co + grp * g.mg) * plane + base),
        rs_c: plane,
        epilogue: gemm::Epilogue {
            bias: if bias.is_null() {
                bias
            } else {
                bias.add(grp * g.mg)
            },
            // A residual in place (the lowering gave the output the residual's storage) is
            // C's starting value instead.
            res: if p.res == 0 || p.res == p.y {
                std::ptr::null()
            } else {
                (p.res as *const f32).add((b * g.co + grp * g.mg) * plane + base)
            },
            act: p.act,
            a: p.a,
            b: p.b,
            post_mul: p.post_mul,
            post_add: p.post_add,
        },
        // Panels inside output rows, so they read the image in place: every one
        // from the padded copy, else the interior ones of rows of 64 or more.
        row: if padded.is_some() || (g.sw == 1 && g.ow >= gemm::NR && !g.pointwise()) {
            g.ow
        } else {
            0
        },
        accumulate: p.res != 0 && p.res == p.y,
    };
    gemm::run_parallel(threads, &prob, pack);
}

/// Whether a convolution read from its padded copy runs in deep blocks
/// ([`gemm::Problem::deep`]): with few output channels (a few strips per panel, so each
/// block's store and reload of C weighs more against its multiply-adds). On the AVX2 EPYC,
/// STR's fixture went 0.92 -> 0.79 ms; PP-OCR det and the full-size EAST, whose deep-blocked
/// wide convolutions would keep more of B per block than L2 holds, were not faster deep
/// (within the noise either way), so they stay at `KC`.
fn deep_blocks(g: &Geometry) -> bool {
    g.mg <= 32
}

/// The largest padded copy (floats, 8 MiB) a stride-1 convolution makes.
const PADDED_MAX: usize = 1 << 21;

thread_local! {
    /// The zero-padded copy of one image group a stride-1 convolution reads in place.
    static PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A convolution's input copied with its padding made zeros, a band of `band` output rows
/// at a time (the whole image when its copy fits in [`PADDED_MAX`]): `cg` planes `plane`
/// floats apart, each `hp` rows of `wp` floats (for the band from output row `oy0`, padded
/// row `r` is input row `oy0·sh + r − pt`), each row split by column phase into `sw` parts
/// of `wq` (padded column `c` at `(c % sw)·wq + c / sw`, input column `c − pl`), then `NR`
/// floats of slack. Every patch row of every panel inside an output row is then a run of
/// the copy (tap `kx` of output `ox` is padded column `ox·sw + kx·dw`: entry `ox +
/// (kx·dw)/sw` of phase `(kx·dw) % sw`), so nothing is packed, however narrow the image or
/// large the stride, at the price of panels no wider than a row: used where rows fill their
/// vectors well.
struct Padded {
    hp: usize,
    wp: usize,
    wq: usize,
    band: usize,
    plane: usize,
    /// Per patch row `(ci, ky, kx)`, its offset in the copy from its output row's first
    /// pixel, computed once per launch: [`Padded::rows`] adds a panel's start to each
    /// (four integer divisions per patch row and panel were 15 % of STR's time).
    offsets: Vec<usize>,
    /// The products run in deep blocks ([`deep_blocks`]), and their packed weights are
    /// laid out so.
    deep: bool,
}

impl Padded {
    /// The padded layout, when a (not pointwise) convolution with non-negative
    /// padding gains by it: rows of at least one panel (the border panels need no packing),
    /// or few output channels (a packed panel would serve only those few strips) with rows
    /// that fill at least 3/4 of their vector lanes. Many channels on rows narrower than a
    /// panel (STR's 26-pixel rows) keep the packed panels across rows, whose wider tiles
    /// make up for the packing.
    fn worth_it(g: &Geometry) -> Option<Padded> {
        if g.pointwise() || g.pt < 0 || g.pl < 0 || g.ow == 0 || g.oh == 0 {
            return None;
        }
        let tail = g.ow % gemm::NR;
        let lanes = (g.ow / gemm::NR) * gemm::NR + tail.div_ceil(16) * 16;
        let few_channels = g.mg <= 32 && g.ow * 4 >= lanes * 3;
        // Rows of at least one panel have panels inside rows anyway: the copy only spares
        // packing their border panels.
        if tail != 0 && g.ow < gemm::NR && !few_channels {
            return None;
        }
        // A strided convolution packs every panel (a gather per patch row), which few output
        // channels cannot amortise (the EAST fixture's 7x7 stem, 8 channels: 10.8 -> 6.2 ms
        // on an AVX2 EPYC with the copy); with many, on AVX2 the packed panels' contiguous
        // rows are worth their packing (the full-size stem's 64 channels ran 26.6 ms packed,
        // ~31 from the copy's scattered rows), as with a 1x1 convolution's scattered rows
        // ([`gemm::packs_scattered_panels`]). On AVX-512 (Zen 5, 48 KiB L1) the copy is
        // faster there too: full-size EAST, both alternated per inference in one process (one
        // thread, medians of 8), its stem 8.17 -> 6.33 ms (ONNX Runtime: 5.4), its 64-channel
        // 3x3 stride-2 at 120x160 2.51 -> 2.18; the 128- and 256-channel ones level.
        if g.sw > 1 && !few_channels && gemm::packs_scattered_panels() {
            return None;
        }
        Padded::new(g, deep_blocks(g))
    }

    /// The padded layout of `g` (non-negative padding), if its copy fits in
    /// [`PADDED_MAX`] a band of at least 16 rows (or the whole image) at a time.
    fn new(g: &Geometry, deep: bool) -> Option<Padded> {
        if g.pt < 0 || g.pl < 0 || g.ow == 0 || g.oh == 0 {
            return None;
        }
        let wq = ((g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1).div_ceil(g.sw);
        let wp = g.sw * wq;
        let rows_for = |band: usize| (band - 1) * g.sh + (g.kh - 1) * g.dh + 1;
        // Channel planes whose stride is a multiple of 4 KiB would put every channel's rows
        // in the same L1 sets (PP-OCR det's 184x320 planes are 230 x 4 KiB): such a stride
        // is moved off by 256 floats.
        let plane = |hp: usize| {
            let p = hp * wp;
            if (128..=896).contains(&(p % 1024)) {
                p
            } else {
                p + 256
            }
        };
        // The copy is a per-thread scratch buffer kept for the next launch, at most
        // PADDED_MAX: a larger image is copied a band of rows at a time, each band one
        // product (bands of fewer than 16 rows would copy their halo rows too often).
        let mut band = g.oh;
        while band > 16 && g.cg * plane(rows_for(band)) > PADDED_MAX {
            band = band.div_ceil(2);
        }
        let hp = rows_for(band);
        let plane = plane(hp);
        if g.cg * plane > PADDED_MAX {
            return None;
        }
        // Each tap column's offset in its row (divisions once per column, not per patch
        // row: they were 3 % of STR's time).
        let columns: Vec<usize> = (0..g.kw)
            .map(|kx| ((kx * g.dw) % g.sw) * wq + (kx * g.dw) / g.sw)
            .collect();
        let mut offsets = Vec::with_capacity(g.cg * g.kh * g.kw);
        for ci in 0..g.cg {
            for ky in 0..g.kh {
                let row = ci * plane + ky * g.dh * wp;
                offsets.extend(columns.iter().map(|c| row + c));
            }
        }
        Some(Padded {
            hp,
            wp,
            wq,
            band,
            plane,
            offsets,
            deep,
        })
    }

    /// Fills `buf` with the padded copy of the group's `cg` planes at `x` for the band of
    /// output rows from `oy0`.
    ///
    /// # Safety
    /// `x` holds `cg` planes of `h x w` floats.
    unsafe fn fill(
        &self,
        g: &Geometry,
        x: *const f32,
        oy0: usize,
        buf: &mut Vec<f32>,
    ) -> gemm::Shared<*const f32> {
        let len = g.cg * self.plane + gemm::NR;
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        let top = (oy0 * g.sh) as isize - g.pt;
        fill_planes(self, g, x, top, buf);
        buf[len - gemm::NR..len].fill(0.0);
        gemm::Shared(buf.as_ptr())
    }

    /// One pointer per patch row `k0 ..` of the panel from pixel `n0` of the band (inside
    /// one output row): into the band's padded copy at `buf`, each with `NR` floats readable
    /// after it.
    ///
    /// # Safety
    /// `buf` is this layout's copy of the convolution's group.
    unsafe fn rows(
        &self,
        g: &Geometry,
        buf: *const f32,
        k0: usize,
        n0: usize,
        rows: &mut [*const f32],
    ) {
        let (oy, ox0) = (n0 / g.ow, n0 % g.ow);
        let start = buf.add(oy * g.sh * self.wp + ox0);
        for (r, &at) in rows.iter_mut().zip(&self.offsets[k0..]) {
            *r = start.add(at);
        }
    }
}

/// A convolution's sizes, as `usize`.
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    co: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
    pt: isize,
    pl: isize,
    group: usize,
    /// Input and output channels per group.
    cg: usize,
    mg: usize,
}

impl Geometry {
    fn of(p: &k::ConvParams) -> Geometry {
        let [n, c, h, w, co, oh, ow] =
            [p.n, p.c, p.h, p.w, p.co, p.oh, p.ow].map(|v| v.max(0) as usize);
        let [kh, kw, sh, sw, dh, dw] =
            [p.kh, p.kw, p.sh, p.sw, p.dh, p.dw].map(|v| v.max(1) as usize);
        let group = p.group.max(1) as usize;
        Geometry {
            n,
            c,
            h,
            w,
            co,
            oh,
            ow,
            kh,
            kw,
            sh,
            sw,
            dh,
            dw,
            pt: p.pt as isize,
            pl: p.pl as isize,
            group,
            cg: c / group,
            mg: co / group,
        }
    }

    /// A 1x1 convolution without stride or padding: its patch matrix is the image.
    fn pointwise(&self) -> bool {
        self.kh * self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.pt == 0
            && self.pl == 0
            && self.oh == self.h
            && self.ow == self.w
    }
}

/// A row of zeros for the taps of a panel that fall above or below the image.
#[repr(C, align(64))]
struct ZeroRow([f32; gemm::NR]);
static ZERO_ROW: ZeroRow = ZeroRow([0.0; gemm::NR]);

/// For a full panel (`NR` output pixels from `n0`) whose every tap row lies contiguous in
/// the image (stride 1 along the row, no tap left or right of it, the panel inside one
/// output row), one pointer per patch row `k0 ..` into the image (the zero row for taps
/// above or below it); `false` when the panel must be packed.
unsafe fn patch_rows(
    g: &Geometry,
    x: *const f32,
    k0: usize,
    n0: usize,
    rows: &mut [*const f32],
) -> bool {
    let taps = g.kh * g.kw;
    if g.pointwise() {
        for (q, r) in rows.iter_mut().enumerate() {
            *r = x.add((k0 + q) * g.h * g.w + n0);
        }
        return true;
    }
    let (oy, ox0) = (n0 / g.ow, n0 % g.ow);
    let reach = ((g.kw - 1) * g.dw) as isize;
    let first = ox0 as isize - g.pl;
    if g.sw != 1
        || ox0 + gemm::NR > g.ow
        || first < 0
        || first + gemm::NR as isize - 1 + reach >= g.w as isize
    {
        return false;
    }
    for (q, r) in rows.iter_mut().enumerate() {
        let kq = k0 + q;
        let (ci, t) = (kq / taps, kq % taps);
        let (ky, kx) = (t / g.kw, t % g.kw);
        let iy = (oy * g.sh) as isize - g.pt + (ky * g.dh) as isize;
        *r = if iy < 0 || iy >= g.h as isize {
            ZERO_ROW.0.as_ptr()
        } else {
            x.add(ci * g.h * g.w + iy as usize * g.w)
                .offset(first + (kx * g.dw) as isize)
        };
    }
    true
}

isa::multiversion! {
/// Rows `k0 .. k0 + kc` of the image's patch matrix (row `(ci, ky, kx)`, column the output
/// pixel), columns `n0 .. n0 + nc`, into `dst` (`kc` rows of [`gemm::NR`]), zeros outside
/// the image and past `nc`.
unsafe fn pack_patches(
    g: &Geometry,
    x: *const f32,
    k0: usize,
    kc: usize,
    n0: usize,
    nc: usize,
    dst: &mut [f32],
) {
    let taps = g.kh * g.kw;
    let pointwise = g.pointwise();
    for (q, row) in dst.chunks_exact_mut(gemm::NR).take(kc).enumerate() {
        let kq = k0 + q;
        let (ci, t) = (kq / taps, kq % taps);
        let (ky, kx) = (t / g.kw, t % g.kw);
        let plane = x.add(ci * g.h * g.w);
        let row = row.as_mut_ptr();
        zero_short(row.add(nc), gemm::NR - nc);
        if pointwise {
            // SAFETY: n0 + nc <= h·w, the plane's size.
            copy_short(row, plane.add(n0), nc);
            continue;
        }
        let (mut oy, mut ox) = (n0 / g.ow, n0 % g.ow);
        let mut j = 0;
        while j < nc {
            let run = (g.ow - ox).min(nc - j);
            let out = row.add(j);
            let iy = (oy * g.sh) as isize - g.pt + (ky * g.dh) as isize;
            if iy < 0 || iy >= g.h as isize {
                zero_short(out, run);
            } else {
                let src = plane.add(iy as usize * g.w);
                let x0 = (ox * g.sw) as isize - g.pl + (kx * g.dw) as isize;
                if g.sw == 1 {
                    // Columns t with 0 <= x0 + t < w are inside the row.
                    let lo = (-x0).clamp(0, run as isize) as usize;
                    let hi = (g.w as isize - x0).clamp(lo as isize, run as isize) as usize;
                    zero_short(out, lo);
                    copy_short(out.add(lo), src.offset(x0 + lo as isize), hi - lo);
                    zero_short(out.add(hi), run - hi);
                } else {
                    // Columns t with 0 <= x0 + t·sw < w, then a branch-free strided gather.
                    let sw = g.sw as isize;
                    let lo = if x0 < 0 { (-x0 + sw - 1) / sw } else { 0 }.min(run as isize);
                    let hi = ((g.w as isize - x0 + sw - 1) / sw).clamp(lo, run as isize);
                    let (lo, hi) = (lo as usize, hi as usize);
                    zero_short(out, lo);
                    let from = src.offset(x0);
                    if sw == 2 {
                        // SAFETY: columns lo .. hi read x0 + 2t, inside the row.
                        gather_stride2(out.add(lo), from.offset(2 * lo as isize), hi - lo);
                    } else {
                        for t in lo..hi {
                            *out.add(t) = *from.offset(t as isize * sw);
                        }
                    }
                    zero_short(out.add(hi), run - hi);
                }
            }
            j += run;
            ox = 0;
            oy += 1;
        }
    }
}
}

isa::multiversion! {
/// The padded copy of `g`'s `cg` input planes at `x` (`pd`'s layout, padded row `r` input
/// row `top + r`) into `buf`. (Compiled per instruction set so the row copies'
/// short moves inline: called per row, they were 5 % of STR's time.)
unsafe fn fill_planes(pd: &Padded, g: &Geometry, x: *const f32, top: isize, buf: &mut [f32]) {
    let (hp, wp, wq, plane) = (pd.hp, pd.wp, pd.wq, pd.plane);
    // Rows (input rows in range) inside the band's copy.
    let first = (-top).clamp(0, hp as isize) as usize;
    let end = (g.h as isize - top).clamp(first as isize, hp as isize) as usize;
    if g.sw == 1 && g.w < 64 {
        // Narrow rows without stride: each plane zeroed whole, then its rows copied in
        // (per row, the zeros at each end cost as much as the copy: STR's 4x26 planes).
        let (lo, hi) = phase_span(-g.pl, 1, g.w, wp);
        for ci in 0..g.cg {
            let src = x.add(ci * g.h * g.w);
            let dst = buf.as_mut_ptr().add(ci * plane);
            zero_short(dst, hp * wp);
            if hi == lo {
                continue;
            }
            for r in first..end {
                // Entry lo is input column lo - pl (>= 0: the row's copied entries).
                let from = src.add((top + r as isize) as usize * g.w + (lo as isize - g.pl) as usize);
                copy_short(dst.add(r * wp + lo), from, hi - lo);
            }
        }
        return;
    }
    for ci in 0..g.cg {
        let src = x.add(ci * g.h * g.w);
        let dst = &mut buf[ci * plane..ci * plane + hp * wp];
        for (r, row) in dst.chunks_exact_mut(wp).enumerate() {
            let iy = top + r as isize;
            if iy < 0 || iy >= g.h as isize {
                zero_short(row.as_mut_ptr(), row.len());
            } else {
                fill_phases(src.add(iy as usize * g.w), g.w, g.pl, g.sw, wq, row);
            }
        }
    }
}
}

/// Entries `lo .. hi` of a column phase of `phase` floats whose entry `i` is input column
/// `first + i·s` of a `w`-wide row: those inside the row. (Inlined with `s` a constant, the
/// divisions fold: four per row at run time were 4 % of STR's time.)
#[inline(always)]
fn phase_span(first: isize, s: isize, w: usize, phase: usize) -> (usize, usize) {
    let lo = if first < 0 { (-first + s - 1) / s } else { 0 }.min(phase as isize);
    let hi = ((w as isize - first + s - 1) / s).clamp(lo, phase as isize);
    (lo as usize, hi as usize)
}

/// One input row (`w` floats at `src`) zero-padded and split by column phase into `dst`:
/// `sw` parts of `phase` floats, entry `i` of part `ph` input column `i·sw + ph − pl`
/// (zero outside the row). With `sw` = 1 that is the row with `pl` zeros before it.
///
/// # Safety
/// `src` holds `w` floats; `dst` holds `sw·phase`.
#[inline(always)]
unsafe fn fill_phases(
    src: *const f32,
    w: usize,
    pl: isize,
    sw: usize,
    phase: usize,
    dst: &mut [f32],
) {
    for (ph, part) in dst.chunks_exact_mut(phase).enumerate() {
        // Entries i with input column i·sw + ph − pl inside the row: [lo, hi).
        let first = ph as isize - pl;
        let (lo, hi) = match sw {
            1 => phase_span(first, 1, w, phase),
            2 => phase_span(first, 2, w, phase),
            _ => phase_span(first, sw as isize, w, phase),
        };
        // (Masked moves, not `fill` and `copy_from_slice`: their calls into memset and
        // memcpy for a few floats at each end of STR's 26-float rows were 5 % of its time.)
        zero_short(part.as_mut_ptr(), lo);
        zero_short(part.as_mut_ptr().add(hi), phase - hi);
        let from = src.offset(first + (lo * sw) as isize);
        match sw {
            1 => copy_short(part.as_mut_ptr().add(lo), from, hi - lo),
            // SAFETY: entries lo .. hi read columns inside the row.
            2 => gather_stride2(part.as_mut_ptr().add(lo), from, hi - lo),
            _ => {
                for (i, v) in part[lo..hi].iter_mut().enumerate() {
                    *v = *from.add(i * sw);
                }
            }
        }
    }
}

/// A depthwise convolution (`group == c == co`), plane by plane: the input plane copied once
/// into zero-padded rows split by column phase (`sw` phases, so column `ox·sw + kx·dw`
/// of output `ox` and tap `kx` is entry `ox + (kx·dw)/sw` of phase `(kx·dw) % sw`), then
/// every output row in blocks of 16 outputs, each block's sum over every kernel tap kept in
/// one vector register and stored once: no border cases (the padding is zeros), any stride,
/// dilation and padding. Threads split the (image, channel) planes.
unsafe fn depthwise(p: &k::ConvParams, g: &Geometry, threads: usize) {
    let planes = g.n * g.c;
    let work = planes * g.oh * g.ow * g.kh * g.kw;
    let parts = if work < (1 << 20) {
        1
    } else {
        threads.min(planes).max(1)
    };
    pool::parallel(parts, &|i| {
        depthwise_planes(p, g, pool::range(planes, parts, i))
    });
}

thread_local! {
    /// One padded input plane of a depthwise convolution (grown as needed).
    static DW_PLANE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Output columns per depthwise block (one zmm).
const DW_BLOCK: usize = 16;

isa::multiversion! {
unsafe fn depthwise_planes(p: &k::ConvParams, g: &Geometry, planes: std::ops::Range<usize>) {
    let (x, w, y) = (p.x as *const f32, p.wt as *const f32, p.y as *mut f32);
    let bias = p.bias as *const f32;
    let taps = g.kh * g.kw;
    let blocks = g.ow.div_ceil(DW_BLOCK);
    // The padded row: padded column c is input column c − pl; long enough for the last
    // block's last tap, (blocks·16 − 1)·sw + (kw − 1)·dw, and for the whole input row.
    let reach = (blocks * DW_BLOCK).saturating_sub(1) * g.sw + (g.kw - 1) * g.dw + 1;
    let phase = reach.max((g.pl.max(0) as usize + g.w).div_ceil(g.sw) * g.sw).div_ceil(g.sw);
    let row_len = phase * g.sw;
    // Where tap kx reads in a padded row, relative to the block's first output.
    let offsets: Vec<usize> = (0..g.kw)
        .map(|kx| (kx * g.dw) % g.sw * phase + (kx * g.dw) / g.sw)
        .collect();
    DW_PLANE.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < g.h * row_len {
            buf.resize(g.h * row_len, 0.0);
        }
        let pad = &mut buf[..g.h * row_len];
        let mut acc_row = vec![0f32; if AVX512 { 0 } else { blocks * DW_BLOCK }];
        let mut valid: Vec<(usize, *const f32)> = Vec::with_capacity(g.kh);
        for pl in planes {
            let (b, ch) = (pl / g.c, pl % g.c);
            let plane = x.add((b * g.c + ch) * g.h * g.w);
            for (iy, dst) in pad.chunks_exact_mut(row_len).enumerate() {
                let src = plane.add(iy * g.w);
                fill_phases(src, g.w, g.pl, g.sw, phase, dst);
            }
            let wk = std::slice::from_raw_parts(w.add(ch * taps), taps);
            // The output plane, written row by row through the pointer (no slice of it is
            // held while the residual, which may be the same memory, is read).
            let out = y.add((b * g.co + ch) * g.oh * g.ow);
            let b0 = if bias.is_null() { 0.0 } else { *bias.add(ch) };
            for oy in 0..g.oh {
                // The kernel rows inside the image, with their padded input rows.
                valid.clear();
                for ky in 0..g.kh {
                    let iy = (oy * g.sh) as isize - g.pt + (ky * g.dh) as isize;
                    if iy >= 0 && iy < g.h as isize {
                        valid.push((ky, pad.as_ptr().add(iy as usize * row_len)));
                    }
                }
                // The row's outputs, and its residual (laid out as the output, the
                // lowering's contract; maybe the output itself, in place: each is read
                // before it is written).
                let row_out = out.add(oy * g.ow);
                let res = if p.res == 0 {
                    std::ptr::null()
                } else {
                    (p.res as *const f32).add((b * g.co + ch) * g.oh * g.ow + oy * g.ow)
                };
                // On AVX-512 the sums go straight to the row, the residual added on the way;
                // elsewhere through a row buffer, the residual added after.
                let (out_at, res_at, n) = if AVX512 {
                    (row_out, res, g.ow)
                } else {
                    (acc_row.as_mut_ptr(), std::ptr::null(), acc_row.len())
                };
                let row = DwRow {
                    out: out_at,
                    res: res_at,
                    n,
                    b0,
                    valid: &valid,
                    wk,
                    kw: g.kw,
                    offsets: &offsets,
                };
                // Up to eight blocks at a time (independent sums per tap; a row of up to 128
                // outputs in one group), 3- and 5-wide unstrided kernels with their taps
                // unrolled (the loop over a tap table was most of PP-OCR rec's 5x5 time).
                let unit = g.sw == 1 && g.dw == 1;
                let mut blk = 0;
                while blk < blocks {
                    // (The portable loops stay at groups of 4 and a tap table: compiled
                    // for more, the compiler kept their sums in scalars.)
                    let nb = if AVX512 {
                        (blocks - blk).min(8)
                    } else {
                        [1, 1, 2, 2, 4][(blocks - blk).min(4)]
                    };
                    macro_rules! group {
                        ($kw:literal) => {
                            match nb {
                                8 => dw_any::<8, FMA, AVX512, $kw>(&row, blk),
                                7 => dw_any::<7, FMA, AVX512, $kw>(&row, blk),
                                6 => dw_any::<6, FMA, AVX512, $kw>(&row, blk),
                                5 => dw_any::<5, FMA, AVX512, $kw>(&row, blk),
                                4 => dw_any::<4, FMA, AVX512, $kw>(&row, blk),
                                3 => dw_any::<3, FMA, AVX512, $kw>(&row, blk),
                                2 => dw_any::<2, FMA, AVX512, $kw>(&row, blk),
                                _ => dw_any::<1, FMA, AVX512, $kw>(&row, blk),
                            }
                        };
                    }
                    match (AVX512 && unit, g.kw) {
                        (true, 3) => group!(3),
                        (true, 5) => group!(5),
                        _ => group!(0),
                    }
                    blk += nb;
                }
                if !AVX512 {
                    let row = &mut acc_row[..g.ow];
                    if !res.is_null() {
                        for (i, v) in row.iter_mut().enumerate() {
                            *v += *res.add(i);
                        }
                    }
                    std::ptr::copy_nonoverlapping(row.as_ptr(), out.add(oy * g.ow), g.ow);
                }
            }
            // The activation and the affine op over the whole plane at once (per row, their
            // calls cost as much as the taps on PP-OCR rec's 80-pixel rows).
            let plane_out = std::slice::from_raw_parts_mut(out, g.oh * g.ow);
            activate_row(plane_out, p.act, p.a, p.b);
            affine_row(plane_out, p.post_mul, p.post_add);
        }
    })
}
}

/// One depthwise output row's sums for [`dw_group`] and [`dw_group_avx512`]: where they go
/// (`n` floats at `out`) with the residual row `res` (or null), the bias, the kernel rows
/// inside the image with their padded input rows (`valid`), the channel's `kh·kw` weights
/// and each tap column's offset in a padded row.
#[derive(Clone, Copy)]
struct DwRow<'a> {
    out: *mut f32,
    res: *const f32,
    n: usize,
    b0: f32,
    valid: &'a [(usize, *const f32)],
    wk: &'a [f32],
    kw: usize,
    offsets: &'a [usize],
}

/// [`dw_group`], or on AVX-512 (`AVX512`) [`dw_group_avx512`].
#[inline(always)]
unsafe fn dw_any<const NB: usize, const FMA: bool, const AVX512: bool, const KW: usize>(
    row: &DwRow,
    blk: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if AVX512 {
        return dw_group_avx512::<NB, KW>(row, blk);
    }
    dw_group::<NB, FMA, KW>(row, blk)
}

/// [`dw_group`] in AVX-512 intrinsics (one zmm per block; the compiler's vectorisation of
/// the portable loops did not survive this many instantiations: it kept the sums in
/// scalars). Called only from code compiled for AVX-512.
///
/// # Safety
/// As [`dw_group`], on a machine with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn dw_group_avx512<const NB: usize, const KW: usize>(row: &DwRow, blk: usize) {
    use std::arch::x86_64::*;
    let DwRow {
        out,
        res,
        n,
        b0,
        valid,
        wk,
        kw,
        offsets,
    } = *row;
    let mut acc = [_mm512_set1_ps(b0); NB];
    let kw = if KW > 0 { KW } else { kw };
    for &(ky, prow) in valid {
        let wr = wk.as_ptr().add(ky * kw);
        for kx in 0..kw {
            let wv = _mm512_set1_ps(*wr.add(kx));
            let at = if KW > 0 {
                kx
            } else {
                *offsets.get_unchecked(kx)
            };
            // SAFETY: as `dw_group`: every block's 16 floats lie inside the padded row.
            let s = prow.add(blk * DW_BLOCK + at);
            for (q, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(wv, _mm512_loadu_ps(s.add(q * DW_BLOCK)), *a);
            }
        }
    }
    for (q, &a) in acc.iter().enumerate() {
        let base = (blk + q) * DW_BLOCK;
        if base >= n {
            break;
        }
        let len = (n - base).min(DW_BLOCK);
        let m: __mmask16 = if len == DW_BLOCK {
            0xffff
        } else {
            (1u16 << len) - 1
        };
        // SAFETY: the mask keeps to the row's `n` outputs (and residuals).
        let v = if res.is_null() {
            a
        } else {
            _mm512_add_ps(a, _mm512_maskz_loadu_ps(m, res.add(base)))
        };
        _mm512_mask_storeu_ps(out.add(base), m, v);
    }
}

/// Outputs `blk·16 .. (blk + NB)·16` of one depthwise output row into the row buffer
/// `row.out`: the bias, plus every tap of every kernel row in `row.valid` (its index and
/// padded input row), in `NB` independent vector sums (one sum would wait on its own adds: 4
/// cycles per tap), fused multiply-adds when `FMA`, a kernel `KW` wide without stride
/// when `KW` is not 0. (Here `row.res` is null and `row.n` covers every block; [`dw_group_avx512`]
/// takes a residual row, each of its floats read before the same output float is written.)
///
/// # Safety
/// Each padded row holds `phase` entries per column phase with `(blk + NB)·16 − 1 +
/// offsets[kx] < phase` for every tap (`depthwise_planes` sizes `phase` so), `wk` holds
/// `kh·kw` weights, `out` and `res` (if not null) `n` floats.
#[inline(always)]
unsafe fn dw_group<const NB: usize, const FMA: bool, const KW: usize>(row: &DwRow, blk: usize) {
    let DwRow {
        out,
        res,
        n,
        b0,
        valid,
        wk,
        kw,
        offsets,
    } = *row;
    let mut acc = [[b0; DW_BLOCK]; NB];
    // `KW` > 0: a kernel `KW` wide without stride or dilation (tap kx at offset kx).
    let kw = if KW > 0 { KW } else { kw };
    for &(ky, prow) in valid {
        let wr = wk.as_ptr().add(ky * kw);
        for kx in 0..kw {
            let wv = *wr.add(kx);
            let at = if KW > 0 {
                kx
            } else {
                *offsets.get_unchecked(kx)
            };
            let s = prow.add(blk * DW_BLOCK + at);
            for (q, a) in acc.iter_mut().enumerate() {
                let src = std::slice::from_raw_parts(s.add(q * DW_BLOCK), DW_BLOCK);
                for (v, x) in a.iter_mut().zip(src) {
                    // (Fused where the instruction set has it: a multiply and an add each
                    // wait on the last, PP-OCR rec's 5x5 ran at a fifth of the FMA peak.)
                    *v = if FMA { wv.mul_add(*x, *v) } else { *v + wv * x };
                }
            }
        }
    }
    // (Whole blocks, no residual: any element loop over the sums made the compiler keep
    // them in scalars. The caller passes a row buffer and adds the residual after.)
    debug_assert!(res.is_null() && n >= (blk + NB) * DW_BLOCK);
    for (q, a) in acc.iter().enumerate() {
        std::ptr::copy_nonoverlapping(a.as_ptr(), out.add((blk + q) * DW_BLOCK), DW_BLOCK);
    }
}

/// ConvTranspose (`deconv2d_f32`): weights `[co, c, kh, kw]`. One [`gemm`] product per
/// band of input pixels gives every tap's contribution, `cols[(oc, ky, kx), pixel] =
/// Σ_ic w[oc, ic, ky, kx] · x[ic, pixel]`, which is then added into the output pixel the tap
/// reaches; bias first, activation last.
unsafe fn deconv(p: &k::ConvParams, threads: usize) {
    let g = Geometry::of(p);
    let (x, w, y) = (p.x as *const f32, p.wt as *const f32, p.y as *mut f32);
    let bias = p.bias as *const f32;
    let taps = g.kh * g.kw;
    let m = g.co * taps;
    let pixels = g.h * g.w;
    // A[(oc, t), ic] = w[oc, ic, t], rows contiguous.
    let mut a = vec![0f32; m * g.c];
    for oc in 0..g.co {
        for ic in 0..g.c {
            for t in 0..taps {
                a[(oc * taps + t) * g.c + ic] = *w.add((oc * g.c + ic) * taps + t);
            }
        }
    }
    // Bands of whole panels, about 1 MiB of `cols`.
    let band = ((1usize << 18) / m.max(1))
        .max(1)
        .next_multiple_of(gemm::NR)
        .min(pixels.max(1));
    let mut cols = vec![0f32; m * band];
    let plane = g.oh * g.ow;
    // Stride equal to the kernel, no padding or dilation (PP-OCR det's 2x2 stride-2 head):
    // every output pixel gets exactly one tap of one input pixel, so the products are
    // written, interleaved along the row, with the bias and the epilogue, in one pass.
    let exact = g.sh == g.kh
        && g.sw == g.kw
        && g.dh == 1
        && g.dw == 1
        && g.pt == 0
        && g.pl == 0
        && g.oh == g.h * g.kh
        && g.ow == g.w * g.kw;
    for b in 0..g.n {
        let out = std::slice::from_raw_parts_mut(y.add(b * g.co * plane), g.co * plane);
        if !exact {
            for (oc, o) in out.chunks_exact_mut(plane.max(1)).enumerate() {
                o.fill(if bias.is_null() { 0.0 } else { *bias.add(oc) });
            }
        }
        let xb = gemm::Shared(x.add(b * g.c * pixels));
        let mut p0 = 0;
        while p0 < pixels {
            let len = band.min(pixels - p0);
            let pack = |k0: usize,
                        kc: usize,
                        n0: usize,
                        nc: usize,
                        dst: &mut [f32],
                        rows: &mut [*const f32]| {
                let src = |q: usize| xb.get().add((k0 + q) * pixels + p0 + n0);
                if nc == gemm::NR {
                    for (q, r) in rows.iter_mut().take(kc).enumerate() {
                        *r = src(q);
                    }
                    return true;
                }
                for (q, row) in dst.chunks_exact_mut(gemm::NR).take(kc).enumerate() {
                    copy_short(row.as_mut_ptr(), src(q), nc);
                    zero_short(row.as_mut_ptr().add(nc), gemm::NR - nc);
                }
                false
            };
            let prob = gemm::Problem {
                m,
                n: len,
                k: g.c,
                a: a.as_ptr(),
                rs_a: g.c,
                c: cols.as_mut_ptr(),
                rs_c: len,
                epilogue: gemm::Epilogue::NONE,
                row: 0,
                a_packed: std::ptr::null(),
                deep: false,
                accumulate: false,
            };
            gemm::run_parallel(threads, &prob, &pack);
            if exact {
                deconv_exact(p, &g, &cols, len, p0, out);
                p0 += len;
                continue;
            }
            // Scatter: input pixel (iy, ix) and tap (ky, kx) reach output
            // (iy·sh − pt + ky·dh, ix·sw − pl + kx·dw).
            for (r, contrib) in cols.chunks_exact(len).take(m).enumerate() {
                let (oc, t) = (r / taps, r % taps);
                let (ky, kx) = (t / g.kw, t % g.kw);
                let o = &mut out[oc * plane..(oc + 1) * plane];
                let mut i = 0;
                while i < len {
                    let pix = p0 + i;
                    let (iy, ix0) = (pix / g.w, pix % g.w);
                    let run = (g.w - ix0).min(len - i);
                    let oy = (iy * g.sh) as isize - g.pt + (ky * g.dh) as isize;
                    if oy >= 0 && oy < g.oh as isize {
                        let orow = &mut o[oy as usize * g.ow..(oy as usize + 1) * g.ow];
                        for (j, v) in contrib[i..i + run].iter().enumerate() {
                            let ox = ((ix0 + j) * g.sw) as isize - g.pl + (kx * g.dw) as isize;
                            if ox >= 0 && ox < g.ow as isize {
                                orow[ox as usize] += v;
                            }
                        }
                    }
                    i += run;
                }
            }
            p0 += len;
        }
        if !exact {
            activate_row(out, p.act, p.a, p.b);
            affine_row(out, p.post_mul, p.post_add);
        }
    }
}

isa::multiversion! {
/// The band of input pixels `p0 .. p0 + len` of a transposed convolution whose stride is its
/// kernel (no padding, no dilation): `cols[(oc·taps + t)·len + i]` is pixel `p0 + i`'s
/// product for output channel `oc` and tap `t`, the only contribution to its output pixel;
/// written with the bias, the activation and the affine op after it.
///
/// (Compiled per instruction set: built for the baseline, the interleaving of its taps was
/// 2 % of PP-OCR det's time.)
///
/// # Safety
/// `p.bias` is null or holds `co` floats; `out` is one image's output, `cols` the band.
unsafe fn deconv_exact(
    p: &k::ConvParams,
    g: &Geometry,
    cols: &[f32],
    len: usize,
    p0: usize,
    out: &mut [f32],
) {
    let taps = g.kh * g.kw;
    let plane = g.oh * g.ow;
    for oc in 0..g.co {
        let bv = if p.bias == 0 {
            0.0
        } else {
            *(p.bias as *const f32).add(oc)
        };
        let o = &mut out[oc * plane..(oc + 1) * plane];
        for ky in 0..g.kh {
            let r0 = oc * taps + ky * g.kw;
            let mut i = 0;
            while i < len {
                let pix = p0 + i;
                let (iy, ix0) = (pix / g.w, pix % g.w);
                let run = (g.w - ix0).min(len - i);
                let start = (iy * g.kh + ky) * g.ow + ix0 * g.kw;
                let seg = &mut o[start..start + run * g.kw];
                let tap = |kx: usize| &cols[(r0 + kx) * len + i..(r0 + kx) * len + i + run];
                if g.kw == 2 {
                    for ((pair, &a0), &a1) in seg.chunks_exact_mut(2).zip(tap(0)).zip(tap(1)) {
                        pair[0] = a0 + bv;
                        pair[1] = a1 + bv;
                    }
                } else {
                    for kx in 0..g.kw {
                        for (px, &v) in seg.chunks_exact_mut(g.kw).zip(tap(kx)) {
                            px[kx] = v + bv;
                        }
                    }
                }
                activate_row(seg, p.act, p.a, p.b);
                affine_row(seg, p.post_mul, p.post_add);
                i += run;
            }
        }
    }
}
}

/// Batched strided GEMM, `c = act(a · b)`: one [`gemm`] product per batch entry, B packed
/// panel by panel through its strides, A used in place when its rows are contiguous.
unsafe fn matmul(p: &k::GemmParams, threads: usize) {
    // C with unit row stride (a 1x1 convolution as tract writes it: pixels x channels) is
    // computed as its transpose, `Cᵀ = Bᵀ · Aᵀ`, so the long pixel dimension runs along
    // the panels and C's columns are contiguous. So is a product with a few columns and
    // many more rows whose A runs along the rows (a 1x1 convolution into a few channels
    // written pixel-major, EAST's 4-channel geometry head: 19200 x 4 x 8 ran as 3200
    // strips of one 4-column tile, 0.8 ms), its C then through the buffer.
    let few_columns = p.n < 16 && p.m >= 4 * p.n && p.sam == 1 && p.scm != 1;
    if (p.scn != 1 && p.scm == 1) || few_columns {
        let t = k::GemmParams {
            a: p.b,
            b: p.a,
            m: p.n,
            n: p.m,
            sab: p.sbb,
            sam: p.sbn,
            sak: p.sbk,
            sbb: p.sab,
            sbk: p.sak,
            sbn: p.sam,
            scm: p.scn,
            scn: p.scm,
            ..*p
        };
        return matmul_as_is(&t, threads);
    }
    matmul_as_is(p, threads)
}

/// [`matmul`] in the orientation given.
unsafe fn matmul_as_is(p: &k::GemmParams, threads: usize) {
    let [batch, m, n, kk] = [p.batch, p.m, p.n, p.k].map(|v| v.max(0) as usize);
    let s = |v: i32| v as isize;
    let a_direct = p.sak == 1 && p.sam >= 0;
    let c_direct = p.scn == 1 && p.scm >= 0;
    let mut a_buf = if a_direct {
        Vec::new()
    } else {
        vec![0f32; m * kk]
    };
    let mut c_buf = if c_direct {
        Vec::new()
    } else {
        vec![0f32; m * n]
    };
    for z in 0..batch {
        let a = (p.a as *const f32).offset(z as isize * s(p.sab));
        let b = (p.b as *const f32).offset(z as isize * s(p.sbb));
        let c = (p.c as *mut f32).offset(z as isize * s(p.scb));
        let (a_ptr, rs_a) = if a_direct {
            (a, p.sam as usize)
        } else {
            for i in 0..m {
                for q in 0..kk {
                    a_buf[i * kk + q] = *a.offset(i as isize * s(p.sam) + q as isize * s(p.sak));
                }
            }
            (a_buf.as_ptr(), kk)
        };
        let (c_ptr, rs_c) = if c_direct {
            (c, p.scm as usize)
        } else {
            (c_buf.as_mut_ptr(), n)
        };
        let b = gemm::Shared(b);
        let pack = |k0: usize,
                    kc: usize,
                    n0: usize,
                    nc: usize,
                    dst: &mut [f32],
                    rows: &mut [*const f32]| {
            if p.sbn == 1 && nc == gemm::NR {
                for (q, r) in rows.iter_mut().take(kc).enumerate() {
                    *r = b.get().offset((k0 + q) as isize * s(p.sbk) + n0 as isize);
                }
                return true;
            }
            for (q, row) in dst.chunks_exact_mut(gemm::NR).take(kc).enumerate() {
                let src = b
                    .get()
                    .offset((k0 + q) as isize * s(p.sbk) + n0 as isize * s(p.sbn));
                if p.sbn == 1 {
                    copy_short(row.as_mut_ptr(), src, nc);
                } else {
                    for (j, v) in row[..nc].iter_mut().enumerate() {
                        *v = *src.offset(j as isize * s(p.sbn));
                    }
                }
                row[nc..].fill(0.0);
            }
            false
        };
        let prob = gemm::Problem {
            m,
            n,
            k: kk,
            a: a_ptr,
            rs_a,
            c: c_ptr,
            rs_c,
            epilogue: gemm::Epilogue {
                act: p.act,
                ..gemm::Epilogue::NONE
            },
            row: 0,
            a_packed: std::ptr::null(),
            deep: false,
            accumulate: false,
        };
        gemm::run_parallel(threads, &prob, &pack);
        if !c_direct {
            for i in 0..m {
                for j in 0..n {
                    *c.offset(i as isize * s(p.scm) + j as isize * s(p.scn)) = c_buf[i * n + j];
                }
            }
        }
    }
}

isa::multiversion! {
    /// Max, average and sum pooling, row by row: each valid kernel tap folds a strided input
    /// row into the output row; an average divides by the taps inside the image (or all of
    /// them with `count_include_pad`).
    unsafe fn pool_planes(p: &k::PoolParams, planes: std::ops::Range<usize>) {
        let (x, y) = (p.x as *const f32, p.y as *mut f32);
        let [h, w, oh, ow, kh, kw] = [p.h, p.w, p.oh, p.ow, p.kh, p.kw].map(|v| v.max(0) as usize);
        let [sh, sw, dh, dw, pt, pl] = [p.sh, p.sw, p.dh, p.dw, p.pt, p.pl].map(|v| v as isize);
        let is_max = p.mode == k::pool::MAX;
        let init = if is_max { f32::NEG_INFINITY } else { 0.0 };
        // Per output column: the taps inside the row.
        let inside = |ox: usize, kx: usize| {
            let ix = ox as isize * sw - pl + kx as isize * dw;
            (ix >= 0 && ix < w as isize).then_some(ix)
        };
        let col_taps: Vec<usize> = (0..ow).map(|ox| (0..kw).filter(|&kx| inside(ox, kx).is_some()).count()).collect();
        // Output columns whose every tap is inside: [lo, hi).
        let lo = (0..ow).find(|&ox| (0..kw).all(|kx| inside(ox, kx).is_some())).unwrap_or(ow);
        let hi = (lo..ow).find(|&ox| (0..kw).any(|kx| inside(ox, kx).is_none())).unwrap_or(ow);
        // A 1x1 kernel without padding (ResNet v1's stride-2 shortcut, EAST's subsample) only
        // picks inputs: each output row straight from its input row, one pass.
        let (ush, usw) = (sh.max(0) as usize, sw.max(0) as usize);
        if kh == 1 && kw == 1 && pt == 0 && pl == 0 && oh > 0 && ow > 0
            && (oh - 1) * ush < h && (ow - 1) * usw < w
        {
            for plane in planes {
                let xp = x.add(plane * h * w);
                for oy in 0..oh {
                    let (src, dst) = (xp.add(oy * ush * w), y.add((plane * oh + oy) * ow));
                    // SAFETY: output column ox reads input column ox·sw < w of row oy·sh < h.
                    if sw == 2 {
                        gather_stride2(dst, src, ow);
                    } else {
                        for ox in 0..ow {
                            *dst.add(ox) = *src.add(ox * usw);
                        }
                    }
                }
            }
            return;
        }
        // A 2x2 stride-2 max pool inside the image (VGG's and STR's): each output the max of
        // two pairs, read in place (the general path's per-row set-up was most of its time
        // on STR's 100-pixel rows).
        if is_max && kh == 2 && kw == 2 && sh == 2 && sw == 2 && dh == 1 && dw == 1
            && pt == 0 && pl == 0 && 2 * oh <= h && 2 * ow <= w
        {
            for plane in planes {
                let xp = x.add(plane * h * w);
                for oy in 0..oh {
                    // SAFETY: rows 2·oy and 2·oy + 1 < h, columns 2·ox + 1 < w.
                    let a = std::slice::from_raw_parts(xp.add(2 * oy * w), 2 * ow);
                    let b = std::slice::from_raw_parts(xp.add((2 * oy + 1) * w), 2 * ow);
                    let out = std::slice::from_raw_parts_mut(y.add((plane * oh + oy) * ow), ow);
                    for ((o, a), b) in out.iter_mut().zip(a.chunks_exact(2)).zip(b.chunks_exact(2)) {
                        *o = a[0].max(a[1]).max(b[0].max(b[1]));
                    }
                }
            }
            return;
        }
        // Stride 2, no dilation: each input row de-interleaved once (its even and odd columns,
        // the last row's kept for the next output row, which shares it when the kernel is
        // taller than the stride), so every tap folds a contiguous run of one of them.
        let halves = sw == 2 && dw == 1 && hi > lo;
        let (mut even, mut odd) = if halves {
            (vec![0f32; w.div_ceil(2)], vec![0f32; w / 2])
        } else {
            (Vec::new(), Vec::new())
        };
        let mut split_row: Option<(usize, isize)> = None;
        for plane in planes {
            let xp = x.add(plane * h * w);
            let out = std::slice::from_raw_parts_mut(y.add(plane * oh * ow), oh * ow);
            for (oy, row) in out.chunks_exact_mut(ow.max(1)).enumerate() {
                row.fill(init);
                let mut rows = 0;
                for ky in 0..kh {
                    let iy = oy as isize * sh - pt + ky as isize * dh;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    rows += 1;
                    let src = xp.offset(iy * w as isize);
                    if halves && split_row != Some((plane, iy)) {
                        // SAFETY: evens read columns 0, 2, .. < w; odds 1, 3, .. < w.
                        gather_stride2(even.as_mut_ptr(), src, even.len());
                        gather_stride2(odd.as_mut_ptr(), src.add(1), odd.len());
                        split_row = Some((plane, iy));
                    }
                    for kx in 0..kw {
                        let base = lo as isize * sw - pl + kx as isize * dw;
                        let inner = &mut row[lo..hi];
                        if halves {
                            // Interior outputs read base + 2i, inside the row: an even base
                            // is even[base / 2 + i], an odd one odd[(base - 1) / 2 + i].
                            let half = if base % 2 == 0 { &even } else { &odd };
                            let from = (base / 2) as usize;
                            let taps = &half[from..from + inner.len()];
                            if is_max {
                                for (o, &v) in inner.iter_mut().zip(taps) {
                                    *o = o.max(v);
                                }
                            } else {
                                for (o, &v) in inner.iter_mut().zip(taps) {
                                    *o += v;
                                }
                            }
                        } else if sw == 1 {
                            // Interior outputs read base + i, inside the row: a run, folded
                            // in vectors (STR's 2x2 stride 2x1 pool).
                            let taps = std::slice::from_raw_parts(src.offset(base), inner.len());
                            if is_max {
                                for (o, &v) in inner.iter_mut().zip(taps) {
                                    *o = o.max(v);
                                }
                            } else {
                                for (o, &v) in inner.iter_mut().zip(taps) {
                                    *o += v;
                                }
                            }
                        } else if is_max {
                            for (i, o) in inner.iter_mut().enumerate() {
                                *o = o.max(*src.offset(base + i as isize * sw));
                            }
                        } else {
                            for (i, o) in inner.iter_mut().enumerate() {
                                *o += *src.offset(base + i as isize * sw);
                            }
                        }
                        for ox in (0..lo).chain(hi..ow) {
                            if let Some(ix) = inside(ox, kx) {
                                let v = *src.offset(ix);
                                row[ox] = if is_max { row[ox].max(v) } else { row[ox] + v };
                            }
                        }
                    }
                }
                if p.mode == k::pool::AVG {
                    for (ox, v) in row.iter_mut().enumerate() {
                        let count = if p.count_pad != 0 { kh * kw } else { (rows * col_taps[ox]).max(1) };
                        *v /= count as f32;
                    }
                }
            }
        }
    }
}

/// Pooling on up to `threads` threads, each its own (image, channel) planes.
unsafe fn pool(p: &k::PoolParams, threads: usize) {
    let [nc, oh, ow, kh, kw] = [p.nc, p.oh, p.ow, p.kh, p.kw].map(|v| v.max(0) as usize);
    let work = nc.saturating_mul(oh * ow).saturating_mul(kh * kw);
    let parts = if work < (1 << 20) {
        1
    } else {
        threads.min(nc).max(1)
    };
    pool::parallel(parts, &|i| pool_planes(p, pool::range(nc, parts, i)));
}

/// Resize on up to `threads` threads, each its own (image, channel) planes.
unsafe fn resize(p: &k::ResizeParams, threads: usize) {
    let [nc, oh, ow] = [p.nc, p.oh, p.ow].map(|v| v.max(0) as usize);
    let work = nc.saturating_mul(oh * ow).saturating_mul(4);
    let parts = if work < (1 << 20) {
        1
    } else {
        threads.min(nc).max(1)
    };
    pool::parallel(parts, &|i| resize_planes(p, pool::range(nc, parts, i)));
}

/// `my_source_coord` of pool.cu.
fn source_coord(o: usize, scale: f32, in_len: usize, out_len: usize, mode: i32) -> f32 {
    let o = o as f32;
    match mode {
        k::coord::ASYMMETRIC => o / scale,
        k::coord::ALIGN_CORNERS if out_len == 1 => 0.0,
        k::coord::ALIGN_CORNERS => o * (in_len as f32 - 1.0) / (out_len as f32 - 1.0),
        k::coord::PYTORCH_HALF_PIXEL if out_len <= 1 => 0.0,
        _ => (o + 0.5) / scale - 0.5,
    }
}

/// `my_nearest` of pool.cu.
fn nearest(v: f32, mode: i32, len: usize) -> usize {
    let f = v.floor();
    let i = match mode {
        k::nearest::FLOOR => f as i64,
        k::nearest::CEIL => v.ceil() as i64,
        k::nearest::ROUND_PREFER_CEIL if v - f == 0.5 => f as i64 + 1,
        k::nearest::ROUND_PREFER_CEIL => v.round_ties_even() as i64,
        _ if v - f == 0.5 => f as i64,
        _ => v.round_ties_even() as i64,
    };
    i.clamp(0, len as i64 - 1).max(0) as usize
}

isa::multiversion! {
    /// Nearest and linear Resize over planes, the source columns and weights of each output
    /// column computed once per launch, those of each output row once per row.
    unsafe fn resize_planes(p: &k::ResizeParams, planes: std::ops::Range<usize>) {
        let (x, y) = (p.x as *const f32, p.y as *mut f32);
        let [h, w, oh, ow] = [p.h, p.w, p.oh, p.ow].map(|v| v.max(0) as usize);
        if h == 0 || w == 0 {
            return;
        }
        // (first source index, second, weight of the second).
        let taps = |o: usize, scale: f32, len: usize, out_len: usize| -> (usize, usize, f32) {
            let s0 = source_coord(o, scale, len, out_len, p.coord);
            if p.linear == 0 {
                let i = nearest(s0, p.nearest, len);
                return (i, i, 0.0);
            }
            let s = s0.max(0.0).min(len as f32 - 1.0);
            let i0 = s.floor() as usize;
            (i0, (i0 + 1).min(len - 1), s - i0 as f32)
        };
        let cols: Vec<(usize, usize, f32)> = (0..ow).map(|o| taps(o, p.scale_w, w, ow)).collect();
        for plane in planes {
            let xp = x.add(plane * h * w);
            let out = std::slice::from_raw_parts_mut(y.add(plane * oh * ow), oh * ow);
            for (oy, row) in out.chunks_exact_mut(ow.max(1)).enumerate() {
                let (y0, y1, fy) = taps(oy, p.scale_h, h, oh);
                let (r0, r1) = (
                    std::slice::from_raw_parts(xp.add(y0 * w), w),
                    std::slice::from_raw_parts(xp.add(y1 * w), w),
                );
                if p.linear == 0 {
                    for (o, &(c, _, _)) in row.iter_mut().zip(&cols) {
                        *o = r0[c];
                    }
                } else {
                    for (o, &(c0, c1, fx)) in row.iter_mut().zip(&cols) {
                        let top = r0[c0] * (1.0 - fx) + r0[c1] * fx;
                        let bot = r1[c0] * (1.0 - fx) + r1[c1] * fx;
                        *o = top * (1.0 - fy) + bot * fy;
                    }
                }
            }
        }
    }
}

isa::multiversion! {
    /// Softmax and log-softmax. Rows along a contiguous axis (the recogniser's 6625
    /// classes), split over the threads, take the max, the exponentials and their sum in 16
    /// lanes with [`exp_approx`] ([`softmax_row`]); other layouts walk the axis with its
    /// stride.
    unsafe fn softmax(p: &k::SoftmaxParams, threads: usize) {
        let (x, y) = (p.x as *const f32, p.y as *mut f32);
        let [outer, axis, inner] = [p.outer, p.axis, p.inner].map(|v| v.max(0) as usize);
        if inner == 1 && axis > 0 {
            let (xp, yp) = (gemm::Shared(x), gemm::Shared(y));
            // Rows split over the threads (a piece should be worth a pool dispatch).
            let parts = threads.min(outer).min((outer * axis) >> 15).max(1);
            pool::parallel(parts, &|piece| {
                for o in pool::range(outer, parts, piece) {
                    // SAFETY: row `o` of `outer` rows of `axis` floats, in `x` and in `y`;
                    // pieces own disjoint rows of `y`.
                    let xs = std::slice::from_raw_parts(xp.get().add(o * axis), axis);
                    let ys = std::slice::from_raw_parts_mut(yp.get().add(o * axis), axis);
                    softmax_row(xs, ys, p.log != 0);
                }
            });
            return;
        }
        for o in 0..outer {
            for r in 0..inner {
                let base = o * axis * inner + r;
                let at = |j: usize| base + j * inner;
                let mx = (0..axis).fold(f32::NEG_INFINITY, |m, j| m.max(*x.add(at(j))));
                let sum: f32 = (0..axis).map(|j| exp_approx(*x.add(at(j)) - mx)).sum();
                for j in 0..axis {
                    let v = *x.add(at(j)) - mx;
                    *y.add(at(j)) = if p.log != 0 {
                        v - sum.ln()
                    } else {
                        exp_approx(v) / sum
                    };
                }
            }
        }
    }
}

/// Softmax (or log-softmax) of one contiguous row: the max, then the exponentials and their
/// sum 16 lanes at a time (fixed-size chunks, so the loop is straight-line vector code), then
/// the scaling.
#[inline(always)]
fn softmax_row(xs: &[f32], ys: &mut [f32], log: bool) {
    // SAFETY: `xs` holds `xs.len()` contiguous floats.
    let mx =
        unsafe { elementwise::fold(xs.as_ptr(), xs.len(), 1, f32::NEG_INFINITY, |v| v, f32::max) };
    let mut sums = [0f32; 16];
    let mut xc = xs.chunks_exact(16);
    let mut yc = ys.chunks_exact_mut(16);
    for (x16, y16) in (&mut xc).zip(&mut yc) {
        for ((d, &v), s) in y16.iter_mut().zip(x16).zip(sums.iter_mut()) {
            let e = exp_approx(v - mx);
            *d = e;
            *s += e;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for (d, &v) in yc.into_remainder().iter_mut().zip(xc.remainder()) {
        let e = exp_approx(v - mx);
        *d = e;
        sum += e;
    }
    if log {
        let ls = sum.ln();
        for (d, v) in ys.iter_mut().zip(xs) {
            *d = *v - mx - ls;
        }
    } else {
        let inv = 1.0 / sum;
        for d in ys.iter_mut() {
            *d *= inv;
        }
    }
}

/// `e^x` without a call into libm, so loops over it vectorise: `x = n·ln 2 + r` with
/// `|r| <= ln 2 / 2`, `e^r` by its degree-6 Taylor polynomial (truncation below 1.3e-7
/// relative; with the rounding of the reduction, within 4e-7 of libm), `2^n` built in the
/// exponent bits. Below −87.3 (where `e^x` leaves the normal range) it returns about 1e-38
/// instead of a subnormal or zero; NaN stays NaN; above 88.7 it is `inf`.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Selects, not `min`/`max` (which would turn NaN into a bound) and not an early return
    // (which keeps the loops around it from vectorising). At 88.7, `n` is 128 and `2^n` is
    // built as `inf`, so everything above it is `inf` too.
    let x = if x < -87.3 { -87.3 } else { x };
    let x = if x > 88.7 { 88.7 } else { x };
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    f32::from_bits(((n as i32 + 127) as u32) << 23) * p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x3 convolution (padding 1) of `x` (`c` planes of `h x w`) by `wt` on the CPU
    /// device: launched with the weights at `w_dev`, the output downloaded.
    fn conv3x3(dev: &dyn Device, x: DevPtr, w_dev: DevPtr, y: DevPtr, c: i32, co: i32) -> Vec<f32> {
        let (h, w) = (5, 7);
        let p = k::ConvParams {
            x,
            wt: w_dev,
            y,
            n: 1,
            c,
            h,
            w,
            co,
            oh: h,
            ow: w,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            pt: 1,
            pl: 1,
            group: 1,
            post_mul: 1.0,
            ..Default::default()
        };
        dev.launch(0, Kernel::Conv, [1, 1, 1], [1, 1, 1], &k::bytes_of(&p))
            .unwrap();
        let mut out = vec![0f32; (co * h * w) as usize];
        dev.download(0, y, out.as_mut_ptr() as *mut u8, out.len() * 4)
            .unwrap();
        out
    }

    /// The same convolution in f64, directly from the definition.
    fn conv3x3_reference(x: &[f32], wt: &[f32], c: usize, co: usize) -> Vec<f32> {
        let (h, w) = (5usize, 7usize);
        let mut out = vec![0f32; co * h * w];
        for o in 0..co {
            for oy in 0..h {
                for ox in 0..w {
                    let mut s = 0f64;
                    for ci in 0..c {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (oy + ky, ox + kx);
                                if iy < 1 || ix < 1 || iy > h || ix > w {
                                    continue;
                                }
                                let v = x[ci * h * w + (iy - 1) * w + ix - 1] as f64;
                                s += v * wt[((o * c + ci) * 3 + ky) * 3 + kx] as f64;
                            }
                        }
                    }
                    out[(o * h + oy) * w + ox] = s as f32;
                }
            }
        }
        out
    }

    #[test]
    fn a_freed_weight_allocation_takes_its_packed_copy_with_it() {
        let dev = device(1);
        let (c, co) = (5usize, 13usize);
        let x: Vec<f32> = (0..c * 35).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let w1: Vec<f32> = (0..co * c * 9)
            .map(|i| ((i * 5) % 9) as f32 * 0.25)
            .collect();
        let w2: Vec<f32> = w1.iter().map(|v| 1.0 - v).collect();
        let upload = |v: &[f32]| {
            let p = dev.alloc(v.len() * 4).unwrap();
            dev.upload(0, p, v.as_ptr() as *const u8, v.len() * 4)
                .unwrap();
            p
        };
        let (xd, yd) = (upload(&x), dev.alloc(co * 35 * 4).unwrap());
        let wd = upload(&w1);
        let got = conv3x3(dev, xd, wd, yd, c as i32, co as i32);
        let want = conv3x3_reference(&x, &w1, c, co);
        assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-3));
        assert!(
            packs().lock().keys().any(|key| key.0 == wd),
            "the weights were packed"
        );
        dev.free(wd);
        assert!(
            !packs().lock().keys().any(|key| key.0 == wd),
            "freeing dropped the pack"
        );
        // New weights, wherever the allocator puts them (often at the same address): the
        // launch packs them afresh.
        let wd = upload(&w2);
        let got = conv3x3(dev, xd, wd, yd, c as i32, co as i32);
        let want = conv3x3_reference(&x, &w2, c, co);
        assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-3));
        for p in [xd, yd, wd] {
            dev.free(p);
        }
    }

    #[test]
    fn cpu_memory_is_capped_below_the_machine() {
        let cap = super::physical_memory().map(|b| b / 4 * 3);
        if let Some(cap) = cap {
            let err = super::memory().alloc(cap + 1).unwrap_err();
            assert!(
                matches!(err, super::DeviceError::OutOfMemory { bytes, .. } if bytes == cap + 1),
                "{err}"
            );
        }
        // An absurd size is refused, not wrapped around.
        let err = super::memory().alloc(usize::MAX - 8).unwrap_err();
        assert!(
            matches!(err, super::DeviceError::OutOfMemory { bytes, .. } if bytes == usize::MAX - 8),
            "{err}"
        );
        let p = super::memory().alloc(4096).unwrap();
        super::memory().free(p);
    }

    #[test]
    fn exp_approx_is_within_a_few_ulp_of_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (super::exp_approx(x), x.exp());
            assert!(
                ((got - want) / want).abs() < 4e-7,
                "exp({x}) = {got}, libm {want}"
            );
            x += 0.013;
        }
        assert!(super::exp_approx(f32::NAN).is_nan());
        assert_eq!(super::exp_approx(100.0), f32::INFINITY);
        assert!(super::exp_approx(-1000.0) < 1e-37);
    }

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0f32, 0.0f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
        ] {
            assert!(
                (super::erf(x) - want).abs() < 1e-6,
                "erf({x}) = {}",
                super::erf(x)
            );
        }
    }
}
