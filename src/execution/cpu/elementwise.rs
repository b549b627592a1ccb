//! Element-wise kernels of the CPU device: unary, binary, the fused pointwise chains and
//! strided copies. Each walks its tensors row by row after merging the dimensions every view
//! traverses contiguously, so the index arithmetic happens once per row, and runs the fused
//! chain over chunks of a row, one operator at a time with its `match` outside the loop,
//! in loops the compiler vectorises (compiled for AVX-512 or AVX2 where the CPU has them).

use super::gemm::Shared;
use super::isa::multiversion;
use super::pool::{parallel, range};
use super::{activate, combine};
use crate::execution::program::kernels::{self as k, act, bin, View, MAX_RANK};

/// Elements per chunk of a fused chain: each register of the chain is this long.
const CHUNK: usize = 256;

/// Expands `$body` with `$f` bound to the activation `code` as a closure, one arm per
/// activation, so each loop is specialised (and vectorised where the operation allows).
macro_rules! with_act {
    ($code:expr, $a:expr, $b:expr, |$f:ident| $body:expr) => {{
        let (a, b): (f32, f32) = ($a, $b);
        match $code {
            act::NONE => {
                let $f = |v: f32| v;
                $body
            }
            act::RELU => {
                let $f = |v: f32| v.max(0.0);
                $body
            }
            act::CLIP => {
                let $f = |v: f32| v.max(a).min(b);
                $body
            }
            act::HARD_SIGMOID => {
                let $f = |v: f32| (a * v + b).clamp(0.0, 1.0);
                $body
            }
            act::HARD_SWISH => {
                let $f = |v: f32| v * (a * v + b).clamp(0.0, 1.0);
                $body
            }
            act::LEAKY_RELU => {
                let $f = |v: f32| if v >= 0.0 { v } else { a * v };
                $body
            }
            act::NEG => {
                let $f = |v: f32| -v;
                $body
            }
            act::ABS => {
                let $f = |v: f32| v.abs();
                $body
            }
            act::SQUARE => {
                let $f = |v: f32| v * v;
                $body
            }
            act::RECIP => {
                let $f = |v: f32| 1.0 / v;
                $body
            }
            act::SQRT => {
                let $f = |v: f32| v.sqrt();
                $body
            }
            // Through the polynomial `exp`, so the loop vectorises (PP-OCR det's output
            // sigmoid over 0.9 M pixels: 5.7 ms through libm's `exp`).
            act::SIGMOID => {
                let $f = |v: f32| 1.0 / (1.0 + super::exp_approx(-v));
                $body
            }
            act::SILU => {
                let $f = |v: f32| v / (1.0 + super::exp_approx(-v));
                $body
            }
            code => {
                let $f = |v: f32| activate(v, code, a, b);
                $body
            }
        }
    }};
}

/// The activation `code` over a row, in place, the match outside the loop.
#[inline(always)]
pub(super) fn activate_row(row: &mut [f32], code: i32, a: f32, b: f32) {
    with_act!(code, a, b, |f| for v in row.iter_mut() {
        *v = f(*v)
    })
}

/// `v = mul · v + add` over a row, in place (a fused scalar affine op after an activation).
#[inline(always)]
pub(super) fn affine_row(row: &mut [f32], mul: f32, add: f32) {
    if mul != 1.0 || add != 0.0 {
        for v in row.iter_mut() {
            *v = *v * mul + add;
        }
    }
}

/// Expands `$body` with `$f` bound to the binary operator `op` as a closure.
macro_rules! with_bin {
    ($op:expr, |$f:ident| $body:expr) => {{
        match $op {
            bin::ADD => {
                let $f = |x: f32, y: f32| x + y;
                $body
            }
            bin::SUB => {
                let $f = |x: f32, y: f32| x - y;
                $body
            }
            bin::MUL => {
                let $f = |x: f32, y: f32| x * y;
                $body
            }
            bin::DIV => {
                let $f = |x: f32, y: f32| x / y;
                $body
            }
            bin::MAX => {
                let $f = |x: f32, y: f32| x.max(y);
                $body
            }
            bin::MIN => {
                let $f = |x: f32, y: f32| x.min(y);
                $body
            }
            op => {
                let $f = |x: f32, y: f32| combine(x, y, op);
                $body
            }
        }
    }};
}

multiversion! {
    /// `y = act(x)` over `n` contiguous elements.
    pub(super) unsafe fn unary(p: &k::UnaryParams) {
        let n = p.n.max(0) as usize;
        // `y` may be `x` (in place): raw pointers, no slices that would alias.
        let (x, y) = (p.x as *const f32, p.y as *mut f32);
            with_act!(p.act, p.a, p.b, |f| for i in 0..n {
                *y.add(i) = f(*x.add(i))
            })
    }
}

multiversion! {
    /// `y = act(a op b)` over `n` contiguous elements.
    pub(super) unsafe fn binary_same(p: &k::BinarySameParams) {
        let n = p.n.max(0) as usize;
        // `y` may be `a` or `b` (in place): raw pointers, no slices that would alias.
        let (a, b, y) = (p.a as *const f32, p.b as *const f32, p.y as *mut f32);
            with_bin!(p.op, |g| with_act!(p.act, 0.0, 0.0, |f| for i in 0..n {
                *y.add(i) = f(g(*a.add(i), *b.add(i)))
            }))
    }
}

/// A row-major walk over a shape through `N` strided views: dimensions of size 1 dropped,
/// neighbours every view traverses contiguously merged, then rows of the last dimension.
struct Walk<const N: usize> {
    rank: usize,
    dims: [usize; MAX_RANK],
    /// Per dimension, each view's stride.
    strides: [[isize; N]; MAX_RANK],
    offsets: [isize; N],
}

impl<const N: usize> Walk<N> {
    fn new(dims: &[i32], views: [(isize, [isize; MAX_RANK]); N]) -> Self {
        let mut w = Walk {
            rank: 0,
            dims: [1; MAX_RANK],
            strides: [[0; N]; MAX_RANK],
            offsets: views.map(|v| v.0),
        };
        for (d, &n) in dims.iter().enumerate() {
            let n = n.max(0) as usize;
            if n == 1 {
                continue;
            }
            let here: [isize; N] = std::array::from_fn(|v| views[v].1[d]);
            let r = w.rank;
            let merges = r > 0
                && w.strides[r - 1]
                    .iter()
                    .zip(&here)
                    .all(|(outer, inner)| *outer == inner * n as isize);
            if merges {
                w.dims[r - 1] *= n;
                w.strides[r - 1] = here;
            } else {
                w.dims[r] = n;
                w.strides[r] = here;
                w.rank += 1;
            }
        }
        if w.rank == 0 {
            w.rank = 1;
        }
        if dims.contains(&0) {
            w.dims[0] = 0;
        }
        w
    }

    /// Merges short last rows (fewer than 16 elements: an NHWC tensor's few channels) into
    /// their outer dimension when every view but the output either runs through both
    /// contiguously (or is a scalar) or repeats one row for every outer index (a
    /// per-channel bias): each of the latter, among the first `n_in` views whose data
    /// `srcs` points at, is tiled over the two dimensions into a buffer (returned, to be
    /// kept while the walk is used) that `srcs` then points at. EAST's geometry head,
    /// `sigmoid(x + bias) · 512` over `[19200, 4]`, walked 19200 rows of 4: 1.9 ms, most of
    /// it per-row overhead.
    ///
    /// # Safety
    /// `srcs[j]` is the data of view `j` (`j < n_in`), holding what the view addresses.
    unsafe fn merge_short_rows(&mut self, srcs: &mut [*const f32], n_in: usize) -> Vec<Vec<f32>> {
        let r = self.rank;
        if r < 2 || self.len() == 0 || self.dims[r - 1] >= 16 || self.dims[r - 2] < 16 {
            return Vec::new();
        }
        let (len, outer) = (self.dims[r - 1], self.dims[r - 2]);
        let (inner, across) = (self.strides[r - 1], self.strides[r - 2]);
        let merges = |v: usize| across[v] == inner[v] * len as isize;
        let repeats = |v: usize| v < n_in && (0..r - 1).all(|d| self.strides[d][v] == 0);
        if !(0..N).all(|v| merges(v) || repeats(v)) || (0..N).all(merges) {
            return Vec::new();
        }
        let mut tiles = Vec::new();
        for v in 0..N {
            if merges(v) {
                self.strides[r - 2][v] = inner[v];
                continue;
            }
            let row = srcs[v].offset(self.offsets[v]);
            let tile: Vec<f32> = (0..outer * len)
                .map(|t| *row.offset((t % len) as isize * inner[v]))
                .collect();
            srcs[v] = tile.as_ptr();
            self.offsets[v] = 0;
            self.strides[r - 2][v] = 1;
            tiles.push(tile);
        }
        self.dims[r - 2] *= len;
        self.dims[r - 1] = 1;
        self.strides[r - 1] = [0; N];
        self.rank -= 1;
        tiles
    }

    /// Elements the walk visits.
    fn len(&self) -> usize {
        self.dims[..self.rank].iter().product()
    }

    /// Calls `row(offsets, len, strides)` for every row, in row-major order.
    #[inline(always)]
    fn rows(&self, row: impl FnMut(&[isize; N], usize, &[isize; N])) {
        self.rows_range(0..self.len(), row)
    }

    /// [`Walk::rows`] for the elements `range` only (row-major positions), the first and
    /// last rows possibly partial, so threads can split a walk anywhere.
    #[inline(always)]
    fn rows_range(
        &self,
        range: std::ops::Range<usize>,
        mut row: impl FnMut(&[isize; N], usize, &[isize; N]),
    ) {
        let last = self.rank - 1;
        let len = self.dims[last];
        let inner = self.strides[last];
        if range.is_empty() || len == 0 {
            return;
        }
        let mut idx = [0usize; MAX_RANK];
        let (mut rest, mut col) = (range.start / len, range.start % len);
        let mut off = self.offsets;
        for d in (0..last).rev() {
            idx[d] = rest % self.dims[d];
            rest /= self.dims[d];
            for (o, s) in off.iter_mut().zip(&self.strides[d]) {
                *o += idx[d] as isize * s;
            }
        }
        let mut e = range.start;
        loop {
            let n = (len - col).min(range.end - e);
            let at: [isize; N] = std::array::from_fn(|v| off[v] + col as isize * inner[v]);
            row(&at, n, &inner);
            e += n;
            if e >= range.end {
                return;
            }
            col = 0;
            // Odometer over the outer dimensions.
            let mut d = last;
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                idx[d] += 1;
                for (o, s) in off.iter_mut().zip(&self.strides[d]) {
                    *o += s;
                }
                if idx[d] < self.dims[d] {
                    break;
                }
                for (o, s) in off.iter_mut().zip(&self.strides[d]) {
                    *o -= s * self.dims[d] as isize;
                }
                idx[d] = 0;
            }
        }
    }
}

/// Pieces to split `n` elements into on `threads` threads: none below ~32 K elements (a
/// launch on the pool costs about a microsecond, a piece should cost much more).
fn pieces(threads: usize, n: usize) -> usize {
    threads.min(n / (1 << 15)).max(1)
}

fn view(v: &View) -> (isize, [isize; MAX_RANK]) {
    (v.offset as isize, v.strides.map(|s| s as isize))
}

/// The row-major strides of `dims` (a contiguous output).
fn dense(dims: &[i32]) -> (isize, [isize; MAX_RANK]) {
    let mut s = [0isize; MAX_RANK];
    let mut acc = 1isize;
    for d in (0..dims.len()).rev() {
        s[d] = acc;
        acc *= dims[d].max(1) as isize;
    }
    (0, s)
}

multiversion! {
/// `y[ch·n + i] = x[i·c + ch]` for `c` channels of `n` pixels (`y` holds `c·n` floats).
unsafe fn deinterleave(x: &[f32], y: *mut f32, c: usize, n: usize) {
    let out = std::slice::from_raw_parts_mut(y, c * n);
    match c {
        3 => {
            let (y0, rest) = out.split_at_mut(n);
            let (y1, y2) = rest.split_at_mut(n);
            for (i, px) in x.chunks_exact(3).enumerate() {
                y0[i] = px[0];
                y1[i] = px[1];
                y2[i] = px[2];
            }
        }
        _ => {
            for (i, px) in x.chunks_exact(c).enumerate() {
                for (ch, &v) in px.iter().enumerate() {
                    out[ch * n + i] = v;
                }
            }
        }
    }
}
}

/// `dst[t] = src[t · stride]` for `t < dst.len()`.
#[inline(always)]
unsafe fn gather(dst: &mut [f32], src: *const f32, stride: isize) {
    match stride {
        1 => dst.copy_from_slice(std::slice::from_raw_parts(src, dst.len())),
        0 => dst.fill(*src),
        _ => {
            for (t, d) in dst.iter_mut().enumerate() {
                *d = *src.offset(t as isize * stride);
            }
        }
    }
}

multiversion! {
    /// `y = act(a op b)` with broadcasting views: rows with both operands contiguous, or one
    /// a broadcast scalar, in loops the compiler vectorises; ranges split over threads.
    pub(super) unsafe fn binary(p: &k::BinaryParams, threads: usize) {
        let rank = p.rank as usize;
        let dims = &p.dims[..rank];
        let walk = Walk::new(dims, [view(&p.va), view(&p.vb), dense(dims)]);
        let (a, b, y) = (
            Shared(p.a as *const f32),
            Shared(p.b as *const f32),
            Shared(p.y as *mut f32),
        );
        let parts = pieces(threads, walk.len());
        parallel(parts, &|piece| {
            with_bin!(p.op, |g| with_act!(p.act, 0.0, 0.0, |f| walk.rows_range(
                range(walk.len(), parts, piece),
                |off, len, st| {
                    let (pa, pb) = (a.get().offset(off[0]), b.get().offset(off[1]));
                    // SAFETY: the output is dense and never an input (see `pointwise`).
                    let out = std::slice::from_raw_parts_mut(y.get().offset(off[2]), len);
                    match (st[0], st[1]) {
                        (1, 1) => {
                            let (xa, xb) = (
                                std::slice::from_raw_parts(pa, len),
                                std::slice::from_raw_parts(pb, len),
                            );
                            for ((d, u), v) in out.iter_mut().zip(xa).zip(xb) {
                                *d = f(g(*u, *v));
                            }
                        }
                        (1, 0) => {
                            let (xa, v) = (std::slice::from_raw_parts(pa, len), *pb);
                            for (d, u) in out.iter_mut().zip(xa) {
                                *d = f(g(*u, v));
                            }
                        }
                        (0, 1) => {
                            let (u, xb) = (*pa, std::slice::from_raw_parts(pb, len));
                            for (d, v) in out.iter_mut().zip(xb) {
                                *d = f(g(u, *v));
                            }
                        }
                        (sa, sb) => {
                            for (t, d) in out.iter_mut().enumerate() {
                                let t = t as isize;
                                *d = f(g(*pa.offset(t * sa), *pb.offset(t * sb)));
                            }
                        }
                    }
                }
            )))
        })
    }
}

multiversion! {
    /// A fused chain: per row chunk, each operator over whole chunks of its operands (an
    /// input row read in place, a broadcast input as a scalar, a strided one gathered), the
    /// last one written straight into the output.
    pub(super) unsafe fn pointwise(p: &k::PointwiseParams, threads: usize) {
        let rank = p.rank as usize;
        let dims = &p.dims[..rank];
        let (n_in, n_ops) = (p.n_in.max(0) as usize, p.n_ops.max(0) as usize);
        let mut views = [dense(dims); k::PW_MAX_IN + 1];
        for (v, src) in views.iter_mut().zip(&p.views).take(n_in) {
            *v = view(src);
        }
        let mut walk = Walk::new(dims, views);
        let mut srcs: [*const f32; k::PW_MAX_IN] = p.inputs.map(|v| v as *const f32);
        let _tiles = walk.merge_short_rows(&mut srcs, n_in);
        let srcs = Shared(srcs);
        let y = Shared(p.y as *mut f32);
        let parts = pieces(threads, walk.len());
        parallel(parts, &|piece| {
        let mut gathered = vec![[0f32; CHUNK]; k::PW_MAX_IN];
        let mut temps = vec![[0f32; CHUNK]; k::PW_MAX_OPS];
        walk.rows_range(range(walk.len(), parts, piece), |off, len, st| {
            let py = y.get().offset(off[k::PW_MAX_IN]);
            let mut c0 = 0;
            while c0 < len {
                let l = CHUNK.min(len - c0);
                let mut inputs = [Operand::Splat(0.0); k::PW_MAX_IN];
                for (j, g) in gathered.iter_mut().enumerate().take(n_in) {
                    let src = srcs.get()[j].offset(off[j] + c0 as isize * st[j]);
                    inputs[j] = match st[j] {
                        0 => Operand::Splat(*src),
                        // SAFETY: the view holds `len` elements from `src` at stride 1.
                        1 => Operand::Row(std::slice::from_raw_parts(src, l)),
                        s => {
                            gather(&mut g[..l], src, s);
                            Operand::Row(&g[..l])
                        }
                    };
                }
                // SAFETY: the output is dense and never one of the inputs (the arena keeps
                // a node's inputs alive while it writes its output).
                let out = std::slice::from_raw_parts_mut(py.add(c0), l);
                if n_ops == 0 {
                    store(out, inputs[0]);
                }
                for o in 0..n_ops {
                    let (done, rest) = temps.split_at_mut(o);
                    let operand = |r: i32| -> Operand {
                        let r = r as usize;
                        if r < k::PW_MAX_IN {
                            inputs[r]
                        } else {
                            Operand::Row(&done[r - k::PW_MAX_IN][..l])
                        }
                    };
                    let dst: &mut [f32] = if o + 1 == n_ops { &mut *out } else { &mut rest[0][..l] };
                    let code = p.code[o];
                    if code >= k::PW_ACT_BASE {
                        with_act!(code - k::PW_ACT_BASE, p.ca[o], p.cb[o], |f| match operand(p.a[o]) {
                            Operand::Row(x) => {
                                for (d, v) in dst.iter_mut().zip(x) {
                                    *d = f(*v)
                                }
                            }
                            Operand::Splat(x) => dst.fill(f(x)),
                        })
                    } else {
                        with_bin!(code, |g| match (operand(p.a[o]), operand(p.b[o])) {
                            (Operand::Row(x), Operand::Row(z)) => {
                                for ((d, u), v) in dst.iter_mut().zip(x).zip(z) {
                                    *d = g(*u, *v)
                                }
                            }
                            (Operand::Row(x), Operand::Splat(v)) => {
                                for (d, u) in dst.iter_mut().zip(x) {
                                    *d = g(*u, v)
                                }
                            }
                            (Operand::Splat(u), Operand::Row(z)) => {
                                for (d, v) in dst.iter_mut().zip(z) {
                                    *d = g(u, *v)
                                }
                            }
                            (Operand::Splat(u), Operand::Splat(v)) => dst.fill(g(u, v)),
                        })
                    }
                }
                c0 += l;
            }
        })
        })
    }
}

multiversion! {
    /// A reduction: per output element, the reduced dimensions walked as coalesced rows, a
    /// contiguous row folded in 16 lanes (partial results combined at the end).
    pub(super) unsafe fn reduce(p: &k::ReduceParams) {
        let x = p.x as *const f32;
        let (rank, red_rank) = (p.rank.max(0) as usize, p.red_rank.max(0) as usize);
        let mut red_view = (0isize, [0isize; MAX_RANK]);
        for (s, &r) in red_view.1.iter_mut().zip(&p.red_strides[..red_rank]) {
            *s = r as isize;
        }
        let red = Walk::new(&p.red_dims[..red_rank], [red_view]);
        let outs = Walk::new(&p.out_dims[..rank], [view(&p.vout)]);
        let n_out = p.n_out.max(0) as usize;
        let y = std::slice::from_raw_parts_mut(p.y as *mut f32, n_out);
        let mut i = 0;
        macro_rules! run {
            ($init:expr, $map:expr, $f:expr) => {
                outs.rows(|off, len, st| {
                    for t in 0..len as isize {
                        let base = off[0] + t * st[0];
                        let mut acc = $init;
                        red.rows(|r, rlen, rst| {
                            acc = $f(acc, fold(x.offset(base + r[0]), rlen, rst[0], $init, $map, $f));
                        });
                        if i < n_out {
                            y[i] = acc * p.scale;
                        }
                        i += 1;
                    }
                })
            };
        }
        match p.op {
            k::red::MAX => run!(f32::NEG_INFINITY, |v: f32| v, |a: f32, b: f32| a.max(b)),
            k::red::MIN => run!(f32::INFINITY, |v: f32| v, |a: f32, b: f32| a.min(b)),
            k::red::PROD => run!(1.0f32, |v: f32| v, |a: f32, b: f32| a * b),
            k::red::SUM_SQUARES => run!(0.0f32, |v: f32| v * v, |a: f32, b: f32| a + b),
            _ => run!(0.0f32, |v: f32| v, |a: f32, b: f32| a + b),
        }
    }
}

/// Folds `n` elements `stride` apart with `f` after `map`, in 16 independent lanes when
/// they are contiguous (so the loop vectorises).
#[inline(always)]
pub(super) unsafe fn fold(
    src: *const f32,
    n: usize,
    stride: isize,
    init: f32,
    map: impl Fn(f32) -> f32,
    f: impl Fn(f32, f32) -> f32,
) -> f32 {
    // Folded in blocks whose partial results then join the total: a sum of millions folded
    // in one sequence per lane loses precision (2.1 M terms: 5.7e-3 off the exact sum with
    // 16 lanes alone; a GPU's tree is 5e-4 off), and the blocks cost nothing.
    const BLOCK: usize = 4096;
    if stride != 1 {
        let mut total = init;
        let mut start = 0;
        while start < n {
            let end = (start + BLOCK / 16).min(n);
            let part = (start..end).fold(init, |a, t| f(a, map(*src.offset(t as isize * stride))));
            total = f(total, part);
            start = end;
        }
        return total;
    }
    let row = std::slice::from_raw_parts(src, n);
    row.chunks(BLOCK).fold(init, |total, block| {
        let mut lanes = [init; 16];
        let chunks = block.chunks_exact(16);
        let rest = chunks.remainder();
        for c in chunks {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l = f(*l, map(*v));
            }
        }
        let acc = lanes.into_iter().fold(init, &f);
        f(total, rest.iter().fold(acc, |a, v| f(a, map(*v))))
    })
}

/// An operand of a fused operator over one chunk.
#[derive(Clone, Copy)]
enum Operand<'a> {
    Row(&'a [f32]),
    Splat(f32),
}

#[inline(always)]
fn store(out: &mut [f32], v: Operand) {
    match v {
        Operand::Row(x) => out.copy_from_slice(x),
        Operand::Splat(x) => out.fill(x),
    }
}

multiversion! {
/// Each of `src` 4 or 8 times over into `out` (`out.len() / src.len()` times): nearest
/// upsampling's runs as fixed-width stores, compiled per instruction set (a `fill` call per
/// run made PP-OCR det's x4 and x8 upsamples 2-3x slower; the x2 runs stay in `copy`, which
/// was faster there built for the baseline).
unsafe fn upsample_runs(out: &mut [f32], src: &[f32]) {
    macro_rules! runs {
        ($n:literal) => {
            for (run, &v) in out.chunks_exact_mut($n).zip(src) {
                *<&mut [f32; $n]>::try_from(run).unwrap() = [v; $n];
            }
        };
    }
    if out.len() == 4 * src.len() {
        runs!(4)
    } else {
        runs!(8)
    }
}
}

/// A strided copy; `x_dims` below `dims` broadcasts (size 1) or tiles (`c mod x_dims`).
pub(super) unsafe fn copy(p: &k::CopyParams) {
    let (x, y) = (p.x as *const f32, p.y as *mut f32);
    let rank = p.rank as usize;
    let dims = &p.dims[..rank];
    let tiles = (0..rank).any(|d| p.x_dims[d] != p.dims[d] && p.x_dims[d] != 1);
    if !tiles {
        // Broadcasting is a zero stride.
        let mut vx = view(&p.vx);
        for d in 0..rank {
            if p.x_dims[d] != p.dims[d] {
                vx.1[d] = 0;
            }
        }
        let walk = Walk::new(dims, [vx, view(&p.vy)]);
        let r = walk.rank;
        if r >= 2
            && walk.strides[r - 1] == [0, 1]
            && walk.strides[r - 2][1] == walk.dims[r - 1] as isize
        {
            // Nearest upsampling along the last axis (tract's NearestUpsample, a Resize):
            // each source element `rep` times in a row. Rows of the walk without its last
            // dimension then each fill one contiguous run of the output.
            let rep = walk.dims[r - 1];
            let outer = Walk {
                rank: r - 1,
                ..walk
            };
            return outer.rows(|off, len, st| {
                let (px, py) = (x.offset(off[0]), y.offset(off[1]));
                let out = std::slice::from_raw_parts_mut(py, len * rep);
                if rep == 2 && st[0] == 1 {
                    let src = std::slice::from_raw_parts(px, len);
                    for (pair, &v) in out.chunks_exact_mut(2).zip(src) {
                        pair[0] = v;
                        pair[1] = v;
                    }
                    return;
                }
                if st[0] == 1 && matches!(rep, 4 | 8) {
                    return upsample_runs(out, std::slice::from_raw_parts(px, len));
                }
                for (t, run) in out.chunks_exact_mut(rep).enumerate() {
                    run.fill(*px.offset(t as isize * st[0]));
                }
            });
        }
        if r == 2 {
            let (c, n) = (walk.dims[0], walk.dims[1]);
            if (2..=4).contains(&c)
                && walk.strides[1] == [c as isize, 1]
                && walk.strides[0] == [1, n as isize]
            {
                // Channels-last to channels-first (a tf2onnx model's NHWC input transposed to
                // NCHW): one pass reading the pixels in order, instead of one strided pass
                // per channel over all of them (EAST's 480x640x3: 1.5 ms).
                let (px, py) = (x.offset(walk.offsets[0]), y.offset(walk.offsets[1]));
                return deinterleave(std::slice::from_raw_parts(px, c * n), py, c, n);
            }
        }
        return walk.rows(|off, len, st| {
            let (px, py) = (x.offset(off[0]), y.offset(off[1]));
            if st[1] == 1 {
                gather(std::slice::from_raw_parts_mut(py, len), px, st[0]);
            } else {
                for t in 0..len as isize {
                    *py.offset(t * st[1]) = *px.offset(t * st[0]);
                }
            }
        });
    }
    for i in 0..p.n.max(0) as usize {
        let mut idx = i;
        let (mut ox, mut oy) = (p.vx.offset as isize, p.vy.offset as isize);
        for d in (0..rank).rev() {
            let n = p.dims[d].max(1) as usize;
            let c = idx % n;
            idx /= n;
            ox += (c % p.x_dims[d].max(1) as usize) as isize * p.vx.strides[d] as isize;
            oy += c as isize * p.vy.strides[d] as isize;
        }
        *y.offset(oy) = *x.offset(ox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_merges_contiguous_dimensions_and_visits_every_element_once() {
        // [2, 3, 4] dense, and a view broadcasting the middle dimension.
        let dims = [2, 3, 4];
        let dense_v = dense(&dims);
        let mut bcast = dense_v;
        bcast.1 = [4, 0, 1, 0, 0, 0];
        let walk = Walk::new(&dims, [dense_v, bcast]);
        assert_eq!(walk.rank, 3, "broadcast keeps the dimensions apart");
        let mut seen = Vec::new();
        walk.rows(|off, len, st| {
            for t in 0..len as isize {
                seen.push((off[0] + t * st[0], off[1] + t * st[1]));
            }
        });
        let want: Vec<(isize, isize)> = (0..24)
            .map(|i| (i as isize, ((i / 12) * 4 + i % 4) as isize))
            .collect();
        assert_eq!(seen, want);
        let walk = Walk::new(&dims, [dense_v, dense_v]);
        assert_eq!(
            (walk.rank, walk.dims[0]),
            (1, 24),
            "dense views merge into one row"
        );
        // An empty dimension visits nothing.
        let walk = Walk::new(&[2, 0, 3], [dense(&[2, 0, 3])]);
        walk.rows(|_, _, _| panic!("a row of an empty tensor"));
    }
}
