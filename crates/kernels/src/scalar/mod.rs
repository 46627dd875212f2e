//! The reference implementation of every kernel: plain loops, no intrinsics, never optimized for speed.
//! Each SIMD entry point has a twin here with the same signature; tests compare them.

pub mod vec;
