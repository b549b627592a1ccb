//! Convolutions with the output channels along the vector lanes (AVX-512): for convolutions
//! whose rows fill the GEMM's pixel-wide panels badly and whose output channels are a
//! multiple of 16.
//!
//! The packed-panel product ([`gemm`]) puts output pixels along the lanes and output
//! channels in its 6-row strips, so an output row of 26 pixels (STR's 4x26 planes) fills 26
//! of its 32 lanes and 32 channels 32 of 36 strip rows: 72 % of its multiply-adds are
//! useful. Here a tile is up to `T` consecutive pixels of one output row times up to 64
//! output channels (`V` zmm, `T·V` <= 26 accumulators): per kernel tap, `V` loads of the
//! weights (`[tap][channel]`, packed once) and one broadcast per pixel from the zero-padded
//! copy of the input ([`Padded`], the same copy the GEMM reads in place, so any stride,
//! dilation and padding) feed `T·V` multiply-adds, every lane of them useful. The tile is
//! then transposed through a stack buffer (a gather per output channel) so the epilogue
//! (bias, residual, activation, affine op) and the store run along the NCHW output rows.
//! Convolutions with 4, 8 or 12 output channels fill a zmm with 4 channels x 4 pixels
//! instead ([`quad_tile`]).
//!
//! [`gemm`]: super::gemm

use super::gemm::{self, Epilogue, Shared};
use super::isa::{isa, Isa};
use super::{pool, Geometry, Padded};
use crate::execution::program::kernels as k;

/// Output channels of one block (4 zmm).
const BLOCK: usize = 64;

/// Whether convolution `g` runs here (and the padded copy it reads): AVX-512, output
/// channels per group a multiple of 16 (or 4, 8 or 12), a padded copy possible, and a GEMM
/// that would leave more than 15 % of its multiply-adds idle. Measured on Zen 5 (one thread, each model with
/// and without it alternated per inference in one process, pair medians): STR's fixture
/// 0.291 -> 0.229 ms, the EAST fixture 4.38 -> 4.24; the full-size STR and EAST and PP-OCR
/// det, rec and cls level. Taken for every convolution with 16·k channels instead, the
/// full-size models were level to 1.7 % slower (EAST), so the GEMM keeps the rest. The
/// quads for 4-12 channels, alternated likewise against the GEMM: STR's fixture 1.1 %
/// faster, the EAST fixture (its 8-channel stem and 3x3s) 2.4 %, PP-OCR cls and rec level.
pub(super) fn applies(g: &Geometry) -> Option<Padded> {
    let quads = g.mg < 16 && g.mg.is_multiple_of(4);
    if isa() != Isa::Avx512 || g.mg == 0 || !(g.mg.is_multiple_of(16) || quads) || g.pointwise() {
        return None;
    }
    if gemm_lane_use(g) >= 0.85 {
        return None;
    }
    Padded::new(g, false)
}

/// The fraction of the GEMM's multiply-adds that would be useful on `g`: its panels inside
/// output rows (rows under one panel, the padded copy) fill `ow` of the vector lanes they
/// span, its 6-row strips `mg` of their rows.
fn gemm_lane_use(g: &Geometry) -> f64 {
    let rows = g.mg as f64 / (g.mg.div_ceil(gemm::MR) * gemm::MR) as f64;
    let lanes = if g.ow >= gemm::NR {
        1.0
    } else {
        g.ow as f64 / (g.ow.div_ceil(16) * 16) as f64
    };
    rows * lanes
}

/// The weights of `m` output channels (rows of `k` floats at `w`) for [`conv_image`], from
/// [`aligned`]`(pack)`: block by block of [`BLOCK`] channels (the last one narrower), each
/// `[k][block width]`, block `co0 ..` starting at `co0·k`.
///
/// # Safety
/// `w` holds `m·k` floats.
pub(super) unsafe fn pack_weights(w: *const f32, m: usize, k: usize) -> Vec<f32> {
    if m < 16 {
        return pack_quads(w, m, k);
    }
    // Slack for the start's alignment: the weights' zmm loads would otherwise cross a cache
    // line each.
    let mut pack = vec![0.0; m * k + 16];
    let start = aligned(&pack);
    let dst = &mut pack[start..start + m * k];
    for co0 in (0..m).step_by(BLOCK) {
        let wb = BLOCK.min(m - co0);
        let block = &mut dst[co0 * k..(co0 + wb) * k];
        for c in 0..wb {
            let src = std::slice::from_raw_parts(w.add((co0 + c) * k), k);
            for (q, &v) in src.iter().enumerate() {
                block[q * wb + c] = v;
            }
        }
    }
    pack
}

/// [`pack_weights`] for 4, 8 or 12 channels ([`quad_tile`]): `[k][group of 4][channel x 4]`,
/// each weight four times over (one per pixel of a quad).
unsafe fn pack_quads(w: *const f32, m: usize, k: usize) -> Vec<f32> {
    let mut pack = vec![0.0; 4 * m * k + 16];
    let start = aligned(&pack);
    let dst = &mut pack[start..start + 4 * m * k];
    for c in 0..m {
        let src = std::slice::from_raw_parts(w.add(c * k), k);
        for (q, &v) in src.iter().enumerate() {
            dst[(q * m + c) * 4..(q * m + c) * 4 + 4].fill(v);
        }
    }
    pack
}

/// Where the weights start in a [`pack_weights`] buffer: its first float on a 64-byte
/// boundary (the buffer is never reallocated, so the same one each time).
pub(super) fn aligned(pack: &[f32]) -> usize {
    pack.as_ptr().align_offset(64).min(16)
}

/// The most pixels per tile with `v` zmm of channels (`T·V` accumulators, `V` weight
/// vectors, a broadcast: at most 30 of the 32 zmm).
fn tile_width(v: usize) -> usize {
    match v {
        1 => 24,
        2 => 13,
        3 => 8,
        _ => 6,
    }
}

/// Image `b` of convolution `p` (every group), its input copied band by band into `scratch`
/// (`pd`'s layout), the rows of each band and the channel blocks split across `threads`.
///
/// # Safety
/// `p` is a valid convolution launch whose geometry is `g`; `packs[grp]` is
/// [`pack_weights`] of group `grp`'s weights.
pub(super) unsafe fn conv_image(
    p: &k::ConvParams,
    g: &Geometry,
    pd: &Padded,
    packs: &[std::sync::Arc<Vec<f32>>],
    threads: usize,
    b: usize,
    scratch: &mut Vec<f32>,
) {
    let kk = g.cg * g.kh * g.kw;
    let blocks = g.mg.div_ceil(BLOCK);
    let plane = g.oh * g.ow;
    for (grp, packed) in packs.iter().enumerate() {
        let xg = (p.x as *const f32).add((b * g.c + grp * g.cg) * g.h * g.w);
        // The group's first output channel, in the output and the bias.
        let co_g = b * g.co + grp * g.mg;
        for oy0 in (0..g.oh).step_by(pd.band) {
            let buf = pd.fill(g, xg, oy0, scratch);
            let rows = pd.band.min(g.oh - oy0);
            let work = rows * blocks;
            let macs = rows * g.ow * g.mg * kk;
            let parts = if macs < (1 << 17) {
                1
            } else {
                threads.clamp(1, work)
            };
            let packed = Shared(packed.as_ptr().add(aligned(packed)));
            pool::parallel(parts, &|i| {
                for item in pool::range(work, parts, i) {
                    let (r, bi) = (item / blocks, item % blocks);
                    let oy = oy0 + r;
                    let co0 = bi * BLOCK;
                    let bias = if p.bias == 0 {
                        std::ptr::null()
                    } else {
                        (p.bias as *const f32).add(grp * g.mg + co0)
                    };
                    let at = (co_g + co0) * plane + oy * g.ow;
                    let row = Row {
                        src: buf.get().add(r * g.sh * pd.wp),
                        offsets: &pd.offsets,
                        w: packed.get().add(co0 * kk),
                        y: (p.y as *mut f32).add(at),
                        plane,
                        channels: BLOCK.min(g.mg - co0),
                        epilogue: Epilogue {
                            bias,
                            res: if p.res == 0 {
                                std::ptr::null()
                            } else {
                                (p.res as *const f32).add(at)
                            },
                            act: p.act,
                            a: p.a,
                            b: p.b,
                            post_mul: p.post_mul,
                            post_add: p.post_add,
                        },
                    };
                    row.run(g.ow);
                }
            });
        }
    }
}

/// One output row of one channel block.
struct Row<'a> {
    /// The padded copy at the row's first pixel: pixel `t`, patch row `q` at
    /// `src[offsets[q] + t]`.
    src: *const f32,
    offsets: &'a [usize],
    /// The block's packed weights, `[q][channels]`.
    w: *const f32,
    /// The row in the block's first output channel (channels `plane` apart).
    y: *mut f32,
    plane: usize,
    /// 16, 32, 48 or 64 ([`tile`]), or 4, 8 or 12 ([`quad_tile`]).
    channels: usize,
    /// The bias at the block's first channel, and the residual laid out as `y` (maybe the
    /// same memory: a residual accumulated in place, each float read before it is written),
    /// or null.
    epilogue: Epilogue,
}

impl Row<'_> {
    /// Computes the row's `ow` pixels, in tiles of as nearly equal widths as fit.
    unsafe fn run(&self, ow: usize) {
        if self.channels < 16 {
            return self.run_quads(ow);
        }
        let v = self.channels / 16;
        let tiles = ow.div_ceil(tile_width(v));
        let width = ow.div_ceil(tiles.max(1));
        let mut x0 = 0;
        while x0 < ow {
            let t = width.min(ow - x0);
            #[cfg(target_arch = "x86_64")]
            {
                macro_rules! widths {
                    ($v:literal: $($t:literal)*) => {
                        match t {
                            $($t => tile::<$v, $t>(self, x0),)*
                            _ => unreachable!("a tile wider than tile_width"),
                        }
                    };
                }
                match v {
                    1 => widths!(1: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24),
                    2 => widths!(2: 1 2 3 4 5 6 7 8 9 10 11 12 13),
                    3 => widths!(3: 1 2 3 4 5 6 7 8),
                    _ => widths!(4: 1 2 3 4 5 6),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("lanes::applies is AVX-512 only");
            x0 += t;
        }
    }
}

impl Row<'_> {
    /// [`Row::run`] for 4, 8 or 12 channels: tiles of whole quads of pixels (the last one
    /// maybe partial), as nearly equal as fit.
    unsafe fn run_quads(&self, ow: usize) {
        let h = self.channels / 4;
        let most = match h {
            1 => 24,
            2 => 12,
            _ => 8,
        };
        let quads = ow.div_ceil(4);
        let tiles = quads.div_ceil(most);
        let width = quads.div_ceil(tiles.max(1));
        let mut x0 = 0;
        while x0 < ow {
            let n = (4 * width).min(ow - x0);
            let q = n.div_ceil(4);
            #[cfg(target_arch = "x86_64")]
            {
                macro_rules! widths {
                    ($h:literal: $($q:literal)*) => {
                        match q {
                            $($q => quad_tile::<$h, $q>(self, x0, n),)*
                            _ => unreachable!("a tile wider than its register budget"),
                        }
                    };
                }
                match h {
                    1 => widths!(1: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24),
                    2 => widths!(2: 1 2 3 4 5 6 7 8 9 10 11 12),
                    _ => widths!(3: 1 2 3 4 5 6 7 8),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("lanes::applies is AVX-512 only");
            x0 += n;
        }
    }
}

/// Pixels `x0 .. x0 + n` of `row` (`n` <= `4·Q`), `4·H` output channels: a zmm holds 4
/// channels x 4 pixels (lane `4j + i`: channel `j` of its group, pixel `i` of its quad), fed
/// by one 128-bit broadcast of the quad's 4 inputs per tap and the weights repeated 4 times
/// ([`pack_quads`]). 8 channels on 50-pixel rows fill 96 % of the lanes, against the GEMM's
/// 52 % (8 of 12 strip rows, 50 of 64 lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn quad_tile<const H: usize, const Q: usize>(row: &Row, x0: usize, n: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); H]; Q];
    let src = row.src.add(x0);
    let mut w = row.w;
    for &at in row.offsets {
        // SAFETY: quad `q` reads the 4 floats from pixel 4q of patch row `at`: pixels past
        // the row's last (at most 3, when `n` is not a multiple of 4) still lie inside the
        // padded copy (its next row or plane, or the `NR` floats of slack after it) and
        // only feed lanes that are not stored. The packed weights hold 16·H floats a row.
        let x = src.add(at);
        let mut wv = [_mm512_setzero_ps(); H];
        for (j, v) in wv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(w.add(16 * j));
        }
        for (q, acc) in acc.iter_mut().enumerate() {
            let xv = _mm512_broadcast_f32x4(_mm_loadu_ps(x.add(4 * q)));
            for (c, &wj) in acc.iter_mut().zip(&wv) {
                *c = _mm512_fmadd_ps(xv, wj, *c);
            }
        }
        w = w.add(16 * H);
    }
    // Through a stack copy (see `tile`), then each 4 quads of a group transposed by 128-bit
    // blocks: block `j` of quad `m` is channel `j`'s 4 pixels, so the transposed vector `j`
    // holds channel `j`'s 16 pixels of those quads.
    let mut stage = [[_mm512_setzero_ps(); H]; Q];
    for (d, a) in stage.iter_mut().zip(&acc) {
        *d = *a;
    }
    let e = &row.epilogue;
    for s in 0..Q.div_ceil(4) {
        let left = n - 16 * s;
        for h in 0..H {
            let r = |i: usize| {
                stage
                    .get(4 * s + i)
                    .map_or(_mm512_setzero_ps(), |quad| quad[h])
            };
            let (t0, t1) = (
                _mm512_shuffle_f32x4::<0x44>(r(0), r(1)),
                _mm512_shuffle_f32x4::<0xEE>(r(0), r(1)),
            );
            let (t2, t3) = (
                _mm512_shuffle_f32x4::<0x44>(r(2), r(3)),
                _mm512_shuffle_f32x4::<0xEE>(r(2), r(3)),
            );
            let block = [
                _mm512_shuffle_f32x4::<0x88>(t0, t2),
                _mm512_shuffle_f32x4::<0xDD>(t0, t2),
                _mm512_shuffle_f32x4::<0x88>(t1, t3),
                _mm512_shuffle_f32x4::<0xDD>(t1, t3),
            ];
            for (j, &v) in block.iter().enumerate() {
                let c = 4 * h + j;
                let v = if e.bias.is_null() {
                    v
                } else {
                    _mm512_add_ps(v, _mm512_set1_ps(*e.bias.add(c)))
                };
                row.store(c * row.plane + x0 + 16 * s, v, left.min(16));
            }
        }
    }
}

impl Row<'_> {
    /// `v` (the bias added) as output floats `at .. at + n` (`n` <= 16) of the block (one
    /// channel's run of pixels): plus the residual there, through the activation and the
    /// affine op.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    #[inline]
    unsafe fn store(&self, at: usize, v: std::arch::x86_64::__m512, n: usize) {
        use std::arch::x86_64::*;
        let e = &self.epilogue;
        let m: __mmask16 = if n >= 16 { 0xffff } else { (1u16 << n) - 1 };
        // SAFETY: the masked loads and stores keep to the `n` floats, which lie inside one
        // channel's row of the tile.
        let mut v = v;
        if !e.res.is_null() {
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, e.res.add(at)));
        }
        let vector = gemm::vector_act(e.act);
        if vector {
            v = gemm::finish_avx512(v, e);
        }
        let y = self.y.add(at);
        _mm512_mask_storeu_ps(y, m, v);
        if !vector {
            let out = std::slice::from_raw_parts_mut(y, n);
            super::activate_row(out, e.act, e.a, e.b);
            if e.post_mul != 1.0 || e.post_add != 0.0 {
                super::affine_row(out, e.post_mul, e.post_add);
            }
        }
    }
}

/// Pixels `x0 .. x0 + T` of `row`, `V` zmm of output channels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tile<const V: usize, const T: usize>(row: &Row, x0: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); V]; T];
    let src = row.src.add(x0);
    let mut w = row.w;
    for &at in row.offsets {
        // SAFETY: patch row `at` of pixels x0 .. x0 + T lies inside the padded copy (its
        // layout holds every tap of every output pixel); the packed weights hold
        // `16·V` floats per patch row.
        let x = src.add(at);
        let mut wv = [_mm512_setzero_ps(); V];
        for (j, v) in wv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(w.add(16 * j));
        }
        for (t, acc) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(*x.add(t));
            for (c, &wj) in acc.iter_mut().zip(&wv) {
                *c = _mm512_fmadd_ps(xv, wj, *c);
            }
        }
        w = w.add(16 * V);
    }
    // Each 16 pixels x 16 channels of the tile, bias added, transposed in registers: then
    // vector `c` holds channel `c`'s pixels, and the epilogue and the store run along the
    // NCHW output row. (A gather per channel from a stack copy cost 13 % of the tile.)
    // The accumulators go through a stack copy first: indexed at run time below, they
    // would otherwise live in memory through the loop above (a store per multiply-add).
    let e = &row.epilogue;
    let mut stage = [[_mm512_setzero_ps(); V]; T];
    for (dst, acc) in stage.iter_mut().zip(&acc) {
        for (j, (d, &v)) in dst.iter_mut().zip(acc).enumerate() {
            *d = if e.bias.is_null() {
                v
            } else {
                _mm512_add_ps(v, _mm512_loadu_ps(e.bias.add(16 * j)))
            };
        }
    }
    for half in 0..T.div_ceil(16) {
        let n = (T - 16 * half).min(16);
        for j in 0..V {
            let mut block = [_mm512_setzero_ps(); 16];
            for (b, pixel) in block.iter_mut().zip(&stage[16 * half..16 * half + n]) {
                *b = pixel[j];
            }
            transpose16(&mut block);
            for (i, &v) in block.iter().enumerate() {
                row.store((16 * j + i) * row.plane + x0 + 16 * half, v, n);
            }
        }
    }
}

/// Transposes the 16 x 16 floats of `r` in place (lane `j` of `r[i]` to lane `i` of `r[j]`):
/// four rounds of 16 shuffles (32-bit, 64-bit, then 128-bit lanes twice).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose16(r: &mut [std::arch::x86_64::__m512; 16]) {
    use std::arch::x86_64::*;
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for i in 0..4 {
        r[4 * i] = _mm512_shuffle_ps::<0x44>(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_shuffle_ps::<0x44>(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * i + 1], t[4 * i + 3]);
    }
    for i in 0..2 {
        for j in 0..4 {
            t[8 * i + j] = _mm512_shuffle_f32x4::<0x88>(r[8 * i + j], r[8 * i + 4 + j]);
            t[8 * i + 4 + j] = _mm512_shuffle_f32x4::<0xDD>(r[8 * i + j], r[8 * i + 4 + j]);
        }
    }
    for j in 0..8 {
        r[j] = _mm512_shuffle_f32x4::<0x88>(t[j], t[8 + j]);
        r[8 + j] = _mm512_shuffle_f32x4::<0xDD>(t[j], t[8 + j]);
    }
}
