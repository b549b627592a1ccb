//! The instruction set the CPU kernels are compiled for, picked once at run time.

/// The instruction set the kernels use on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    /// AVX-512F with FMA: the intrinsic microkernel.
    Avx512,
    /// AVX2 with FMA: an intrinsic microkernel for the GEMM, the other loops compiled for it.
    Avx2,
    /// Anything else: the portable loops.
    Portable,
}

/// The best instruction set this CPU has.
pub(super) fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    })
}

/// Defines `unsafe fn $name` three times over, compiled for AVX-512, for AVX2 + FMA and for
/// the portable baseline, and calls the one [`isa`] picks. The body is repeated, not called,
/// so its closures (the element-wise loops, the walk's row callbacks) are compiled with the
/// same target features and the compiler vectorises them at that width.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis unsafe fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis unsafe fn $name($($arg: $ty),*) {
            // `FMA`: whether the variant may fuse multiply-adds (`f32::mul_add` is one
            // instruction there, a call into libm in the portable one); `AVX512`: whether
            // it may call AVX-512 intrinsic kernels.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) {
                #[allow(dead_code)]
                const FMA: bool = true;
                #[allow(dead_code)]
                const AVX512: bool = true;
                $body
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) {
                #[allow(dead_code)]
                const FMA: bool = true;
                #[allow(dead_code)]
                const AVX512: bool = false;
                $body
            }
            unsafe fn portable($($arg: $ty),*) {
                #[allow(dead_code)]
                const FMA: bool = false;
                #[allow(dead_code)]
                const AVX512: bool = false;
                $body
            }
            match $crate::execution::cpu::isa::isa() {
                #[cfg(target_arch = "x86_64")]
                $crate::execution::cpu::isa::Isa::Avx512 => avx512($($arg),*),
                #[cfg(target_arch = "x86_64")]
                $crate::execution::cpu::isa::Isa::Avx2 => avx2($($arg),*),
                _ => portable($($arg),*),
            }
        }
    };
}
pub(super) use multiversion;

/// Copies `n` floats, `n` small (a panel row holds at most 64): masked vector moves on
/// AVX-512 instead of a call into `memcpy`, whose overhead is the size of the copy here.
///
/// # Safety
/// `src` and `dst` hold `n` floats and do not overlap.
#[inline(always)]
pub(super) unsafe fn copy_short(dst: *mut f32, src: *const f32, n: usize) {
    #[cfg(target_arch = "x86_64")]
    match isa() {
        Isa::Avx512 => return copy_short_avx512(dst, src, n),
        Isa::Avx2 => return copy_short_avx2(dst, src, n),
        _ => {}
    }
    std::ptr::copy_nonoverlapping(src, dst, n);
}

/// Sets `n` floats to zero (see [`copy_short`]).
///
/// # Safety
/// `dst` holds `n` floats.
#[inline(always)]
pub(super) unsafe fn zero_short(dst: *mut f32, n: usize) {
    #[cfg(target_arch = "x86_64")]
    match isa() {
        Isa::Avx512 => return zero_short_avx512(dst, n),
        Isa::Avx2 => return zero_short_avx2(dst, n),
        _ => {}
    }
    std::ptr::write_bytes(dst, 0, n);
}

/// `dst[t] = src[2·t]` for `t < n`: a stride-2 convolution's patch row (de-interleaving 32
/// floats into 16 on AVX-512, 16 into 8 on AVX2, element by element elsewhere).
///
/// # Safety
/// `dst` holds `n` floats; `src` holds `2·n - 1` (the vector loop reads only pairs that
/// lie wholly inside that range, the last element is copied alone).
#[inline(always)]
pub(super) unsafe fn gather_stride2(dst: *mut f32, src: *const f32, n: usize) {
    let mut t = 0;
    #[cfg(target_arch = "x86_64")]
    match isa() {
        Isa::Avx512 => t = gather_stride2_avx512(dst, src, n),
        Isa::Avx2 => t = gather_stride2_avx2(dst, src, n),
        _ => {}
    }
    while t < n {
        *dst.add(t) = *src.add(2 * t);
        t += 1;
    }
}

/// The vector part of [`gather_stride2`]: groups of 16 whose 32 source floats are all inside
/// `2·n - 1`; returns how many outputs it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn gather_stride2_avx512(dst: *mut f32, src: *const f32, n: usize) -> usize {
    use std::arch::x86_64::*;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let mut t = 0;
    // Group t .. t + 16 reads src[2t .. 2t + 32): inside 2n - 1 floats while 2t + 32 <= 2n - 1.
    while 2 * t + 32 < 2 * n {
        let lo = _mm512_loadu_ps(src.add(2 * t));
        let hi = _mm512_loadu_ps(src.add(2 * t + 16));
        _mm512_storeu_ps(dst.add(t), _mm512_permutex2var_ps(lo, even, hi));
        t += 16;
    }
    t
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn copy_short_avx512(dst: *mut f32, src: *const f32, n: usize) {
    use std::arch::x86_64::*;
    let mut i = 0;
    while i + 16 <= n {
        _mm512_storeu_ps(dst.add(i), _mm512_loadu_ps(src.add(i)));
        i += 16;
    }
    if i < n {
        // Masked-off lanes are neither read nor written (no fault past the end).
        let m = ((1u32 << (n - i)) - 1) as __mmask16;
        _mm512_mask_storeu_ps(dst.add(i), m, _mm512_maskz_loadu_ps(m, src.add(i)));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn zero_short_avx512(dst: *mut f32, n: usize) {
    use std::arch::x86_64::*;
    let z = _mm512_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        _mm512_storeu_ps(dst.add(i), z);
        i += 16;
    }
    if i < n {
        let m = ((1u32 << (n - i)) - 1) as __mmask16;
        _mm512_mask_storeu_ps(dst.add(i), m, z);
    }
}

/// [`gather_stride2_avx512`] on AVX2: groups of 8 whose 16 source floats are all inside
/// `2·n - 1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn gather_stride2_avx2(dst: *mut f32, src: *const f32, n: usize) -> usize {
    use std::arch::x86_64::*;
    let mut t = 0;
    while 2 * t + 16 < 2 * n {
        let lo = _mm256_loadu_ps(src.add(2 * t));
        let hi = _mm256_loadu_ps(src.add(2 * t + 8));
        // Per 128-bit lane: lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6; then the 64-bit pairs in the
        // order 0 2 1 3.
        let even = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
        let even = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
            even,
        )));
        _mm256_storeu_ps(dst.add(t), even);
        t += 8;
    }
    t
}

/// The lanes below `n` (`n < 8`) of an AVX2 mask.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lanes_below(n: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn copy_short_avx2(dst: *mut f32, src: *const f32, n: usize) {
    use std::arch::x86_64::*;
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(dst.add(i), _mm256_loadu_ps(src.add(i)));
        i += 8;
    }
    if i < n {
        // Masked-off lanes are neither read nor written (no fault past the end).
        let m = lanes_below(n - i);
        _mm256_maskstore_ps(dst.add(i), m, _mm256_maskload_ps(src.add(i), m));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn zero_short_avx2(dst: *mut f32, n: usize) {
    use std::arch::x86_64::*;
    let z = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(dst.add(i), z);
        i += 8;
    }
    if i < n {
        _mm256_maskstore_ps(dst.add(i), lanes_below(n - i), z);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stride_2_gather_takes_every_other_float() {
        for n in 0..70usize {
            // Exactly the 2n - 1 floats the contract promises, nothing after them.
            let src: Vec<f32> = (0..(2 * n).saturating_sub(1)).map(|i| i as f32).collect();
            let mut dst = vec![f32::NAN; n + 1];
            unsafe { super::gather_stride2(dst.as_mut_ptr(), src.as_ptr(), n) };
            for (t, v) in dst[..n].iter().enumerate() {
                assert_eq!(*v, (2 * t) as f32, "n {n}, t {t}");
            }
            assert!(dst[n].is_nan(), "n {n}: wrote past the end");
        }
    }

    #[test]
    fn short_copies_and_zeros_stop_at_their_length() {
        for n in 0..70usize {
            let src: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
            let mut dst = vec![f32::NAN; n + 1];
            unsafe { super::copy_short(dst.as_mut_ptr(), src.as_ptr(), n) };
            assert_eq!(&dst[..n], &src[..], "n {n}");
            assert!(dst[n].is_nan(), "n {n}: copied past the end");
            unsafe { super::zero_short(dst.as_mut_ptr(), n) };
            assert!(dst[..n].iter().all(|v| *v == 0.0), "n {n}");
            assert!(dst[n].is_nan(), "n {n}: zeroed past the end");
        }
    }
}
