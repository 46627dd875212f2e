//! The reference implementation of every kernel: plain loops, no intrinsics, never optimized for speed.
//! Each SIMD entry point has a twin here with the same signature (raw pointers and counts, so the in-place
//! variants are the same function with `out == x`); tests compare them. Statistics of the row-wise ops
//! are accumulated in f64 so the reference is more accurate than any level under test.

pub mod act;
pub mod grad;
pub mod norm;
pub mod vec;

pub use act::*;
pub use grad::*;
pub use norm::*;
pub use vec::*;
