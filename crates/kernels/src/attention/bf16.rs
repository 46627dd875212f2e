//! The `Fast` prefill / vision kernel on AVX512_BF16: the lanes kernel (`lanes.rs`, rows in the vector
//! lanes) with both products on `vdpbf16ps` (two bf16 products per f32 lane, accumulated in f32) and the
//! online softmax in f32.
//!
//! Before the tasks run, K and V of the whole call are rounded to bf16 (RNE) once, by [`pack_kv`]:
//!
//! ```text
//! Kb (n_kv, kv_len, hdp)        Kb[g, j, d] = bf16(k[j, g, d]), hdp = hd rounded up to even (pad 0):
//!                               each 32-bit word is a pair of head dims (d, d+1) of one key
//! Vb (n_kv, kvp/2, hd, 2)       Vb[g, j/2, d, j%2] = bf16(v[j, g, d]), kvp = kv_len rounded up to even
//!                               (pad 0): each 32-bit word is a pair of keys (j, j+1) of one head dim
//! ```
//!
//! A task then works like `lanes.rs`, on 32-bit words that hold pairs of bf16 (one word per row lane):
//!
//! ```text
//! Qt (hdp/2, ld) pairs  Qt[p, r] = (bf16(scale·q[r, 2p]), bf16(scale·q[r, 2p+1]))
//! per key tile [j0, j0 + w) (j0 even), per column chunk c of N vectors (rows r ∈ c see wc keys):
//!   St (wce, c)         = Σ_p Kb[j, p] · Qt[p, c]       vdpbf16ps, Kb pair broadcast; RK keys × N vectors
//!   St[j, r]            = −∞ beyond row r's causal limit, and for the pad key wc when wc is odd
//!   m' = max(m, max_j St), α = e^(m − m'), P = e^(St − m') (f32), l = α·l + Σ_j P (f32), Ot[:, c] *= α
//!   Pb (wce/2, c) pairs = (bf16(P[2jp]), bf16(P[2jp+1]))
//!   Ot (hd, c)         += Σ_jp Vb[jp, d] · Pb[jp, c]    vdpbf16ps, Vb pair broadcast; RD dims × N vectors
//! out[r] = Ot[:, r] / l[r]   (or the partial (m, l, Ot[:, r]) when the keys are split across tasks)
//! ```
//!
//! Key tiles start at even keys (the plan keeps chunk starts even), so Vb pairs and tile pairs coincide.
//! The row max of a tile is taken in registers as St is stored (again after the mask, when a chunk has
//! masked keys); P uses [`exp_neg`], a cheaper e^x whose error (≤ 1e-5) is small beside P's rounding.
//! The out rows leave Ot through 16 × 16 register transposes.
//!
//! Measured on the vision shape (1200 × 1200, 16 heads, hd 64; one Zen 4 core, CPU time): 176 GFLOP/s,
//! 76% of the `vdpbf16ps` peak (the exact lanes kernel: 87, 76% of the f32 FMA peak). Of the time,
//! Q·Kᵀ and P·V ~40% each (~91% of peak inside), the softmax ~14%, packing and out rows the rest.

// Register tiles index several arrays with the same (row, vector) indices.
#![allow(clippy::needless_range_loop)]

use super::amx;
use super::flash::{ChunkStep, Chunks};
use super::{Job, Task};
use crate::matmul::scalar::f32_to_bf16;
use crate::x86::amx::tiles::Tiles;
use std::arch::x86_64::*;

/// Keys per key tile (even).
pub(crate) const KEY_TILE: usize = 128;
/// Vectors of 16 rows per column chunk.
const N: usize = 4;
/// Keys per register block of Q·Kᵀ.
const RK: usize = 6;
/// Head dims per register block of P·V.
const RD: usize = 6;
const LANES: usize = 16;

/// 32 bf16 as the operand type of `vdpbf16ps` (same bits).
#[inline(always)]
fn bh(v: __m512i) -> __m512bh {
    // Safety: both are 64-byte plain vectors; every bit pattern is valid.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// 16 bf16 (RNE; denormal inputs flush to 0), as the 256-bit integer vector of their bits.
#[inline(always)]
unsafe fn cvt16(x: __m512) -> __m256i {
    std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(x))
}

/// Pairs (bf16(a[i]), bf16(b[i])) for the 16 lanes: one 32-bit word per lane, a in the low half.
#[inline(always)]
unsafe fn pairs(a: __m512, b: __m512) -> __m512i {
    // cvtne2ps puts bf16(a) in elements 0..16 and bf16(b) in 16..32; interleave them by lane.
    let ab = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b, a));
    let idx = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    _mm512_permutexvar_epi16(idx, ab)
}

/// 2^f for f in [−0.5, 0.5]: degree 4, constant term 1 (so e^0 = 1 exactly), fitted for relative error
/// (own Lawson fit: 2.8e-6 in f32).
const EXP2_P: [f32; 5] = [0.009_582_854, 0.055_906_426, 0.240_240_99, 0.693_124_2, 1.0];

/// Max relative error of [`exp_neg`] on [−87, 0] (tested; 6.7e-6 measured, at −87).
#[cfg(test)]
const EXP_NEG_REL_ERR: f64 = 1e-5;

/// e^x for x ≤ 0 (−∞ gives 0, NaN stays NaN), the softmax weights: t = max(x·log2 e, −200), 2^t = 2^n · 2^(t−n) with
/// n = round(t), the polynomial [`EXP2_P`], `vscalefps`. 9 operations (the shared `exp` takes 13 and is
/// ≤ 1 ULP); relative error ≤ 1e-5 for x ≥ −87 (the polynomial's 2.8e-6 plus |x|·6e-8 from
/// the rounding of x·log2 e), 0 below −138 (and for −∞). The softmax weights are rounded to bf16 (2⁻⁸)
/// next, so this adds ≤ 2·1e-5 to the error of the output, relative to max|v|.
#[inline(always)]
unsafe fn exp_neg(x: __m512) -> __m512 {
    // (the constant first: maxps returns its second operand when either is NaN, so NaN stays NaN)
    let t = _mm512_max_ps(
        _mm512_set1_ps(-200.0),
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let f = _mm512_sub_ps(t, n);
    let mut p = _mm512_set1_ps(EXP2_P[0]);
    for &c in &EXP2_P[1..] {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// Sizes of the packed K and V of one call in 32-bit words (pairs of bf16), see the module docs.
pub(crate) fn packed_words(n_kv: usize, kv_len: usize, hd: usize) -> (usize, usize) {
    let hp = hd.div_ceil(2);
    let kvp = kv_len.div_ceil(2) * 2;
    (n_kv * kv_len * hp, n_kv * kvp / 2 * hd)
}

/// Rounds keys j0..j1 (j0 even) of kv head g of the job's K and V into `kb`, `vb` (layouts in the module
/// docs; the pad pair of an odd kv_len is written as 0).
/// Safety: the CPU has AVX-512 F/BW/VL and AVX512_BF16; the job was validated; kb, vb have
/// [`packed_words`] words and no other thread writes the same keys of head g.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,avx512bf16")]
pub(crate) unsafe fn pack_kv(
    job: &Job,
    kb: *mut u32,
    vb: *mut u32,
    g: usize,
    j0: usize,
    j1: usize,
) {
    let (kb, vb) = (kb as *mut u16, vb as *mut u16);
    let p = &job.p;
    let hd = p.head_dim;
    let hdp = hd.div_ceil(2) * 2;
    let kvp = p.kv_len.div_ceil(2) * 2;
    let body = hd - hd % LANES;
    debug_assert!(j0.is_multiple_of(2) && j1 <= p.kv_len);
    // K rows: 16 dims per conversion, then the scalar tail and the pad dim
    for j in j0..j1 {
        let src = job
            .k
            .as_ptr()
            .add(j * job.kl.row_stride + g * job.kl.head_stride);
        let dst = kb.add((g * p.kv_len + j) * hdp);
        let mut d = 0;
        while d < body {
            _mm256_storeu_si256(
                dst.add(d) as *mut __m256i,
                cvt16(_mm512_loadu_ps(src.add(d))),
            );
            d += LANES;
        }
        for d in body..hd {
            *dst.add(d) = f32_to_bf16(*src.add(d));
        }
        if hdp > hd {
            *dst.add(hd) = 0;
        }
    }
    // V key pairs: 16 dims of two keys per step, interleaved; the scalar tail
    let zero = [0.0f32; 1];
    for j in (j0..j1).step_by(2) {
        let v0 = job
            .v
            .as_ptr()
            .add(j * job.vl.row_stride + g * job.vl.head_stride);
        // the pad key of an odd kv_len reads as zeros
        let (v1, s1) = if j + 1 < p.kv_len {
            (v0.add(job.vl.row_stride), 1)
        } else {
            (zero.as_ptr(), 0)
        };
        let dst = vb.add(((g * kvp + j) / 2 * hd) * 2);
        let mut d = 0;
        while d < body {
            let b = if s1 == 1 {
                _mm512_loadu_ps(v1.add(d))
            } else {
                _mm512_setzero_ps()
            };
            _mm512_storeu_si512(
                dst.add(2 * d) as *mut __m512i,
                pairs(_mm512_loadu_ps(v0.add(d)), b),
            );
            d += LANES;
        }
        for d in body..hd {
            *dst.add(2 * d) = f32_to_bf16(*v0.add(d));
            *dst.add(2 * d + 1) = f32_to_bf16(*v1.add(d * s1));
        }
    }
}

/// Scratch words (f32-sized) a task of `ld` lanes needs, with Qt of `hp` pair rows and Ot of `hdx` rows.
fn scratch_len(hp: usize, hdx: usize, hd: usize, ld: usize) -> usize {
    hp * ld + KEY_TILE * ld + KEY_TILE / 2 * ld + hdx * ld + 2 * ld + hd
}

/// Runs one task (one kv head, any number of query rows) on the packed K and V.
/// Safety: the CPU has AVX-512 F/BW/VL and AVX512_BF16; the job was validated, `kb`, `vb` hold the packed
/// K and V of every kv head of the job and `t` comes from the plan (t.ng == 1, t.ks even).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,avx512bf16")]
pub(crate) unsafe fn run(job: &Job, t: &Task, scratch: &mut Vec<f32>) {
    run_with::<false>(job, t, scratch)
}

/// [`run`] with both products on AMX tiles (`amx.rs`), on K and V packed by `amx::pack_kv`.
/// Safety: as [`run`], plus AMX-TILE/BF16 with the process's tile permission.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,avx512bf16")]
pub(crate) unsafe fn run_amx(job: &Job, t: &Task, scratch: &mut Vec<f32>) {
    run_with::<true>(job, t, scratch)
}

#[inline(always)]
unsafe fn run_with<const AMX: bool>(job: &Job, t: &Task, scratch: &mut Vec<f32>) {
    let p = &job.p;
    let hd = p.head_dim;
    let hp = hd.div_ceil(2);
    let kvp = p.kv_len.div_ceil(2) * 2;
    // AMX: Qt and Kb rows padded to whole tile steps of head dims, Ot to whole pairs of 16-dim tiles
    let (hpx, hdx, kvs) = if AMX {
        amx::dims(hd, p.kv_len)
    } else {
        (hp, hd, 0)
    };
    let tiles = AMX.then(|| Tiles::begin());
    let group = job.group;
    debug_assert!(t.ng == 1 && t.ks.is_multiple_of(2));
    let mq = (t.i1 - t.i0) * group;
    let ld = mq.div_ceil(LANES) * LANES;

    let need = scratch_len(hpx, hdx, hd, ld);
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    // Scratch: Qt (hpx, ld) pairs | St (KEY_TILE, ld) | Pb (KEY_TILE/2, ld) pairs | Ot (hdx, ld) | m | l | o
    let (qt, rest) = scratch.split_at_mut(hpx * ld);
    let (stt, rest) = rest.split_at_mut(KEY_TILE * ld);
    let (pb, rest) = rest.split_at_mut(KEY_TILE / 2 * ld);
    let (ot, rest) = rest.split_at_mut(hdx * ld);
    let (m, rest) = rest.split_at_mut(ld);
    let (l, rest) = rest.split_at_mut(ld);
    let orow = &mut rest[..hd];
    ot.fill(0.0);
    m.fill(f32::NEG_INFINITY);
    l.fill(0.0);
    let qt = qt.as_mut_ptr() as *mut u32;
    let pb = pb.as_mut_ptr() as *mut u32;

    // 1. Qt[p, r] = (bf16(scale·q[i_r, h_r, 2p]), bf16(scale·q[i_r, h_r, 2p+1])), padding lanes 0
    std::ptr::write_bytes(qt, 0, hpx * ld);
    let scale = _mm512_set1_ps(p.scale);
    let body = hd - hd % LANES;
    for r in 0..mq {
        let (i, h) = (t.i0 + r / group, t.g * group + r % group);
        let src = &job.q[i * job.ql.row_stride + h * job.ql.head_stride..][..hd];
        // vector body: 16 dims -> 8 pairs, written down column r
        let mut d = 0;
        while d < body {
            let b = cvt16(_mm512_mul_ps(scale, _mm512_loadu_ps(src.as_ptr().add(d))));
            let mut w = [0u32; 8];
            _mm256_storeu_si256(w.as_mut_ptr() as *mut __m256i, b);
            for (k, &x) in w.iter().enumerate() {
                *qt.add((d / 2 + k) * ld + r) = x;
            }
            d += LANES;
        }
        // scalar tail, the pad dim 0
        while d < hd {
            let lo = f32_to_bf16(p.scale * src[d]) as u32;
            let hi = if d + 1 < hd {
                f32_to_bf16(p.scale * src[d + 1]) as u32
            } else {
                0
            };
            *qt.add(d / 2 * ld + r) = lo | hi << 16;
            d += 2;
        }
    }

    // this head's packed K rows (kv_len, hdp) and V pairs (kvp/2, hd); AMX: K rows (kv_len + pad, hpx)
    // and VT (hdx, kvs)
    let (kh, vh) = if AMX {
        (
            job.kb.as_ptr().add(t.g * (p.kv_len + amx::PAD_KEYS) * hpx),
            job.vb.as_ptr().add(t.g * hdx * kvs / 2),
        )
    } else {
        (
            job.kb.as_ptr().add(t.g * p.kv_len * hp),
            job.vb.as_ptr().add(t.g * kvp / 2 * hd),
        )
    };
    for ChunkStep { j0, w, c, nv, wc } in Chunks::new(job, t, KEY_TILE, mq, ld, N, LANES) {
        let cc = Chunk {
            hp,
            hd,
            ld,
            c,
            wc,
            // key j of the tile: K row j0 + j (hp words), V pair j0/2 + jp (hd words)
            kt: kh.add(j0 * hpx),
            vt: vh.add(j0 / 2 * hd),
            tiles: tiles.as_ref().map(|tl| {
                (
                    tl,
                    amx::TileChunk {
                        hpx,
                        hdx,
                        kvs,
                        ld,
                        c,
                        nv,
                        kt: kh.add(j0 * hpx),
                        vt: (vh as *const u16).add(j0),
                    },
                )
            }),
        };
        let vis = |r| job.visible(t, r, j0, w);
        let b = Bufs {
            qt,
            stt: stt.as_mut_ptr(),
            pb,
            ot: ot.as_mut_ptr(),
            m: m.as_mut_ptr(),
            l: l.as_mut_ptr(),
        };
        match nv {
            1 => cc.step::<1>(&b, vis, mq),
            2 => cc.step::<2>(&b, vis, mq),
            _ => cc.step::<N>(&b, vis, mq),
        }
    }

    // 4. out rows: Ot[:, r] / l[r], 16 × 16 blocks transposed in registers; partials row by row
    if t.slot.is_none() {
        emit_rows(job, t, ot, l, ld, mq, orow);
    } else {
        for r in 0..mq {
            for (d, o) in orow.iter_mut().enumerate() {
                *o = ot[d * ld + r];
            }
            job.emit(t, r, m[r], l[r], orow);
        }
    }
}

/// out[i_r, h_r, :] = Ot[:, r] / l[r] for the task's rows r < mq (a final task: `t.slot` is None): for each
/// vector of 16 rows, blocks of 16 head dims are scaled by 1/l (one row per lane), transposed in registers
/// and stored as 16 row pieces; the head_dim tail goes through [`Job::emit`]'s scalar path per row.
/// Safety: AVX-512 F; ot (hd, ld), l (ld) of this task; `orow` has hd elements.
#[inline(always)]
unsafe fn emit_rows(
    job: &Job,
    t: &Task,
    ot: &[f32],
    l: &[f32],
    ld: usize,
    mq: usize,
    orow: &mut [f32],
) {
    let p = &job.p;
    let (hd, group) = (p.head_dim, job.group);
    let body = hd - hd % LANES;
    assert!(ot.len() >= hd * ld && l.len() >= ld && orow.len() >= hd);
    let mut c = 0;
    while c < mq {
        let rows = LANES.min(mq - c);
        if body > 0 {
            let inv = _mm512_div_ps(_mm512_set1_ps(1.0), _mm512_loadu_ps(l.as_ptr().add(c)));
            // destination of row c + x: out[i, h, :]
            let dst: [*mut f32; LANES] = std::array::from_fn(|x| {
                let r = c + x.min(rows - 1);
                let (i, h) = (t.i0 + r / group, t.g * group + r % group);
                job.out.0.add((i * p.n_q_heads + h) * hd)
            });
            let mut d0 = 0;
            while d0 < body {
                let mut v: [__m512; LANES] = std::array::from_fn(|y| {
                    _mm512_mul_ps(inv, _mm512_loadu_ps(ot.as_ptr().add((d0 + y) * ld + c)))
                });
                transpose16(&mut v);
                for x in 0..rows {
                    _mm512_storeu_ps(dst[x].add(d0), v[x]);
                }
                d0 += LANES;
            }
        }
        // head_dim tail
        if body < hd {
            for r in c..c + rows {
                let (i, h) = (t.i0 + r / group, t.g * group + r % group);
                let dst = job.out.0.add((i * p.n_q_heads + h) * hd);
                for d in body..hd {
                    *dst.add(d) = ot[d * ld + r] / l[r];
                }
            }
        }
        c += LANES;
    }
}

/// Transposes the 16 × 16 matrix whose rows are `v` (v[i] lane j = element (i, j)) in place: unpack pairs
/// of rows, 4 × 4 blocks within 128-bit lanes, then the 128-bit lanes across.
#[inline(always)]
unsafe fn transpose16(v: &mut [__m512; LANES]) {
    // t[2i] lane k: (r2i[4k], r2i+1[4k], r2i[4k+1], r2i+1[4k+1]); t[2i+1]: columns 4k+2, 4k+3
    let mut t = [_mm512_setzero_ps(); LANES];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
    // u[4i + c] lane k: column 4k + c of rows 4i..4i+4
    let mut u = [_mm512_setzero_ps(); LANES];
    for i in 0..4 {
        u[4 * i] = _mm512_shuffle_ps::<0x44>(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_shuffle_ps::<0xee>(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_shuffle_ps::<0x44>(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_shuffle_ps::<0xee>(t[4 * i + 1], t[4 * i + 3]);
    }
    // column 4k + c = (u[c] lane k, u[4 + c] lane k, u[8 + c] lane k, u[12 + c] lane k)
    for c in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_f32x4::<0xee>(u[c], u[4 + c]);
        let v2 = _mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]);
        let v3 = _mm512_shuffle_f32x4::<0xee>(u[8 + c], u[12 + c]);
        v[c] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
        v[4 + c] = _mm512_shuffle_f32x4::<0xdd>(v0, v2);
        v[8 + c] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
        v[12 + c] = _mm512_shuffle_f32x4::<0xdd>(v1, v3);
    }
}

/// The task's scratch, as raw pointers: Qt (hp, ld) pairs, St (KEY_TILE, ld), Pb (KEY_TILE/2, ld) pairs,
/// Ot (hd, ld), m, l (ld).
struct Bufs {
    qt: *mut u32,
    stt: *mut f32,
    pb: *mut u32,
    ot: *mut f32,
    m: *mut f32,
    l: *mut f32,
}

/// One column chunk of one key tile: columns c..c + N·16, keys 0..wc of the tile.
struct Chunk<'t> {
    hp: usize,
    hd: usize,
    ld: usize,
    c: usize,
    wc: usize,
    /// the tile's K rows: key j's pairs at kt[j·hp..]
    kt: *const u32,
    /// the tile's V pairs: key pair jp, dim d at vt[jp·hd + d]
    vt: *const u32,
    /// AMX: the configured tiles and the chunk's tile products (then `kt`, `vt` are unused)
    tiles: Option<(&'t Tiles, amx::TileChunk)>,
}

impl Chunk<'_> {
    /// Safety: the caller's bounds: c + NC·16 <= ld, wc <= KEY_TILE, the tile's K rows and V pairs exist.
    #[inline(always)]
    unsafe fn step<const NC: usize>(&self, b: &Bufs, visible: impl Fn(usize) -> usize, mq: usize) {
        let Chunk {
            hp,
            hd,
            ld,
            c,
            wc,
            kt,
            vt,
            ..
        } = *self;
        let wce = wc.div_ceil(2) * 2;

        // 2a. St[j, c..] = Σ_p Kb[j, p] · Qt[p, c..] for j < wc, RK keys at a time, then 2, then 1;
        //     mx: the running max of each vector of rows over these keys
        let mut mx = [_mm512_set1_ps(f32::NEG_INFINITY); NC];
        if let Some((tl, tc)) = &self.tiles {
            // AMX: the whole tile's scores, then their max
            tc.qk(tl, b.qt, b.stt, wc);
            for jj in 0..wc {
                for n in 0..NC {
                    let v = _mm512_loadu_ps(b.stt.add(jj * ld + c + n * LANES));
                    mx[n] = _mm512_max_ps(mx[n], v);
                }
            }
        } else {
            let mut j = 0;
            while j < wc {
                if wc - j >= RK {
                    qk_block::<RK, NC>(kt, hp, j, b.qt, ld, c, b.stt, &mut mx);
                    j += RK;
                } else if wc - j >= 2 {
                    qk_block::<2, NC>(kt, hp, j, b.qt, ld, c, b.stt, &mut mx);
                    j += 2;
                } else {
                    qk_block::<1, NC>(kt, hp, j, b.qt, ld, c, b.stt, &mut mx);
                    j += 1;
                }
            }
        }

        // 2b. the pad key of an odd wc is −∞ for every lane; causal mask St[j, r] = −∞ for
        //     visible(r) <= j < wce
        if wce > wc {
            for n in 0..NC {
                _mm512_storeu_ps(
                    b.stt.add(wc * ld + c + n * LANES),
                    _mm512_set1_ps(f32::NEG_INFINITY),
                );
            }
        }
        // rows grow with r: if the chunk's first row sees all wc keys, no row is masked and mx stands
        if visible(c) < wc {
            for r in c..(c + NC * LANES).min(mq) {
                for jj in visible(r)..wc {
                    *b.stt.add(jj * ld + r) = f32::NEG_INFINITY;
                }
            }
            // the max again, over the masked scores (NC independent chains)
            mx = [_mm512_set1_ps(f32::NEG_INFINITY); NC];
            for jj in 0..wc {
                for n in 0..NC {
                    let v = _mm512_loadu_ps(b.stt.add(jj * ld + c + n * LANES));
                    mx[n] = _mm512_max_ps(mx[n], v);
                }
            }
        }

        // 2c. online softmax per vector of rows; P rounded to bf16 pairs of keys into Pb
        for n in 0..NC {
            let cv = c + n * LANES;
            let m_old = _mm512_loadu_ps(b.m.add(cv));
            // a row that sees no key yet keeps m = f32::MIN (finite, so St − m' is −∞, not NaN)
            let m_new = _mm512_max_ps(_mm512_max_ps(m_old, mx[n]), _mm512_set1_ps(f32::MIN));
            let alpha = exp_neg(_mm512_sub_ps(m_old, m_new));
            let mut sum = [_mm512_setzero_ps(); 2];
            for jp in 0..wce / 2 {
                let s0 = _mm512_loadu_ps(b.stt.add(2 * jp * ld + cv));
                let s1 = _mm512_loadu_ps(b.stt.add((2 * jp + 1) * ld + cv));
                let e0 = exp_neg(_mm512_sub_ps(s0, m_new));
                let e1 = exp_neg(_mm512_sub_ps(s1, m_new));
                sum[0] = _mm512_add_ps(sum[0], e0);
                sum[1] = _mm512_add_ps(sum[1], e1);
                _mm512_storeu_si512(b.pb.add(jp * ld + cv) as *mut __m512i, pairs(e0, e1));
            }
            let lv = _mm512_loadu_ps(b.l.add(cv));
            let sum = _mm512_add_ps(sum[0], sum[1]);
            _mm512_storeu_ps(b.l.add(cv), _mm512_fmadd_ps(alpha, lv, sum));
            _mm512_storeu_ps(b.m.add(cv), m_new);
            // Ot *= α, unless no row's max grew
            if _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(alpha, _mm512_set1_ps(1.0)) != 0 {
                for d in 0..hd {
                    let o = b.ot.add(d * ld + cv);
                    _mm512_storeu_ps(o, _mm512_mul_ps(alpha, _mm512_loadu_ps(o)));
                }
            }
        }

        // 2d. Ot[d, c..] += Σ_jp Vb[jp, d] · Pb[jp, c..], RD dims at a time, then 2, then 1
        let wp = wce / 2;
        if let Some((tl, tc)) = &self.tiles {
            // the key pairs up to the tile step's end: zero (the V of later keys adds nothing)
            for jp in wp..wp.div_ceil(16) * 16 {
                for n in 0..NC {
                    _mm512_storeu_si512(
                        b.pb.add(jp * ld + c + n * LANES) as *mut __m512i,
                        _mm512_setzero_si512(),
                    );
                }
            }
            tc.pv(tl, b.pb, b.ot, wp);
            return;
        }
        let mut d = 0;
        while d < hd {
            if hd - d >= RD {
                pv_block::<RD, NC>(vt, hd, d, wp, b.pb, ld, c, b.ot);
                d += RD;
            } else if hd - d >= 2 {
                pv_block::<2, NC>(vt, hd, d, wp, b.pb, ld, c, b.ot);
                d += 2;
            } else {
                pv_block::<1, NC>(vt, hd, d, wp, b.pb, ld, c, b.ot);
                d += 1;
            }
        }
    }
}

/// St[j0 + t, c..c + NC·16] = Σ_p Kb[j0 + t, p] · Qt[p, c..] for t < R; mx[n] = max(mx[n], those St).
/// Safety: bounds as [`Chunk::step`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn qk_block<const R: usize, const NC: usize>(
    kt: *const u32,
    hp: usize,
    j0: usize,
    qt: *const u32,
    ld: usize,
    c: usize,
    stt: *mut f32,
    mx: &mut [__m512; NC],
) {
    let mut acc = [[_mm512_setzero_ps(); NC]; R];
    let kp: [*const u32; R] = std::array::from_fn(|t| kt.add((j0 + t) * hp));
    for p in 0..hp {
        let mut qv = [_mm512_setzero_si512(); NC];
        for n in 0..NC {
            qv[n] = _mm512_loadu_si512(qt.add(p * ld + c + n * LANES) as *const __m512i);
        }
        for t in 0..R {
            let kv = bh(_mm512_set1_epi32(*kp[t].add(p) as i32));
            for n in 0..NC {
                acc[t][n] = _mm512_dpbf16_ps(acc[t][n], bh(qv[n]), kv);
            }
        }
    }
    for t in 0..R {
        for n in 0..NC {
            _mm512_storeu_ps(stt.add((j0 + t) * ld + c + n * LANES), acc[t][n]);
            mx[n] = _mm512_max_ps(mx[n], acc[t][n]);
        }
    }
}

/// Ot[d0 + t, c..c + NC·16] += Σ_{jp < wp} Vb[jp, d0 + t] · Pb[jp, c..] for t < R.
/// Safety: bounds as [`Chunk::step`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn pv_block<const R: usize, const NC: usize>(
    vt: *const u32,
    hd: usize,
    d0: usize,
    wp: usize,
    pb: *const u32,
    ld: usize,
    c: usize,
    ot: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); NC]; R];
    for t in 0..R {
        for n in 0..NC {
            acc[t][n] = _mm512_loadu_ps(ot.add((d0 + t) * ld + c + n * LANES));
        }
    }
    let mut vp = vt.add(d0);
    let mut pp = pb.add(c);
    for _ in 0..wp {
        let mut pv = [_mm512_setzero_si512(); NC];
        for n in 0..NC {
            pv[n] = _mm512_loadu_si512(pp.add(n * LANES) as *const __m512i);
        }
        for t in 0..R {
            let v = bh(_mm512_set1_epi32(*vp.add(t) as i32));
            for n in 0..NC {
                acc[t][n] = _mm512_dpbf16_ps(acc[t][n], bh(pv[n]), v);
            }
        }
        vp = vp.wrapping_add(hd);
        pp = pp.wrapping_add(ld);
    }
    for t in 0..R {
        for n in 0..NC {
            _mm512_storeu_ps(ot.add((d0 + t) * ld + c + n * LANES), acc[t][n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`exp_neg`] against f64 on a dense sweep of [−87, 0] (relative), below (0 or tiny) and −∞, NaN.
    #[test]
    fn transpose16_transposes() {
        if !is_x86_feature_detected!("avx512f") {
            return;
        }
        // Safety: AVX-512 F checked above.
        unsafe {
            let mut v: [__m512; LANES] = std::array::from_fn(|i| {
                let row: [f32; 16] = std::array::from_fn(|j| (i * 16 + j) as f32);
                _mm512_loadu_ps(row.as_ptr())
            });
            transpose16(&mut v);
            for (j, vj) in v.iter().enumerate() {
                let mut out = [0.0f32; 16];
                _mm512_storeu_ps(out.as_mut_ptr(), *vj);
                let want: [f32; 16] = std::array::from_fn(|i| (i * 16 + j) as f32);
                assert_eq!(out, want, "row {j}");
            }
        }
    }

    #[test]
    fn exp_neg_accuracy() {
        if !is_x86_feature_detected!("avx512f") {
            return;
        }
        let exp16 = |x: [f32; 16]| -> [f32; 16] {
            // Safety: AVX-512 F checked above.
            unsafe {
                let mut out = [0.0f32; 16];
                _mm512_storeu_ps(out.as_mut_ptr(), exp_neg(_mm512_loadu_ps(x.as_ptr())));
                out
            }
        };
        let mut worst = (0.0f64, 0.0f32);
        let n = 1 << 22;
        for c in 0..n / 16 {
            let x: [f32; 16] = std::array::from_fn(|i| -87.0 * ((c * 16 + i) as f32 / n as f32));
            for (&xi, &yi) in x.iter().zip(&exp16(x)) {
                let want = (xi as f64).exp();
                let rel = (yi as f64 - want).abs() / want;
                if rel > worst.0 {
                    worst = (rel, xi);
                }
            }
        }
        assert!(
            worst.0 <= EXP_NEG_REL_ERR,
            "exp_neg: relative error {:e} at {}",
            worst.0,
            worst.1
        );
        let far = exp16([
            -150.0,
            -1e4,
            f32::MIN,
            f32::NEG_INFINITY,
            -138.5,
            0.0,
            -0.0,
            f32::NAN,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
        ]);
        assert_eq!(far[..5], [0.0; 5], "{far:?}");
        assert_eq!(far[5..7], [1.0, 1.0], "{far:?}");
        assert!(far[7].is_nan());
    }
}
