//! Scalar twins of the quantized kernels: plain loops, the reference every SIMD level is tested against.

use super::QArgs;
use crate::simd::int::BLOCK;

/// The q8 quantizer of one row: x (k) -> q (nb·32), d (nb), nb = ⌈k/32⌉. Per block of 32 (the last one
/// zero-padded): d = max|x| / 127, q = round_ties_even(x / d) in [-127, 127] (computed as x · (1/d), as
/// ggml's Q8_0), and d = 0, q = 0 for an all-zero block. A NaN or ±inf in a block makes its d NaN or inf
/// (never a finite scale hiding it), so the matmul's output is NaN as the float one would be.
/// Round trip: |x - q·d| ≤ d · (1/2 + 127 · 2^-22) for finite blocks (half a step, plus the rounding of
/// x · (1/d); tested against f64).
pub fn quantize_row_q8(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    quantize_row(x, q, d, 127.0, |v| v as i8)
}

/// The activation quantizer of one row: as [`quantize_row_q8`] with int16 values, d = max|x| / 32767;
/// |x - q·d| ≤ d · (1/2 + 32767 · 2^-22).
pub fn quantize_row_a16(x: &[f32], q: &mut [i16], d: &mut [f32]) {
    quantize_row(x, q, d, 32767.0, |v| v as i16)
}

/// Per block: d = amax / qmax, q = cast(round_ties_even(x · (1/d))) (`cast` saturates, NaN -> 0).
#[inline]
fn quantize_row<T: Copy + Default>(
    x: &[f32],
    q: &mut [T],
    d: &mut [f32],
    qmax: f32,
    cast: impl Fn(f32) -> T,
) {
    let nb = x.len().div_ceil(BLOCK);
    debug_assert!(q.len() == nb * BLOCK && d.len() == nb);
    for b in 0..nb {
        let xs = &x[b * BLOCK..((b + 1) * BLOCK).min(x.len())];
        let qs = &mut q[b * BLOCK..(b + 1) * BLOCK];
        // amax, NaN-sticky: once NaN, `v > NaN` is false and it stays NaN
        let mut amax = 0.0f32;
        for &v in xs {
            let a = v.abs();
            if a > amax || a.is_nan() {
                amax = a;
            }
        }
        let db = amax / qmax;
        let id = if db != 0.0 { 1.0 / db } else { 0.0 };
        for (i, o) in qs.iter_mut().enumerate() {
            // |x·id| ≤ qmax up to rounding, so the saturating cast clips nothing.
            *o = xs
                .get(i)
                .map_or(T::default(), |&v| cast((v * id).round_ties_even()));
        }
        d[b] = db;
    }
}

/// Σ over the block of w·x (exact, i32: at most 32 · 128 · 32767 < 2^31).
#[inline]
pub(crate) fn dot_block(w: &[i8], x: &[i16]) -> i32 {
    w.iter().zip(x).map(|(&w, &x)| w as i32 * x as i32).sum()
}

/// y[i][c] = Σ_b (dw[c][b] · dx[i][b]) · Σ_block qw·qx (+ bias[c]) for every row i of x and the output
/// columns c0..c1. Safety: the pointers of `a` are valid for the sizes it states (checked by
/// `Kernels::matmul_quant`); tasks write disjoint columns.
pub(crate) unsafe fn q8_range(a: &QArgs, c0: usize, c1: usize) {
    let (nb, kp) = (a.nb, a.nb * BLOCK);
    for i in 0..a.m {
        let xq = std::slice::from_raw_parts(a.xq.add(i * kp), kp);
        let xd = std::slice::from_raw_parts(a.xd.add(i * nb), nb);
        for c in c0..c1 {
            let wq = std::slice::from_raw_parts(a.wq.add(c * kp), kp);
            let wd = std::slice::from_raw_parts(a.wd.add(c * nb), nb);
            let mut acc = 0.0f32;
            for b in 0..nb {
                let s = dot_block(
                    &wq[b * BLOCK..(b + 1) * BLOCK],
                    &xq[b * BLOCK..(b + 1) * BLOCK],
                );
                acc += wd[b] * xd[b] * s as f32;
            }
            if !a.bias.is_null() {
                acc += *a.bias.add(c);
            }
            *a.y.add(i * a.n + c) = acc;
        }
    }
}
