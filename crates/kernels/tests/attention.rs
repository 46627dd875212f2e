//! Attention: every ISA level on the host against the scalar twin and against a naive f64 reference.
//!
//! Bound: max |out − ref| ≤ 1e-5 · max |v| for every level, against both references (TOL below).
//! Shapes sweep head dims {17, 64, 72, 128} × q_len, kv_len ∈ {1, 2, 15, 17, 64, 65, 300}, causal or not,
//! GQA groups {1, 2, 3, 4}, contiguous / padded-row / fused-qkv / head-major-cache layouts (elements
//! outside the views are NaN, so a read outside a view poisons the output), long decode caches (split keys),
//! score magnitudes of ~1e4 (softmax stability) and bad arguments.

use qwen3vl_kernels::attention::{AttnLayout, AttnParams, MatmulPath};
use qwen3vl_kernels::isa::Isa;
use qwen3vl_kernels::{KernelError, Kernels};

/// Max abs error allowed, relative to max |v|.
const TOL: f64 = 1e-5;
/// The relative error of the `Fast` kernel's e^x for the softmax weights (its unit test checks it).
const EXP_REL: f64 = 1e-5;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// uniform in [-1, 1)
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// integer in [-n, n]
    fn int(&mut self, n: u64) -> f32 {
        (self.next() % (2 * n + 1)) as f32 - n as f32
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// q, k, v each (rows, heads, hd) contiguous
    Contiguous,
    /// rows padded with 3 junk elements
    PaddedRows,
    /// one (rows, nq + 2·nkv, hd) buffer (needs q_len == kv_len; else PaddedRows)
    FusedQkv,
    /// k, v as a head-major cache (nkv, kv_len + 5, hd); q with padded rows
    HeadMajorCache,
}

/// How the random values are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Values {
    /// uniform [-1, 1)
    Uniform,
    /// q, k integers in [-64, 64] (exact f32 dot products), scale 1/8: scores up to ~1e5
    Huge,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    hd: usize,
    q_len: usize,
    kv_len: usize,
    causal: bool,
    nkv: usize,
    group: usize,
    layout: Layout,
    values: Values,
}

/// A view: the slice handed to the kernel starts at `off` of `buf`.
struct View {
    buf: Vec<f32>,
    off: usize,
    l: AttnLayout,
}

impl View {
    fn s(&self) -> &[f32] {
        &self.buf[self.off..]
    }
    fn at(&self, r: usize, h: usize, d: usize) -> f32 {
        self.s()[r * self.l.row_stride + h * self.l.head_stride + d]
    }
}

struct Inputs {
    q: View,
    k: View,
    v: View,
    p: AttnParams,
}

fn build(c: &Case, seed: u64) -> Inputs {
    let (hd, nkv) = (c.hd, c.nkv);
    let nq = nkv * c.group;
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let layout = if c.layout == Layout::FusedQkv && c.q_len != c.kv_len {
        Layout::PaddedRows
    } else {
        c.layout
    };
    let padded = |heads: usize| AttnLayout {
        row_stride: heads * hd + 3,
        head_stride: hd,
    };
    let alloc = |rows: usize, l: AttnLayout, heads: usize| {
        let len = if rows == 0 {
            0
        } else {
            (rows - 1) * l.row_stride + (heads - 1) * l.head_stride + hd
        };
        View {
            buf: vec![f32::NAN; len + 2],
            off: 0,
            l,
        }
    };
    let (mut q, mut k, mut v) = match layout {
        Layout::Contiguous => (
            alloc(c.q_len, AttnLayout::contiguous(nq, hd), nq),
            alloc(c.kv_len, AttnLayout::contiguous(nkv, hd), nkv),
            alloc(c.kv_len, AttnLayout::contiguous(nkv, hd), nkv),
        ),
        Layout::PaddedRows => (
            alloc(c.q_len, padded(nq), nq),
            alloc(c.kv_len, padded(nkv), nkv),
            alloc(c.kv_len, padded(nkv), nkv),
        ),
        Layout::HeadMajorCache => {
            let cache = AttnLayout::head_major(c.kv_len + 5, hd);
            (
                alloc(c.q_len, padded(nq), nq),
                alloc(c.kv_len, cache, nkv),
                alloc(c.kv_len, cache, nkv),
            )
        }
        Layout::FusedQkv => {
            let l = AttnLayout {
                row_stride: (nq + 2 * nkv) * hd,
                head_stride: hd,
            };
            let all = alloc(c.q_len, l, nq + 2 * nkv);
            let k = View {
                buf: all.buf.clone(),
                off: nq * hd,
                l,
            };
            let v = View {
                buf: all.buf.clone(),
                off: (nq + nkv) * hd,
                l,
            };
            (all, k, v)
        }
    };
    let mut fill = |view: &mut View, rows: usize, heads: usize, qk: bool| {
        for r in 0..rows {
            for h in 0..heads {
                for d in 0..hd {
                    let x = match (c.values, qk) {
                        (Values::Huge, true) => rng.int(64),
                        _ => rng.f(),
                    };
                    let i = view.off + r * view.l.row_stride + h * view.l.head_stride + d;
                    view.buf[i] = x;
                }
            }
        }
    };
    fill(&mut q, c.q_len, nq, true);
    fill(&mut k, c.kv_len, nkv, true);
    fill(&mut v, c.kv_len, nkv, false);
    let scale = match c.values {
        Values::Uniform => 1.0 / (hd as f32).sqrt(),
        Values::Huge => 0.125,
    };
    Inputs {
        q,
        k,
        v,
        p: AttnParams {
            n_q_heads: nq,
            n_kv_heads: nkv,
            head_dim: hd,
            q_len: c.q_len,
            kv_len: c.kv_len,
            scale,
            causal: c.causal,
            path: MatmulPath::Exact,
        },
    }
}

/// The definition, in f64: out[i,h] = Σ_j softmax_j(scale·q·k_j) v_j over the visible keys.
fn naive_f64(x: &Inputs) -> Vec<f64> {
    let f = |v: f32| v as f64;
    eval_f64(x, x.p.scale as f64, f, f, f)
}

/// f32 -> bf16 -> f32, round to nearest even (as `vcvtneps2bf16` on normal values).
fn bf16(x: f32) -> f32 {
    let b = x.to_bits();
    f32::from_bits(((b + 0x7fff + ((b >> 16) & 1)) >> 16) << 16)
}

/// The f64 evaluation on the bf16 path's rounded operands: bf16(scale·q), bf16(k), bf16(v), scale 1.
fn rounded_f64(x: &Inputs) -> Vec<f64> {
    let s = x.p.scale;
    eval_f64(
        x,
        1.0,
        |q| bf16(s * q) as f64,
        |k| bf16(k) as f64,
        |v| bf16(v) as f64,
    )
}

/// out[i,h] = Σ_j softmax_j(scale·qf(q)·kf(k_j)) vf(v_j) in f64 over the visible keys.
fn eval_f64(
    x: &Inputs,
    scale: f64,
    qf: impl Fn(f32) -> f64,
    kf: impl Fn(f32) -> f64,
    vf: impl Fn(f32) -> f64,
) -> Vec<f64> {
    let p = &x.p;
    let hd = p.head_dim;
    let group = p.n_q_heads / p.n_kv_heads;
    let mut out = vec![0.0f64; p.q_len * p.n_q_heads * hd];
    for i in 0..p.q_len {
        let n = if p.causal {
            i + p.kv_len - p.q_len + 1
        } else {
            p.kv_len
        };
        for h in 0..p.n_q_heads {
            let g = h / group;
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    (0..hd)
                        .map(|d| qf(x.q.at(i, h, d)) * kf(x.k.at(j, g, d)))
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|&sj| (sj - m).exp()).collect();
            let l: f64 = e.iter().sum();
            for d in 0..hd {
                let acc: f64 = (0..n).map(|j| e[j] * vf(x.v.at(j, g, d))).sum();
                out[(i * p.n_q_heads + h) * hd + d] = acc / l;
            }
        }
    }
    out
}

fn run(k: &Kernels, x: &Inputs) -> Vec<f32> {
    run_p(k, x, &x.p)
}

fn run_p(k: &Kernels, x: &Inputs, p: &AttnParams) -> Vec<f32> {
    let mut out = vec![f32::NAN; p.q_len * p.n_q_heads * p.head_dim];
    k.attention(x.q.s(), x.q.l, x.k.s(), x.k.l, x.v.s(), x.v.l, &mut out, p)
        .unwrap_or_else(|e| panic!("{e}"));
    out
}

fn max_abs_v(x: &Inputs) -> f64 {
    let p = &x.p;
    let mut m = 0.0f64;
    for j in 0..p.kv_len {
        for g in 0..p.n_kv_heads {
            for d in 0..p.head_dim {
                m = m.max(x.v.at(j, g, d).abs() as f64);
            }
        }
    }
    m
}

/// Asserts max |got − want| ≤ bound, reporting the worst element and the first few differing pairs.
fn assert_close(what: &str, c: &Case, got: &[f32], want: &[f64], bound: f64) {
    assert_eq!(got.len(), want.len());
    let (nq, hd) = (c.nkv * c.group, c.hd);
    let mut worst = (0.0f64, 0usize);
    let mut first = Vec::new();
    for (idx, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = (g as f64 - w).abs();
        let e = if e.is_nan() { f64::INFINITY } else { e };
        if e > worst.0 {
            worst = (e, idx);
        }
        if e > bound && first.len() < 4 {
            first.push((idx, g, w));
        }
    }
    let (err, idx) = worst;
    let at = (idx / (nq * hd), (idx / hd) % nq, idx % hd);
    assert!(
        err <= bound,
        "{what} {c:?}: max abs err {err:e} (> {bound:e}) at (row, head, d) = {at:?}; first differing (index, got, want): {first:?}",
    );
}

/// The bounds of the bf16 (`Fast`) path, absolute, from its error model (see the attention module docs;
/// bf16 keeps 8 significant bits, so rounding to it has relative error ≤ 2⁻⁸):
/// - vs the f64 definition: (e^(2Δ) − 1 + 2⁻⁷ + 2⁻¹⁶ + 2·EXP_REL + TOL)·max|v|, with Δ = max_{i,h,j} Σ_d
///   |bf16(scale·q)·bf16(k) − scale·q·k| ≤ (2⁻⁷ + 2⁻¹⁶)·|scale|·max Σ_d |q·k| the score error from rounding
///   scale·q and k to bf16, which moves each softmax weight by a factor within e^(±2Δ); 2⁻⁸ from rounding
///   v and 2⁻⁸(1 + 2⁻⁸) from rounding the weights P (the sum l is of the unrounded f32 P);
/// - vs the f64 evaluation on the rounded operands ([`rounded_f64`]): (2⁻⁸(1 + 2⁻⁸) + 2·EXP_REL +
///   TOL)·max|v| (the rounding of P only, and the kernel's e^x; TOL covers the f32 arithmetic, as for the
///   exact path).
fn fast_bounds(x: &Inputs) -> (f64, f64) {
    let p = &x.p;
    let group = p.n_q_heads / p.n_kv_heads;
    let u = 2f64.powi(-7) + 2f64.powi(-16);
    let scale = p.scale as f64;
    let mut delta = 0.0f64;
    for i in 0..p.q_len {
        for h in 0..p.n_q_heads {
            for j in 0..p.kv_len {
                let (mut e, mut qk) = (0.0f64, 0.0f64);
                for d in 0..p.head_dim {
                    let (q, k) = (x.q.at(i, h, d), x.k.at(j, h / group, d));
                    let exact = scale * q as f64 * k as f64;
                    e += (bf16(p.scale * q) as f64 * bf16(k) as f64 - exact).abs();
                    qk += exact.abs();
                }
                // (+2⁻²³: scale·q is formed in f32 before the rounding to bf16)
                assert!(
                    e <= (u + 2f64.powi(-23)) * qk,
                    "the rounding model: {e} > {u}·{qk}"
                );
                delta = delta.max(e);
            }
        }
    }
    let vmax = max_abs_v(x);
    let loose = ((2.0 * delta).exp_m1() + u + 2.0 * EXP_REL + TOL) * vmax;
    let tight = (2f64.powi(-8) * (1.0 + 2f64.powi(-8)) + 2.0 * EXP_REL + TOL) * vmax;
    (loose, tight)
}

/// The `Fast` path of kernels `k` on case `c`: where it runs the bf16 kernel, within [`fast_bounds`] of
/// both f64 references; elsewhere bit for bit the `Exact` result `exact` of the same kernels.
struct FastRefs<'a> {
    x: &'a Inputs,
    want: &'a [f64],
    rounded: Option<Vec<f64>>,
    bounds: Option<(f64, f64)>,
}

impl FastRefs<'_> {
    fn check(&mut self, what: &str, c: &Case, k: &Kernels, exact: &[f32]) {
        let pf = AttnParams {
            path: MatmulPath::Fast,
            ..self.x.p
        };
        let got = run_p(k, self.x, &pf);
        match k.attention_precision(&pf) {
            MatmulPath::Exact => {
                let same = got
                    .iter()
                    .zip(exact)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{what} {c:?}: Fast runs the exact path but differs from Exact"
                );
            }
            MatmulPath::Fast => {
                let x = self.x;
                let (loose, tight) = *self.bounds.get_or_insert_with(|| fast_bounds(x));
                let rounded = self.rounded.get_or_insert_with(|| rounded_f64(x));
                assert_close(&format!("{what} Fast vs f64"), c, &got, self.want, loose);
                assert_close(
                    &format!("{what} Fast vs f64 on bf16 operands"),
                    c,
                    &got,
                    rounded,
                    tight,
                );
            }
        }
    }
}

/// Checks every level against the f64 reference and the SIMD levels against the scalar twin, the SIMD
/// levels on 1 and 2 threads (2 may split long keys into chunks).
fn check(c: Case, seed: u64) {
    check_threads(c, seed, &[1, 2]);
}

fn check_threads(c: Case, seed: u64, thread_counts: &[usize]) {
    let x = build(&c, seed);
    let want = naive_f64(&x);
    let vmax = max_abs_v(&x);
    let scalar_k = Kernels::new(Isa::Scalar).unwrap();
    let scalar = run(&scalar_k, &x);
    assert_close("scalar vs f64", &c, &scalar, &want, TOL * vmax);
    let mut fast = FastRefs {
        x: &x,
        want: &want,
        rounded: None,
        bounds: None,
    };
    fast.check("scalar", &c, &scalar_k, &scalar);
    let scalar64: Vec<f64> = scalar.iter().map(|&v| v as f64).collect();
    for k in Kernels::test_variants() {
        if k.isa() == Isa::Scalar {
            continue;
        }
        for &threads in thread_counts {
            let k = k.with_threads(threads);
            let got = run(&k, &x);
            let what = format!("{} ({threads} threads)", k.isa());
            assert_close(&format!("{what} vs f64"), &c, &got, &want, TOL * vmax);
            assert_close(
                &format!("{what} vs scalar"),
                &c,
                &got,
                &scalar64,
                TOL * vmax,
            );
            fast.check(&what, &c, &k, &got);
        }
    }
}

/// The `Fast` path only (no scalar run: for large shapes), at the best level on 1 and 2 threads.
fn check_fast(c: Case, seed: u64) {
    check_fast_on(c, seed, &[1, 2]);
}

/// [`check_fast`] on the given thread counts.
fn check_fast_on(c: Case, seed: u64, thread_counts: &[usize]) {
    let x = build(&c, seed);
    let want = naive_f64(&x);
    let mut fast = FastRefs {
        x: &x,
        want: &want,
        rounded: None,
        bounds: None,
    };
    let best = Kernels::test_variants().pop().unwrap();
    for &threads in thread_counts {
        let k = best.with_threads(threads);
        let exact = run(&k, &x);
        fast.check(&format!("{} ({threads} threads)", k.isa()), &c, &k, &exact);
    }
}

const LENS: [usize; 7] = [1, 2, 15, 17, 64, 65, 300];
const LAYOUTS: [Layout; 4] = [
    Layout::Contiguous,
    Layout::PaddedRows,
    Layout::FusedQkv,
    Layout::HeadMajorCache,
];

/// Every (q_len, kv_len) pair with kv_len >= q_len, causal and not, plus non-causal q_len > kv_len, for each
/// head dim; GQA group and layout cycle through their values from case to case.
fn sweep(hd: usize) {
    let mut n = 0usize;
    for &q_len in &LENS {
        for &kv_len in &LENS {
            for causal in [true, false] {
                if causal && kv_len < q_len {
                    continue;
                }
                // keep the biggest shapes to a few heads
                let big = q_len * kv_len >= 300 * 64;
                let group = 1 + n % 4;
                let nkv = if big { 1 } else { 1 + (n / 4) % 2 };
                let c = Case {
                    hd,
                    q_len,
                    kv_len,
                    causal,
                    nkv,
                    group,
                    layout: LAYOUTS[(n / 2) % 4],
                    values: Values::Uniform,
                };
                check(c, n as u64 + hd as u64 * 1000);
                n += 1;
            }
        }
    }
}

#[test]
fn sweep_hd17() {
    sweep(17);
}

#[test]
fn sweep_hd64() {
    sweep(64);
}

#[test]
fn sweep_hd72() {
    sweep(72);
}

#[test]
fn sweep_hd128() {
    sweep(128);
}

/// Every GQA group and layout on one mid-sized causal shape (decode after prefill: q_len < kv_len).
#[test]
fn groups_and_layouts() {
    let mut seed = 1;
    for group in 1..=4 {
        for layout in LAYOUTS {
            for (q_len, kv_len) in [(17, 65), (65, 65)] {
                check(
                    Case {
                        hd: 64,
                        q_len,
                        kv_len,
                        causal: true,
                        nkv: 2,
                        group,
                        layout,
                        values: Values::Uniform,
                    },
                    seed,
                );
                seed += 1;
            }
        }
    }
}

/// Long caches: decode steps whose keys are split into chunks across threads (flash-decoding) and merged.
#[test]
fn long_decode_split_keys() {
    let mut seed = 100;
    for (q_len, kv_len, nkv, group) in [
        (1, 600, 1, 2),
        (1, 1500, 1, 1),
        (2, 1025, 1, 3),
        (1, 4097, 2, 4),
        (3, 777, 1, 2),
    ] {
        for causal in [true, false] {
            check(
                Case {
                    hd: 64,
                    q_len,
                    kv_len,
                    causal,
                    nkv,
                    group,
                    layout: Layout::HeadMajorCache,
                    values: Values::Uniform,
                },
                seed,
            );
            seed += 1;
        }
    }
}

/// Wide GQA groups (8 q heads per kv head: query tiles of 8 rows) and thread counts above the core count
/// (more key chunks in a split decode).
#[test]
fn wide_groups_and_odd_thread_counts() {
    for (q_len, kv_len, causal) in [
        (1, 2000, true),
        (3, 700, true),
        (70, 70, true),
        (33, 90, false),
    ] {
        check_threads(
            Case {
                hd: 64,
                q_len,
                kv_len,
                causal,
                nkv: 1,
                group: 8,
                layout: Layout::HeadMajorCache,
                values: Values::Uniform,
            },
            400 + q_len as u64,
            &[3, 5],
        );
    }
}

/// Scores of ~1e4–1e5 (exact in f32): e^s overflows unless the running max is subtracted.
#[test]
fn huge_scores_are_stable() {
    for (seed, (hd, q_len, kv_len, causal)) in [
        (128, 65, 300, true),
        (64, 300, 300, false),
        (17, 1, 700, true),
        (72, 15, 17, true),
    ]
    .into_iter()
    .enumerate()
    {
        check(
            Case {
                hd,
                q_len,
                kv_len,
                causal,
                nkv: 1,
                group: 2,
                layout: Layout::Contiguous,
                values: Values::Huge,
            },
            200 + seed as u64,
        );
    }
}

/// A key tile boundary inside a query tile, a vision-like non-causal segment and a text prefill shape.
#[test]
fn model_shapes() {
    check(
        Case {
            hd: 64,
            q_len: 300,
            kv_len: 300,
            causal: false,
            nkv: 4,
            group: 1,
            layout: Layout::FusedQkv,
            values: Values::Uniform,
        },
        300,
    );
    check(
        Case {
            hd: 128,
            q_len: 260,
            kv_len: 260,
            causal: true,
            nkv: 2,
            group: 2,
            layout: Layout::FusedQkv,
            values: Values::Uniform,
        },
        301,
    );
}

/// The `Fast` (bf16) path on awkward prefill sizes up to 1023 rows and keys (odd key counts leave a pad
/// key in the last pair, odd head dims a pad dim), causal and not, GQA groups and strided layouts.
fn fast_sweep(hd: usize, seed0: u64) {
    let shapes = [
        (15, 15),
        (17, 17),
        (63, 63),
        (65, 65),
        (257, 257),
        (1023, 1023),
        (1, 65),
        (17, 1023),
        (63, 257),
        (65, 300),
    ];
    for (n, &(q_len, kv_len)) in shapes.iter().enumerate() {
        for causal in [true, false] {
            let big = q_len * kv_len > 300 * 300;
            let group = if q_len == 1 { 16 } else { 1 + n % 4 };
            check_fast(
                Case {
                    hd,
                    q_len,
                    kv_len,
                    causal,
                    nkv: if big { 1 } else { 2 },
                    group: if big { 1 } else { group },
                    layout: LAYOUTS[(n + causal as usize) % 4],
                    values: Values::Uniform,
                },
                seed0 + 2 * n as u64 + causal as u64,
            );
        }
    }
}

#[test]
fn fast_sweep_hd64() {
    fast_sweep(64, 500);
}

#[test]
fn fast_sweep_hd72() {
    fast_sweep(72, 600);
}

#[test]
fn fast_sweep_hd33() {
    fast_sweep(33, 700);
}

/// Head dims below a vector (scalar tails only, a pad dim for odd ones).
#[test]
fn fast_small_head_dims() {
    for (n, hd) in [1usize, 2, 7, 15, 16].into_iter().enumerate() {
        for (q_len, kv_len, causal) in [(40, 40, true), (33, 70, false)] {
            check_fast(
                Case {
                    hd,
                    q_len,
                    kv_len,
                    causal,
                    nkv: 2,
                    group: 1 + n % 3,
                    layout: LAYOUTS[n % 4],
                    values: Values::Uniform,
                },
                800 + 10 * n as u64 + q_len as u64,
            );
        }
    }
}

/// Few query tiles against long keys: the keys split into chunks across threads (chunk starts rounded to
/// even keys for the bf16 pairs) and the partial results merged.
#[test]
fn fast_split_keys() {
    for (q_len, kv_len, group) in [(16, 1023, 1), (5, 777, 4), (20, 1500, 2)] {
        for causal in [true, false] {
            let c = Case {
                hd: 64,
                q_len,
                kv_len,
                causal,
                nkv: 1,
                group,
                layout: Layout::HeadMajorCache,
                values: Values::Uniform,
            };
            check_fast(c, 900 + kv_len as u64 + causal as u64);
            // 3 and 5 threads: more chunks
            check_fast_on(c, 950 + q_len as u64, &[3, 5]);
        }
    }
}

/// Which calls take the bf16 kernel: prefill-shaped `Fast` calls on AVX512_BF16 only.
#[test]
fn fast_dispatch() {
    let vision = AttnParams {
        n_q_heads: 16,
        n_kv_heads: 16,
        head_dim: 64,
        q_len: 1200,
        kv_len: 1200,
        scale: 0.125,
        causal: false,
        path: MatmulPath::Fast,
    };
    let decode = AttnParams {
        n_kv_heads: 8,
        q_len: 1,
        kv_len: 4096,
        causal: true,
        ..vision
    };
    for k in Kernels::test_variants() {
        // the bf16 kernel runs on AMX tiles where the process may use them, else on the bf16 dot product
        let bf16 = k.bf16_dot() || k.amx();
        let expect = if bf16 {
            MatmulPath::Fast
        } else {
            MatmulPath::Exact
        };
        assert_eq!(k.attention_precision(&vision), expect, "{}", k.isa());
        let exact = AttnParams {
            path: MatmulPath::Exact,
            ..vision
        };
        assert_eq!(k.attention_precision(&exact), MatmulPath::Exact);
        assert_eq!(k.attention_precision(&decode), MatmulPath::Exact);
    }
}

/// Zero queries (uniform weights: the mean of v) and zero values (out 0) on the `Fast` path.
#[test]
fn fast_zeros() {
    let (hd, n) = (64usize, 70usize);
    let l = AttnLayout::contiguous(2, hd);
    let mut rng = Rng(7);
    let v: Vec<f32> = (0..n * 2 * hd).map(|_| rng.f()).collect();
    let kx: Vec<f32> = (0..n * 2 * hd).map(|_| rng.f()).collect();
    let zeros = vec![0.0f32; n * 2 * hd];
    let p = AttnParams {
        n_q_heads: 2,
        n_kv_heads: 2,
        head_dim: hd,
        q_len: n,
        kv_len: n,
        scale: 0.125,
        causal: false,
        path: MatmulPath::Fast,
    };
    for k in Kernels::test_variants() {
        let mut out = vec![f32::NAN; n * 2 * hd];
        k.attention(&kx, l, &kx, l, &zeros, l, &mut out, &p)
            .unwrap();
        assert!(out.iter().all(|&x| x == 0.0), "{}: v = 0", k.isa());
        k.attention(&zeros, l, &kx, l, &v, l, &mut out, &p).unwrap();
        for i in 0..n {
            for h in 0..2 {
                for d in 0..hd {
                    let mean =
                        (0..n).map(|j| v[(j * 2 + h) * hd + d] as f64).sum::<f64>() / n as f64;
                    let got = out[(i * 2 + h) * hd + d] as f64;
                    // rounding v and P to bf16: 2⁻⁷ of max |v| <= 1
                    assert!(
                        (got - mean).abs() <= 2f64.powi(-7) + 1e-5,
                        "{}: q = 0: {got} vs {mean}",
                        k.isa()
                    );
                }
            }
        }
    }
}

/// Hand-computed values: two keys with scores 0 and ln 3 give weights 1/4 and 3/4.
#[test]
fn known_values() {
    let ln3 = 3.0f32.ln();
    // hd 2, one q head, one kv head; q = (1, 0); k0 = (0, 5), k1 = (ln 3, 7); v0 = (4, 8), v1 = (8, 0)
    let q = [1.0f32, 0.0];
    let k = [0.0f32, 5.0, ln3, 7.0];
    let v = [4.0f32, 8.0, 8.0, 0.0];
    for kern in Kernels::test_variants() {
        let mut out = [0.0f32; 2];
        let p = AttnParams {
            n_q_heads: 1,
            n_kv_heads: 1,
            head_dim: 2,
            q_len: 1,
            kv_len: 2,
            scale: 1.0,
            causal: false,
            path: MatmulPath::Exact,
        };
        kern.attention(
            &q,
            AttnLayout::contiguous(1, 2),
            &k,
            AttnLayout::contiguous(1, 2),
            &v,
            AttnLayout::contiguous(1, 2),
            &mut out,
            &p,
        )
        .unwrap();
        // 0.25·(4, 8) + 0.75·(8, 0) = (7, 2)
        assert!(
            (out[0] - 7.0).abs() < 1e-5 && (out[1] - 2.0).abs() < 1e-5,
            "{}: {out:?}",
            kern.isa()
        );
        // causal, q_len 2: row 0 sees key 0 only -> v0; row 1 sees both -> (7, 2)
        let q2 = [1.0f32, 0.0, 1.0, 0.0];
        let mut out2 = [0.0f32; 4];
        let p2 = AttnParams {
            q_len: 2,
            causal: true,
            ..p
        };
        let l = AttnLayout::contiguous(1, 2);
        kern.attention(&q2, l, &k, l, &v, l, &mut out2, &p2)
            .unwrap();
        assert_eq!(out2[..2], [4.0, 8.0], "{}", kern.isa());
        assert!(
            (out2[2] - 7.0).abs() < 1e-5 && (out2[3] - 2.0).abs() < 1e-5,
            "{}: {out2:?}",
            kern.isa()
        );
    }
}

fn expect_err(r: Result<(), KernelError>, needle: &str) {
    match r {
        Ok(()) => panic!("expected an error mentioning {needle:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(needle),
                "error {msg:?} does not mention {needle:?}"
            );
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    let (hd, nq, nkv, q_len, kv_len) = (8usize, 4usize, 2usize, 3usize, 5usize);
    let p = AttnParams {
        n_q_heads: nq,
        n_kv_heads: nkv,
        head_dim: hd,
        q_len,
        kv_len,
        scale: 0.3,
        causal: true,
        path: MatmulPath::Exact,
    };
    let ql = AttnLayout::contiguous(nq, hd);
    let kl = AttnLayout::contiguous(nkv, hd);
    let q = vec![0.5f32; q_len * nq * hd];
    let kv = vec![0.25f32; kv_len * nkv * hd];
    for k in Kernels::test_variants() {
        let mut out = vec![0.0f32; q_len * nq * hd];
        // the good call works
        k.attention(&q, ql, &kv, kl, &kv, kl, &mut out, &p).unwrap();
        assert!(out.iter().all(|&x| (x - 0.25).abs() < 1e-6));
        // out of the wrong length
        let mut short = vec![0.0f32; out.len() - 1];
        expect_err(k.attention(&q, ql, &kv, kl, &kv, kl, &mut short, &p), "out");
        // q one element short
        expect_err(
            k.attention(&q[1..], ql, &kv, kl, &kv, kl, &mut out, &p),
            "q:",
        );
        // a row stride that runs past the end of k
        let kl_bad = AttnLayout {
            row_stride: nkv * hd + 1,
            head_stride: hd,
        };
        expect_err(
            k.attention(&q, ql, &kv, kl_bad, &kv, kl, &mut out, &p),
            "k:",
        );
        // a head-major cache view longer than the buffer
        let cache = AttnLayout::head_major(kv_len + 1, hd);
        expect_err(k.attention(&q, ql, &kv, kl, &kv, cache, &mut out, &p), "v:");
        // strides so large that the index overflows usize
        let huge = AttnLayout {
            row_stride: usize::MAX / 2,
            head_stride: usize::MAX / 2,
        };
        expect_err(k.attention(&q, huge, &kv, kl, &kv, kl, &mut out, &p), "q:");
        // GQA heads not divisible
        let p3 = AttnParams { n_kv_heads: 3, ..p };
        expect_err(
            k.attention(&q, ql, &kv, kl, &kv, kl, &mut out, &p3),
            "n_kv_heads 3",
        );
        let p0 = AttnParams { n_kv_heads: 0, ..p };
        expect_err(
            k.attention(&q, ql, &kv, kl, &kv, kl, &mut out, &p0),
            "n_kv_heads is 0",
        );
        // causal with fewer keys than queries
        let pc = AttnParams { kv_len: 2, ..p };
        expect_err(
            k.attention(&q, ql, &kv, kl, &kv, kl, &mut out, &pc),
            "kv_len >= q_len",
        );
        // no keys at all
        let pe = AttnParams {
            kv_len: 0,
            causal: false,
            ..p
        };
        expect_err(
            k.attention(&q, ql, &[], kl, &[], kl, &mut out, &pe),
            "kv_len is 0",
        );
        // a non-finite scale
        let pn = AttnParams {
            scale: f32::NAN,
            ..p
        };
        expect_err(
            k.attention(&q, ql, &kv, kl, &kv, kl, &mut out, &pn),
            "scale",
        );
        // nothing to do is fine
        let pz = AttnParams { q_len: 0, ..p };
        k.attention(&[], ql, &kv, kl, &kv, kl, &mut [], &pz)
            .unwrap();
    }
}
