//! The few SIMD primitives the vector kernels are written over, and the kernels written once over them.
//!
//! A kernel here is generic over `S: Simd` and `#[inline(always)]`; each ISA module instantiates it inside a
//! `#[target_feature]` function (the one boundary), so the primitives inline into code compiled for that ISA.
//! A value of an ISA's token type is proof that the CPU supports it: tokens are made only by
//! `unsafe fn new_unchecked` after detection, which is why the primitives themselves are safe to call.

pub mod kernels;

/// f32 SIMD primitives of one ISA level.
pub trait Simd: Copy {
    /// f32 lanes per vector.
    const LANES: usize;
    /// One vector of f32.
    type V: Copy;

    fn splat(self, x: f32) -> Self::V;
    fn zero(self) -> Self::V {
        self.splat(0.0)
    }
    /// Load `LANES` values. Caller guarantees `s.len() >= LANES`.
    fn load(self, s: &[f32]) -> Self::V;
    /// Store `LANES` values. Caller guarantees `s.len() >= LANES`.
    fn store(self, s: &mut [f32], v: Self::V);
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// a * b + c (fused where the ISA has FMA; SSE4.1 rounds twice).
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// IEEE maxNum-like lane max, NaN-propagating: if either lane is NaN the result is NaN.
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// Horizontal sum of the lanes (pairwise tree order).
    fn reduce_sum(self, v: Self::V) -> f32;
    /// Horizontal max of the lanes (NaN-propagating).
    fn reduce_max(self, v: Self::V) -> f32;
}
