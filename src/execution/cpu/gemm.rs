//! The packed-panel SGEMM under the CPU device's convolutions and matrix products.
//!
//! `C[m, n] (+)= A[m, k] · B[k, n]`, then bias per row and the activation in the epilogue.
//! B is never materialised: the caller packs one `KC x NR` panel at a time (a convolution
//! packs image patches straight from the input, "virtual im2col"), and the panel stays in L1
//! while every `MR`-row strip of A streams past it. The microkernel keeps an `MR x NR` tile
//! of C in registers: on AVX-512 that is 6 rows x 4 zmm = 24 accumulators, 6 broadcasts and
//! 4 loads feeding 24 FMAs per `k` (0.42 loads per FMA, see `shared/spec/cpu-kernels.md`).
//! The instruction set is picked once at run time (`is_x86_feature_detected!`); other
//! machines run the same loops written for the compiler to vectorise.

use super::activate;
use super::elementwise::{activate_row, affine_row};
use super::isa::{isa, Isa};
use super::pool::{parallel, range};
use crate::execution::program::kernels::act;

/// Rows of C per microkernel call (broadcast from A).
pub(super) const MR: usize = 6;
/// Columns of C per microkernel call (loaded from the packed panel): 4 zmm.
pub(super) const NR: usize = 64;
/// Depth of one packed panel: `KC x NR` floats = 32 KiB, inside the 48 KiB L1.
pub(super) const KC: usize = 128;

/// What the last pass over `k` does to C before storing it.
#[derive(Clone, Copy)]
pub(super) struct Epilogue {
    /// One value per row of C added to it, or null.
    pub bias: *const f32,
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
}

// SAFETY: the pointers name memory the kernel's contract keeps live for the launch; threads
// sharing a problem write disjoint column panels of C.
unsafe impl Sync for Problem {}

/// Runs `p` on up to `threads` threads, each a contiguous range of column panels; small
/// products (below ~2 M multiply-adds) on this thread alone.
///
/// # Safety
/// As [`run`].
pub(super) unsafe fn run_parallel(threads: usize, p: &Problem, pack: &Pack) {
    let n_panels = panels(p);
    let macs = p.m * p.n * p.k.max(1);
    let parts = if macs < (1 << 21) {
        1
    } else {
        threads.min(n_panels).max(1)
    };
    parallel(parts, &|i| run(p, pack, range(n_panels, parts, i)));
}

/// Provides `B[k0 .. k0 + kc, n0 .. n0 + nc]` for one panel, either packed into `panel`
/// (`kc` rows of `NR` floats, zero past `nc`; returns `false`) or, for a full panel
/// (`nc == NR`) whose rows already lie contiguous in memory, as one pointer per row in
/// `rows` (returns `true`, `panel` untouched): the microkernel then reads B in place.
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

/// A 64-byte aligned `KC x NR` panel per thread.
#[repr(C, align(64))]
struct Panel([f32; KC * NR]);

thread_local! {
    static PANEL: std::cell::RefCell<(Box<Panel>, Vec<*const f32>)> =
        std::cell::RefCell::new((Box::new(Panel([0.0; KC * NR])), vec![std::ptr::null(); KC]));
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

/// Computes the column panels `range` of `p` (so threads can split the panels).
///
/// # Safety
/// `p.a` holds `m` rows of `k` floats `rs_a` apart, `p.c` `m` rows of `n` floats `rs_c`
/// apart, the bias (if any) `m` floats; no other thread writes the same panels of C.
pub(super) unsafe fn run(p: &Problem, pack: &Pack, range: std::ops::Range<usize>) {
    run_on(isa(), p, pack, range)
}

/// [`run`] with the instruction set given.
unsafe fn run_on(isa: Isa, p: &Problem, pack: &Pack, range: std::ops::Range<usize>) {
    PANEL.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let (buf, row_ptrs) = &mut *scratch;
        let buf = &mut buf.0;
        for jp in range {
            let (n0, nc) = panel(p, jp);
            let mut k0 = 0;
            // k = 0 still writes C (a zero-depth product is the bias alone).
            loop {
                let kc = KC.min(p.k - k0);
                let direct = pack(k0, kc, n0, nc, &mut buf[..kc * NR], &mut row_ptrs[..kc]);
                let first = k0 == 0;
                let last = k0 + kc == p.k;
                let mut i0 = 0;
                while i0 < p.m {
                    let rows = MR.min(p.m - i0);
                    let tile = Tile {
                        kc,
                        a: p.a.add(i0 * p.rs_a + k0),
                        rs_a: p.rs_a,
                        b: buf.as_ptr(),
                        b_rows: if direct {
                            row_ptrs.as_ptr()
                        } else {
                            std::ptr::null()
                        },
                        c: p.c.add(i0 * p.rs_c + n0),
                        rs_c: p.rs_c,
                        cols: nc,
                        first,
                        epilogue: last.then_some(p.epilogue),
                        row0: i0,
                    };
                    micro(isa, rows, &tile);
                    i0 += MR;
                }
                k0 += kc;
                if k0 >= p.k {
                    break;
                }
            }
        }
    })
}

/// One microkernel call: `rows x cols` of C from `kc` steps of A's strip and the panel.
struct Tile {
    kc: usize,
    a: *const f32,
    rs_a: usize,
    /// The packed panel, or null with `b_rows` set.
    b: *const f32,
    /// One pointer per row of B read in place (`NR` floats each), or null.
    b_rows: *const *const f32,
    c: *mut f32,
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
        ($f:ident) => {
            match (rows, direct) {
                (6, false) => $f::<6, false>(t),
                (5, false) => $f::<5, false>(t),
                (4, false) => $f::<4, false>(t),
                (3, false) => $f::<3, false>(t),
                (2, false) => $f::<2, false>(t),
                (_, false) => $f::<1, false>(t),
                (6, true) => $f::<6, true>(t),
                (5, true) => $f::<5, true>(t),
                (4, true) => $f::<4, true>(t),
                (3, true) => $f::<3, true>(t),
                (2, true) => $f::<2, true>(t),
                (_, true) => $f::<1, true>(t),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => by_rows!(micro_avx512),
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
fn vector_act(code: i32) -> bool {
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
            let a = *t.a.add(r * t.rs_a + p);
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
        for (dst, &v) in c.iter_mut().zip(row) {
            let mut v = if t.first { v } else { v + *dst };
            if let Some(e) = t.epilogue {
                v += bias;
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
        *t.b_rows.add(p)
    } else {
        t.b.add(p * NR)
    }
}

unsafe fn micro_portable<const R: usize, const D: bool>(t: &Tile) {
    micro_generic::<R, D>(t)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_avx2<const R: usize, const D: bool>(t: &Tile) {
    micro_generic::<R, D>(t)
}

/// The AVX-512 microkernel: `R x 64` accumulators in zmm registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn micro_avx512<const R: usize, const D: bool>(t: &Tile) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    let mut a = t.a;
    for p in 0..t.kc {
        // SAFETY: each row of B (packed, or in place for a full panel) holds NR = 64
        // floats; A's strip R rows of kc.
        let b = b_row::<D>(t, p);
        let bv = [
            _mm512_loadu_ps(b),
            _mm512_loadu_ps(b.add(16)),
            _mm512_loadu_ps(b.add(32)),
            _mm512_loadu_ps(b.add(48)),
        ];
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(r * t.rs_a));
            for (c, v) in row.iter_mut().zip(bv) {
                *c = _mm512_fmadd_ps(av, v, *c);
            }
        }
        a = a.add(1);
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
    let one = _mm512_set1_ps(1.0);
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
                let (ea, eb) = (_mm512_set1_ps(e.a), _mm512_set1_ps(e.b));
                v = match e.act {
                    act::RELU => _mm512_max_ps(v, zero),
                    act::CLIP => _mm512_min_ps(_mm512_max_ps(v, ea), eb),
                    act::HARD_SIGMOID => {
                        _mm512_min_ps(_mm512_max_ps(_mm512_fmadd_ps(ea, v, eb), zero), one)
                    }
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
                if vector_act(e.act) {
                    v = _mm512_fmadd_ps(v, _mm512_set1_ps(e.post_mul), _mm512_set1_ps(e.post_add));
                }
            }
            _mm512_mask_storeu_ps(dst, m, v);
        }
    }
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
                act: ep_act,
                a: 0.2,
                b: 0.5,
                post_mul: 1.5,
                post_add: -0.25,
            },
            row: 0,
        };
        unsafe { run_on(isa, &p, &pack, 0..panels(&p)) };
        for i in 0..m {
            for j in 0..n {
                let mut s = bias[i] as f64;
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
            // Row tails 1..5, column tails, depth across several panels and below one.
            for (m, n, k) in [
                (1, 1, 1),
                (7, 65, 3),
                (13, 130, 300),
                (6, 64, 128),
                (5, 17, 129),
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
        };
        assert_eq!(panels(&p), 6);
        unsafe {
            run(&p, &pack, 0..1);
            run(&p, &pack, 1..panels(&p));
        }
        for i in 0..m {
            for j in 0..n {
                let s: f32 = (0..k).map(|q| a[i * k + q] * b[q * n + j]).sum();
                assert!((c[i * n + j] - s).abs() < 1e-3, "[{i},{j}]");
            }
        }
    }
}
