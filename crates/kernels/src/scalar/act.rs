//! Transcendentals and activations, from the platform's f32 libm (`f32::exp`, `f32::tanh`) and the `libm`
//! crate's `erff`. GELU-erf uses f64 `libm::erfc` for Φ so the reference has no cancellation in the left tail.
//!
//! Safety (all functions): the pointers are valid for `n` elements; `out` may equal an input.
#![allow(clippy::missing_safety_doc)] // the safety contract is the one in the module doc above

/// √(2/π)
const GELU_C: f32 = 0.797_884_6;

pub unsafe fn exp(x: *const f32, out: *mut f32, n: usize) {
    for i in 0..n {
        *out.add(i) = (*x.add(i)).exp();
    }
}

pub unsafe fn tanh(x: *const f32, out: *mut f32, n: usize) {
    for i in 0..n {
        *out.add(i) = (*x.add(i)).tanh();
    }
}

pub unsafe fn erf(x: *const f32, out: *mut f32, n: usize) {
    for i in 0..n {
        *out.add(i) = libm::erff(*x.add(i));
    }
}

/// σ(x) = 1/(1 + e^{-x}), as e^x/(1 + e^x) for x < 0 so it neither overflows nor flushes early.
pub fn sigmoid1(x: f32) -> f32 {
    let e = (-x.abs()).exp();
    if x < 0.0 {
        e / (1.0 + e)
    } else {
        1.0 / (1.0 + e)
    }
}

/// ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³), written as x·σ(2u) (same value, no cancellation)
pub fn gelu_tanh1(x: f32) -> f32 {
    let u = GELU_C * (x + 0.044715 * x * x * x);
    x * sigmoid1(2.0 * u)
}

pub unsafe fn gelu_tanh(x: *const f32, out: *mut f32, n: usize) {
    for i in 0..n {
        *out.add(i) = gelu_tanh1(*x.add(i));
    }
}

/// Φ(x) = ½ erfc(-x/√2) in f64
pub fn phi64(x: f64) -> f64 {
    0.5 * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
}

/// x·Φ(x) (torch nn.GELU())
pub unsafe fn gelu_erf(x: *const f32, out: *mut f32, n: usize) {
    for i in 0..n {
        let v = *x.add(i);
        *out.add(i) = (v as f64 * phi64(v as f64)) as f32;
    }
}

pub fn silu1(x: f32) -> f32 {
    x * sigmoid1(x)
}

/// x·σ(x)
pub unsafe fn silu(x: *const f32, out: *mut f32, n: usize) {
    for i in 0..n {
        *out.add(i) = silu1(*x.add(i));
    }
}

/// max(x, 0); NaN stays NaN
pub unsafe fn relu(x: *const f32, out: *mut f32, n: usize) {
    for i in 0..n {
        let v = *x.add(i);
        *out.add(i) = if v > 0.0 || v.is_nan() { v } else { 0.0 };
    }
}

/// silu(gate)·up
pub unsafe fn swiglu(gate: *const f32, up: *const f32, out: *mut f32, n: usize) {
    for i in 0..n {
        *out.add(i) = silu1(*gate.add(i)) * *up.add(i);
    }
}
