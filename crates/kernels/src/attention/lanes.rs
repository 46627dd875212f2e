//! The prefill / vision kernel: flash attention with the task's query rows in the vector lanes.
//!
//! A task (see [`Task`]) owns `mq = rows · group` query rows (every q head of one kv head for a range of
//! positions). Everything is kept transposed, (·, mq) with the rows in lanes, so that K and V rows are
//! read as they are (each key tile's rows copied once per task into a stride of an odd number of cache
//! lines, see `odd_lines`) and the softmax needs no horizontal reductions:
//!
//! ```text
//! Qt (hd, ld)          = scale · qᵀ of the task rows (ld = mq rounded up to the lanes, padding 0)
//! per key tile [j0, j0 + w), per column chunk c of N vectors (rows r ∈ c see wc keys of the tile):
//!   St (wc, c)         = K[j0..j0+wc] · Qt[:, c]            register tile RK keys × N vectors
//!   St[j, r]           = −∞ for j beyond row r's causal limit
//!   m' = max(m, max_j St), α = e^(m − m'), Pt = e^(St − m'), l = α·l + Σ_j Pt, Ot[:, c] *= α
//!   Ot (hd, c)        += V[j0..j0+wc]ᵀ · Pt                 register tile RD dims × N vectors
//! out[r] = Ot[:, r] / l[r]   (or the partial (m, l, Ot[:, r]) when the keys are split across tasks)
//! ```
//!
//! Key tiles past the task's last causal limit are never visited, and within a tile a chunk computes only
//! the keys its last row may see.

// Register tiles index several arrays with the same (row, vector) indices.
#![allow(clippy::needless_range_loop)]

use super::flash::{ChunkStep, Chunks};
use super::{Job, Task};
use crate::simd::math::exp;
use crate::simd::Simd;

/// Loads `S::LANES` values at `x[i..]` without a bounds check.
/// Safety: i + S::LANES <= x.len().
#[inline(always)]
unsafe fn vload<S: Simd>(s: S, x: &[f32], i: usize) -> S::V {
    debug_assert!(i + S::LANES <= x.len());
    s.load(x.get_unchecked(i..))
}

/// Stores `S::LANES` values at `x[i..]` without a bounds check.
/// Safety: i + S::LANES <= x.len().
#[inline(always)]
unsafe fn vstore<S: Simd>(s: S, x: &mut [f32], i: usize, v: S::V) {
    debug_assert!(i + S::LANES <= x.len());
    s.store(x.get_unchecked_mut(i..), v)
}

/// Keys per tile: the tile's packed K and V (2 × 128 × 320 bytes at head dim 64) and a column chunk's
/// scores stay in L1 while the chunks of the task's rows go past.
const KEY_TILE: usize = 128;

/// Row stride (floats) of the packed K and V tiles of head dim `hd`, and of Qt, St and Ot of `cols`
/// columns: an odd number of cache lines, so that rows read down a column spread over every set of L1
/// (K and V in their own layouts are often 4 KiB multiples apart — the fused qkv rows of the vision tower
/// are 12 KiB — and then every row of a tile fell in the same set).
fn odd_lines(n: usize) -> usize {
    (n.div_ceil(16) | 1) * 16
}

/// Scratch floats a task needs: Qt, St, Ot at stride `ld`, m, l, o, and the packed K and V tiles.
fn scratch_len(hd: usize, ld: usize) -> usize {
    hd * ld + KEY_TILE * ld + hd * ld + 2 * ld + hd + 2 * KEY_TILE * odd_lines(hd)
}

/// Runs one task. Register tiles: N vectors per column chunk; RK keys (Q·Kᵀ) and RD head dims (P·V) per
/// block.
#[inline(always)]
pub(crate) fn run<S: Simd, const N: usize, const RK: usize, const RD: usize>(
    s: S,
    job: &Job,
    t: &Task,
    scratch: &mut Vec<f32>,
) {
    let p = &job.p;
    let hd = p.head_dim;
    let group = job.group;
    let lanes = S::LANES;
    debug_assert_eq!(t.ng, 1, "the lanes kernel takes one kv head per task");
    let mq = (t.i1 - t.i0) * group;
    // columns (rows rounded up to the lanes) and the row strides (see `odd_lines`)
    let cols = mq.div_ceil(lanes) * lanes;
    let ld = odd_lines(cols);
    let kls = odd_lines(hd);

    let need = scratch_len(hd, ld);
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    // Scratch: Qt (hd, ld) | St (KEY_TILE, ld) | Ot (hd, ld) | m (ld) | l (ld) | o (hd)
    let (qt, rest) = scratch.split_at_mut(hd * ld);
    let (stt, rest) = rest.split_at_mut(KEY_TILE * ld);
    let (ot, rest) = rest.split_at_mut(hd * ld);
    let (m, rest) = rest.split_at_mut(ld);
    let (l, rest) = rest.split_at_mut(ld);
    let (orow, rest) = rest.split_at_mut(hd);
    let (kp, rest) = rest.split_at_mut(KEY_TILE * kls);
    let vp = &mut rest[..KEY_TILE * kls];
    ot.fill(0.0);
    m.fill(f32::NEG_INFINITY);
    l.fill(0.0);

    // 1. Qt[d, r] = scale · q[i_r, h_r, d] with i_r = i0 + r / group, h_r = g·group + r % group
    qt.fill(0.0);
    for r in 0..mq {
        let (i, h) = (t.i0 + r / group, t.g * group + r % group);
        let src = &job.q[i * job.ql.row_stride + h * job.ql.head_stride..][..hd];
        for (d, &x) in src.iter().enumerate() {
            qt[d * ld + r] = p.scale * x;
        }
    }

    let (kbase, vbase) = (t.g * job.kl.head_stride, t.g * job.vl.head_stride);
    // K and V rows of a tile: (w, hd) at row strides krs, vrs
    let (krs, vrs) = (job.kl.row_stride, job.vl.row_stride);
    let mut packed = usize::MAX;
    for ChunkStep { j0, w, c, nv, wc } in Chunks::new(job, t, KEY_TILE, mq, cols, N, lanes) {
        // a new key tile: its K and V rows packed once for all the column chunks
        if j0 != packed {
            for jj in 0..w {
                let (k0, v0) = (kbase + (j0 + jj) * krs, vbase + (j0 + jj) * vrs);
                kp[jj * kls..][..hd].copy_from_slice(&job.k[k0..k0 + hd]);
                vp[jj * kls..][..hd].copy_from_slice(&job.v[v0..v0 + hd]);
            }
            packed = j0;
        }
        let cc = Chunk {
            hd,
            ld,
            c,
            wc,
            krs: kls,
            vrs: kls,
        };
        let (kt, vt) = (&kp[..], &vp[..]);
        let vis = |r| job.visible(t, r, j0, w);
        match nv {
            1 => cc.step::<S, 1, RK, RD>(s, kt, vt, qt, stt, ot, m, l, vis, mq),
            2 => cc.step::<S, 2, RK, RD>(s, kt, vt, qt, stt, ot, m, l, vis, mq),
            _ => cc.step::<S, N, RK, RD>(s, kt, vt, qt, stt, ot, m, l, vis, mq),
        }
    }

    // 4. out rows (or partials): Ot[:, r]
    for r in 0..mq {
        for (d, o) in orow.iter_mut().enumerate() {
            *o = ot[d * ld + r];
        }
        job.emit(t, r, m[r], l[r], orow);
    }
}

/// One column chunk of one key tile: columns c..c + N·lanes, keys 0..wc of the tile.
struct Chunk {
    hd: usize,
    ld: usize,
    c: usize,
    wc: usize,
    krs: usize,
    vrs: usize,
}

impl Chunk {
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn step<S: Simd, const N: usize, const RK: usize, const RD: usize>(
        &self,
        s: S,
        kt: &[f32],
        vt: &[f32],
        qt: &[f32],
        stt: &mut [f32],
        ot: &mut [f32],
        m: &mut [f32],
        l: &mut [f32],
        visible: impl Fn(usize) -> usize,
        mq: usize,
    ) {
        let Chunk {
            hd,
            ld,
            c,
            wc,
            krs,
            vrs,
        } = *self;
        let lanes = S::LANES;
        // Bounds of everything read or written below (then unchecked):
        // Qt (hd, ld), St (wc, ld), Ot (hd, ld), m, l (ld), K/V rows j < wc of hd values.
        assert!(c + N * lanes <= ld && qt.len() >= hd * ld && ot.len() >= hd * ld);
        assert!(stt.len() >= wc * ld && m.len() >= ld && l.len() >= ld);
        assert!(kt.len() >= (wc - 1) * krs + hd && vt.len() >= (wc - 1) * vrs + hd);

        // 2a. St[j, c..] = Σ_d k[j, d] · Qt[d, c..] for j < wc, RK keys at a time, then 4, then 1
        let mut j = 0;
        while j < wc {
            if wc - j >= RK {
                unsafe { qk_block::<S, RK, N>(s, kt, krs, j, hd, qt, ld, c, stt) };
                j += RK;
            } else if wc - j >= 4 {
                unsafe { qk_block::<S, 4, N>(s, kt, krs, j, hd, qt, ld, c, stt) };
                j += 4;
            } else {
                unsafe { qk_block::<S, 1, N>(s, kt, krs, j, hd, qt, ld, c, stt) };
                j += 1;
            }
        }

        // 2b. causal mask: St[j, r] = −∞ for visible(r) <= j < wc
        for r in c..(c + N * lanes).min(mq) {
            for jj in visible(r)..wc {
                stt[jj * ld + r] = f32::NEG_INFINITY;
            }
        }

        // 2c. online softmax per vector of rows
        for n in 0..N {
            let cv = c + n * lanes;
            unsafe {
                let mut mx = s.splat(f32::NEG_INFINITY);
                for jj in 0..wc {
                    mx = s.max(mx, vload::<S>(s, stt, jj * ld + cv));
                }
                let m_old = vload::<S>(s, m, cv);
                // a row that sees no key yet keeps m = f32::MIN (finite, so St − m' is −∞, not NaN)
                let m_new = s.max(s.max(m_old, mx), s.splat(f32::MIN));
                let alpha = exp(s, s.sub(m_old, m_new));
                let mut sum = s.zero();
                for jj in 0..wc {
                    let e = exp(s, s.sub(vload::<S>(s, stt, jj * ld + cv), m_new));
                    vstore::<S>(s, stt, jj * ld + cv, e);
                    sum = s.add(sum, e);
                }
                vstore::<S>(s, l, cv, s.mul_add(alpha, vload::<S>(s, l, cv), sum));
                vstore::<S>(s, m, cv, m_new);
                for d in 0..hd {
                    vstore::<S>(
                        s,
                        ot,
                        d * ld + cv,
                        s.mul(alpha, vload::<S>(s, ot, d * ld + cv)),
                    );
                }
            }
        }

        // 2d. Ot[d, c..] += Σ_j v[j, d] · Pt[j, c..], RD dims at a time, then 4, then 1
        let mut d = 0;
        while d < hd {
            if hd - d >= RD {
                unsafe { pv_block::<S, RD, N>(s, vt, vrs, d, wc, stt, ld, c, ot) };
                d += RD;
            } else if hd - d >= 4 {
                unsafe { pv_block::<S, 4, N>(s, vt, vrs, d, wc, stt, ld, c, ot) };
                d += 4;
            } else {
                unsafe { pv_block::<S, 1, N>(s, vt, vrs, d, wc, stt, ld, c, ot) };
                d += 1;
            }
        }
    }
}

/// St[j0 + t, c..c + N·lanes] = Σ_d k[j0 + t, d] · Qt[d, c..] for t < R.
/// Safety: bounds asserted by `Chunk::step`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn qk_block<S: Simd, const R: usize, const N: usize>(
    s: S,
    kt: &[f32],
    krs: usize,
    j0: usize,
    hd: usize,
    qt: &[f32],
    ld: usize,
    c: usize,
    stt: &mut [f32],
) {
    let lanes = S::LANES;
    let mut acc = [[s.zero(); N]; R];
    let kp: [*const f32; R] = std::array::from_fn(|t| kt.as_ptr().add((j0 + t) * krs));
    for d in 0..hd {
        let mut qv = [s.zero(); N];
        for n in 0..N {
            qv[n] = vload::<S>(s, qt, d * ld + c + n * lanes);
        }
        for t in 0..R {
            let b = s.splat(*kp[t].add(d));
            for n in 0..N {
                acc[t][n] = s.mul_add(b, qv[n], acc[t][n]);
            }
        }
    }
    for t in 0..R {
        for n in 0..N {
            vstore::<S>(s, stt, (j0 + t) * ld + c + n * lanes, acc[t][n]);
        }
    }
}

/// Ot[d0 + t, c..c + N·lanes] += Σ_{j < wc} v[j, d0 + t] · Pt[j, c..] for t < R.
/// Safety: bounds asserted by `Chunk::step`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn pv_block<S: Simd, const R: usize, const N: usize>(
    s: S,
    vt: &[f32],
    vrs: usize,
    d0: usize,
    wc: usize,
    pt: &[f32],
    ld: usize,
    c: usize,
    ot: &mut [f32],
) {
    let lanes = S::LANES;
    let mut acc = [[s.zero(); N]; R];
    for t in 0..R {
        for n in 0..N {
            acc[t][n] = vload::<S>(s, ot, (d0 + t) * ld + c + n * lanes);
        }
    }
    let mut vp = vt.as_ptr().add(d0);
    let mut pp = pt.as_ptr().add(c);
    for _ in 0..wc {
        let mut pv = [s.zero(); N];
        for n in 0..N {
            pv[n] = s.load(std::slice::from_raw_parts(pp.add(n * lanes), lanes));
        }
        for t in 0..R {
            let b = s.splat(*vp.add(t));
            for n in 0..N {
                acc[t][n] = s.mul_add(b, pv[n], acc[t][n]);
            }
        }
        vp = vp.wrapping_add(vrs);
        pp = pp.wrapping_add(ld);
    }
    for t in 0..R {
        for n in 0..N {
            vstore::<S>(s, ot, (d0 + t) * ld + c + n * lanes, acc[t][n]);
        }
    }
}
