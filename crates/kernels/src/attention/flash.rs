//! The shared pieces of the flash kernels, and the decode kernel (few query rows, rows kept in rows).
//!
//! Two kernels implement a task (see [`Task`]): `lanes.rs` when the task has at least a vector of query
//! rows (prefill, vision), and [`run`] here otherwise (decode: one or a few query rows per kv head). Both
//! read K and V straight from their strided views and walk the task's keys in tiles of [`KEY_TILE`]. A
//! decode task may hold several kv heads: each key tile is then processed head after head, so the task
//! reads whole rows of a row-major KV cache (all heads of a position are adjacent in memory).
//!
//! ```text
//! Qp (mq, hd)          = scale · q rows of the task, r = (i − i0)·group + (h − g·group)
//! per key tile [j0, j0 + w), keys the task's last row may see (nk):
//!   S[r, j]            = Qp[r] · k[j0 + j]          one key row loaded for every row of the task
//!   S[r, j]            = −∞ beyond row r's causal limit
//!   m' = max(m, max_j S), α = e^(m − m'), P = e^(S − m'), l = α·l + Σ_j P, O *= α
//!   O[r]              += Σ_j P[r, j] · v[j0 + j]    register tile RM rows × NV vectors
//! out[r] = O[r] / l[r]   (or the partial (m, l, O[r]) when the keys are split across tasks)
//! ```

// Register tiles index several arrays with the same (row, vector) indices.
#![allow(clippy::needless_range_loop)]

use super::{Job, Task};
use crate::simd::math::exp;
use crate::simd::{prefetch_lines, Simd};

/// Keys per key tile.
pub(crate) const KEY_TILE: usize = 256;
/// Query rows per register block of the P·V product.
const RM: usize = 4;
/// Keys per register block of the Q·Kᵀ product.
const KB: usize = 4;
/// How many key rows ahead the K and V rows are prefetched (decode streams the cache from memory).
const PREFETCH_KEYS: usize = 16;

/// Asks for the cache lines of x[i..i + n] (nothing if that lies outside x).
#[inline(always)]
fn prefetch_row(x: &[f32], i: usize, n: usize) {
    if i + n <= x.len() {
        prefetch_lines(x[i..].as_ptr() as *const u8, 0, 4 * n);
    }
}

/// The work of a lane-major task (`lanes.rs`, `bf16.rs`: its `mq` rows in the lanes of vectors, `ld`
/// rounded up to whole vectors): key tiles of `tile` keys from the task's first key to its last row's
/// limit, and in each tile the register chunks of rows — `n` vectors when that many rows are left, else 2
/// (when n > 2), else 1 (the widths the kernels are instantiated for). Yields a [`ChunkStep`] for each
/// chunk whose last real row (which sees the most keys: rows grow with r) sees any key of the tile.
/// An iterator rather than a closure-taking walker: the kernels' loop bodies stay in their
/// `#[target_feature]` functions (closures do not inherit target features).
pub(crate) struct Chunks<'a> {
    job: &'a Job<'a>,
    t: &'a Task,
    tile: usize,
    mq: usize,
    ld: usize,
    n: usize,
    lanes: usize,
    kend: usize,
    j0: usize,
    c: usize,
}

/// One chunk of [`Chunks`]: rows `c..c + nv·lanes` against the tile `[j0, j0 + w)`, `wc` keys of which
/// its last row sees.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkStep {
    pub j0: usize,
    pub w: usize,
    pub c: usize,
    pub nv: usize,
    pub wc: usize,
}

impl<'a> Chunks<'a> {
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job: &'a Job<'a>,
        t: &'a Task,
        tile: usize,
        mq: usize,
        ld: usize,
        n: usize,
        lanes: usize,
    ) -> Chunks<'a> {
        let kend = t.ke.min(job.limit(t.i1 - 1));
        Chunks {
            job,
            t,
            tile,
            mq,
            ld,
            n,
            lanes,
            kend,
            j0: t.ks,
            c: 0,
        }
    }
}

impl Iterator for Chunks<'_> {
    type Item = ChunkStep;

    #[inline(always)]
    fn next(&mut self) -> Option<ChunkStep> {
        while self.j0 < self.kend {
            let w = self.tile.min(self.kend - self.j0);
            while self.c < self.ld {
                let (c, left) = (self.c, self.ld - self.c);
                let nv = if left >= self.n * self.lanes {
                    self.n
                } else if self.n > 2 && left >= 2 * self.lanes {
                    2
                } else {
                    1
                };
                self.c += nv * self.lanes;
                let last = (c + nv * self.lanes).min(self.mq) - 1;
                let wc = self.job.visible(self.t, last, self.j0, w);
                if wc > 0 {
                    return Some(ChunkStep {
                        j0: self.j0,
                        w,
                        c,
                        nv,
                        wc,
                    });
                }
            }
            self.j0 += w;
            self.c = 0;
        }
        None
    }
}

/// Runs one task with the rows in rows (any number of rows; meant for a few). NV: vectors per register
/// tile row of the P·V product.
#[inline(always)]
pub(crate) fn run<S: Simd, const NV: usize>(s: S, job: &Job, t: &Task, scratch: &mut Vec<f32>) {
    let p = &job.p;
    let hd = p.head_dim;
    let group = job.group;
    // rows per kv head, and in the task (see `Task` for their order)
    let rph = (t.i1 - t.i0) * group;
    let mq = rph * t.ng;

    // Scratch: Qp (mq, hd) | S (mq, KEY_TILE) | O (mq, hd) | m (mq) | l (mq)
    let need = mq * hd + mq * KEY_TILE + mq * hd + 2 * mq;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (qp, rest) = scratch.split_at_mut(mq * hd);
    let (sm, rest) = rest.split_at_mut(mq * KEY_TILE);
    let (o, rest) = rest.split_at_mut(mq * hd);
    let (m, rest) = rest.split_at_mut(mq);
    let l = &mut rest[..mq];
    o.fill(0.0);
    m.fill(f32::NEG_INFINITY);
    l.fill(0.0);

    // 1. Qp[r] = scale · q[i, h]
    for r in 0..mq {
        let (i, h) = (
            t.i0 + (r % rph) / group,
            (t.g + r / rph) * group + r % group,
        );
        let src = &job.q[i * job.ql.row_stride + h * job.ql.head_stride..][..hd];
        for (d, &x) in qp[r * hd..(r + 1) * hd].iter_mut().zip(src) {
            *d = p.scale * x;
        }
    }

    // Keys visible to row r (of one kv head's rows) in the tile starting at j0 (at most w).
    let visible =
        |r: usize, j0: usize, w: usize| job.limit(t.i0 + r / group).saturating_sub(j0).min(w);
    let (krs, vrs) = (job.kl.row_stride, job.vl.row_stride);

    let kend = t.ke.min(job.limit(t.i1 - 1));
    let mut j0 = t.ks;
    while j0 < kend {
        let w = KEY_TILE.min(kend - j0);
        // rows grow with r: the last row sees the most keys
        let nk = visible(rph - 1, j0, w);
        // 2a. S = Qp · Kᵀ. In a row-major cache (all heads of a position adjacent) key blocks go
        //     outermost and the task's kv heads inside, so memory is read in address order; in a
        //     head-major cache one head after the other (one stream at a time).
        let body = hd - hd % S::LANES;
        // (a plain function, not a closure: closures do not inherit the caller's target features)
        let hs = job.kl.head_stride;
        let qk = QkArgs { hd, body, rph, krs };
        if t.ng > 1 && job.kl.head_stride < job.kl.row_stride {
            let mut j = 0;
            while j < nk {
                let kb = if nk - j >= KB { KB } else { 1 };
                for gi in 0..t.ng {
                    qk.run::<S>(s, &job.k[(t.g + gi) * hs + j0 * krs..], gi, j, kb, qp, sm);
                }
                j += kb;
            }
        } else {
            for gi in 0..t.ng {
                let mut j = 0;
                while j < nk {
                    let kb = if nk - j >= KB { KB } else { 1 };
                    qk.run::<S>(s, &job.k[(t.g + gi) * hs + j0 * krs..], gi, j, kb, qp, sm);
                    j += kb;
                }
            }
        }
        // 2b, 2c: softmax and P·V head by head
        for gi in 0..t.ng {
            let vt = &job.v[(t.g + gi) * job.vl.head_stride + j0 * vrs..];
            let rows = gi * rph..(gi + 1) * rph;
            softmax_pv::<S, NV>(
                s,
                &mut sm[rows.start * KEY_TILE..rows.end * KEY_TILE],
                &mut o[rows.start * hd..rows.end * hd],
                &mut m[rows.clone()],
                &mut l[rows],
                vt,
                vrs,
                hd,
                nk,
                |r| visible(r, j0, w),
            );
        }
        j0 += w;
    }

    // 3. out rows (or partials)
    for r in 0..mq {
        job.emit(t, r, m[r], l[r], &o[r * hd..]);
    }
}

/// The softmax and P·V of one key tile for the rows of one kv head: sm (rows, KEY_TILE) holds the scores
/// of nk keys (row r sees visible(r) of them) and becomes P; o (rows, hd), m, l (rows) are updated;
/// vt: the tile's first V row of this head.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn softmax_pv<S: Simd, const NV: usize>(
    s: S,
    sm: &mut [f32],
    o: &mut [f32],
    m: &mut [f32],
    l: &mut [f32],
    vt: &[f32],
    vrs: usize,
    hd: usize,
    nk: usize,
    visible: impl Fn(usize) -> usize,
) {
    let lanes = S::LANES;
    let mq = m.len();
    let body = hd - hd % lanes;

    // 2b. online softmax of each row over its visible keys
    let cols = nk.div_ceil(lanes) * lanes;
    for r in 0..mq {
        let n = visible(r);
        let row = &mut sm[r * KEY_TILE..r * KEY_TILE + cols];
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
        let alpha = (m[r] - m_new).exp(); // 0 on the row's first tile (m = −∞)
        let mv = s.splat(m_new);
        let mut sum = s.zero();
        for c in (0..cols).step_by(lanes) {
            let e = exp(s, s.sub(s.load(&row[c..]), mv));
            s.store(&mut row[c..], e);
            sum = s.add(sum, e);
        }
        l[r] = alpha * l[r] + s.reduce_sum(sum);
        m[r] = m_new;
        if alpha != 1.0 {
            for x in &mut o[r * hd..(r + 1) * hd] {
                *x *= alpha;
            }
        }
    }

    // 2c. O[r] += Σ_j P[r, j] · v[j0 + j] for j < nk
    let mut r = 0;
    while r < mq {
        let rb = if mq - r >= RM {
            RM
        } else if mq - r >= 2 {
            2
        } else {
            1
        };
        let mut d = 0;
        // vector body: NV vectors, then one at a time
        while d + NV * lanes <= body {
            match rb {
                RM => pv_chunk::<S, RM, NV>(s, sm, r, nk, vt, vrs, hd, d, o),
                2 => pv_chunk::<S, 2, NV>(s, sm, r, nk, vt, vrs, hd, d, o),
                _ => pv_chunk::<S, 1, NV>(s, sm, r, nk, vt, vrs, hd, d, o),
            }
            d += NV * lanes;
        }
        while d < body {
            match rb {
                RM => pv_chunk::<S, RM, 1>(s, sm, r, nk, vt, vrs, hd, d, o),
                2 => pv_chunk::<S, 2, 1>(s, sm, r, nk, vt, vrs, hd, d, o),
                _ => pv_chunk::<S, 1, 1>(s, sm, r, nk, vt, vrs, hd, d, o),
            }
            d += lanes;
        }
        // scalar tail of head_dim
        for rr in r..r + rb {
            for j in 0..nk {
                let pj = sm[rr * KEY_TILE + j];
                let vj = &vt[j * vrs..j * vrs + hd];
                for dd in body..hd {
                    o[rr * hd + dd] += pj * vj[dd];
                }
            }
        }
        r += rb;
    }
}

/// Sizes for [`QkArgs::run`].
#[derive(Clone, Copy)]
struct QkArgs {
    hd: usize,
    body: usize,
    /// rows per kv head
    rph: usize,
    krs: usize,
}

impl QkArgs {
    /// S[rows of kv head gi, j..j + kb] for the task's kv head gi; kt: the tile's first K row of that head.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn run<S: Simd>(
        &self,
        s: S,
        kt: &[f32],
        gi: usize,
        j: usize,
        kb: usize,
        qp: &[f32],
        sm: &mut [f32],
    ) {
        let QkArgs { hd, body, rph, krs } = *self;
        let qh = &qp[gi * rph * hd..(gi + 1) * rph * hd];
        let sh = &mut sm[gi * rph * KEY_TILE..(gi + 1) * rph * KEY_TILE];
        let mut r = 0;
        while r < rph {
            let rb = if rph - r >= 2 { 2 } else { 1 };
            match (rb, kb) {
                (2, KB) => dots::<S, 2, KB>(s, kt, krs, j, qh, hd, r, body, sh),
                (2, _) => dots::<S, 2, 1>(s, kt, krs, j, qh, hd, r, body, sh),
                (_, KB) => dots::<S, 1, KB>(s, kt, krs, j, qh, hd, r, body, sh),
                _ => dots::<S, 1, 1>(s, kt, krs, j, qh, hd, r, body, sh),
            }
            r += rb;
        }
    }
}

/// S[r0 + x, j0 + y] = Qp[r0 + x] · k[j0 + y] for x < R, y < K: vector body over `body` dims, then
/// the scalar tail.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn dots<S: Simd, const R: usize, const K: usize>(
    s: S,
    kt: &[f32],
    krs: usize,
    j0: usize,
    qp: &[f32],
    hd: usize,
    r0: usize,
    body: usize,
    sm: &mut [f32],
) {
    let lanes = S::LANES;
    let q = &qp[r0 * hd..(r0 + R) * hd];
    let k: [&[f32]; K] = std::array::from_fn(|y| &kt[(j0 + y) * krs..(j0 + y) * krs + hd]);
    if r0 == 0 {
        for y in 0..K {
            prefetch_row(kt, (j0 + y + PREFETCH_KEYS) * krs, hd);
        }
    }
    let mut acc = [[s.zero(); K]; R];
    for d in (0..body).step_by(lanes) {
        let mut kv = [s.zero(); K];
        for y in 0..K {
            kv[y] = s.load(&k[y][d..]);
        }
        for x in 0..R {
            let qv = s.load(&q[x * hd + d..]);
            for y in 0..K {
                acc[x][y] = s.mul_add(qv, kv[y], acc[x][y]);
            }
        }
    }
    for x in 0..R {
        for y in 0..K {
            let mut t = s.reduce_sum(acc[x][y]);
            for d in body..hd {
                t += q[x * hd + d] * k[y][d];
            }
            sm[(r0 + x) * KEY_TILE + j0 + y] = t;
        }
    }
}

/// O[r0 + x, d0..d0 + N·lanes] += Σ_{j < nk} P[r0 + x, j] · v[j, d0..] for x < R.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pv_chunk<S: Simd, const R: usize, const N: usize>(
    s: S,
    sm: &[f32],
    r0: usize,
    nk: usize,
    vt: &[f32],
    vrs: usize,
    hd: usize,
    d0: usize,
    o: &mut [f32],
) {
    let lanes = S::LANES;
    let mut acc = [[s.zero(); N]; R];
    for x in 0..R {
        for n in 0..N {
            acc[x][n] = s.load(&o[(r0 + x) * hd + d0 + n * lanes..]);
        }
    }
    let pb = &sm[r0 * KEY_TILE..(r0 + R - 1) * KEY_TILE + nk];
    for j in 0..nk {
        if r0 == 0 {
            prefetch_row(vt, (j + PREFETCH_KEYS) * vrs + d0, N * lanes);
        }
        let vr = &vt[j * vrs + d0..j * vrs + d0 + N * lanes];
        let mut vv = [s.zero(); N];
        for n in 0..N {
            vv[n] = s.load(&vr[n * lanes..]);
        }
        for x in 0..R {
            let a = s.splat(pb[x * KEY_TILE + j]);
            for n in 0..N {
                acc[x][n] = s.mul_add(a, vv[n], acc[x][n]);
            }
        }
    }
    for x in 0..R {
        for n in 0..N {
            s.store(&mut o[(r0 + x) * hd + d0 + n * lanes..], acc[x][n]);
        }
    }
}
