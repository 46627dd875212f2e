//! The `Fast` prefill / vision attention on AMX tiles: the bf16 lanes kernel (`bf16.rs`: rows in the
//! lanes, the same online softmax, the same roundings) with its two products on `tdpbf16ps`.
//!
//! Both products come out in the lanes kernel's transposed layouts, so only the operands' layouts change:
//!
//! ```text
//! Kb (n_kv, kv_len + 32, hpx)   pairs of head dims per key, hpx = ⌈hd/2⌉ rounded up to 16 (pad 0)
//! VT (n_kv, hdx, kvs)           bf16, head dims × keys: VT[g, d, j] = bf16(v[j, g, d]); hdx = hd rounded
//!                               up to 32, kvs = kv_len rounded up to even + 32 (pad 0)
//! St (keys × rows)   = Kb (16 keys × 32 dims: A) · Qt (16 dim pairs × 16 rows: B)
//! Ot (dims × rows)  += VT (16 dims × 32 keys: A) · Pb (16 key pairs × 16 rows: B)
//! ```
//!
//! A tile step reads whole tiles: up to 32 keys past a tile's visible keys (their scores are never read;
//! their Pb rows are zeroed, so the V of later keys adds nothing) and up to the padded head dims (zero in
//! Kb, Qt and VT). The padding rows of Kb and VT keep every read inside the packed buffer.

use super::Job;
use crate::x86::amx::tiles::Tiles;
use std::arch::x86_64::*;

/// Keys of padding after each head's packed K rows and V columns.
pub(crate) const PAD_KEYS: usize = 32;

/// (hpx, hdx, kvs): padded pairs of head dims, head dims, and keys per VT row.
pub(crate) fn dims(hd: usize, kv_len: usize) -> (usize, usize, usize) {
    (
        hd.div_ceil(2).div_ceil(16) * 16,
        hd.div_ceil(32) * 32,
        kv_len.div_ceil(2) * 2 + PAD_KEYS,
    )
}

/// Words (pairs of bf16) of the packed K and V of one call.
pub(crate) fn packed_words(n_kv: usize, kv_len: usize, hd: usize) -> (usize, usize) {
    let (hpx, hdx, kvs) = dims(hd, kv_len);
    (n_kv * (kv_len + PAD_KEYS) * hpx, n_kv * hdx * kvs / 2)
}

/// Rounds keys j0..j1 (j0 even) of kv head g into `kb` and `vt` (the module docs' layouts). The padding
/// must be zero already (the caller zeroes the buffers).
/// Safety: AVX-512 F/BW/VL and AVX512_BF16; the job was validated; kb, vb have [`packed_words`] words and
/// no other thread writes the same keys of head g.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,avx512bf16")]
pub(crate) unsafe fn pack_kv(
    job: &Job,
    kb: *mut u32,
    vt: *mut u32,
    g: usize,
    j0: usize,
    j1: usize,
) {
    let p = &job.p;
    let hd = p.head_dim;
    let (hpx, hdx, kvs) = dims(hd, p.kv_len);
    let body = hd - hd % 16;
    let (kb, vt) = (kb as *mut u16, vt as *mut u16);
    let vth = vt.add(g * hdx * kvs);
    let mut row = vec![0u16; hd.div_ceil(16) * 16];
    for j in j0..j1 {
        // K row j: 16 dims per conversion, then the scalar tail
        let src = job
            .k
            .as_ptr()
            .add(j * job.kl.row_stride + g * job.kl.head_stride);
        let dst = kb.add((g * (p.kv_len + PAD_KEYS) + j) * hpx * 2);
        cvt_row(src, hd, body, dst);
        // V row j, down column j of VT
        let src = job
            .v
            .as_ptr()
            .add(j * job.vl.row_stride + g * job.vl.head_stride);
        cvt_row(src, hd, body, row.as_mut_ptr());
        for (d, &x) in row[..hd].iter().enumerate() {
            *vth.add(d * kvs + j) = x;
        }
    }
}

/// bf16 (RNE, as `bf16.rs` rounds) of hd values at `src` into `dst`.
#[inline(always)]
unsafe fn cvt_row(src: *const f32, hd: usize, body: usize, dst: *mut u16) {
    let mut d = 0;
    while d < body {
        let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.add(d)));
        _mm256_storeu_si256(
            dst.add(d) as *mut __m256i,
            std::mem::transmute::<__m256bh, __m256i>(h),
        );
        d += 16;
    }
    for d in body..hd {
        *dst.add(d) = crate::matmul::scalar::f32_to_bf16(*src.add(d));
    }
}

/// The tile products of one column chunk (rows c..c + nv·16) of one key tile.
pub(crate) struct TileChunk {
    pub hpx: usize,
    pub hdx: usize,
    pub kvs: usize,
    pub ld: usize,
    pub c: usize,
    pub nv: usize,
    /// the tile's first K row (hpx pairs per key)
    pub kt: *const u32,
    /// this head's VT at the tile's first key (kvs bf16 per head dim)
    pub vt: *const u16,
}

impl TileChunk {
    /// The row vectors of the chunk in pairs: (first column, second column or None). A lone vector runs
    /// as B0 = B1: C1 and C3 then equal C0 and C2 bit for bit and are stored to the same places.
    #[inline(always)]
    fn pairs(&self) -> impl Iterator<Item = (usize, Option<usize>)> + '_ {
        (0..self.nv).step_by(2).map(move |n| {
            let c0 = self.c + 16 * n;
            (c0, (n + 1 < self.nv).then_some(c0 + 16))
        })
    }

    /// St[j, c..] = Σ_p Kb[j, p] · Qt[p, c..] for the keys j < ⌈wc/32⌉·32 of the tile (those past wc are
    /// written but never read). Safety: AMX with the tiles configured; the bounds of the module docs.
    #[inline(always)]
    pub unsafe fn qk(&self, tiles: &Tiles, qt: *const u32, stt: *mut f32, wc: usize) {
        let (ld, hpx) = (self.ld, self.hpx);
        let (lda, ldb, ldc) = (hpx * 4, ld * 4, ld * 4);
        for (c0, c1) in self.pairs() {
            let mut j = 0;
            while j < wc {
                tiles.zero();
                let a0 = self.kt.add(j * hpx);
                let a1 = a0.add(16 * hpx);
                for s in 0..hpx / 16 {
                    let b0 = qt.add(16 * s * ld + c0);
                    let b1 = c1.map_or(b0, |c1| qt.add(16 * s * ld + c1));
                    tiles.step(
                        a0.add(16 * s) as *const u16,
                        a1.add(16 * s) as *const u16,
                        lda,
                        b0 as *const u16,
                        b1 as *const u16,
                        ldb,
                    );
                }
                let (s0, s1) = (stt.add(j * ld), stt.add((j + 16) * ld));
                let c1 = c1.unwrap_or(c0);
                // C0: keys j.. × c0, C1: keys j.. × c1, C2: keys j+16.. × c0, C3: keys j+16.. × c1
                tiles.store([s0.add(c0), s0.add(c1), s1.add(c0), s1.add(c1)], ldc);
                j += 32;
            }
        }
    }

    /// Ot[d, c..] += Σ_jp VT[d, 2jp..2jp+2] · Pb[jp, c..] over the key pairs jp < ⌈wp/16⌉·16 (Pb zero from
    /// wp on). Safety: as [`TileChunk::qk`]; Ot has hdx rows.
    #[inline(always)]
    pub unsafe fn pv(&self, tiles: &Tiles, pb: *const u32, ot: *mut f32, wp: usize) {
        let (ld, kvs) = (self.ld, self.kvs);
        let (lda, ldb, ldc) = (kvs * 2, ld * 4, ld * 4);
        let steps = wp.div_ceil(16);
        for (c0, c1) in self.pairs() {
            let mut d = 0;
            while d < self.hdx {
                let (o0, o1) = (ot.add(d * ld), ot.add((d + 16) * ld));
                let b1c = c1.unwrap_or(c0);
                // C0: dims d.. × c0, C1: dims d.. × c1, C2: dims d+16.. × c0, C3: dims d+16.. × c1
                let c = [o0.add(c0), o0.add(b1c), o1.add(c0), o1.add(b1c)];
                tiles.load(c.map(|p| p as *const f32), ldc);
                let a0 = self.vt.add(d * kvs);
                let a1 = a0.add(16 * kvs);
                for s in 0..steps {
                    let b0 = pb.add(16 * s * ld + c0);
                    let b1 = c1.map_or(b0, |c1| pb.add(16 * s * ld + c1));
                    tiles.step(
                        a0.add(32 * s),
                        a1.add(32 * s),
                        lda,
                        b0 as *const u16,
                        b1 as *const u16,
                        ldb,
                    );
                }
                tiles.store(c, ldc);
                d += 32;
            }
        }
    }
}
