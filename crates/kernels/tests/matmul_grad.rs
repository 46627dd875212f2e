//! Backward of the linear layer (`Kernels::matmul_backward`): every ISA level on the host (scalar is the
//! plain-loop twin) against an f64 reference, f32 and bf16 weights, on awkward shapes, 1 and 2 threads.
//!
//! Bound per output (S = Σ|a·b| of its sum in f64, K its length): |g - ref| ≤ 2(K+2)·2⁻²⁴·S, plus one
//! rounding of the accumulated value (dw and db start at 1 to check they are accumulated, not written).

use qwen3vl_kernels::matmul::{MatmulGrads, Weight};
use qwen3vl_kernels::Kernels;

const U: f64 = 1.0 / (1u64 << 24) as f64;

struct Rng(u64);
impl Rng {
    /// Uniform in [-1, 1).
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

fn widen(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Checks got against (value, Σ|terms|, terms) references.
fn check(
    what: &str,
    level: &str,
    shape: (usize, usize, usize),
    got: &[f32],
    want: &[(f64, f64)],
    kk: usize,
    init: f64,
) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &(v, s))) in got.iter().zip(want).enumerate() {
        let r = v + init;
        let bound = 2.0 * (kk as f64 + 2.0) * U * s + U * r.abs() + 1e-30;
        assert!(
            (g as f64 - r).abs() <= bound,
            "{what} [{level}] (m,n,k)={shape:?} at {i}: got {g:e}, want {r:e}, bound {bound:e}"
        );
    }
}

#[test]
fn matmul_backward_matches_f64_reference() {
    let mut rng = Rng(7);
    let shapes = [
        (0, 3, 4),
        (1, 1, 1),
        (3, 15, 17),
        (17, 33, 1),
        (9, 16, 40),
        (40, 17, 65),
        (2, 64, 1023),
    ];
    for threads in [1, 2] {
        for kern in Kernels::all_available() {
            let kern = kern.with_threads(threads);
            let level = format!("{} x{threads}", kern.isa());
            for &(m, n, k) in &shapes {
                let x = rng.vec(m * k);
                let dy = rng.vec(m * n);
                let w32 = rng.vec(n * k);
                let wb: Vec<u16> = w32.iter().map(|&v| bf16(v)).collect();
                for bf in [false, true] {
                    let wv: Vec<f32> = if bf {
                        wb.iter().map(|&b| widen(b)).collect()
                    } else {
                        w32.clone()
                    };
                    let w = if bf {
                        Weight::Bf16(&wb)
                    } else {
                        Weight::F32(&w32)
                    };
                    // f64 references: dx[i][c] = Σ_j dy[i][j]·w[j][c]; dw[j][c] = Σ_i dy[i][j]·x[i][c].
                    let mut dx_ref = vec![(0.0, 0.0); m * k];
                    for i in 0..m {
                        for c in 0..k {
                            for j in 0..n {
                                let t = dy[i * n + j] as f64 * wv[j * k + c] as f64;
                                dx_ref[i * k + c].0 += t;
                                dx_ref[i * k + c].1 += t.abs();
                            }
                        }
                    }
                    let mut dw_ref = vec![(0.0, 0.0); n * k];
                    for j in 0..n {
                        for c in 0..k {
                            for i in 0..m {
                                let t = dy[i * n + j] as f64 * x[i * k + c] as f64;
                                dw_ref[j * k + c].0 += t;
                                dw_ref[j * k + c].1 += t.abs();
                            }
                        }
                    }
                    let mut db_ref = vec![(0.0, 0.0); n];
                    for i in 0..m {
                        for j in 0..n {
                            let t = dy[i * n + j] as f64;
                            db_ref[j].0 += t;
                            db_ref[j].1 += t.abs();
                        }
                    }
                    let (mut dx, mut dw, mut db) =
                        (vec![f32::NAN; m * k], vec![1.0f32; n * k], vec![1.0f32; n]);
                    kern.matmul_backward(
                        &x,
                        m,
                        w,
                        n,
                        k,
                        MatmulGrads {
                            dy: &dy,
                            dx: Some(&mut dx),
                            dw_accum: Some(&mut dw),
                            db_accum: Some(&mut db),
                        },
                    )
                    .unwrap();
                    let lv = format!("{level} {}", if bf { "bf16" } else { "f32" });
                    check("dx", &lv, (m, n, k), &dx, &dx_ref, n, 0.0);
                    check("dw", &lv, (m, n, k), &dw, &dw_ref, m, 1.0);
                    check("db", &lv, (m, n, k), &db, &db_ref, m, 1.0);
                }
            }
        }
    }
}

#[test]
fn matmul_backward_rejects_bad_lengths() {
    let k = Kernels::detect().unwrap();
    let (x, w, dy) = (vec![0.0f32; 6], vec![0.0f32; 12], vec![0.0f32; 8]);
    let mut dx = vec![0.0f32; 5];
    let e = k
        .matmul_backward(
            &x,
            2,
            Weight::F32(&w),
            4,
            3,
            MatmulGrads {
                dy: &dy,
                dx: Some(&mut dx),
                dw_accum: None,
                db_accum: None,
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("dx (m*k)"), "{e}");
    let e = k
        .matmul_backward(
            &x,
            2,
            Weight::F32(&w[..11]),
            4,
            3,
            MatmulGrads {
                dy: &dy,
                dx: None,
                dw_accum: None,
                db_accum: None,
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("w (n*k)"), "{e}");
}
