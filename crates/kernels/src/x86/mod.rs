//! x86-64 SIMD levels. Each file implements [`crate::simd::Simd`] for its level and instantiates the generic
//! kernels inside `#[target_feature]` entry points with the same signatures as the scalar twins.

pub mod amx;
pub mod avx2;
pub mod avx512;
pub mod sse41;
