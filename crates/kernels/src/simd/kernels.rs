//! Vector kernels written once over [`Simd`]. Each is `#[inline(always)]` so that it is compiled inside the
//! `#[target_feature]` function of the ISA that instantiates it. Preconditions (equal lengths) are checked
//! by the public API in `ops.rs` before any of these is called.

use super::Simd;

/// out[i] = a[i] + b[i]
#[inline(always)]
pub fn add<S: Simd>(s: S, a: &[f32], b: &[f32], out: &mut [f32]) {
    let n = out.len();
    let l = S::LANES;
    let body = n - n % l;
    // vector body
    let mut i = 0;
    while i < body {
        s.store(&mut out[i..], s.add(s.load(&a[i..]), s.load(&b[i..])));
        i += l;
    }
    // scalar tail
    for i in body..n {
        out[i] = a[i] + b[i];
    }
}
