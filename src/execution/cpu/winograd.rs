//! 3x3 stride-1 convolutions by Winograd's minimal filtering, F(2x2, 3x3) (Lavin and Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016): each 2x2 block of outputs
//! of one channel from a 4x4 tile of each input channel in 16 multiplies per channel pair
//! instead of 36, i.e. 2.25x fewer multiply-adds. The 16 element-wise products summed over
//! the input channels are 16 independent matrix products, one per "frequency" `f` of the
//! transformed tile:
//!
//! ```text
//! M_f[tile, co] = Σ_ci V_f[tile, ci] · U_f[ci, co]
//!   V = Bᵀ d B (the input tile), U = G g Gᵀ (the 3x3 kernel, once), y = Aᵀ M A
//! ```
//!
//! run by the same [`gemm`] as every other convolution: `V_f` is written by the input
//! transform straight in the strip-major layout the microkernel broadcasts from
//! ([`Problem::a_packed`]), `U_f` (`[ci][co]`, row-major, transformed once and kept like
//! the other packed weights) is read in place as B's panels, and the output transform adds
//! the bias and the residual, applies the activation and the affine op, and writes the
//! NCHW output. The transforms' coefficients are 0, ±1 and ±1/2, so the results differ
//! from the direct sum only by rounding (a few ulp of the inputs' magnitudes; the tests
//! compare with tract and ONNX Runtime at their usual tolerances).
//!
//! Used where the products are large enough for the saving to show ([`applies`]): the
//! tutorial's ResNets, whose 3x3 convolutions over many channels are most of their work.
//!
//! [`Problem::a_packed`]: gemm::Problem::a_packed

use super::elementwise::{activate_row, affine_row};
use super::gemm::{self, Shared, MR, NR};
use super::isa::{copy_short, zero_short};
use super::pool;
use super::{isa, Geometry};
use crate::execution::program::kernels as k;

/// The most floats of `V` or `M` (`16 x tiles x channels`) one band of tile rows has: a larger
/// image runs band by band (8 MiB each at most; a band is at least one tile row).
const BAND_FLOATS: usize = 1 << 21;

/// Whether convolution `g` runs by Winograd: 3x3, stride 1, no dilation, one group, padding
/// of at most 2 (what a 3x3 "same" or "valid" convolution has), at least 64 input and output
/// channels and 128 on one side. Measured per layer on the AVX2 EPYC (one thread, direct ->
/// Winograd): full-size EAST's 128-channel 3x3 at 60x80 18.5 -> 14.9 ms, 256 at 30x40 19 ->
/// 11.5, 512 at 15x20 19.4 -> 11-13; STR's 512 at 4x26 6.6 -> ~4.5, its 64 -> 128 at 16x50
/// 2.2 -> 1.6; but EAST's 64 -> 64 at 120x160 18.7 -> 20.2 (its products have 64 multiply-adds
/// per entry of `M`, four times the outputs, so they wait on memory) and 64 at 60x80 level:
/// those stay direct. On AVX-512 (Zen 5), the whole models with and without it alternated per
/// inference in one process (one thread, pair medians): full-size STR 46.3 -> 29.3 ms, EAST
/// 211 -> 186.
pub(super) fn applies(g: &Geometry) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.sh == 1
        && g.sw == 1
        && g.dh == 1
        && g.dw == 1
        && g.group == 1
        && (0..=2).contains(&g.pt)
        && (0..=2).contains(&g.pl)
        && g.cg.min(g.mg) >= 64
        && g.cg.max(g.mg) >= 128
        && g.oh > 0
        && g.ow > 0
}

/// The transformed weights `U_f = G g_f Gᵀ` of `mg` output channels over `cg` input channels
/// (weights `[co][ci][3][3]` at `w`), as the GEMM's A: frequency `f` is `U_fᵀ` (`mg x cg`)
/// laid out by [`gemm::pack_a_whole`] at `f·mg'·cg` (`mg'` = `mg` rounded up to `MR`), so
/// the microkernel's broadcasts read each frequency's weights as one stream, front to back,
/// which the hardware prefetcher follows (`U` comes from memory at every launch: 16/9 of the
/// weights, 16 MiB for one of STR's 512-channel convolutions. Read as B's panels instead, the
/// products ran at a third of their speed, each panel's rows a miss the prefetcher did not
/// see coming.)
///
/// # Safety
/// `w` holds `mg·cg·9` floats.
pub(super) unsafe fn transform_weights(w: *const f32, mg: usize, cg: usize) -> Vec<f32> {
    let mut uf = vec![0.0f32; 16 * mg * cg];
    for co in 0..mg {
        for ci in 0..cg {
            let g = std::slice::from_raw_parts(w.add((co * cg + ci) * 9), 9);
            // G g: 4 rows of 3.
            let mut gg = [[0f32; 3]; 4];
            for c in 0..3 {
                let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
                gg[0][c] = g0;
                gg[1][c] = 0.5 * (g0 + g1 + g2);
                gg[2][c] = 0.5 * (g0 - g1 + g2);
                gg[3][c] = g2;
            }
            // (G g) Gᵀ: 4 x 4.
            for (i, r) in gg.iter().enumerate() {
                let row = [
                    r[0],
                    0.5 * (r[0] + r[1] + r[2]),
                    0.5 * (r[0] - r[1] + r[2]),
                    r[2],
                ];
                for (j, v) in row.into_iter().enumerate() {
                    uf[((4 * i + j) * mg + co) * cg + ci] = v;
                }
            }
        }
    }
    let per_f = mg.div_ceil(MR) * MR * cg;
    let mut u = Vec::with_capacity(16 * per_f);
    for f in 0..16 {
        u.extend(gemm::pack_a_whole(
            uf.as_ptr().add(f * mg * cg),
            mg,
            cg,
            cg,
            false,
        ));
    }
    u
}

/// Image `b` of convolution `p` (geometry `g`, [`applies`]) by Winograd, with the
/// transformed weights `u` ([`transform_weights`]), on up to `threads` threads.
///
/// # Safety
/// The convolution's pointers name live memory of the sizes `g` describes; `u` is its
/// weights' transform.
pub(super) unsafe fn conv_image(
    p: &k::ConvParams,
    g: &Geometry,
    u: &[f32],
    threads: usize,
    b: usize,
) {
    let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
    let per_row = 16 * tw * g.cg.max(g.mg);
    let band = (BAND_FLOATS / per_row.max(1)).clamp(1, th);
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        for ty0 in (0..th).step_by(band) {
            let rows = band.min(th - ty0);
            let tiles = rows * tw;
            let (vs, ms) = (plane_stride(tiles * g.cg), plane_stride(tiles * g.mg));
            // (`NR` floats of slack: the microkernel reads whole panels of B's rows.)
            let (v_len, m_len) = (16 * vs + NR, 16 * ms);
            let Scratch { v, m } = &mut *scratch;
            if v.len() < v_len {
                v.resize(v_len, 0.0);
            }
            if m.len() < m_len {
                m.resize(m_len, 0.0);
            }
            let band = Band {
                ty0,
                tiles,
                vs,
                ms,
                v: v.as_mut_ptr(),
                m: m.as_mut_ptr(),
            };
            let band = &band;
            // Each phase splits its own way: input channels, frequencies, output channels.
            let parts = |n: usize| {
                if tiles * g.cg * g.mg < 1 << 17 {
                    1
                } else {
                    threads.min(n).max(1)
                }
            };
            let n = parts(g.cg);
            pool::parallel(n, &|i| {
                transform_input(p, g, band, b, pool::range(g.cg, n, i))
            });
            let n = parts(16);
            pool::parallel(n, &|i| {
                for f in pool::range(16, n, i) {
                    products(g, band, u, f);
                }
            });
            let n = parts(g.mg);
            pool::parallel(n, &|i| {
                transform_output(p, g, band, b, pool::range(g.mg, n, i))
            });
        }
    })
}

/// One band's tiles and its scratch.
struct Band {
    /// The band's first tile row and its tiles (whole tile rows).
    ty0: usize,
    tiles: usize,
    /// The distance between two frequencies' matrices in `v` and in `m` ([`plane_stride`]).
    vs: usize,
    ms: usize,
    /// `16` matrices `V_f` (`cg x tiles`), and `16` matrices `M_f` (`mg x tiles`), row-major:
    /// B and C of the products.
    v: *mut f32,
    m: *mut f32,
}

// SAFETY: the phases' threads write disjoint parts of the scratch (their own input
// channels, frequencies or output channels), and each phase ends before the next begins.
unsafe impl Sync for Band {}

/// The distance (floats) between two of the 16 matrices of `len` floats: `len` rounded up
/// so that the 16 do not start at the same offset modulo 4 KiB. The transforms read or
/// write one entry of each per tile; at distances that are multiples of 4 KiB (STR's
/// 512 x 26 and 128 x 200 tiles are) all 16 fall in the same L1 set, and the input
/// transform ran 4-9x slower.
fn plane_stride(len: usize) -> usize {
    // 72 floats (4.5 cache lines) past a multiple of 1024: the 16 starts spread over the sets.
    len.div_ceil(1024) * 1024 + 72
}

/// Per-thread scratch for `V` and `M`, kept for the next launch.
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> =
        const { std::cell::RefCell::new(Scratch { v: Vec::new(), m: Vec::new() }) };
}

isa::multiversion! {
/// `V_f = Bᵀ d B` of every tile of the band for input channels `channels`: entry
/// `(ci, tile)` of frequency `f` at `f·vs + ci·tiles + tile`. A tile row at a time: its four
/// input rows copied zero-padded (no bounds checks after), `Bᵀ d` along whole rows, then
/// `· B` along each row's tiles, every loop over contiguous floats or tiles.
unsafe fn transform_input(
    p: &k::ConvParams,
    g: &Geometry,
    band: &Band,
    b: usize,
    channels: std::ops::Range<usize>,
) {
    let tw = g.ow.div_ceil(2);
    // Padded row `c` is input column `c − pl`; tile `t` reads columns `2t .. 2t + 4`.
    let wpad = 2 * tw + 2;
    let x = (p.x as *const f32).add(b * g.c * g.h * g.w);
    let mut rows = vec![0f32; 4 * wpad];
    let mut r = vec![0f32; 4 * wpad];
    for ci in channels {
        let src = x.add(ci * g.h * g.w);
        for ty in 0..band.tiles / tw {
            let y0 = (2 * (band.ty0 + ty)) as isize - g.pt;
            for (i, row) in rows.chunks_exact_mut(wpad).enumerate() {
                let iy = y0 + i as isize;
                if iy < 0 || iy >= g.h as isize {
                    row.fill(0.0);
                } else {
                    super::fill_phases(src.add(iy as usize * g.w), g.w, g.pl, 1, wpad, row);
                }
            }
            // Bᵀ d: r0 = d0 − d2, r1 = d1 + d2, r2 = d2 − d1, r3 = d1 − d3 (rows).
            let (d0, rest) = rows.split_at(wpad);
            let (d1, rest) = rest.split_at(wpad);
            let (d2, d3) = rest.split_at(wpad);
            let (r0, rest) = r.split_at_mut(wpad);
            let (r1, rest) = rest.split_at_mut(wpad);
            let (r2, r3) = rest.split_at_mut(wpad);
            for c in 0..wpad {
                r0[c] = d0[c] - d2[c];
                r1[c] = d1[c] + d2[c];
                r2[c] = d2[c] - d1[c];
                r3[c] = d1[c] - d3[c];
            }
            // (Bᵀ d) B along the tiles: entry j of tile t from columns 2t .. 2t + 4.
            let t0 = ty * tw;
            for (i, ri) in [&*r0, &*r1, &*r2, &*r3].into_iter().enumerate() {
                let out = |j: usize| {
                    std::slice::from_raw_parts_mut(
                        band.v.add((4 * i + j) * band.vs + ci * band.tiles + t0),
                        tw,
                    )
                };
                let (o0, o1, o2, o3) = (out(0), out(1), out(2), out(3));
                for t in 0..tw {
                    let (e0, e1, e2, e3) = (ri[2 * t], ri[2 * t + 1], ri[2 * t + 2], ri[2 * t + 3]);
                    o0[t] = e0 - e2;
                    o1[t] = e1 + e2;
                    o2[t] = e2 - e1;
                    o3[t] = e1 - e3;
                }
            }
        }
    }
}
}

/// `M_f = U_fᵀ · V_f` for frequency `f` of the band, on this thread.
unsafe fn products(g: &Geometry, band: &Band, u: &[f32], f: usize) {
    let (cg, tiles) = (g.cg, band.tiles);
    let v_f = Shared(band.v.add(f * band.vs) as *const f32);
    let prob = gemm::Problem {
        m: g.mg,
        n: tiles,
        k: cg,
        a: std::ptr::null(),
        rs_a: cg,
        a_packed: u.as_ptr().add(f * g.mg.div_ceil(MR) * MR * cg),
        deep: false,
        c: band.m.add(f * band.ms),
        rs_c: tiles,
        epilogue: gemm::Epilogue::NONE,
        row: 0,
        accumulate: false,
    };
    // B's rows are V_f's, read in place (`NR` readable floats after each: the next rows, or
    // the slack after the last frequency), or packed when they lie two panels or more apart
    // where that pays ([`gemm::packs_scattered_panels`]; STR's 26 tiles a row are one panel
    // of contiguous rows).
    let packs = tiles >= 2 * NR && gemm::packs_scattered_panels();
    let pack =
        |k0: usize, kc: usize, n0: usize, nc: usize, dst: &mut [f32], rows: &mut [*const f32]| {
            if packs {
                for (q, d) in dst.chunks_exact_mut(NR).take(kc).enumerate() {
                    let d = d.as_mut_ptr();
                    copy_short(d, v_f.get().add((k0 + q) * tiles + n0), nc);
                    zero_short(d.add(nc), NR - nc);
                }
                return false;
            }
            for (q, r) in rows.iter_mut().enumerate() {
                *r = v_f.get().add((k0 + q) * tiles + n0);
            }
            true
        };
    let (panels, strips) = (gemm::panels(&prob), g.mg.div_ceil(MR));
    gemm::run(&prob, &pack, 0..panels, 0..strips);
}

isa::multiversion! {
/// `y = Aᵀ M A` of every tile of the band for output channels `channels`, plus the bias and
/// the residual, through the activation and the affine op, into image `b` of the output: a
/// tile row at a time, `Aᵀ M` along the row's tiles, `· A` into its two output rows, then
/// the epilogue along them.
unsafe fn transform_output(
    p: &k::ConvParams,
    g: &Geometry,
    band: &Band,
    b: usize,
    channels: std::ops::Range<usize>,
) {
    let tw = g.ow.div_ceil(2);
    let plane = g.oh * g.ow;
    let y = (p.y as *mut f32).add(b * g.co * plane);
    let res = (p.res != 0).then(|| (p.res as *const f32).add(b * g.co * plane));
    let bias = p.bias as *const f32;
    // The two output rows of a tile row (2·tw wide; the last column past `ow` when odd).
    let mut ys = vec![0f32; 4 * tw];
    for co in channels {
        let bias = if bias.is_null() { 0.0 } else { *bias.add(co) };
        for ty in 0..band.tiles / tw {
            let t0 = ty * tw;
            let m = |f: usize| {
                std::slice::from_raw_parts(band.m.add(f * band.ms + co * band.tiles + t0), tw)
            };
            let (y0, y1) = ys.split_at_mut(2 * tw);
            for t in 0..tw {
                let mf: [f32; 16] = std::array::from_fn(|f| m(f)[t]);
                // Aᵀ M: a = m0 + m1 + m2, c = m1 − m2 − m3 (rows of M), then · A.
                let a: [f32; 4] = std::array::from_fn(|j| mf[j] + mf[4 + j] + mf[8 + j]);
                let c: [f32; 4] = std::array::from_fn(|j| mf[4 + j] - mf[8 + j] - mf[12 + j]);
                y0[2 * t] = a[0] + a[1] + a[2] + bias;
                y0[2 * t + 1] = a[1] - a[2] - a[3] + bias;
                y1[2 * t] = c[0] + c[1] + c[2] + bias;
                y1[2 * t + 1] = c[1] - c[2] - c[3] + bias;
            }
            for (i, row) in [y0, y1].into_iter().enumerate() {
                let oy = 2 * (band.ty0 + ty) + i;
                if oy >= g.oh {
                    break;
                }
                let row = &mut row[..g.ow];
                let at = co * plane + oy * g.ow;
                if let Some(r) = res {
                    let r = std::slice::from_raw_parts(r.add(at), g.ow);
                    for (v, r) in row.iter_mut().zip(r) {
                        *v += r;
                    }
                }
                activate_row(row, p.act, p.a, p.b);
                affine_row(row, p.post_mul, p.post_add);
                std::ptr::copy_nonoverlapping(row.as_ptr(), y.add(at), g.ow);
            }
        }
    }
}
}
