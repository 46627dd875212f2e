//! Shared helpers of the kernel tests: levels, sizes, a deterministic generator, and a comparison that
//! names the op, level, size, index, both values and the max error.
#![allow(dead_code)]

use qwen3vl_kernels::isa::{Features, Isa};
use qwen3vl_kernels::Kernels;

/// The awkward sizes every kernel is run on (as lengths, or as row lengths with a few rows).
pub const SIZES: [usize; 17] = [
    0, 1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 1023, 1024, 4097,
];

/// The special values every unary op is run on.
pub const SPECIAL: [f32; 22] = [
    0.0,
    -0.0,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
    1e-40,
    -1e-40,
    f32::MIN_POSITIVE,
    -f32::MIN_POSITIVE,
    88.0,
    -88.0,
    88.7,
    -88.7,
    89.0,
    -104.0,
    1e30,
    -1e30,
    1.0,
    -1.0,
    0.5,
    -3.0,
    10.0,
];

/// Every level this host supports — the AVX-512 level twice where the CPU has AVX512_BF16, with the bf16
/// dot product on and off, whichever the probe would choose — and prints (once per test binary, straight
/// to stderr so the test harness does not capture it) the levels skipped.
pub fn levels() -> Vec<Kernels> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let f = Features::detect();
    ONCE.call_once(|| {
        let skipped: Vec<&str> = Isa::ALL
            .iter()
            .filter(|&&i| !f.supports(i))
            .map(|i| i.name())
            .collect();
        let msg = if skipped.is_empty() {
            "kernel tests: all levels run (scalar, sse4.1, avx2, avx512)".to_string()
        } else {
            format!(
                "kernel tests: SKIPPED levels the host lacks: {}",
                skipped.join(", ")
            )
        };
        // the harness captures eprintln!; /dev/stderr (Linux) is not captured
        if append_line(std::path::Path::new("/dev/stderr"), &msg).is_err() {
            eprintln!("{msg}");
        }
    });
    Kernels::test_variants()
}

/// Append one line to `path`. Opened for append: when stderr is redirected to a file, a plain write
/// would start at offset 0 and overwrite the beginning of the log.
pub fn append_line(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    writeln!(f, "{line}")
}

#[test]
fn skipped_note_appends_instead_of_overwriting() {
    let path = std::env::temp_dir().join(format!("qwen3vl-note-{}.log", std::process::id()));
    std::fs::write(&path, "earlier log lines\n").unwrap();
    append_line(&path, "note").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(text, "earlier log lines\nnote\n");
}

/// The scalar reference.
pub fn scalar() -> Kernels {
    Kernels::new(Isa::Scalar).unwrap()
}

/// xorshift64*: deterministic test data without a dependency.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [lo, hi).
    pub fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32(lo, hi)).collect()
    }
}

/// One unit in the last place of the f32 nearest `want` (the smaller spacing at a power of two; the
/// subnormal spacing 2^-149 at the bottom).
pub fn ulp_of(want: f64) -> f64 {
    let w = want.abs() as f32;
    if w.is_infinite() {
        return (f32::MAX as f64) * f64::EPSILON * 2.0f64.powi(29);
    }
    if w == 0.0 {
        return f32::from_bits(1) as f64;
    }
    let up = f32::from_bits(w.to_bits() + 1) as f64 - w as f64;
    let down = w as f64 - f32::from_bits(w.to_bits() - 1) as f64;
    up.min(down)
}

/// A bound: |got - want| <= ulps·ulp(want) + abs.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub ulps: f64,
    pub abs: f64,
}

pub const EXACT: Tol = Tol {
    ulps: 0.0,
    abs: 0.0,
};

pub fn ulps(u: f64) -> Tol {
    Tol { ulps: u, abs: 0.0 }
}

pub fn same_special(got: f32, want: f64) -> Option<bool> {
    if want.is_nan() || got.is_nan() {
        return Some(want.is_nan() && got.is_nan());
    }
    // a finite f64 beyond the f32 range rounds to ±inf
    let w32 = want as f32;
    if w32.is_infinite() || got.is_infinite() {
        return Some(got == w32);
    }
    None
}

/// The error of `got` against `want` in ULP of want, beyond the absolute allowance (0 if within it);
/// infinite when the special classes differ.
pub fn excess(got: f32, want: f64, tol: Tol) -> f64 {
    if let Some(ok) = same_special(got, want) {
        return if ok { 0.0 } else { f64::INFINITY };
    }
    let d = (got as f64 - want).abs();
    if d <= tol.abs {
        return 0.0;
    }
    (d - tol.abs) / ulp_of(want)
}

/// Compare element by element; panic naming op, level, size, index, values and the max error.
pub fn check(op: &str, level: &str, size: usize, got: &[f32], want: &[f64], tol: Tol) {
    assert_eq!(
        got.len(),
        want.len(),
        "{op} [{level}] n={size}: output length"
    );
    let mut worst = (0.0f64, 0usize);
    let mut bad = Vec::new();
    for i in 0..got.len() {
        let e = excess(got[i], want[i], tol);
        if e > worst.0 || (e.is_infinite() && !worst.0.is_infinite()) {
            worst = (e, i);
        }
        if e > tol.ulps && bad.len() < 4 {
            bad.push(format!(
                "[{i}] got {:e} want {:e} ({e:.2} ulp)",
                got[i], want[i]
            ));
        }
    }
    if worst.0 > tol.ulps {
        let i = worst.1;
        panic!(
            "{op} [{level}] n={size}: max error {:.3} ULP (bound {} ULP + {:e} abs) at index {i}: got {:e}, want {:e}; first differing: {}",
            worst.0, tol.ulps, tol.abs, got[i], want[i], bad.join(", ")
        );
    }
}

pub fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}
