//! Elementwise arithmetic and reductions.

/// out[i] = a[i] + b[i]. All three slices have the same length (checked by the public API).
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    for i in 0..out.len() {
        out[i] = a[i] + b[i];
    }
}
