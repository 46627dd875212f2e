//! Every SIMD level of the resample kernels against the scalar twin: awkward sizes, random filters with
//! negative lobes, extreme samples (0 and 255, which exercise the clamp), and the argument checks.

use qwen3vl_kernels::isa::Isa;
use qwen3vl_kernels::resample::{scalar, Taps};
use qwen3vl_kernels::{KernelError, Kernels};

const SIZES: [usize; 17] = [
    0, 1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 1023, 1024, 4097,
];

/// Deterministic xorshift.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Filter {
    start: Vec<u32>,
    count: Vec<u32>,
    weights: Vec<i16>,
    stride: usize,
    prec: u32,
}

impl Filter {
    fn taps(&self) -> Taps<'_> {
        Taps {
            start: &self.start,
            count: &self.count,
            weights: &self.weights,
            stride: self.stride,
            prec: self.prec,
        }
    }
}

/// A random filter of `out_len` outputs over `in_len` inputs with up to `max_taps` taps.
fn random_filter(
    rng: &mut Rng,
    in_len: usize,
    out_len: usize,
    max_taps: usize,
    prec: u32,
) -> Filter {
    let stride = max_taps.min(in_len).max(1);
    let (mut start, mut count, mut weights) = (vec![], vec![], vec![0i16; out_len * stride]);
    for i in 0..out_len {
        let n = 1 + rng.below(stride.min(in_len));
        let s = rng.below(in_len - n + 1);
        start.push(s as u32);
        count.push(n as u32);
        for k in 0..stride {
            // Mostly positive weights around 2^prec / n with some negative lobes; garbage past `count`
            // (must be ignored).
            let base = (1i32 << prec) / n as i32;
            let v = base + (rng.below(2001) as i32 - 1000) * (1 << prec.saturating_sub(12)) / 4;
            weights[i * stride + k] = v.clamp(-32768, 32767) as i16;
        }
    }
    Filter {
        start,
        count,
        weights,
        stride,
        prec,
    }
}

fn random_pixels(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| match rng.below(8) {
            0 => 0,
            1 => 255,
            _ => rng.below(256) as u8,
        })
        .collect()
}

fn first_diffs(a: &[u8], b: &[u8]) -> String {
    let d: Vec<String> = a
        .iter()
        .zip(b)
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .take(5)
        .map(|(i, (x, y))| format!("[{i}] {x} vs {y}"))
        .collect();
    format!(
        "{} differ; first: {}",
        a.iter().zip(b).filter(|(x, y)| x != y).count(),
        d.join(", ")
    )
}

#[test]
fn cols_every_level_matches_scalar() {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    for &row_len in &SIZES {
        for &(in_h, out_h, taps, prec) in &[
            (1, 1, 1, 14),
            (5, 3, 4, 15),
            (8, 17, 5, 16),
            (40, 9, 13, 14),
            (3, 7, 3, 22),
        ] {
            let f = random_filter(&mut rng, in_h, out_h, taps, prec);
            let src = random_pixels(&mut rng, in_h * row_len);
            let mut want = vec![0u8; out_h * row_len];
            scalar::cols_u8(&src, in_h, row_len, &f.taps(), &mut want);
            for k in Kernels::all_available() {
                let mut got = vec![7u8; out_h * row_len];
                k.resample_cols_u8(&src, in_h, row_len, &f.taps(), &mut got)
                    .unwrap();
                assert!(
                    got == want,
                    "{}: cols row_len {row_len} in {in_h} out {out_h}: {}",
                    k.isa(),
                    first_diffs(&got, &want)
                );
            }
        }
    }
}

#[test]
fn rows_every_level_matches_scalar() {
    let mut rng = Rng(0x2545f4914f6cdd1d);
    for &in_w in &SIZES {
        if in_w == 0 {
            continue;
        }
        for &(out_w, taps, rows, prec) in &[
            (1, 1, 2, 14),
            (in_w, 4, 3, 15),
            (2 * in_w + 1, 6, 2, 16),
            (in_w / 2 + 1, 13, 2, 13),
            (17, 9, 1, 22),
        ] {
            let f = random_filter(&mut rng, in_w, out_w, taps, prec);
            let src = random_pixels(&mut rng, rows * in_w * 3);
            let mut want = vec![0u8; rows * out_w * 3];
            scalar::rows_u8(&src, rows, in_w, 3, &f.taps(), &mut want);
            for k in Kernels::all_available() {
                let mut got = vec![7u8; rows * out_w * 3];
                k.resample_rows_u8(&src, rows, in_w, 3, &f.taps(), &mut got)
                    .unwrap();
                assert!(
                    got == want,
                    "{}: rows in_w {in_w} out_w {out_w} taps {taps}: {}",
                    k.isa(),
                    first_diffs(&got, &want)
                );
            }
        }
    }
}

#[test]
fn scalar_applies_the_fixed_point_rule() {
    // Two taps of 0.5 in 14-bit fixed point: (8192 + 8192·a + 8192·b) >> 14 = round-half-up of the mean.
    let t = Taps {
        start: &[0, 1],
        count: &[2, 2],
        weights: &[8192, 8192, 8192, 8192],
        stride: 2,
        prec: 14,
    };
    let mut out = [0u8; 2];
    for k in Kernels::all_available() {
        k.resample_cols_u8(&[10, 11, 200], 3, 1, &t, &mut out)
            .unwrap();
        assert_eq!(out, [11, 106], "{}", k.isa());
    }
    // A negative lobe below 0 and an overshoot above 255 are clamped.
    let t = Taps {
        start: &[0],
        count: &[2],
        weights: &[-16384, 32767],
        stride: 2,
        prec: 14,
    };
    let mut out = [0u8; 1];
    Kernels::new(Isa::Scalar)
        .unwrap()
        .resample_cols_u8(&[255, 0], 2, 1, &t, &mut out)
        .unwrap();
    assert_eq!(out, [0]);
    Kernels::new(Isa::Scalar)
        .unwrap()
        .resample_cols_u8(&[0, 255], 2, 1, &t, &mut out)
        .unwrap();
    assert_eq!(out, [255]);
}

#[test]
fn bad_arguments_are_errors() {
    let k = Kernels::detect().unwrap();
    let t = Taps {
        start: &[0, 2],
        count: &[2, 2],
        weights: &[1, 1, 1, 1],
        stride: 2,
        prec: 1,
    };
    let mut out = [0u8; 2];
    // Taps 2..4 do not fit an input of 3 rows.
    let e = k.resample_cols_u8(&[0; 3], 3, 1, &t, &mut out).unwrap_err();
    assert!(
        matches!(e, KernelError::Invalid { .. }) && e.to_string().contains("output 1"),
        "{e}"
    );
    // Wrong source length.
    let e = k.resample_cols_u8(&[0; 5], 4, 1, &t, &mut out).unwrap_err();
    assert_eq!(
        e,
        KernelError::Len {
            op: "resample_cols_u8",
            what: "src",
            expected: 4,
            got: 5
        }
    );
    // Bad precision.
    let t0 = Taps { prec: 0, ..t };
    assert!(k.resample_cols_u8(&[0; 4], 4, 1, &t0, &mut out).is_err());
    // Wrong output length in the row pass.
    let mut out3 = [0u8; 5];
    let e = k
        .resample_rows_u8(&[0; 12], 1, 4, 3, &t, &mut out3)
        .unwrap_err();
    assert_eq!(
        e,
        KernelError::Len {
            op: "resample_rows_u8",
            what: "out",
            expected: 6,
            got: 5
        }
    );
}
