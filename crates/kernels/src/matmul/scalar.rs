//! The reference matmul: plain loops with the signatures of the SIMD range functions. Never optimized.
//! Sums run over k in order, in f32, one rounding per multiply and per add.

use super::Args;
use crate::scalar::act::silu1;

/// Output rows per packed group at the scalar level.
pub const GROUP: usize = 16;

/// bf16 bits -> f32.
#[inline]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

pub use crate::scalar::bf16_from_f32 as f32_to_bf16;

/// out[i] = bf16(x[i]) (RNE). Lengths equal (checked by the caller).
pub fn to_bf16(x: &[f32], out: &mut [u16]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f32_to_bf16(v);
    }
}

/// y[i][r] = Σ_k x[i][k]·w[r][k] (+ b[r]) for all i < m and r0 ≤ r < r1; w row-major (n, k).
///
/// Safety: `a` is consistent (x: m·k, w: n·k, bias: n, y: m·n valid for writes of these elements).
pub unsafe fn gemv_bf16(a: &Args, w: &[u16], r0: usize, r1: usize) {
    for i in 0..a.m {
        for r in r0..r1 {
            let mut acc = 0f32;
            for kk in 0..a.k {
                acc += a.x[i * a.k + kk] * bf16_to_f32(w[r * a.k + kk]);
            }
            write(a, i, r, acc);
        }
    }
}

/// As [`gemv_bf16`] with f32 weights. Safety: as [`gemv_bf16`].
pub unsafe fn gemv_f32(a: &Args, w: &[f32], r0: usize, r1: usize) {
    for i in 0..a.m {
        for r in r0..r1 {
            let mut acc = 0f32;
            for kk in 0..a.k {
                acc += a.x[i * a.k + kk] * w[r * a.k + kk];
            }
            write(a, i, r, acc);
        }
    }
}

/// Output columns of groups g0..g1 (GROUP rows of W each) for all m; w packed bf16:
/// group j, pair p, row r: [w[jG+r][2p], w[jG+r][2p+1]]. A SwiGLU pair (`a.swiglu`) holds gate rows in
/// slots 0..G/2 and the matching up rows in G/2..G; output c = silu(gate)·up.
/// Safety: as [`gemv_bf16`], w packed for GROUP.
pub unsafe fn packed_bf16(a: &Args, w: &[u16], g0: usize, g1: usize) {
    let kp = a.k.div_ceil(2);
    for j in g0..g1 {
        let wg = &w[(j - a.g_base) * kp * GROUP * 2..];
        for i in 0..a.m {
            let mut acc = [0f32; GROUP];
            for (r, acc) in acc.iter_mut().enumerate() {
                for kk in 0..a.k {
                    *acc +=
                        a.x[i * a.k + kk] * bf16_to_f32(wg[((kk / 2) * GROUP + r) * 2 + kk % 2]);
                }
            }
            write_group(a, i, j, &acc);
        }
    }
}

/// As [`packed_bf16`] with f32 weights packed as group j, k, row r. Safety: as [`packed_bf16`].
pub unsafe fn packed_f32(a: &Args, w: &[f32], g0: usize, g1: usize) {
    for j in g0..g1 {
        let wg = &w[(j - a.g_base) * a.k * GROUP..];
        for i in 0..a.m {
            let mut acc = [0f32; GROUP];
            for (r, acc) in acc.iter_mut().enumerate() {
                for kk in 0..a.k {
                    *acc += a.x[i * a.k + kk] * wg[kk * GROUP + r];
                }
            }
            write_group(a, i, j, &acc);
        }
    }
}

/// Row i of y from the sums of group j's GROUP rows: plain (+ bias), or silu(gate)·up for a SwiGLU pair.
unsafe fn write_group(a: &Args, i: usize, j: usize, acc: &[f32; GROUP]) {
    let (c0, cols) = a.group_cols(j, GROUP);
    for c in 0..cols {
        if a.swiglu {
            *a.y.0.add(i * a.n + c0 + c) = silu1(acc[c]) * acc[GROUP / 2 + c];
        } else {
            write(a, i, c0 + c, acc[c]);
        }
    }
}

/// y[i][c] = acc + bias[c].
#[inline]
unsafe fn write(a: &Args, i: usize, c: usize, acc: f32) {
    let b = a.bias.map_or(0.0, |b| b[c]);
    *a.y.0.add(i * a.n + c) = acc + b;
}
