//! The vectorized exp/tanh/erf and the activations built on them: every level against f64 over the f32
//! range that matters (dense sweeps), against the scalar twin on the awkward sizes, and on special values.
//! The bounds here are the ones stated in `simd/math.rs` and on the public methods.

mod common;
use common::*;
use qwen3vl_kernels::Kernels;

type Op = fn(&Kernels, &[f32], &mut [f32]);

fn gelu_tanh64(x: f64) -> f64 {
    let u = 0.797_884_560_802_865_4 * (x + 0.044715 * x * x * x);
    x / (1.0 + (-2.0 * u).exp())
}
fn gelu_erf64(x: f64) -> f64 {
    x * 0.5 * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
}
fn silu64(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// `n` points evenly over [lo, hi], n/2 more over [-1, 1] (where results cross many binades, so the
/// worst ULP errors hide between the even points), plus ±(1e-30 .. 1e-2) log-spaced (the tiny-argument
/// regime).
fn sweep(lo: f32, hi: f32, n: usize) -> Vec<f32> {
    let even = |lo: f32, hi: f32, n: usize| {
        (0..n).map(move |i| lo + (hi - lo) * (i as f64 / (n - 1) as f64) as f32)
    };
    let mut v: Vec<f32> = even(lo, hi, n).chain(even(-1.0, 1.0, n / 2)).collect();
    for e in -300..=-20 {
        let t = 10f32.powf(e as f32 / 10.0);
        v.push(t);
        v.push(-t);
    }
    v
}

struct Case {
    name: &'static str,
    op: Op,
    truth: fn(f64) -> f64,
    lo: f32,
    hi: f32,
    /// max ULP against the correctly rounded f64 value (FMA levels / SSE4.1)
    bound: f64,
    bound_sse: f64,
    /// absolute allowance
    abs: f64,
    /// extra ULP allowed at x (conditioning of the op on a rounded intermediate)
    cond: fn(f64) -> f64,
}

/// Results below 2^-122 come from subnormal intermediates (σ or Φ of a very negative x): only their
/// absolute error (< 2^-122) is bounded.
const TINY: f64 = 1.88e-37;

fn no_cond(_: f64) -> f64 {
    0.0
}

/// GELU-tanh: u = √(2/π)(x + 0.044715x³) is rounded in f32 (≈ 2 ULP) and x·σ(2u) has condition number
/// 2|u|(1 − σ(2u)) with respect to u: allow 3 ULP of u times that.
fn gelu_tanh_cond(x: f64) -> f64 {
    let u = 0.797_884_560_802_865_4 * (x + 0.044715 * x * x * x);
    let sg = 1.0 / (1.0 + (-2.0 * u).exp());
    3.0 * (2.0 * u).abs() * (1.0 - sg)
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "exp",
            op: |k, x, o| k.exp(x, o).unwrap(),
            truth: f64::exp,
            lo: -104.0,
            hi: 89.0,
            bound: 1.0,
            bound_sse: 1.0,
            abs: 0.0,
            cond: no_cond,
        },
        Case {
            name: "tanh",
            op: |k, x, o| k.tanh(x, o).unwrap(),
            truth: f64::tanh,
            lo: -12.0,
            hi: 12.0,
            bound: 1.5,
            bound_sse: 1.5,
            abs: 0.0,
            cond: no_cond,
        },
        Case {
            name: "erf",
            op: |k, x, o| k.erf(x, o).unwrap(),
            truth: libm::erf,
            lo: -6.0,
            hi: 6.0,
            bound: 2.5,
            bound_sse: 3.0,
            abs: 0.0,
            cond: no_cond,
        },
        Case {
            name: "gelu_tanh",
            op: |k, x, o| k.gelu_tanh(x, o).unwrap(),
            truth: gelu_tanh64,
            lo: -20.0,
            hi: 12.0,
            bound: 4.0,
            bound_sse: 4.0,
            abs: TINY,
            cond: gelu_tanh_cond,
        },
        // GELU-erf: x²/2 is formed exactly, so the left tail stays accurate in relative terms.
        Case {
            name: "gelu_erf",
            op: |k, x, o| k.gelu_erf(x, o).unwrap(),
            truth: gelu_erf64,
            lo: -20.0,
            hi: 12.0,
            bound: 6.0,
            bound_sse: 7.0,
            abs: TINY,
            cond: no_cond,
        },
        Case {
            name: "silu",
            op: |k, x, o| k.silu(x, o).unwrap(),
            truth: silu64,
            lo: -100.0,
            hi: 100.0,
            bound: 3.5,
            bound_sse: 3.5,
            abs: TINY,
            cond: no_cond,
        },
    ]
}

/// The worst error beyond the conditioning allowance, in ULP.
fn max_err(got: &[f32], x: &[f32], c: &Case) -> (f64, usize) {
    let mut worst = (0.0, 0);
    for i in 0..x.len() {
        let e = excess(
            got[i],
            (c.truth)(x[i] as f64),
            Tol {
                ulps: 0.0,
                abs: c.abs,
            },
        );
        let e = (e - (c.cond)(x[i] as f64)).max(0.0);
        if e > worst.0 {
            worst = (e, i);
        }
    }
    worst
}

/// Each approximation against f64 over its whole useful range, at every level (and the scalar twin,
/// printed for information; the twins are libm's).
#[test]
fn approximations_against_f64() {
    let mut failures = Vec::new();
    for c in cases() {
        let x = sweep(c.lo, c.hi, 400_001);
        let mut out = vec![0.0f32; x.len()];
        for k in levels() {
            (c.op)(&k, &x, &mut out);
            let (e, i) = max_err(&out, &x, &c);
            eprintln!(
                "{:>10} [{:>6}] max {e:.3} ULP at x={:e}",
                c.name,
                k.isa().name(),
                x[i]
            );
            let bound = match k.isa() {
                qwen3vl_kernels::isa::Isa::Scalar => continue,
                qwen3vl_kernels::isa::Isa::Sse41 => c.bound_sse,
                _ => c.bound,
            };
            if e > bound {
                failures.push(format!(
                    "{} [{}]: {e:.3} ULP > {bound} at x={:e}: got {:e}, want {:e}",
                    c.name,
                    k.isa().name(),
                    x[i],
                    out[i],
                    (c.truth)(x[i] as f64)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every level against the scalar twin on the awkward sizes, out of place and in place:
/// bound = the level's bound against f64 + the twin's own error (≤ 2 ULP for libm's f32 functions).
#[test]
fn activations_against_twin() {
    let r = scalar();
    let mut all = cases();
    all.push(Case {
        name: "relu",
        op: |k, x, o| k.relu(x, o).unwrap(),
        truth: |x| x.max(0.0),
        lo: 0.0,
        hi: 0.0,
        bound: 0.0,
        bound_sse: 0.0,
        abs: 0.0,
        cond: no_cond,
    });
    for c in &all {
        for k in levels() {
            for &n in &SIZES {
                let mut g = Rng::new(n as u64 + 17);
                let x = g.vec(n, -9.0, 9.0);
                let (mut got, mut want) = (vec![0.0; n], vec![0.0; n]);
                (c.op)(&k, &x, &mut got);
                (c.op)(&r, &x, &mut want);
                // both sides carry the conditioning error (rounded differently with and without FMA)
                let cond = x.iter().map(|&v| (c.cond)(v as f64)).fold(0.0, f64::max);
                let twin = if c.bound > 0.0 { 2.0 } else { 0.0 };
                let tol = Tol {
                    ulps: c.bound_sse.max(c.bound) + twin + 2.0 * cond,
                    abs: c.abs,
                };
                check(c.name, k.isa().name(), n, &got, &f64s(&want), tol);
            }
        }
    }
    // in place (the `_assign` forms) equal out of place
    for k in levels() {
        let mut g = Rng::new(99);
        let x = g.vec(1023, -9.0, 9.0);
        let mut out = vec![0.0; 1023];
        type Assign = fn(&Kernels, &mut [f32]);
        let pairs: [(&str, Op, Assign); 8] = [
            (
                "exp",
                |k, x, o| k.exp(x, o).unwrap(),
                |k, x| k.exp_assign(x),
            ),
            (
                "tanh",
                |k, x, o| k.tanh(x, o).unwrap(),
                |k, x| k.tanh_assign(x),
            ),
            (
                "erf",
                |k, x, o| k.erf(x, o).unwrap(),
                |k, x| k.erf_assign(x),
            ),
            (
                "gelu_tanh",
                |k, x, o| k.gelu_tanh(x, o).unwrap(),
                |k, x| k.gelu_tanh_assign(x),
            ),
            (
                "gelu_erf",
                |k, x, o| k.gelu_erf(x, o).unwrap(),
                |k, x| k.gelu_erf_assign(x),
            ),
            (
                "silu",
                |k, x, o| k.silu(x, o).unwrap(),
                |k, x| k.silu_assign(x),
            ),
            (
                "relu",
                |k, x, o| k.relu(x, o).unwrap(),
                |k, x| k.relu_assign(x),
            ),
            (
                "round_bf16",
                |k, x, o| k.round_bf16(x, o).unwrap(),
                |k, x| k.round_bf16_assign(x),
            ),
        ];
        for (name, op, assign) in pairs {
            op(&k, &x, &mut out);
            let mut inplace = x.clone();
            assign(&k, &mut inplace);
            check(name, k.isa().name(), 1023, &inplace, &f64s(&out), EXACT);
        }
    }
}

/// swiglu = silu(gate)·up, and its in-place form: ≤ 4 ULP against the twin.
#[test]
fn swiglu_against_twin() {
    let r = scalar();
    for k in levels() {
        for &n in &SIZES {
            let mut g = Rng::new(n as u64 + 5);
            let gate = g.vec(n, -9.0, 9.0);
            let up = g.vec(n, -3.0, 3.0);
            let (mut got, mut want) = (vec![0.0; n], vec![0.0; n]);
            k.swiglu(&gate, &up, &mut got).unwrap();
            r.swiglu(&gate, &up, &mut want).unwrap();
            check("swiglu", k.isa().name(), n, &got, &f64s(&want), ulps(4.0));
            let mut inplace = gate.clone();
            k.swiglu_assign(&mut inplace, &up).unwrap();
            check(
                "swiglu_assign",
                k.isa().name(),
                n,
                &inplace,
                &f64s(&got),
                EXACT,
            );
        }
    }
}

/// Special values (±0, ±inf, NaN, subnormals, ±88, ±1e30, ...) at every level against the twin (same
/// NaN/inf class, finite values within the op's bound) plus the exact values the math defines.
#[test]
fn special_values() {
    let r = scalar();
    let mut all = cases();
    all.push(Case {
        name: "relu",
        op: |k, x, o| k.relu(x, o).unwrap(),
        truth: |x| x.max(0.0),
        lo: 0.0,
        hi: 0.0,
        bound: 0.0,
        bound_sse: 0.0,
        abs: 0.0,
        cond: no_cond,
    });
    let x = SPECIAL.to_vec();
    for c in &all {
        let mut want = vec![0.0; x.len()];
        (c.op)(&r, &x, &mut want);
        for k in levels() {
            let mut got = vec![0.0; x.len()];
            (c.op)(&k, &x, &mut got);
            let cond = x.iter().map(|&v| (c.cond)(v as f64)).fold(0.0, f64::max);
            let tol = Tol {
                ulps: c.bound_sse.max(c.bound) + 2.0 + 2.0 * cond,
                abs: c.abs,
            };
            check(c.name, k.isa().name(), x.len(), &got, &f64s(&want), tol);
            // subnormal inputs are not flushed: relu/exp/gelu of a subnormal are exact-ish
            for (i, &v) in x.iter().enumerate() {
                let y = got[i];
                match c.name {
                    "exp" if v == 0.0 => assert_eq!(y, 1.0),
                    "exp" if v == f32::NEG_INFINITY || v == -104.0 => assert_eq!(y, 0.0),
                    "exp" if v == f32::INFINITY || v >= 89.0 => assert_eq!(y, f32::INFINITY),
                    "tanh" | "erf" if v.is_infinite() || v.abs() >= 10.0 => {
                        assert_eq!(y, v.signum())
                    }
                    "tanh" | "erf" | "relu" | "silu" | "gelu_tanh" | "gelu_erf" if v == 0.0 => {
                        assert_eq!(y, 0.0, "{} [{}] of {v}", c.name, k.isa().name())
                    }
                    "relu" | "silu" | "gelu_tanh" | "gelu_erf"
                        if v == f32::INFINITY || v == 1e30 =>
                    {
                        assert_eq!(y, v, "{} [{}] of {v}", c.name, k.isa().name())
                    }
                    "relu" if v == 1e-40 => assert_eq!(y, 1e-40),
                    _ => {}
                }
                if v.is_nan() {
                    assert!(y.is_nan(), "{} [{}] of NaN = {y}", c.name, k.isa().name());
                }
            }
        }
    }
}
