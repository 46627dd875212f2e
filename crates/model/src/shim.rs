//! TEMPORARY: plain-loop stand-ins for kernel and processor APIs that have not landed on main yet, written
//! against the agreed signatures of /work/team/API.md. Each item is deleted when its owner's version lands.
//! Trait methods here are shadowed by the real inherent `Kernels` methods as soon as those exist.

#![allow(dead_code)]

// ---- processor (helper C) ----

/// One preprocessed image: rows of `pixel_values` in merge-block order.
#[derive(Clone, Debug)]
pub struct ImageInput {
    /// (N, 1536), N = t·h·w
    pub pixel_values: Vec<f32>,
    /// (t, h, w) in patches
    pub grid_thw: [usize; 3],
}
