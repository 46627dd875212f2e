//! Elementwise arithmetic, reductions and bf16 conversion.
//!
//! Safety (all functions): the pointers are valid for `n` elements (checked by the public API in `ops.rs`);
//! `out` may equal an input.
#![allow(clippy::missing_safety_doc)] // the safety contract is the one in the module doc above

/// out[i] = a[i] + b[i]
pub unsafe fn add(a: *const f32, b: *const f32, out: *mut f32, n: usize) {
    for i in 0..n {
        *out.add(i) = *a.add(i) + *b.add(i);
    }
}

/// out[i] = a[i] * b[i]
pub unsafe fn mul(a: *const f32, b: *const f32, out: *mut f32, n: usize) {
    for i in 0..n {
        *out.add(i) = *a.add(i) * *b.add(i);
    }
}

/// out[i] = x[i] * c
pub unsafe fn scale(x: *const f32, c: f32, out: *mut f32, n: usize) {
    for i in 0..n {
        *out.add(i) = *x.add(i) * c;
    }
}

/// Σ a[i]·b[i], accumulated in f64
pub unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
    let mut acc = 0.0f64;
    for i in 0..n {
        acc += *a.add(i) as f64 * *b.add(i) as f64;
    }
    acc as f32
}

/// Σ x[i], accumulated in f64
pub unsafe fn sum(x: *const f32, n: usize) -> f32 {
    let mut acc = 0.0f64;
    for i in 0..n {
        acc += *x.add(i) as f64;
    }
    acc as f32
}

/// max x[i]; -inf for n = 0; NaN if any is NaN
pub unsafe fn max(x: *const f32, n: usize) -> f32 {
    let mut m = f32::NEG_INFINITY;
    for i in 0..n {
        let v = *x.add(i);
        if v.is_nan() {
            return v;
        }
        if v > m {
            m = v;
        }
    }
    m
}

/// One f32 to bf16 bits: round to nearest even; NaN becomes a quiet NaN with the same sign and top payload.
#[inline]
pub fn bf16_from_f32(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let lsb = (b >> 16) & 1;
    (b.wrapping_add(0x7fff + lsb) >> 16) as u16
}

/// out[i] = bf16(x[i])
pub unsafe fn f32_to_bf16(x: *const f32, out: *mut u16, n: usize) {
    for i in 0..n {
        *out.add(i) = bf16_from_f32(*x.add(i));
    }
}

/// out[i] = f32(x[i]) (exact)
pub unsafe fn bf16_to_f32(x: *const u16, out: *mut f32, n: usize) {
    for i in 0..n {
        *out.add(i) = f32::from_bits((*x.add(i) as u32) << 16);
    }
}

/// out[i] = f32(bf16(x[i]))
pub unsafe fn round_bf16(x: *const f32, out: *mut f32, n: usize) {
    for i in 0..n {
        *out.add(i) = f32::from_bits((bf16_from_f32(*x.add(i)) as u32) << 16);
    }
}
