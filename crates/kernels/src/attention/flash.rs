//! Tiled flash attention written once over [`Simd`] (+ a vector exp), instantiated per ISA in `x86.rs`.
//!
//! One task (see [`Task`]) owns `mq = rows · group` query rows — every q head of one kv head for a range
//! of query positions — and walks its key range in tiles of [`KEY_TILE`] keys:
//!
//! ```text
//! Qp (mq, hd)        = scale · q rows of the task                      packed once
//! per key tile [j0, j0+w):
//!   Kt (hd, ldk)     = kᵀ of the tile                                  packed once for all mq rows
//!   Vp (w, ldv)      = v of the tile, rows padded to ldv = ⌈hd⌉_lanes   packed once for all mq rows
//!   per block of RM rows:
//!     S (RM, cols)   = Qp · Kt                      register tile RM × NQK vectors, no horizontal sums
//!     online softmax: m' = max(m, max_j S), α = e^(m−m'), P = e^(S−m'), l = α·l + Σ P, O = α·O
//!     O (RM, ldv)   += P · Vp                       register tile RM × NPV vectors
//! out = O / l  (or the partial (m, l, O) when the keys are split across tasks)
//! ```
//!
//! With a causal mask each block computes only the columns its last row may see (rounded up to the
//! register tile) and masks the rest to −∞, and key tiles above the diagonal of the task are skipped.

use super::{Job, Task};
use crate::simd::Simd;

/// The [`Simd`] primitives plus the vector exp the softmax needs.
pub(crate) trait AttnSimd: Simd {
    /// e^x per lane: relative error ≲ 2 ulp; 0 for x < −87.33 (including −∞); NaN stays NaN;
    /// saturates at e^88 for larger x.
    fn exp(self, x: Self::V) -> Self::V;
}

/// Keys per key tile.
pub(crate) const KEY_TILE: usize = 256;
/// Query rows per register block.
const RM: usize = 4;

#[inline(always)]
fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// Runs one task. NQK / NPV: vectors per register-tile row of the Q·Kᵀ and P·V products.
#[inline(always)]
pub(crate) fn run<S: AttnSimd, const NQK: usize, const NPV: usize>(
    s: S,
    job: &Job,
    t: &Task,
    scratch: &mut Vec<f32>,
) {
    let p = &job.p;
    let hd = p.head_dim;
    let group = job.group;
    let lanes = S::LANES;
    let mq = (t.i1 - t.i0) * group;
    let ldk = round_up(KEY_TILE, NQK * lanes);
    let ldv = round_up(hd, lanes);

    // Scratch: Qp (mq, hd) | Kt (hd, ldk) | Vp (KEY_TILE, ldv) | S (mq, ldk) | O (mq, ldv) | m (mq) | l (mq)
    let need = mq * hd + hd * ldk + KEY_TILE * ldv + mq * ldk + mq * ldv + 2 * mq;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (qp, rest) = scratch.split_at_mut(mq * hd);
    let (kt, rest) = rest.split_at_mut(hd * ldk);
    let (vp, rest) = rest.split_at_mut(KEY_TILE * ldv);
    let (sm, rest) = rest.split_at_mut(mq * ldk);
    let (o, rest) = rest.split_at_mut(mq * ldv);
    let (m, rest) = rest.split_at_mut(mq);
    let l = &mut rest[..mq];
    o.fill(0.0);
    m.fill(f32::NEG_INFINITY);
    l.fill(0.0);

    // 1. Qp[r] = scale · q[i, h], r = (i − i0)·group + (h − g·group)
    for r in 0..mq {
        let (i, h) = (t.i0 + r / group, t.g * group + r % group);
        let src = &job.q[i * job.ql.row_stride + h * job.ql.head_stride..][..hd];
        for (d, &x) in qp[r * hd..(r + 1) * hd].iter_mut().zip(src) {
            *d = p.scale * x;
        }
    }

    // Keys visible to task row r in the tile starting at j0 (at most w).
    let visible =
        |r: usize, j0: usize, w: usize| job.limit(t.i0 + r / group).saturating_sub(j0).min(w);

    let kend = t.ke.min(job.limit(t.i1 - 1));
    let mut j0 = t.ks;
    while j0 < kend {
        let w = KEY_TILE.min(kend - j0);

        // 2. Kt[d, j] = k[j0 + j, g, d];  Vp[j, :hd] = v[j0 + j, g, :], zero padding up to ldv
        for j in 0..w {
            let kj = &job.k[(j0 + j) * job.kl.row_stride + t.g * job.kl.head_stride..][..hd];
            for (d, &x) in kj.iter().enumerate() {
                kt[d * ldk + j] = x;
            }
            let vj = &job.v[(j0 + j) * job.vl.row_stride + t.g * job.vl.head_stride..][..hd];
            let dst = &mut vp[j * ldv..(j + 1) * ldv];
            dst[..hd].copy_from_slice(vj);
            dst[hd..].fill(0.0);
        }

        let mut r0 = 0;
        while r0 < mq {
            let rb = RM.min(mq - r0);
            // rows grow with r, so the block's last row sees the most keys
            let nmax = visible(r0 + rb - 1, j0, w);
            if nmax == 0 {
                r0 += rb;
                continue;
            }
            let cols = round_up(nmax, NQK * lanes);

            // 3a. S[r, :cols] = Qp[r] · Kt[:, :cols]
            if rb == RM {
                qk::<S, RM, NQK>(s, qp, hd, r0, kt, ldk, cols, sm);
            } else {
                for r in r0..r0 + rb {
                    qk::<S, 1, NQK>(s, qp, hd, r, kt, ldk, cols, sm);
                }
            }

            // 3b. online softmax of each row over its visible columns
            for r in r0..r0 + rb {
                let n = visible(r, j0, w);
                let row = &mut sm[r * ldk..r * ldk + cols];
                if n == 0 {
                    row.fill(0.0);
                    continue;
                }
                row[n..].fill(f32::NEG_INFINITY);
                // vector body only: cols is a multiple of the lanes
                let mut mx = s.splat(f32::NEG_INFINITY);
                for c in (0..cols).step_by(lanes) {
                    mx = s.max(mx, s.load(&row[c..]));
                }
                let m_new = m[r].max(s.reduce_max(mx));
                let alpha = (m[r] - m_new).exp(); // 0 on the first tile (m = −∞)
                let mv = s.splat(m_new);
                let mut sum = s.zero();
                for c in (0..cols).step_by(lanes) {
                    let e = s.exp(s.sub(s.load(&row[c..]), mv));
                    s.store(&mut row[c..], e);
                    sum = s.add(sum, e);
                }
                l[r] = alpha * l[r] + s.reduce_sum(sum);
                m[r] = m_new;
                if alpha != 1.0 {
                    let a = s.splat(alpha);
                    let orow = &mut o[r * ldv..(r + 1) * ldv];
                    for c in (0..ldv).step_by(lanes) {
                        let x = s.mul(a, s.load(&orow[c..]));
                        s.store(&mut orow[c..], x);
                    }
                }
            }

            // 3c. O[r] += P[r, :nmax] · Vp[:nmax]
            if rb == RM {
                pv::<S, RM, NPV>(s, sm, ldk, r0, nmax, vp, ldv, o);
            } else {
                for r in r0..r0 + rb {
                    pv::<S, 1, NPV>(s, sm, ldk, r, nmax, vp, ldv, o);
                }
            }
            r0 += rb;
        }
        j0 += w;
    }

    // 4. out rows (or partials)
    for r in 0..mq {
        job.emit(t, r, m[r], l[r], &o[r * ldv..]);
    }
}

/// S[r0+r, :cols] = Qp[r0+r, :hd] · Kt[:hd, :cols] for r < R; cols is a multiple of N·lanes.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn qk<S: Simd, const R: usize, const N: usize>(
    s: S,
    qp: &[f32],
    hd: usize,
    r0: usize,
    kt: &[f32],
    ldk: usize,
    cols: usize,
    sm: &mut [f32],
) {
    let lanes = S::LANES;
    let qb = &qp[r0 * hd..(r0 + R) * hd];
    for c0 in (0..cols).step_by(N * lanes) {
        let mut acc = [[s.zero(); N]; R];
        for d in 0..hd {
            let kr = &kt[d * ldk + c0..d * ldk + c0 + N * lanes];
            let mut kv = [s.zero(); N];
            for n in 0..N {
                kv[n] = s.load(&kr[n * lanes..]);
            }
            for r in 0..R {
                let a = s.splat(qb[r * hd + d]);
                for n in 0..N {
                    acc[r][n] = s.mul_add(a, kv[n], acc[r][n]);
                }
            }
        }
        for r in 0..R {
            let dst = &mut sm[(r0 + r) * ldk + c0..(r0 + r) * ldk + c0 + N * lanes];
            for n in 0..N {
                s.store(&mut dst[n * lanes..], acc[r][n]);
            }
        }
    }
}

/// O[r0+r, :ldv] += P[r0+r, :nk] · Vp[:nk, :ldv] for r < R, in column chunks of N vectors then 1.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pv<S: Simd, const R: usize, const N: usize>(
    s: S,
    sm: &[f32],
    ldk: usize,
    r0: usize,
    nk: usize,
    vp: &[f32],
    ldv: usize,
    o: &mut [f32],
) {
    let lanes = S::LANES;
    let mut c0 = 0;
    // vector body: N vectors per row
    while c0 + N * lanes <= ldv {
        pv_chunk::<S, R, N>(s, sm, ldk, r0, nk, vp, ldv, c0, o);
        c0 += N * lanes;
    }
    // tail: one vector at a time (ldv is a multiple of the lanes)
    while c0 < ldv {
        pv_chunk::<S, R, 1>(s, sm, ldk, r0, nk, vp, ldv, c0, o);
        c0 += lanes;
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pv_chunk<S: Simd, const R: usize, const N: usize>(
    s: S,
    sm: &[f32],
    ldk: usize,
    r0: usize,
    nk: usize,
    vp: &[f32],
    ldv: usize,
    c0: usize,
    o: &mut [f32],
) {
    let lanes = S::LANES;
    let mut acc = [[s.zero(); N]; R];
    for r in 0..R {
        for n in 0..N {
            acc[r][n] = s.load(&o[(r0 + r) * ldv + c0 + n * lanes..]);
        }
    }
    let pb = &sm[r0 * ldk..(r0 + R - 1) * ldk + nk];
    for j in 0..nk {
        let vr = &vp[j * ldv + c0..j * ldv + c0 + N * lanes];
        let mut vv = [s.zero(); N];
        for n in 0..N {
            vv[n] = s.load(&vr[n * lanes..]);
        }
        for r in 0..R {
            let a = s.splat(pb[r * ldk + j]);
            for n in 0..N {
                acc[r][n] = s.mul_add(a, vv[n], acc[r][n]);
            }
        }
    }
    for r in 0..R {
        for n in 0..N {
            s.store(&mut o[(r0 + r) * ldv + c0 + n * lanes..], acc[r][n]);
        }
    }
}
