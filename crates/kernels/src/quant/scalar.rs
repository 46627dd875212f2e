//! Scalar twins of the quantized kernels: plain loops, the reference every SIMD level is tested against.

use super::{Q4Args, QArgs, Q4_SUBS, Q4_SUPER, Q4_SUPER_BYTES};
use crate::simd::int::BLOCK;

/// The q8 quantizer of one row: x (k) -> q (nb·32), d (nb), nb = ⌈k/32⌉. Per block of 32 (the last one
/// zero-padded): d = max|x| / 127, q = round_ties_even(x / d) in [-127, 127] (computed as x · (1/d), as
/// ggml's Q8_0), and d = 0, q = 0 for an all-zero block. A NaN or ±inf in a block makes its d NaN or inf
/// (never a finite scale hiding it), so the matmul's output is NaN as the float one would be.
/// Round trip: |x - q·d| ≤ d · (1/2 + 127 · 2^-22) for finite blocks (half a step, plus the rounding of
/// x · (1/d); tested against f64).
pub fn quantize_row_q8(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    quantize_row(x, q, d, BLOCK, 127.0, |v| v as i8)
}

/// [`quantize_row_q8`] into bytes XORed with `flip` (0: the i8 values; 0x80: q + 128): the scalar twin of
/// the levels' `kernel::quantize_row_8`.
pub fn quantize_row_8(x: &[f32], q: &mut [u8], d: &mut [f32], flip: u8) {
    quantize_row(x, q, d, BLOCK, 127.0, |v| v as i8 as u8 ^ flip)
}

/// The q4 kernels' activation quantizer of one row: as [`quantize_row_q8`] per super-block of 256
/// (x (k) -> q (⌈k/256⌉·256), d (⌈k/256⌉)), one scale d = max|x| / 127 per super-block (ggml's Q8_K),
/// so that a super-block's sub-block dot products add up in integers before one float multiply.
/// |x - q·d| ≤ d · (1/2 + 127 · 2^-22).
pub fn quantize_row_a8(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    quantize_row(x, q, d, Q4_SUPER, 127.0, |v| v as i8)
}

/// The activation quantizer of one row: as [`quantize_row_q8`] with int16 values, d = max|x| / 32767;
/// |x - q·d| ≤ d · (1/2 + 32767 · 2^-22).
pub fn quantize_row_a16(x: &[f32], q: &mut [i16], d: &mut [f32]) {
    quantize_row(x, q, d, BLOCK, 32767.0, |v| v as i16)
}

/// Round to nearest, ties to even, for |v| < 2^22 (and NaN/±inf unchanged): adding and subtracting 1.5·2^23
/// leaves no fraction bits, so the FPU's default rounding does the work. `f32::round_ties_even` is a libm
/// call (`rintf`) on the x86-64 baseline and dominated the quantizers' time.
#[inline(always)]
pub fn round_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// Candidate grids of the q4 sub-block fit: inverse scales (15 + Q4_GRID0 + Q4_GRID_STEP·i) / (max − min)
/// for i in 0..=Q4_GRID_STEPS (ggml's Q4_K tries 21 around 15). Here 6 (+ the min/max grid): on the
/// test's weights 20.0% less squared error than min/max rounding, against 20.4% with 11 candidates at
/// twice the quantization time (which the fit dominates: 2B q4 took 517 s with 11 on a loaded 2-core host).
const Q4_GRID0: f32 = -1.0;
const Q4_GRID_STEP: f32 = 0.4;
const Q4_GRID_STEPS: usize = 5;

/// The least-squares (scale, min) of one sub-block: x ≈ s·L − m with L ∈ 0..=15, s ≥ 0, m ≥ 0. For each
/// candidate grid the values are rounded onto it, then (s, −m) is the least-squares line through the
/// points (L, x) (m clamped to ≥ 0, as zero must stay representable when every x > 0); the pair with the
/// smallest squared error wins. The plain min/max grid is the first candidate, so the result is never
/// worse than it. Returns (0, 0) for an empty or all-zero block.
pub fn fit_q4_sub(x: &[f32]) -> (f32, f32) {
    debug_assert!(x.len() <= BLOCK, "one sub-block");
    let x = &x[..x.len().min(BLOCK)];
    let (mut lo, mut hi) = (0f32, f32::NEG_INFINITY);
    for &v in x {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if x.is_empty() || hi <= lo {
        // empty, or every value equal to lo ≤ 0: L = 0 represents it exactly
        return (0.0, -lo);
    }
    // The block in fixed lanes (a short last block padded with weight 0), so that every pass below is a
    // straight loop over LANES independent accumulators: the compiler turns it into vector code, where
    // one running f64 sum was a chain of 32 dependent adds per pass (14 passes per sub-block: the fit
    // was most of the time of quantizing a checkpoint).
    const LANES: usize = 8;
    let (mut v, mut w) = ([0f32; BLOCK], [0f32; BLOCK]);
    for (i, &xv) in x.iter().enumerate() {
        (v[i], w[i]) = (xv, 1.0);
    }
    // squared error of a candidate: its terms are f32 already; summed in f32 lanes (only compared)
    let err_of = |s: f32, m: f32| -> f32 {
        let is = if s > 0.0 { 1.0 / s } else { 0.0 };
        let mut acc = [0f32; LANES];
        for c in (0..BLOCK).step_by(LANES) {
            for (i, acc) in acc.iter_mut().enumerate() {
                let (v, w) = (v[c + i], w[c + i]);
                let l = round_small(((v + m) * is).clamp(0.0, 15.0));
                let e = w * (s * l - m - v);
                *acc += e * e;
            }
        }
        acc.iter().sum()
    };
    let (mut best_s, mut best_m) = ((hi - lo) / 15.0, -lo);
    let mut best = err_of(best_s, best_m);
    let n = x.len() as f64;
    // Σx does not depend on the grid
    let sx: f64 = x.iter().map(|&v| v as f64).sum();
    for i in 0..=Q4_GRID_STEPS {
        let is = (15.0 + Q4_GRID0 + Q4_GRID_STEP * i as f32) / (hi - lo);
        // ΣL and ΣL² are integers below 2^24: exact in f32 lanes; ΣxL in f64 (each product exact)
        let (mut sl, mut sl2, mut sxl) = ([0f32; LANES], [0f32; LANES], [0f64; LANES]);
        for c in (0..BLOCK).step_by(LANES) {
            for j in 0..LANES {
                let (v, w) = (v[c + j], w[c + j]);
                let l = w * round_small(((v - lo) * is).clamp(0.0, 15.0));
                sl[j] += l;
                sl2[j] += l * l;
                sxl[j] += v as f64 * l as f64;
            }
        }
        let sl = sl.iter().sum::<f32>() as f64;
        let sl2 = sl2.iter().sum::<f32>() as f64;
        let sxl: f64 = sxl.iter().sum();
        let det = n * sl2 - sl * sl;
        if det <= 0.0 {
            continue;
        }
        // x ≈ a·L + b: a = s, b = −m
        let mut a = (n * sxl - sl * sx) / det;
        let mut b = (sl2 * sx - sl * sxl) / det;
        if b > 0.0 {
            b = 0.0;
            a = sxl / sl2;
        }
        if a.is_nan() || a <= 0.0 || !a.is_finite() || !b.is_finite() {
            continue;
        }
        let (s, m) = (a as f32, (-b) as f32);
        let e = err_of(s, m);
        if e < best {
            (best, best_s, best_m) = (e, s, m);
        }
    }
    (best_s, best_m)
}

/// The q4 quantizer of one row: x (k) -> q (⌈k/256⌉·144 bytes), d (⌈k/256⌉·2): per super-block, each
/// sub-block's (scale, min) fitted by [`fit_q4_sub`] over its values (padding excluded), then
/// d = max scale / 255, dmin = max min / 255, sc_j = round(s_j / d), mn_j = round(m_j / dmin) (bytes), and
/// the values rounded again onto the stored grid: L = clamp(round((x + dmin·mn_j) · (1 / (d·sc_j))), 0, 15).
/// Padding values are 0. A NaN or ±inf in a super-block makes its d NaN (never a finite scale hiding it).
pub fn quantize_row_q4(x: &[f32], q: &mut [u8], d: &mut [f32]) {
    let nsb = x.len().div_ceil(Q4_SUPER);
    debug_assert!(q.len() == nsb * Q4_SUPER_BYTES && d.len() == 2 * nsb);
    for sb in 0..nsb {
        let xs = &x[sb * Q4_SUPER..((sb + 1) * Q4_SUPER).min(x.len())];
        let qb = &mut q[sb * Q4_SUPER_BYTES..(sb + 1) * Q4_SUPER_BYTES];
        qb.fill(0);
        if xs.iter().any(|v| !v.is_finite()) {
            (d[2 * sb], d[2 * sb + 1]) = (f32::NAN, 0.0);
            continue;
        }
        let fits: [(f32, f32); Q4_SUBS] = std::array::from_fn(|j| {
            fit_q4_sub(
                xs.get(j * BLOCK..((j + 1) * BLOCK).min(xs.len()))
                    .unwrap_or(&[]),
            )
        });
        let smax = fits.iter().fold(0f32, |a, f| a.max(f.0));
        let mmax = fits.iter().fold(0f32, |a, f| a.max(f.1));
        let (ds, dm) = (smax / 255.0, mmax / 255.0);
        for (j, &(s, m)) in fits.iter().enumerate() {
            let sc = if ds > 0.0 {
                (s / ds).round_ties_even().min(255.0)
            } else {
                0.0
            };
            let mn = if dm > 0.0 {
                (m / dm).round_ties_even().min(255.0)
            } else {
                0.0
            };
            qb[j] = sc as u8;
            qb[Q4_SUBS + j] = mn as u8;
            let (s, m) = (ds * sc, dm * mn);
            let is = if s > 0.0 { 1.0 / s } else { 0.0 };
            let nib = &mut qb[2 * Q4_SUBS + j * BLOCK / 2..2 * Q4_SUBS + (j + 1) * BLOCK / 2];
            for t in 0..BLOCK {
                let Some(&v) = xs.get(j * BLOCK + t) else {
                    break;
                };
                let l = round_small(((v + m) * is).clamp(0.0, 15.0)) as u8;
                nib[t % 16] |= l << (4 * (t / 16));
            }
        }
        (d[2 * sb], d[2 * sb + 1]) = (ds, dm);
    }
}

/// One row of q4 (`q`: row bytes, `d`: (d, dmin) pairs) dequantized into `out` (k ≤ the padded length):
/// (d·sc_j)·L − (dmin·mn_j), the values the matmul multiplies by.
pub fn dequantize_row_q4(q: &[u8], d: &[f32], out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        let (sb, j, t) = (i / Q4_SUPER, i % Q4_SUPER / BLOCK, i % BLOCK);
        let qb = &q[sb * Q4_SUPER_BYTES..];
        let l = (qb[2 * Q4_SUBS + j * BLOCK / 2 + t % 16] >> (4 * (t / 16))) & 15;
        let (s, m) = (
            d[2 * sb] * qb[j] as f32,
            d[2 * sb + 1] * qb[Q4_SUBS + j] as f32,
        );
        *o = s * l as f32 - m;
    }
}

/// Per block of `block` values: d = amax / qmax, q = cast(round_ties_even(x · (1/d))) (`cast` saturates,
/// NaN -> 0).
#[inline]
pub(crate) fn quantize_row<T: Copy + Default>(
    x: &[f32],
    q: &mut [T],
    d: &mut [f32],
    block: usize,
    qmax: f32,
    cast: impl Fn(f32) -> T,
) {
    let nb = x.len().div_ceil(block);
    debug_assert!(q.len() == nb * block && d.len() == nb);
    for b in 0..nb {
        let xs = &x[b * block..((b + 1) * block).min(x.len())];
        let qs = &mut q[b * block..(b + 1) * block];
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
            // |x·id| ≤ qmax up to rounding, so the saturating cast clips nothing. The padding is the
            // value of 0 (the byte 128 for W8A8's offset activations: pad weights from a file may be
            // nonzero, and only q_x = 0 cancels them).
            *o = cast(round_small(xs.get(i).copied().unwrap_or(0.0) * id));
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

/// The 32 values L of sub-block j of a q4 super-block.
#[inline]
pub(crate) fn q4_values(qb: &[u8], j: usize) -> [u8; BLOCK] {
    let nib = &qb[2 * Q4_SUBS + j * BLOCK / 2..];
    std::array::from_fn(|t| (nib[t % 16] >> (4 * (t / 16))) & 15)
}

/// y[i][c] = Σ_sb (d·dx[i][sb] · Σ_{j} sc_j · Σ_{sub-block j} L·qx − Σ_j dmin·mn_j · sx[i][sb·8+j])
/// (+ bias[c]) for every row i of x and the output columns c0..c1 (see the module docs): the sub-block
/// sums and their scaled sum per super-block are exact integers. Safety: as [`q8_range`].
pub(crate) unsafe fn q4_range(a: &Q4Args, c0: usize, c1: usize) {
    let (nsb, nb) = (a.nsb, a.nsb * Q4_SUBS);
    let (kp, rb) = (nb * BLOCK, nsb * Q4_SUPER_BYTES);
    for i in 0..a.m {
        let xq = std::slice::from_raw_parts(a.xq.add(i * kp), kp);
        let xd = std::slice::from_raw_parts(a.xd.add(i * nsb), nsb);
        let xs = std::slice::from_raw_parts(a.xs.add(i * nb), nb);
        for c in c0..c1 {
            let wq = std::slice::from_raw_parts(a.wq.add(c * rb), rb);
            let wd = std::slice::from_raw_parts(a.wd.add(c * 2 * nsb), 2 * nsb);
            let mut acc = 0.0f32;
            for sb in 0..nsb {
                let qb = &wq[sb * Q4_SUPER_BYTES..(sb + 1) * Q4_SUPER_BYTES];
                let mut sumi = 0i32;
                for j in 0..Q4_SUBS {
                    let b = sb * Q4_SUBS + j;
                    let dot: i32 = q4_values(qb, j)
                        .iter()
                        .zip(&xq[b * BLOCK..(b + 1) * BLOCK])
                        .map(|(&l, &x)| l as i32 * x as i32)
                        .sum();
                    sumi += qb[j] as i32 * dot;
                }
                acc += wd[2 * sb] * xd[sb] * sumi as f32;
                let nmin = -wd[2 * sb + 1];
                for j in 0..Q4_SUBS {
                    acc += qb[Q4_SUBS + j] as f32 * nmin * xs[sb * Q4_SUBS + j];
                }
            }
            if !a.bias.is_null() {
                acc += *a.bias.add(c);
            }
            *a.y.add(i * a.n + c) = acc;
        }
    }
}
