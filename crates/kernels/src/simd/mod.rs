//! The few SIMD primitives the vector kernels are written over, and the kernels written once over them.
//!
//! A kernel here is generic over `S: Simd` and `#[inline(always)]`; each ISA module instantiates it inside a
//! `#[target_feature]` function (the one boundary), so the primitives inline into code compiled for that ISA.
//! A value of an ISA's token type is proof that the CPU supports it: tokens are made only by
//! `unsafe fn new_unchecked` after detection, which is why the arithmetic primitives themselves are safe to
//! call. Loads and stores take raw pointers (so one kernel serves out-of-place and in-place calls without
//! aliasing `&`/`&mut`); they are `unsafe` because the caller vouches for the pointed-to memory.
#![allow(clippy::missing_safety_doc)] // each unsafe fn states its contract in a "Safety:" line

pub mod int;
pub mod kernels;
pub mod math;

/// Asks for the cache lines at `base + off` for every multiple of 64 `off` in `[lo, hi)` (bytes). Loops
/// that stream one block while computing on another call it with consecutive ranges, at the pace they
/// consume their own data, so that the next block arrives in time and no line is requested twice.
/// (`prefetcht0`, also for lines a loop will write: `prefetchw` needs PRFCHW, which our levels do not
/// enable, and `_MM_HINT_ET0` compiles to `prefetcht0` without it.)
#[inline(always)]
pub fn prefetch_lines(base: *const u8, lo: usize, hi: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut off = (lo + 63) & !63;
        while off < hi {
            // Safety: a hint; an address outside any allocation is never dereferenced.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(off) as *const i8) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (base, lo, hi);
}

/// f32 SIMD primitives of one ISA level.
pub trait Simd: Copy {
    /// f32 lanes per vector (at most 16).
    const LANES: usize;
    /// One vector of f32.
    type V: Copy;
    /// A per-lane boolean (a vector mask on SSE/AVX2, a k-mask on AVX-512).
    type M: Copy;

    fn splat(self, x: f32) -> Self::V;
    fn zero(self) -> Self::V {
        self.splat(0.0)
    }
    /// Load `LANES` values. Safety: `p..p+LANES` is readable.
    unsafe fn ld(self, p: *const f32) -> Self::V;
    /// Store `LANES` values. Safety: `p..p+LANES` is writable.
    unsafe fn st(self, p: *mut f32, v: Self::V);
    /// Load `LANES` values from a slice (panics in debug builds if it is shorter).
    #[inline(always)]
    fn load(self, s: &[f32]) -> Self::V {
        assert!(s.len() >= Self::LANES);
        // Safety: the slice holds at least LANES values.
        unsafe { self.ld(s.as_ptr()) }
    }
    /// Store `LANES` values into a slice (panics if it is shorter).
    #[inline(always)]
    fn store(self, s: &mut [f32], v: Self::V) {
        assert!(s.len() >= Self::LANES);
        // Safety: the slice holds at least LANES values.
        unsafe { self.st(s.as_mut_ptr(), v) }
    }
    /// Load `n < LANES` values, the other lanes set to `pad`. Safety: `p..p+n` is readable.
    #[inline(always)]
    unsafe fn ld_part(self, p: *const f32, n: usize, pad: f32) -> Self::V {
        debug_assert!(n <= Self::LANES);
        let mut buf = [pad; 16];
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
        self.ld(buf.as_ptr())
    }
    /// Store the first `n < LANES` lanes. Safety: `p..p+n` is writable.
    #[inline(always)]
    unsafe fn st_part(self, p: *mut f32, n: usize, v: Self::V) {
        debug_assert!(n <= Self::LANES);
        let mut buf = [0.0f32; 16];
        self.st(buf.as_mut_ptr(), v);
        std::ptr::copy_nonoverlapping(buf.as_ptr(), p, n);
    }
    /// Load `LANES` bf16 values (raw bits) widened to f32. Safety: `p..p+LANES` is readable.
    unsafe fn ld_bf16(self, p: *const u16) -> Self::V;
    /// Round to bf16 (nearest even; NaN stays a quiet NaN) and store `LANES` raw bits.
    /// Safety: `p..p+LANES` is writable.
    unsafe fn st_bf16(self, p: *mut u16, v: Self::V);
    /// Safety: `p..p+n` is readable, `n <= LANES`.
    #[inline(always)]
    unsafe fn ld_bf16_part(self, p: *const u16, n: usize) -> Self::V {
        let mut buf = [0u16; 16];
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
        self.ld_bf16(buf.as_ptr())
    }
    /// Safety: `p..p+n` is writable, `n <= LANES`.
    #[inline(always)]
    unsafe fn st_bf16_part(self, p: *mut u16, n: usize, v: Self::V) {
        let mut buf = [0u16; 16];
        self.st_bf16(buf.as_mut_ptr(), v);
        std::ptr::copy_nonoverlapping(buf.as_ptr(), p, n);
    }
    /// Each lane rounded to the nearest bf16 (nearest even), as f32; NaN stays a quiet NaN.
    fn round_bf16(self, v: Self::V) -> Self::V;

    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// a * b + c (fused where the ISA has FMA; SSE4.1 rounds twice).
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// The rounding error of `a * b`: `a * b - fl(a * b)` exactly (Dekker's split on SSE4.1, an FMA above).
    fn mul_lo(self, a: Self::V, b: Self::V, prod: Self::V) -> Self::V;
    /// Lane max, NaN-propagating: if either lane is NaN the result is NaN.
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lane min, NaN-propagating.
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// The plain x86 `maxps`: max(a, b), and `b` when either is NaN (so `max_raw(lo, x)` keeps x's NaN).
    fn max_raw(self, a: Self::V, b: Self::V) -> Self::V;
    /// The plain x86 `minps`: min(a, b), and `b` when either is NaN.
    fn min_raw(self, a: Self::V, b: Self::V) -> Self::V;
    /// 1/a within 1 ULP (a division, or on AVX-512 `vrcp14ps` refined by one Newton step).
    fn recip(self, a: Self::V) -> Self::V {
        self.div(self.splat(1.0), a)
    }
    /// |a| (clears the sign bit).
    fn abs(self, a: Self::V) -> Self::V;
    /// The magnitude of `mag` with the sign bit of `sign`.
    fn copysign(self, mag: Self::V, sign: Self::V) -> Self::V;
    /// Round to the nearest integer, ties to even (as f32).
    fn round(self, a: Self::V) -> Self::V;
    /// a * 2^n for integer-valued `n` in [-300, 300], rounded once (like `vscalefps`).
    fn scale_pow2(self, a: Self::V, n: Self::V) -> Self::V;
    /// a < b (false when either is NaN).
    fn lt(self, a: Self::V, b: Self::V) -> Self::M;
    /// a <= b (false when either is NaN).
    fn le(self, a: Self::V, b: Self::V) -> Self::M;
    /// m ? t : f, lane by lane.
    fn select(self, m: Self::M, t: Self::V, f: Self::V) -> Self::V;
    /// Horizontal sum of the lanes (pairwise tree order).
    fn reduce_sum(self, v: Self::V) -> f32;
    /// Horizontal max of the lanes (NaN-propagating).
    fn reduce_max(self, v: Self::V) -> f32;
}
