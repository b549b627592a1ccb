//! The packed-panel SGEMM under the CPU device's convolutions and matrix products.
//!
//! `C[m, n] (+)= A[m, k] · B[k, n]`, then bias per row and the activation in the epilogue.
//! B is never materialised: the caller packs one `KC x NR` panel at a time (a convolution
//! packs image patches straight from the input, "virtual im2col"), up to `NC_PANELS` panels
//! per depth block stay in L2 and each in L1 while every `MR`-row strip of A streams past it.
//! A is read strip-major (`[strip][k][MR]`): a convolution's weights are packed so once, at
//! their first launch (`pack_a_whole`, kept by the CPU device until the weights are freed),
//! other products repack each block per call; the microkernel prefetches A ahead, since a
//! large model's weights come from memory on every inference. The microkernel keeps an
//! `MR x NR` tile of C in registers: on AVX-512 that is 6 rows x 4 zmm = 24 accumulators, 6
//! broadcasts and 4 loads feeding 24 FMAs per `k` (0.42 loads per FMA, see
//! `shared/spec/cpu-kernels.md`); a narrower panel (an output row's tail) runs 1-3 zmm. On
//! AVX2 + FMA (no AVX-512: AMD's Zen 2/3, Intel's client cores) the same panel is computed
//! in 16-column quarters of `MR x 16` (12 ymm accumulators).
//! The instruction set is picked once at run time (`is_x86_feature_detected!`); other
//! machines run the same loops written for the compiler to vectorise.

use super::activate;
use super::elementwise::{activate_row, affine_row};
#[cfg(target_arch = "x86_64")]
use super::isa::copy_short_avx2;
use super::isa::{isa, Isa};
use super::pool::{parallel, range};
use crate::execution::program::kernels::act;

/// Rows of C per microkernel call (broadcast from A).
pub(super) const MR: usize = 6;
/// Columns of C per microkernel call (loaded from the packed panel): 4 zmm.
pub(super) const NR: usize = 64;
/// Depth of one packed panel: `KC x NR` floats = 32 KiB, inside the 48 KiB L1.
pub(super) const KC: usize = 128;
/// The deepest block of a product whose B is read in place ([`Problem::deep`]): no panel
/// is packed, so the depth only sets how often each tile of C is stored and reloaded (and
/// how much of B and A a tile's pass touches).
const KC_DEEP: usize = 384;

/// The depth of a product's blocks: the `k` steps split into as few blocks of at most `KC`
/// (`KC_DEEP` when `deep` on AVX2, see [`Problem::deep`]) as fit, all the same depth but
/// the last, never a short tail block (STR's `k` = 288 ran as 128 + 128 + 32: each block
/// costs every tile of C an extra store and reload, the 32-deep one as much as its steps).
pub(super) fn depth_block(k: usize, deep: bool) -> usize {
    // (Deep blocks were measured on AVX2 only; AVX-512's full-width tiles read all of a
    // panel's rows per step, so a deeper block would spill them from its L1.)
    let max = if deep && isa() == Isa::Avx2 {
        KC_DEEP
    } else {
        KC
    };
    k.div_ceil(k.div_ceil(max).max(1)).max(1)
}

/// Whether a panel whose rows lie far apart in memory (a plane or more: a 1x1 convolution's
/// input channels, Winograd's `V_f` rows over many tiles, a strided convolution's padded copy)
/// is better packed than read in place. On AVX2 machines (32 KiB L1) a 64-column panel of `KC` rows is the whole L1, and
/// rows a plane apart (75 KiB on EAST's 120x160 maps) fall in a few L1 sets, so every strip
/// rereads them from L2; packed, they are one contiguous block. Alternated in one process over
/// the same data (AVX2 EPYC), 1x1-shaped products ran faster packed at every full-size EAST
/// shape tried, medians 256x19200x64 27.6 -> 33.2 and 34.0 -> 55.0 GFLOP/s in two runs,
/// 64x19200x256 29-32 -> 41-49, 512x4800x128 34-35 -> 39-41, 128x4800x512 33 -> 38-40,
/// 256x1200x1024 38-41 -> 44; in the model, EAST's Winograd convolutions against its 1x1 ones
/// 0.41-0.45 -> 0.35-0.39 of their time. On AVX-512 (Zen 5, 48 KiB L1) packing them was
/// slower: full-size EAST, packed and in place alternated per inference in one process, 10
/// pairs, median 196.4 against 190.2 ms (pair ratio 1.04), so AVX-512 reads in place.
pub(super) fn packs_scattered_panels() -> bool {
    isa() == Isa::Avx2
}

/// What the last pass over `k` does to C before storing it.
#[derive(Clone, Copy)]
pub(super) struct Epilogue {
    /// One value per row of C added to it, or null.
    pub bias: *const f32,
    /// A matrix laid out as C (`rs_c` between rows) added to it before the activation (a
    /// residual), or null.
    pub res: *const f32,
    /// An `act::*` code and its two parameters.
    pub act: i32,
    pub a: f32,
    pub b: f32,
    /// Then `post_mul · v + post_add` (a model's scalar affine op after the activation).
    pub post_mul: f32,
    pub post_add: f32,
}

impl Epilogue {
    pub(super) const NONE: Epilogue = Epilogue {
        bias: std::ptr::null(),
        res: std::ptr::null(),
        act: act::NONE,
        a: 0.0,
        b: 0.0,
        post_mul: 1.0,
        post_add: 0.0,
    };

    /// Whether the post-activation affine op does anything.
    fn has_post(&self) -> bool {
        self.post_mul != 1.0 || self.post_add != 0.0
    }
}

/// One product: A row-major with unit column stride (`rs_a` between rows), C likewise
/// (`rs_c`). B comes from the packing callback.
pub(super) struct Problem {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: *const f32,
    pub rs_a: usize,
    pub c: *mut f32,
    pub rs_c: usize,
    pub epilogue: Epilogue,
    /// 0, or a row length of C's columns (a convolution's output width) that no panel
    /// crosses: each row is split into panels of its own, the last one narrower, so the
    /// packing callback may hand out direct row pointers instead of packing.
    pub row: usize,
    /// A already laid out by [`pack_a_whole`] with the same `deep` (a convolution's
    /// weights, packed once), or null: then each block of A is repacked per call.
    pub a_packed: *const f32,
    /// The packing callback reads every panel of B in place (a convolution over its
    /// zero-padded copy), so the depth blocks may be deeper than a packed panel
    /// ([`depth_block`]): on AVX2, STR's 3x3 convolutions over 4x26 planes ran ~15 % faster
    /// in one 288-deep block than in three. A callback that packs anyway gets a buffer of
    /// that depth.
    pub deep: bool,
    /// C already holds values the product adds to (a residual accumulated in place): no
    /// depth block writes it without reading it first.
    pub accumulate: bool,
}

// SAFETY: the pointers name memory the kernel's contract keeps live for the launch; threads
// sharing a problem write disjoint column panels of C.
unsafe impl Sync for Problem {}

/// Runs `p` on up to `threads` threads; small products (below 2^17 multiply-adds, a few
/// microseconds on one core against about one to start a spinning worker) on this thread
/// alone. (The limit was 2^21: STR's fixture, whose convolutions are all under 1 M
/// multiply-adds, then ran on one core whatever the thread count; at 2^17 it went 0.78 ->
/// 0.55-0.62 ms on two threads of the AVX2 EPYC, and the EAST fixture ~10.8 -> 9-10.)
/// Threads split the column panels when there are enough of them (each its own share of C,
/// reading all of A), else the rows of A (each its own share of A and C, packing every
/// panel of B): a convolution over a small image (STR's 4x26 planes: two
/// panels) keeps both cores busy and each reads half the weights.
///
/// # Safety
/// As [`run`].
pub(super) unsafe fn run_parallel(threads: usize, p: &Problem, pack: &Pack) {
    let n_panels = panels(p);
    let n_strips = p.m.div_ceil(MR);
    let macs = p.m * p.n * p.k.max(1);
    let parts = if macs < (1 << 17) { 1 } else { threads.max(1) };
    if parts == 1 {
        return run(p, pack, 0..n_panels, 0..n_strips);
    }
    if n_panels >= 4 * parts || n_strips < 2 * parts {
        let parts = parts.min(n_panels).max(1);
        parallel(parts, &|i| {
            run(p, pack, range(n_panels, parts, i), 0..n_strips)
        });
    } else {
        let parts = parts.min(n_strips);
        parallel(parts, &|i| {
            run(p, pack, 0..n_panels, range(n_strips, parts, i))
        });
    }
}

/// Provides `B[k0 .. k0 + kc, n0 .. n0 + nc]` for one panel, either packed into `panel`
/// (`kc` rows of `NR` floats, zero past `nc`; returns `false`) or, where its rows already
/// lie contiguous in memory, as one pointer per row in `rows` (returns `true`, `panel`
/// untouched): the microkernel then reads B in place, `NR` floats from each pointer (the
/// columns past `nc` are read but not used, so they must be readable memory: a full
/// panel, or a buffer with slack after it).
pub(super) type Pack<'a> =
    dyn Fn(usize, usize, usize, usize, &mut [f32], &mut [*const f32]) -> bool + Sync + 'a;

/// A raw pointer (or anything) the packing callbacks may share with the other threads: the
/// kernels' contract (each pointer names live memory of the size the parameters describe,
/// and threads write disjoint parts of the output) is what makes sharing sound.
#[derive(Clone, Copy)]
pub(super) struct Shared<T>(pub T);
// SAFETY: see above; the pointers are only read, or written in disjoint ranges.
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}
impl<T: Copy> Shared<T> {
    /// The value (a method, so closures capture the whole wrapper, not its raw field).
    pub(super) fn get(self) -> T {
        self.0
    }
}

/// Column panels whose B panels are packed together for one depth block: `NC_PANELS` x
/// 32 KiB stay in L2 while the strips of A stream past them.
const NC_PANELS: usize = 8;
/// Strips of A packed together for one depth block: `MC_STRIPS·MR x KC` floats = 144 KiB.
const MC_STRIPS: usize = 48;

/// A 64-byte aligned `KC x NR` panel.
#[repr(C, align(64))]
struct Panel([f32; KC_DEEP * NR]);

/// One thread's packing buffers: `NC_PANELS` panels of B with their in-place row pointers,
/// and a block of A repacked strip by strip (`[strip][k][MR]`, so the microkernel's
/// broadcasts read one contiguous stream instead of `MR` rows a whole weight row apart).
struct Scratch {
    b: Vec<Panel>,
    rows: Vec<*const f32>,
    direct: [bool; NC_PANELS],
    a: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch {
        b: (0..NC_PANELS).map(|_| Panel([0.0; KC_DEEP * NR])).collect(),
        rows: vec![std::ptr::null(); NC_PANELS * KC_DEEP],
        direct: [false; NC_PANELS],
        a: vec![0.0; MC_STRIPS * MR * KC],
    });
}

/// Number of column panels of the problem.
pub(super) fn panels(p: &Problem) -> usize {
    match p.n.checked_div(p.row) {
        None => p.n.div_ceil(NR),
        Some(rows) => rows * p.row.div_ceil(NR),
    }
}

/// The first column and the width of panel `jp`.
fn panel(p: &Problem, jp: usize) -> (usize, usize) {
    if p.row == 0 {
        let n0 = jp * NR;
        return (n0, NR.min(p.n - n0));
    }
    let per_row = p.row.div_ceil(NR);
    let c = (jp % per_row) * NR;
    ((jp / per_row) * p.row + c, NR.min(p.row - c))
}

/// Computes the column panels `panels` of the `MR`-row strips `strips` of `p` (so threads
/// can split either).
///
/// # Safety
/// `p.a` holds `m` rows of `k` floats `rs_a` apart, `p.c` `m` rows of `n` floats `rs_c`
/// apart, the bias (if any) `m` floats; no other thread writes the same part of C.
pub(super) unsafe fn run(
    p: &Problem,
    pack: &Pack,
    panels: std::ops::Range<usize>,
    strips: std::ops::Range<usize>,
) {
    run_on(isa(), p, pack, panels, strips)
}

/// Repacks rows `r0 .. r1` of A (row stride `rs_a`), depth `k0 .. k0 + kc`, strip by strip
/// into `dst`: row `r0 + s·MR + r`, depth `k0 + q` at `dst[s·MR·kc + q·MR + r]` (rows past
/// `r1` untouched).
///
/// # Safety
/// `a` holds `r1` rows of `k0 + kc` floats `rs_a` apart, and `dst`
/// `(r1 - r0).div_ceil(MR)·MR·kc` floats.
unsafe fn pack_a(
    a: *const f32,
    rs_a: usize,
    r0: usize,
    r1: usize,
    k0: usize,
    kc: usize,
    dst: &mut [f32],
) {
    for (s, i0) in (r0..r1).step_by(MR).enumerate() {
        let rows = MR.min(r1 - i0);
        let strip = &mut dst[s * MR * kc..(s + 1) * MR * kc];
        for r in 0..rows {
            let src = std::slice::from_raw_parts(a.add((i0 + r) * rs_a + k0), kc);
            for (q, &v) in src.iter().enumerate() {
                strip[q * MR + r] = v;
            }
        }
    }
}

/// The layout of a whole `m x k` A (row stride `rs_a`) that [`Problem::a_packed`] takes:
/// depth block by depth block (`KC` deep, the last one shorter), each block strip by strip
/// as [`pack_a`] lays it out, rows past `m` zero. Block `k0 ..` starts at `k0·m'` (`m'` = `m`
/// rounded up to `MR`), so the strips of one depth block are consecutive: the microkernel's
/// broadcasts read the weights as one stream, front to back, which the hardware prefetcher
/// follows (weights that do not fit in the caches come from memory at its speed).
///
/// # Safety
/// `a` holds `m` rows of `k` floats `rs_a` apart.
pub(super) unsafe fn pack_a_whole(
    a: *const f32,
    m: usize,
    k: usize,
    rs_a: usize,
    deep: bool,
) -> Vec<f32> {
    let m_pad = m.div_ceil(MR) * MR;
    let mut dst = vec![0.0; m_pad * k];
    let block = depth_block(k, deep);
    for k0 in (0..k).step_by(block) {
        let kc = block.min(k - k0);
        pack_a(a, rs_a, 0, m, k0, kc, &mut dst[k0 * m_pad..]);
    }
    dst
}

/// Asks for the `NR` floats at each of `rows` (one panel of B read in place) to be brought
/// into L2.
#[inline(always)]
fn prefetch_rows(rows: &[*const f32]) {
    #[cfg(target_arch = "x86_64")]
    for &r in rows {
        // SAFETY: a prefetch never faults, whatever the address.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
            for line in 0..NR / 16 {
                _mm_prefetch::<_MM_HINT_T1>(r.wrapping_add(16 * line) as *const i8);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = rows;
}

/// [`run`] with the instruction set given. For each depth block of `KC`: the B panels of
/// up to `NC_PANELS` output panels packed (or pointed at in place), then each block of up
/// to `MC_STRIPS` strips of A repacked and run against every one of those panels; C is
/// written on the first depth block, accumulated on the others, finished (bias, activation)
/// on the last.
unsafe fn run_on(
    isa: Isa,
    p: &Problem,
    pack: &Pack,
    panels: std::ops::Range<usize>,
    strips: std::ops::Range<usize>,
) {
    if panels.is_empty() || strips.is_empty() {
        return;
    }
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let Scratch { b, rows, direct, a } = &mut *scratch;
        let block = depth_block(p.k, p.deep);
        let mut chunk0 = panels.start;
        while chunk0 < panels.end {
            let chunk = chunk0..panels.end.min(chunk0 + NC_PANELS);
            let mut k0 = 0;
            // k = 0 still writes C (a zero-depth product is the bias alone).
            loop {
                let kc = block.min(p.k - k0);
                for (slot, jp) in chunk.clone().enumerate() {
                    let (n0, nc) = panel(p, jp);
                    direct[slot] = pack(
                        k0,
                        kc,
                        n0,
                        nc,
                        &mut b[slot].0[..kc * NR],
                        &mut rows[slot * KC_DEEP..slot * KC_DEEP + kc],
                    );
                }
                let first = k0 == 0 && !p.accumulate;
                let last = k0 + kc == p.k;
                let mut s0 = strips.start;
                while s0 < strips.end {
                    let s1 = strips.end.min(s0 + MC_STRIPS);
                    let (r0, r1) = (s0 * MR, (s1 * MR).min(p.m));
                    // Strip `s0`'s depth block `k0 ..` (the next strips' follow it, `MR·kc`
                    // apart): in the prepacked A, or in this block repacked now.
                    let a0 = if p.a_packed.is_null() {
                        let need = (s1 - s0) * MR * kc;
                        if a.len() < need {
                            a.resize(need, 0.0);
                        }
                        pack_a(p.a, p.rs_a, r0, r1, k0, kc, a);
                        a.as_ptr()
                    } else {
                        p.a_packed.add(k0 * p.m.div_ceil(MR) * MR + r0 * kc)
                    };
                    for (slot, jp) in chunk.clone().enumerate() {
                        let (n0, nc) = panel(p, jp);
                        // A panel read in place comes from wherever the image is (often
                        // memory): its rows are `kc` short streams the hardware prefetcher
                        // does not follow, so the next one is fetched into L2 now.
                        if s0 == strips.start && slot + 1 < chunk.len() && direct[slot + 1] {
                            let next = (slot + 1) * KC_DEEP;
                            prefetch_rows(&rows[next..next + kc]);
                        }
                        for i0 in (r0..r1).step_by(MR) {
                            let tile = Tile {
                                kc,
                                a: a0.add((i0 - r0) * kc),
                                b: b[slot].0.as_ptr(),
                                b_rows: if direct[slot] {
                                    rows.as_ptr().add(slot * KC_DEEP)
                                } else {
                                    std::ptr::null()
                                },
                                col0: 0,
                                c: p.c.add(i0 * p.rs_c + n0),
                                res: if p.epilogue.res.is_null() {
                                    p.epilogue.res
                                } else {
                                    p.epilogue.res.add(i0 * p.rs_c + n0)
                                },
                                rs_c: p.rs_c,
                                cols: nc,
                                first,
                                epilogue: last.then_some(p.epilogue),
                                row0: i0,
                            };
                            micro(isa, MR.min(r1 - i0), &tile);
                        }
                    }
                    s0 = s1;
                }
                k0 += kc;
                if k0 >= p.k {
                    break;
                }
            }
            chunk0 = chunk.end;
        }
    })
}

/// One microkernel call: `rows x cols` of C from `kc` steps of A's strip and the panel.
#[derive(Clone, Copy)]
struct Tile {
    kc: usize,
    /// A's strip, packed: depth step `p`, row `r` at `a[p·MR + r]`.
    a: *const f32,
    /// The packed panel, or null with `b_rows` set.
    b: *const f32,
    /// One pointer per row of B read in place (`NR` floats each), or null.
    b_rows: *const *const f32,
    /// The tile's first column in the panel (B's rows are read from there; 0 but in the
    /// AVX2 microkernel's quarters).
    col0: usize,
    c: *mut f32,
    /// The epilogue's residual at the tile (laid out as C), or null.
    res: *const f32,
    rs_c: usize,
    cols: usize,
    /// C is written, not accumulated into.
    first: bool,
    /// Applied when this is the last pass over `k`.
    epilogue: Option<Epilogue>,
    /// Index of the tile's first row in the problem (for the bias).
    row0: usize,
}

unsafe fn micro(isa: Isa, rows: usize, t: &Tile) {
    let direct = !t.b_rows.is_null();
    macro_rules! by_rows {
        ($f:ident $(, $v:literal)?) => {
            match (rows, direct) {
                (6, false) => $f::<6, false $(, $v)?>(t),
                (5, false) => $f::<5, false $(, $v)?>(t),
                (4, false) => $f::<4, false $(, $v)?>(t),
                (3, false) => $f::<3, false $(, $v)?>(t),
                (2, false) => $f::<2, false $(, $v)?>(t),
                (_, false) => $f::<1, false $(, $v)?>(t),
                (6, true) => $f::<6, true $(, $v)?>(t),
                (5, true) => $f::<5, true $(, $v)?>(t),
                (4, true) => $f::<4, true $(, $v)?>(t),
                (3, true) => $f::<3, true $(, $v)?>(t),
                (2, true) => $f::<2, true $(, $v)?>(t),
                (_, true) => $f::<1, true $(, $v)?>(t),
            }
        };
    }
    match isa {
        // A narrow panel (an output row's tail, a small image's last pixels) computes only
        // the zmm columns it has: 1-3 of the 4.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => match t.cols.div_ceil(16) {
            1 => by_rows!(micro_avx512, 1),
            2 => by_rows!(micro_avx512, 2),
            3 => by_rows!(micro_avx512, 3),
            _ => by_rows!(micro_avx512, 4),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => by_rows!(micro_avx2),
        _ => by_rows!(micro_portable),
    }
    // Activations without a vector form run over the stored, cache-hot tile.
    if let Some(e) = t.epilogue {
        if !vector_act(e.act) {
            for r in 0..rows {
                let row = std::slice::from_raw_parts_mut(t.c.add(r * t.rs_c), t.cols);
                activate_row(row, e.act, e.a, e.b);
                if e.has_post() {
                    affine_row(row, e.post_mul, e.post_add);
                }
            }
        }
    }
}

/// Activations the microkernels apply in registers.
pub(super) fn vector_act(code: i32) -> bool {
    matches!(
        code,
        act::NONE | act::RELU | act::CLIP | act::HARD_SIGMOID | act::HARD_SWISH | act::LEAKY_RELU
    )
}

/// The portable microkernel: the compiler keeps `acc` in vector registers where it can.
#[inline(always)]
unsafe fn micro_generic<const R: usize, const D: bool>(t: &Tile) {
    let mut acc = [[0f32; NR]; R];
    for p in 0..t.kc {
        let b = std::slice::from_raw_parts(b_row::<D>(t, p), NR);
        for (r, row) in acc.iter_mut().enumerate() {
            let a = *t.a.add(p * MR + r);
            for (c, v) in row.iter_mut().zip(b) {
                *c += a * v;
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        let c = std::slice::from_raw_parts_mut(t.c.add(r * t.rs_c), t.cols);
        let bias = match t.epilogue {
            Some(e) if !e.bias.is_null() => *e.bias.add(t.row0 + r),
            _ => 0.0,
        };
        for (q, (dst, &v)) in c.iter_mut().zip(row).enumerate() {
            let mut v = if t.first { v } else { v + *dst };
            if let Some(e) = t.epilogue {
                v += bias;
                if !t.res.is_null() {
                    v += *t.res.add(r * t.rs_c + q);
                }
                if vector_act(e.act) {
                    v = activate(v, e.act, e.a, e.b) * e.post_mul + e.post_add;
                }
            }
            *dst = v;
        }
    }
}

/// Row `p` of the tile's B: in place (`D`) or in the packed panel.
#[inline(always)]
unsafe fn b_row<const D: bool>(t: &Tile, p: usize) -> *const f32 {
    if D {
        (*t.b_rows.add(p)).add(t.col0)
    } else {
        t.b.add(p * NR + t.col0)
    }
}

unsafe fn micro_portable<const R: usize, const D: bool>(t: &Tile) {
    micro_generic::<R, D>(t)
}

/// The AVX2 + FMA microkernel. Sixteen ymm registers hold no `MR x NR` tile (48 would be
/// needed), so the panel is computed a 16-column quarter at a time: `R x 16` accumulators
/// (12 ymm at `R` = 6), 2 loads of B and `R` broadcasts of A per depth step (BLIS's Haswell
/// shape), the strip of A (`MR·kc` floats, 3 KiB) reread from L1 for each quarter. (Running
/// each quarter down every strip of a block instead, so its 8 KiB of B stay in L1, was
/// slower on a 32 KiB-L1 EPYC: 60-71 against 69-75 GFLOP/s at best of 4x200.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_avx2<const R: usize, const D: bool>(t: &Tile) {
    // The stack copies of a narrow quarter's rows (see the epilogue).
    let mut tmp = ([0f32; 16], [0f32; 16]);
    for q in 0..t.cols.div_ceil(16) {
        let col0 = 16 * q;
        let cols = (t.cols - col0).min(16);
        // The quarter as a tile of its own: B's rows, C and the residual from its column.
        let t = &Tile {
            col0: t.col0 + col0,
            c: t.c.add(col0),
            res: if t.res.is_null() {
                t.res
            } else {
                t.res.add(col0)
            },
            cols,
            ..*t
        };
        // A quarter of 8 columns or fewer (a panel's tail) computes one ymm per row.
        if cols > 8 {
            avx2_quarter::<R, D, 2>(t, q == 0, &mut tmp);
        } else {
            avx2_quarter::<R, D, 1>(t, q == 0, &mut tmp);
        }
    }
}

/// One quarter of [`micro_avx2`]: `R x 8·W` columns (`t.cols <= 8·W`), prefetching A ahead
/// when `first_quarter` (A comes from memory or L2 on the first quarter only).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn avx2_quarter<const R: usize, const D: bool, const W: usize>(
    t: &Tile,
    first_quarter: bool,
    (tmp_c, tmp_r): &mut ([f32; 16], [f32; 16]),
) {
    use std::arch::x86_64::*;
    let cols = t.cols;
    for r in 0..R {
        // SAFETY: a prefetch never faults, whatever the address.
        _mm_prefetch::<_MM_HINT_ET0>(t.c.wrapping_add(r * t.rs_c) as *const i8);
    }
    let mut acc = [[_mm256_setzero_ps(); W]; R];
    let mut a = t.a;
    for p in 0..t.kc {
        // SAFETY: each row of B (packed, or in place for a full panel) holds NR = 64
        // floats, of which the quarter's 8·W are read; A's packed strip has MR floats per
        // depth step.
        let b = b_row::<D>(t, p);
        // A comes from memory or L2 on the first quarter only.
        if first_quarter {
            _mm_prefetch::<_MM_HINT_T0>(a.add(A_AHEAD) as *const i8);
        }
        let b0 = _mm256_loadu_ps(b);
        // (Read only when W = 2: the quarter has more than 8 columns.)
        let b1 = if W == 2 {
            _mm256_loadu_ps(b.add(8))
        } else {
            b0
        };
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*a.add(r));
            row[0] = _mm256_fmadd_ps(av, b0, row[0]);
            if W == 2 {
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
        }
        a = a.add(MR);
    }
    let zero = _mm256_setzero_ps();
    let one = _mm256_set1_ps(1.0);
    for (r, row) in acc.iter().enumerate() {
        let dst = t.c.add(r * t.rs_c);
        let res = if t.res.is_null() {
            t.res
        } else {
            t.res.add(r * t.rs_c)
        };
        // A quarter with fewer than 8·W columns goes through a stack copy: the vector
        // code then reads and writes only that (C and the residual are copied in and
        // the tile's columns copied out).
        let (c_at, r_at) = if cols == 8 * W {
            (dst, res)
        } else {
            // (Masked moves: a call into memcpy was 7 % of STR's time.)
            if !t.first {
                copy_short_avx2(tmp_c.as_mut_ptr(), dst, cols);
            }
            if !res.is_null() && t.epilogue.is_some() {
                copy_short_avx2(tmp_r.as_mut_ptr(), res, cols);
            }
            (tmp_c.as_mut_ptr(), tmp_r.as_ptr())
        };
        let bias = match t.epilogue {
            Some(e) if !e.bias.is_null() => _mm256_set1_ps(*e.bias.add(t.row0 + r)),
            _ => zero,
        };
        for (j, &v) in row.iter().enumerate() {
            // SAFETY: `c_at` is the tile's row (8·W columns here) or the stack copy.
            let at = c_at.add(8 * j);
            let mut v = if t.first {
                v
            } else {
                _mm256_add_ps(v, _mm256_loadu_ps(at))
            };
            if let Some(e) = t.epilogue {
                v = _mm256_add_ps(v, bias);
                if !t.res.is_null() {
                    v = _mm256_add_ps(v, _mm256_loadu_ps(r_at.add(8 * j)));
                }
                let (ea, eb) = (_mm256_set1_ps(e.a), _mm256_set1_ps(e.b));
                v = match e.act {
                    act::RELU => _mm256_max_ps(v, zero),
                    act::CLIP => _mm256_min_ps(_mm256_max_ps(v, ea), eb),
                    act::HARD_SIGMOID => {
                        _mm256_min_ps(_mm256_max_ps(_mm256_fmadd_ps(ea, v, eb), zero), one)
                    }
                    act::HARD_SWISH => _mm256_mul_ps(
                        v,
                        _mm256_min_ps(_mm256_max_ps(_mm256_fmadd_ps(ea, v, eb), zero), one),
                    ),
                    act::LEAKY_RELU => {
                        let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(v, zero);
                        _mm256_blendv_ps(v, _mm256_mul_ps(v, ea), neg)
                    }
                    _ => v,
                };
                if vector_act(e.act) {
                    v = _mm256_fmadd_ps(v, _mm256_set1_ps(e.post_mul), _mm256_set1_ps(e.post_add));
                }
            }
            _mm256_storeu_ps(at, v);
        }
        if cols < 8 * W {
            copy_short_avx2(dst, tmp_c.as_ptr(), cols);
        }
    }
}

/// How far ahead (in floats) the AVX-512 and AVX2 microkernels prefetch A.
#[cfg(target_arch = "x86_64")]
const A_AHEAD: usize = 256;

/// The AVX-512 microkernel: `R x 16·V` accumulators in zmm registers (`V` = 4 for a full
/// panel, fewer for a narrow one: `cols <= 16·V`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn micro_avx512<const R: usize, const D: bool, const V: usize>(t: &Tile) {
    use std::arch::x86_64::*;
    // The tile of C is stored (and, past the first depth block, read) after the loop: ask
    // for its lines now, for writing, so their misses overlap the multiply-adds. A large
    // output's rows lie a whole image row apart in memory, too many streams for the
    // hardware prefetcher, and a store that misses every cache otherwise stalls there.
    for r in 0..R {
        for j in 0..V {
            // SAFETY: a prefetch never faults, whatever the address.
            _mm_prefetch::<_MM_HINT_ET0>(t.c.wrapping_add(r * t.rs_c + 16 * j) as *const i8);
            if t.epilogue.is_some() && !t.res.is_null() {
                _mm_prefetch::<_MM_HINT_T0>(t.res.wrapping_add(r * t.rs_c + 16 * j) as *const i8);
            }
        }
    }
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    let mut a = t.a;
    for p in 0..t.kc {
        // SAFETY: each row of B (packed, or in place for a full panel) holds NR = 64
        // floats, of which the first 16·V are read; A's packed strip MR floats per step.
        let b = b_row::<D>(t, p);
        // A streams from memory on its first use (a large conv's weights are not in any
        // cache): fetch ~1 KiB ahead, past the next few steps (prefetches never fault).
        _mm_prefetch::<_MM_HINT_T0>(a.add(A_AHEAD) as *const i8);
        let mut bv = [_mm512_setzero_ps(); V];
        for (j, v) in bv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(b.add(16 * j));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(r));
            for (c, v) in row.iter_mut().zip(bv) {
                *c = _mm512_fmadd_ps(av, v, *c);
            }
        }
        a = a.add(MR);
    }
    let mask = |j: usize| -> __mmask16 {
        let lo = 16 * j;
        if t.cols >= lo + 16 {
            0xffff
        } else if t.cols <= lo {
            0
        } else {
            ((1u32 << (t.cols - lo)) - 1) as __mmask16
        }
    };
    let zero = _mm512_setzero_ps();
    for (r, row) in acc.iter().enumerate() {
        let c = t.c.add(r * t.rs_c);
        let bias = match t.epilogue {
            Some(e) if !e.bias.is_null() => _mm512_set1_ps(*e.bias.add(t.row0 + r)),
            _ => zero,
        };
        for (j, &v) in row.iter().enumerate() {
            let m = mask(j);
            if m == 0 {
                continue;
            }
            // SAFETY: the mask keeps every access inside the tile's `cols` columns.
            let dst = c.add(16 * j);
            let mut v = if t.first {
                v
            } else {
                _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, dst))
            };
            if let Some(e) = t.epilogue {
                v = _mm512_add_ps(v, bias);
                if !t.res.is_null() {
                    // SAFETY: the residual has C's layout; the mask keeps to the tile.
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, t.res.add(r * t.rs_c + 16 * j)));
                }
                v = finish_avx512(v, &e);
            }
            _mm512_mask_storeu_ps(dst, m, v);
        }
    }
}

/// The activation of `e` (when it has a vector form, [`vector_act`]) and its affine op,
/// applied to `v`, which holds the bias and residual already.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
pub(super) unsafe fn finish_avx512(
    v: std::arch::x86_64::__m512,
    e: &Epilogue,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    if !vector_act(e.act) {
        return v;
    }
    let zero = _mm512_setzero_ps();
    let one = _mm512_set1_ps(1.0);
    let (ea, eb) = (_mm512_set1_ps(e.a), _mm512_set1_ps(e.b));
    let v = match e.act {
        act::RELU => _mm512_max_ps(v, zero),
        act::CLIP => _mm512_min_ps(_mm512_max_ps(v, ea), eb),
        act::HARD_SIGMOID => _mm512_min_ps(_mm512_max_ps(_mm512_fmadd_ps(ea, v, eb), zero), one),
        act::HARD_SWISH => _mm512_mul_ps(
            v,
            _mm512_min_ps(_mm512_max_ps(_mm512_fmadd_ps(ea, v, eb), zero), one),
        ),
        act::LEAKY_RELU => {
            let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, zero);
            _mm512_mask_mul_ps(v, neg, v, ea)
        }
        _ => v,
    };
    _mm512_fmadd_ps(v, _mm512_set1_ps(e.post_mul), _mm512_set1_ps(e.post_add))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random fill in [-1, 1).
    fn fill(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// A row-major `B` (`k x n`) as a packing callback: in place for full panels when
    /// `direct`, packed otherwise.
    fn source(
        b: &[f32],
        n: usize,
        direct: bool,
    ) -> impl Fn(usize, usize, usize, usize, &mut [f32], &mut [*const f32]) -> bool + Sync + '_
    {
        let at = Shared(b.as_ptr());
        move |k0, kc, n0, nc, dst, rows| {
            if direct && nc == NR {
                for (q, r) in rows.iter_mut().take(kc).enumerate() {
                    *r = unsafe { at.get().add((k0 + q) * n + n0) };
                }
                return true;
            }
            for q in 0..kc {
                for j in 0..NR {
                    dst[q * NR + j] = if j < nc {
                        b[(k0 + q) * n + n0 + j]
                    } else {
                        0.0
                    };
                }
            }
            false
        }
    }

    fn check(isa: Isa, m: usize, n: usize, k: usize, ep_act: i32, direct: bool) {
        let a = fill(m * k, 1);
        let b = fill(k * n, 2);
        let bias = fill(m, 3);
        let res = fill(m * n, 4);
        let mut c = vec![f32::NAN; m * n];
        let pack = source(&b, n, direct);
        let p = Problem {
            m,
            n,
            k,
            a: a.as_ptr(),
            rs_a: k,
            c: c.as_mut_ptr(),
            rs_c: n,
            epilogue: Epilogue {
                bias: bias.as_ptr(),
                res: res.as_ptr(),
                act: ep_act,
                a: 0.2,
                b: 0.5,
                post_mul: 1.5,
                post_add: -0.25,
            },
            row: 0,
            a_packed: std::ptr::null(),
            // B read in place may run in deep blocks (on AVX2): 3·KC + 7 is two of them.
            deep: direct,
            accumulate: false,
        };
        let prepacked = unsafe { pack_a_whole(a.as_ptr(), m, k, k, direct) };
        let no_res = vec![0.0; m * n];
        for (a_packed, with_res) in [
            (std::ptr::null(), false),
            (prepacked.as_ptr(), false),
            (prepacked.as_ptr(), true),
        ] {
            c.fill(f32::NAN);
            let mut p = Problem { a_packed, ..p };
            if !with_res {
                p.epilogue.res = std::ptr::null();
            }
            unsafe { run_on(isa, &p, &pack, 0..panels(&p), 0..m.div_ceil(MR)) };
            let r = if with_res { &res } else { &no_res };
            compare(isa, &p, &a, &b, &bias, r, &c, ep_act);
        }
        // The residual accumulated in place: C starts as the residual, every depth block
        // adds to it (none writes it first).
        c.copy_from_slice(&res);
        let mut p = Problem {
            a_packed: prepacked.as_ptr(),
            accumulate: true,
            ..p
        };
        p.epilogue.res = std::ptr::null();
        unsafe { run_on(isa, &p, &pack, 0..panels(&p), 0..m.div_ceil(MR)) };
        compare(isa, &p, &a, &b, &bias, &res, &c, ep_act);
    }

    /// `c` against `act(a · b + bias + res) · 1.5 - 0.25` in f64.
    #[allow(clippy::too_many_arguments)]
    fn compare(
        isa: Isa,
        p: &Problem,
        a: &[f32],
        b: &[f32],
        bias: &[f32],
        res: &[f32],
        c: &[f32],
        ep_act: i32,
    ) {
        let (m, n, k) = (p.m, p.n, p.k);
        for i in 0..m {
            for j in 0..n {
                let mut s = bias[i] as f64 + res[i * n + j] as f64;
                for q in 0..k {
                    s += a[i * k + q] as f64 * b[q * n + j] as f64;
                }
                let want = activate(s as f32, ep_act, 0.2, 0.5) * 1.5 - 0.25;
                let got = c[i * n + j];
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{isa:?} {m}x{n}x{k} act {ep_act} [{i},{j}]: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn every_instruction_set_matches_a_float64_product() {
        let mut isas = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                isas.push(Isa::Avx2);
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                isas.push(Isa::Avx512);
            }
        }
        for isa in isas {
            // Row tails 1..5, column tails (1, 2 and 3 of a panel's 4 vectors), depth across
            // several panels and below one.
            for (m, n, k) in [
                (1, 1, 1),
                (7, 65, 3),
                (13, 130, 300),
                (6, 64, 128),
                (5, 17, 129),
                (9, 104, 200),
            ] {
                for code in [
                    act::NONE,
                    act::RELU,
                    act::HARD_SWISH,
                    act::LEAKY_RELU,
                    act::SIGMOID,
                ] {
                    check(isa, m, n, k, code, false);
                    check(isa, m, n, k, code, true);
                }
            }
        }
    }

    #[test]
    fn blocks_of_strips_and_panels_cover_a_large_product() {
        // More rows than one block of strips (288), more panels than one block (8), depth
        // over three blocks, a row tail and a column tail.
        for isa in [Isa::Portable, isa()] {
            check(isa, 301, 9 * NR + 5, 3 * KC + 7, act::RELU, false);
            check(isa, 301, 9 * NR + 5, 3 * KC + 7, act::NONE, true);
        }
    }

    #[test]
    fn the_driver_covers_every_panel() {
        // Two rows of 130 columns: panels of 64, 64 and 2 in each.
        let (m, n, k, row) = (9, 260, 140, 130);
        let a = fill(m * k, 4);
        let b = fill(k * n, 5);
        let mut c = vec![f32::NAN; m * n];
        let pack = source(&b, n, true);
        let p = Problem {
            m,
            n,
            k,
            a: a.as_ptr(),
            rs_a: k,
            c: c.as_mut_ptr(),
            rs_c: n,
            epilogue: Epilogue::NONE,
            row,
            a_packed: std::ptr::null(),
            deep: false,
            accumulate: false,
        };
        assert_eq!(panels(&p), 6);
        // Split by panels, then by strips of rows, as the threads would.
        unsafe {
            run(&p, &pack, 0..1, 0..2);
            run(&p, &pack, 1..panels(&p), 0..2);
        }
        for i in 0..m {
            for j in 0..n {
                let s: f32 = (0..k).map(|q| a[i * k + q] * b[q * n + j]).sum();
                assert!((c[i * n + j] - s).abs() < 1e-3, "[{i},{j}]");
            }
        }
        c.fill(f32::NAN);
        unsafe {
            run(&p, &pack, 0..panels(&p), 0..1);
            run(&p, &pack, 0..panels(&p), 1..2);
        }
        for i in 0..m {
            for j in 0..n {
                let s: f32 = (0..k).map(|q| a[i * k + q] * b[q * n + j]).sum();
                assert!((c[i * n + j] - s).abs() < 1e-3, "[{i},{j}]");
            }
        }
    }
}
