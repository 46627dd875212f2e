//! Integer lanes: the int8 dot product of one quantization block (32 signed bytes), on top of [`Simd`].
//!
//! The x86 instructions multiply u8 by s8 (`pmaddubsw`, pairs summed into *saturating* i16), so a signed ×
//! signed product is formed as |w| · (a · sign(w)) (ggml's trick): each i16 pair sum is then at most
//! 2 · 128 · 127 = 32512 < 32767 for any w in [-128, 127] and a in [-127, 127] — never saturates. (Full-range
//! u8 activations would: 2 · 255 · 127 = 64770.) Quantized activations are made in [-127, 127] by the
//! quantizer; weights may use -128.
#![allow(clippy::missing_safety_doc)] // each unsafe fn states its contract in a "Safety:" line

use super::Simd;

/// Bytes of one int8 block (the quantization block along k).
pub const BLOCK: usize = 32;

/// int8 block primitives of one ISA level.
pub trait SimdI8: Simd {
    /// One block of 32 signed bytes in registers.
    type B: Copy;
    /// Load 32 bytes. Safety: `p..p+32` is readable.
    unsafe fn ld_b(self, p: *const i8) -> Self::B;
    /// |b| per byte, read as u8 (|-128| = 128).
    fn abs_b(self, b: Self::B) -> Self::B;
    /// Σ w·a over the 32 byte pairs, as f32 lanes whose sum is the exact integer dot product (each lane
    /// holds a partial sum of at most 32 · 128 · 127 < 2^24: exact in f32). `wa` is `abs_b(w)`; every
    /// byte of `a` must lie in [-127, 127].
    fn dot_b(self, wa: Self::B, w: Self::B, a: Self::B) -> Self::V;
}
