//! Integer lanes: the dot product of one quantization block — 32 int8 weights × 32 int16 activations
//! (q8), or 32 4-bit weights × 32 int8 activations (q4) — on top of [`Simd`].
//!
//! Why int16 activations rather than int8 (W8A8): on AVX2 the int8 route (`pmaddubsw` multiplies u8 by s8
//! into *saturating* i16 pairs, so a signed product needs |w| · (x · sign(w)) to stay below 2·128·127 =
//! 32512, then `pmaddwd` by ones) costs sign + maddubs + madd per 32 products; the int16 route (weights
//! widened once per block with `pmovsxbw`, reused by every row of x, then `pmaddwd`, i16 × i16 pairs into
//! i32, which cannot overflow: |w| ≤ 128, |x| ≤ 32767) costs 2 madd + 1 add — the same count — and
//! quantizes activations 256× finer (relative step 1/32767 instead of 1/127). On the repository's tiny
//! checkpoints (hidden size 8, where nothing averages the errors out) W8A8 measured logits cosine 0.99923
//! against transformers fp32, W8A16 0.9996 (weights alone: 0.99959).
//!
//! q4 is the other way round: its weights are unsigned 4-bit (0..=15), so `pmaddubsw` takes them as the
//! unsigned operand and the int8 activations as the signed one with no sign trick, and its i16 pair sums
//! cannot saturate (2 · 15 · 127 < 2^15): one instruction does 32 products, twice the int16 route's rate.
//! The weight error (4 bits) dominates the activation error (8 bits) there.
#![allow(clippy::missing_safety_doc)] // each unsafe fn states its contract in a "Safety:" line

use super::Simd;

/// Values of k per quantization block.
pub const BLOCK: usize = 32;

/// int8 × int16 block primitives of one ISA level.
pub trait SimdInt: Simd {
    /// One block of 32 int8 weights, widened to i16, in registers.
    type W: Copy;
    /// One block of 32 i16 activations in registers.
    type X: Copy;
    /// Load and widen 32 weights. Safety: `p..p+32` is readable.
    unsafe fn ld_w(self, p: *const i8) -> Self::W;
    /// Load 32 activations. Safety: `p..p+32` is readable.
    unsafe fn ld_x(self, p: *const i16) -> Self::X;
    /// Σ w·x over the block, as f32 lanes whose sum is the integer dot product (the i32 lane sums are
    /// exact, at most 32 · 128 · 32767 < 2^31; each is rounded once to f32).
    fn dot(self, w: Self::W, x: Self::X) -> Self::V;
}

/// 4-bit × int8 block primitives of one ISA level (q4).
pub trait SimdQ4: Simd {
    /// One block of 32 weights 0..=15 (unsigned bytes) in registers.
    type W4: Copy;
    /// One block of 32 int8 activations in registers.
    type X8: Copy;
    /// Load 16 bytes of nibbles: byte t holds value t in its low and value t+16 in its high nibble.
    /// Safety: `p..p+16` is readable.
    unsafe fn ld_w4(self, p: *const u8) -> Self::W4;
    /// Load 32 int8 activations (each in -127..=127). Safety: `p..p+32` is readable.
    unsafe fn ld_x8(self, p: *const i8) -> Self::X8;
    /// Σ w·x over the block, as f32 lanes whose sum is the integer dot product (exact i32 lane sums, at
    /// most 32 · 15 · 127 in magnitude, each rounded once to f32 — exactly, being below 2^24).
    fn dot4(self, w: Self::W4, x: Self::X8) -> Self::V;
    /// `LANES` unsigned bytes widened to f32 lanes. Safety: `p..p+LANES` is readable.
    unsafe fn ld_u8(self, p: *const u8) -> Self::V;
}
