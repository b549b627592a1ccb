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

use super::cuda::device::{
    host_memory_methods, DevPtr, Device, DeviceError, DeviceResult, HostMemory,
};
use super::cuda::kernels::{self as k, act, bin, Kernel, View, MAX_RANK};

/// Host memory standing in for device memory, and the Rust kernels.
pub(crate) struct CpuDevice {
    memory: HostMemory,
}

/// The process's CPU device.
pub(crate) fn device() -> &'static dyn Device {
    static CPU: std::sync::OnceLock<CpuDevice> = std::sync::OnceLock::new();
    CPU.get_or_init(|| CpuDevice {
        memory: HostMemory::new(64, usize::MAX),
    })
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

impl Device for CpuDevice {
    fn describe(&self) -> String {
        "cpu (native kernels)".into()
    }

    host_memory_methods!(memory);

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
        unsafe {
            match kernel {
                Kernel::Unary => unary(&params(bytes)?),
                Kernel::Pointwise => pointwise(&params(bytes)?),
                Kernel::Binary => binary(&params(bytes)?),
                Kernel::BinarySame => binary_same(&params(bytes)?),
                Kernel::Copy => copy(&params(bytes)?),
                Kernel::Pad => pad(&params(bytes)?),
                Kernel::Conv | Kernel::Conv1x1 | Kernel::ConvNarrow | Kernel::ConvDepthwise => {
                    conv(&params(bytes)?)
                }
                Kernel::Deconv => deconv(&params(bytes)?),
                Kernel::Gemm | Kernel::GemmNarrow => gemm(&params(bytes)?),
                Kernel::Pool => pool(&params(bytes)?),
                Kernel::Resize => resize(&params(bytes)?),
                Kernel::Reduce => reduce(&params(bytes)?),
                Kernel::Softmax => softmax(&params(bytes)?),
            }
        }
        Ok(())
    }
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

/// `my_offset`: the offset in view `v` of the element with row-major index `idx` in `dims`.
fn offset(mut idx: usize, rank: usize, dims: &[i32; MAX_RANK], v: &View) -> isize {
    let mut off = v.offset as isize;
    for d in (0..rank).rev() {
        let n = dims[d].max(1) as usize;
        off += (idx % n) as isize * v.strides[d] as isize;
        idx /= n;
    }
    off
}

unsafe fn unary(p: &k::UnaryParams) {
    let (x, y) = (p.x as *const f32, p.y as *mut f32);
    for i in 0..p.n.max(0) as usize {
        *y.add(i) = activate(*x.add(i), p.act, p.a, p.b);
    }
}

unsafe fn binary_same(p: &k::BinarySameParams) {
    let (a, b, y) = (p.a as *const f32, p.b as *const f32, p.y as *mut f32);
    for i in 0..p.n.max(0) as usize {
        *y.add(i) = activate(combine(*a.add(i), *b.add(i), p.op), p.act, 0.0, 0.0);
    }
}

unsafe fn binary(p: &k::BinaryParams) {
    let (a, b, y) = (p.a as *const f32, p.b as *const f32, p.y as *mut f32);
    let rank = p.rank as usize;
    for i in 0..p.n.max(0) as usize {
        let x = *a.offset(offset(i, rank, &p.dims, &p.va));
        let z = *b.offset(offset(i, rank, &p.dims, &p.vb));
        *y.add(i) = activate(combine(x, z, p.op), p.act, 0.0, 0.0);
    }
}

unsafe fn pointwise(p: &k::PointwiseParams) {
    let y = p.y as *mut f32;
    let rank = p.rank as usize;
    let (n_in, n_ops) = (p.n_in.max(0) as usize, p.n_ops.max(0) as usize);
    let mut r = [0f32; k::PW_MAX_IN + k::PW_MAX_OPS];
    for i in 0..p.n.max(0) as usize {
        for (j, (input, view)) in p.inputs.iter().zip(&p.views).take(n_in).enumerate() {
            r[j] = *(*input as *const f32).offset(offset(i, rank, &p.dims, view));
        }
        for o in 0..n_ops {
            let x = r[p.a[o] as usize];
            let c = p.code[o];
            r[k::PW_MAX_IN + o] = if c >= k::PW_ACT_BASE {
                activate(x, c - k::PW_ACT_BASE, p.ca[o], p.cb[o])
            } else {
                combine(x, r[p.b[o] as usize], c)
            };
        }
        *y.add(i) = r[k::PW_MAX_IN + n_ops.max(1) - 1];
    }
}

unsafe fn copy(p: &k::CopyParams) {
    let (x, y) = (p.x as *const f32, p.y as *mut f32);
    let rank = p.rank as usize;
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
/// kh, kw]`, bias and activation in the epilogue. Per output channel, each weight tap adds a
/// scaled input row into the output row (contiguous when the stride is 1).
unsafe fn conv(p: &k::ConvParams) {
    let (x, w, y) = (p.x as *const f32, p.wt as *const f32, p.y as *mut f32);
    let bias = p.bias as *const f32;
    let [n, c, h, wd] = [p.n, p.c, p.h, p.w].map(|v| v.max(0) as usize);
    let [co, oh, ow] = [p.co, p.oh, p.ow].map(|v| v.max(0) as usize);
    let [kh, kw, sh, sw, dh, dw] = [p.kh, p.kw, p.sh, p.sw, p.dh, p.dw].map(|v| v.max(0) as usize);
    let (pt, pl) = (p.pt as isize, p.pl as isize);
    let group = p.group.max(1) as usize;
    let (cg, mg) = (c / group, co / group);
    // Output columns whose input column is inside for tap kx: [lo, hi).
    let cols = |kx: usize| {
        let start = |o: usize| o as isize * sw as isize - pl + (kx * dw) as isize;
        let lo = (0..ow).find(|&o| start(o) >= 0).unwrap_or(ow);
        let hi = (lo..ow).find(|&o| start(o) >= wd as isize).unwrap_or(ow);
        (lo, hi, start(0))
    };
    let spans: Vec<(usize, usize, isize)> = (0..kw).map(cols).collect();
    // A 1x1 convolution without stride, padding or dilation reads whole input planes: one
    // contiguous multiply-add per (output channel, input channel) over the plane.
    let pointwise = kh == 1 && kw == 1 && sh == 1 && sw == 1 && pt == 0 && pl == 0;
    for b in 0..n {
        for oc in 0..co {
            let g = oc / mg.max(1);
            let out = std::slice::from_raw_parts_mut(y.add((b * co + oc) * oh * ow), oh * ow);
            let b0 = if bias.is_null() { 0.0 } else { *bias.add(oc) };
            out.fill(b0);
            if pointwise && oh * ow == h * wd {
                for ci in 0..cg {
                    let plane = x.add((b * c + g * cg + ci) * h * wd);
                    let xs = std::slice::from_raw_parts(plane, h * wd);
                    let wv = *w.add(oc * cg + ci);
                    for (o, v) in out.iter_mut().zip(xs) {
                        *o += wv * v;
                    }
                }
                for v in out.iter_mut() {
                    *v = activate(*v, p.act, p.a, p.b);
                }
                continue;
            }
            for ci in 0..cg {
                let plane = x.add((b * c + g * cg + ci) * h * wd);
                let taps = w.add((oc * cg + ci) * kh * kw);
                for oy in 0..oh {
                    let row = &mut out[oy * ow..(oy + 1) * ow];
                    for ky in 0..kh {
                        let iy = (oy * sh) as isize - pt + (ky * dh) as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let src = plane.add(iy as usize * wd);
                        for (kx, &(lo, hi, s0)) in spans.iter().enumerate() {
                            let wv = *taps.add(ky * kw + kx);
                            if hi <= lo {
                                continue;
                            }
                            if sw == 1 {
                                let base = src.offset(s0 + lo as isize);
                                let xs = std::slice::from_raw_parts(base, hi - lo);
                                for (o, v) in row[lo..hi].iter_mut().zip(xs) {
                                    *o += wv * v;
                                }
                            } else {
                                for (o, r) in row.iter_mut().enumerate().take(hi).skip(lo) {
                                    *r += wv * *src.offset(s0 + (o * sw) as isize);
                                }
                            }
                        }
                    }
                }
            }
            for v in out.iter_mut() {
                *v = activate(*v, p.act, p.a, p.b);
            }
        }
    }
}

/// ConvTranspose (`deconv2d_f32`): weights `[co, c, kh, kw]`. Each input pixel scatters into
/// the outputs its taps reach (exactly the multiply-adds there are, where a gather over every
/// output would test each tap for divisibility), bias first, activation last.
unsafe fn deconv(p: &k::ConvParams) {
    let (x, w, y) = (p.x as *const f32, p.wt as *const f32, p.y as *mut f32);
    let bias = p.bias as *const f32;
    let [n, c, h, wd, co, oh, ow, kh, kw] =
        [p.n, p.c, p.h, p.w, p.co, p.oh, p.ow, p.kh, p.kw].map(|v| v.max(0) as usize);
    let [sh, sw, dh, dw] = [p.sh, p.sw, p.dh, p.dw].map(|v| v.max(1) as isize);
    let (pt, pl) = (p.pt as isize, p.pl as isize);
    for b in 0..n {
        for oc in 0..co {
            let out = std::slice::from_raw_parts_mut(y.add((b * co + oc) * oh * ow), oh * ow);
            out.fill(if bias.is_null() { 0.0 } else { *bias.add(oc) });
            for ic in 0..c {
                let xp = std::slice::from_raw_parts(x.add((b * c + ic) * h * wd), h * wd);
                let wp = w.add((oc * c + ic) * kh * kw);
                for ky in 0..kh {
                    for kx in 0..kw {
                        let wv = *wp.add(ky * kw + kx);
                        let dx = kx as isize * dw - pl;
                        for iy in 0..h {
                            let oy = iy as isize * sh - pt + ky as isize * dh;
                            if oy < 0 || oy >= oh as isize {
                                continue;
                            }
                            let orow = &mut out[oy as usize * ow..(oy as usize + 1) * ow];
                            for (ix, v) in xp[iy * wd..(iy + 1) * wd].iter().enumerate() {
                                let ox = ix as isize * sw + dx;
                                if ox >= 0 && ox < ow as isize {
                                    orow[ox as usize] += wv * v;
                                }
                            }
                        }
                    }
                }
            }
            for v in out.iter_mut() {
                *v = activate(*v, p.act, p.a, p.b);
            }
        }
    }
}

/// Batched strided GEMM, `c = act(a · b)`; rows of `b` and `c` are walked contiguously
/// when their column stride is 1 (the common case), so the inner loop vectorises.
unsafe fn gemm(p: &k::GemmParams) {
    let [batch, m, n, kk] = [p.batch, p.m, p.n, p.k].map(|v| v.max(0) as usize);
    let s = |v: i32| v as isize;
    let mut row = vec![0f32; n];
    // B with its rows not contiguous (a transposed operand) is copied once per batch into
    // `[k, n]` row-major, so the inner loop always runs along contiguous memory.
    let mut packed = if p.sbn == 1 {
        Vec::new()
    } else {
        vec![0f32; kk * n]
    };
    for z in 0..batch {
        let a = (p.a as *const f32).offset(z as isize * s(p.sab));
        let b = (p.b as *const f32).offset(z as isize * s(p.sbb));
        let c = (p.c as *mut f32).offset(z as isize * s(p.scb));
        if p.sbn != 1 {
            for q in 0..kk {
                for j in 0..n {
                    packed[q * n + j] = *b.offset(q as isize * s(p.sbk) + j as isize * s(p.sbn));
                }
            }
        }
        for i in 0..m {
            row.fill(0.0);
            for q in 0..kk {
                let av = *a.offset(i as isize * s(p.sam) + q as isize * s(p.sak));
                let bs = if p.sbn == 1 {
                    std::slice::from_raw_parts(b.offset(q as isize * s(p.sbk)), n)
                } else {
                    &packed[q * n..(q + 1) * n]
                };
                for (r, v) in row.iter_mut().zip(bs) {
                    *r += av * v;
                }
            }
            for (j, v) in row.iter().enumerate() {
                *c.offset(i as isize * s(p.scm) + j as isize * s(p.scn)) =
                    activate(*v, p.act, 0.0, 0.0);
            }
        }
    }
}

unsafe fn pool(p: &k::PoolParams) {
    let (x, y) = (p.x as *const f32, p.y as *mut f32);
    let [nc, h, w, oh, ow, kh, kw] =
        [p.nc, p.h, p.w, p.oh, p.ow, p.kh, p.kw].map(|v| v.max(0) as isize);
    let [sh, sw, dh, dw, pt, pl] = [p.sh, p.sw, p.dh, p.dw, p.pt, p.pl].map(|v| v as isize);
    let is_max = p.mode == k::pool::MAX;
    let mut i = 0usize;
    for plane in 0..nc {
        let xp = x.offset(plane * h * w);
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = if is_max { f32::NEG_INFINITY } else { 0.0 };
                let mut taps = 0;
                for ky in 0..kh {
                    let ih = oy * sh - pt + ky * dh;
                    if ih < 0 || ih >= h {
                        continue;
                    }
                    for kx in 0..kw {
                        let iw = ox * sw - pl + kx * dw;
                        if iw < 0 || iw >= w {
                            continue;
                        }
                        let v = *xp.offset(ih * w + iw);
                        acc = if is_max { acc.max(v) } else { acc + v };
                        taps += 1;
                    }
                }
                if p.mode == k::pool::AVG {
                    let count = if p.count_pad != 0 {
                        kh * kw
                    } else {
                        taps.max(1)
                    };
                    acc /= count as f32;
                }
                *y.add(i) = acc;
                i += 1;
            }
        }
    }
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

unsafe fn resize(p: &k::ResizeParams) {
    let (x, y) = (p.x as *const f32, p.y as *mut f32);
    let [nc, h, w, oh, ow] = [p.nc, p.h, p.w, p.oh, p.ow].map(|v| v.max(0) as usize);
    let mut i = 0usize;
    for plane in 0..nc {
        let xp = x.add(plane * h * w);
        for oy in 0..oh {
            let sy0 = source_coord(oy, p.scale_h, h, oh, p.coord);
            for ox in 0..ow {
                let sx0 = source_coord(ox, p.scale_w, w, ow, p.coord);
                *y.add(i) = if p.linear == 0 {
                    *xp.add(nearest(sy0, p.nearest, h) * w + nearest(sx0, p.nearest, w))
                } else {
                    let sy = sy0.max(0.0).min(h as f32 - 1.0);
                    let sx = sx0.max(0.0).min(w as f32 - 1.0);
                    let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
                    let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
                    let (fy, fx) = (sy - y0 as f32, sx - x0 as f32);
                    let at = |r: usize, c: usize| *xp.add(r * w + c);
                    let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                    let bot = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                    top * (1.0 - fy) + bot * fy
                };
                i += 1;
            }
        }
    }
}

unsafe fn reduce(p: &k::ReduceParams) {
    let (x, y) = (p.x as *const f32, p.y as *mut f32);
    let (rank, red_rank) = (p.rank as usize, p.red_rank as usize);
    let red_n: usize = p.red_dims[..red_rank]
        .iter()
        .map(|&d| d.max(0) as usize)
        .product();
    let init = match p.op {
        k::red::MAX => f32::NEG_INFINITY,
        k::red::MIN => f32::INFINITY,
        k::red::PROD => 1.0,
        _ => 0.0,
    };
    for i in 0..p.n_out.max(0) as usize {
        let base = offset(i, rank, &p.out_dims, &p.vout);
        let mut acc = init;
        for j in 0..red_n {
            let mut idx = j;
            let mut off = base;
            for d in (0..red_rank).rev() {
                let n = p.red_dims[d].max(1) as usize;
                off += (idx % n) as isize * p.red_strides[d] as isize;
                idx /= n;
            }
            let v = *x.offset(off);
            acc = match p.op {
                k::red::MAX => acc.max(v),
                k::red::MIN => acc.min(v),
                k::red::PROD => acc * v,
                k::red::SUM_SQUARES => acc + v * v,
                _ => acc + v,
            };
        }
        *y.add(i) = acc * p.scale;
    }
}

unsafe fn softmax(p: &k::SoftmaxParams) {
    let (x, y) = (p.x as *const f32, p.y as *mut f32);
    let [outer, axis, inner] = [p.outer, p.axis, p.inner].map(|v| v.max(0) as usize);
    for o in 0..outer {
        for r in 0..inner {
            let base = o * axis * inner + r;
            let at = |j: usize| base + j * inner;
            let mx = (0..axis).fold(f32::NEG_INFINITY, |m, j| m.max(*x.add(at(j))));
            let sum: f32 = (0..axis).map(|j| (*x.add(at(j)) - mx).exp()).sum();
            for j in 0..axis {
                let v = *x.add(at(j)) - mx;
                *y.add(at(j)) = if p.log != 0 {
                    v - sum.ln()
                } else {
                    v.exp() / sum
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
