//! The dispatch table of the vector ops, and their public, length-checked API on [`Kernels`].
//!
//! [`vec_ops!`] is the one list of ops and their kernel signatures (raw pointers and counts). From it come
//! the [`VecTable`] struct of function pointers, the scalar table (`crate::scalar::*`), and each ISA's
//! `#[target_feature]` entry points and table (`crate::x86::*`). [`Kernels`] holds a reference to the table
//! of the level chosen at start, so an op is dispatched once per call. The public methods below check every
//! slice length and return [`KernelError`] on a mismatch, so no kernel ever runs on inconsistent lengths.

use crate::isa::Isa;
use crate::{KernelError, Kernels};

/// The list of vector ops with their kernel signatures; calls `$m! { name(args) -> ret; ... }`.
macro_rules! vec_ops {
    ($m:ident) => {
        $m! {
            add(a: *const f32, b: *const f32, out: *mut f32, n: usize) -> ();
            mul(a: *const f32, b: *const f32, out: *mut f32, n: usize) -> ();
            scale(x: *const f32, c: f32, out: *mut f32, n: usize) -> ();
            dot(a: *const f32, b: *const f32, n: usize) -> f32;
            sum(x: *const f32, n: usize) -> f32;
            max(x: *const f32, n: usize) -> f32;
            f32_to_bf16(x: *const f32, out: *mut u16, n: usize) -> ();
            bf16_to_f32(x: *const u16, out: *mut f32, n: usize) -> ();
            round_bf16(x: *const f32, out: *mut f32, n: usize) -> ();
            exp(x: *const f32, out: *mut f32, n: usize) -> ();
            tanh(x: *const f32, out: *mut f32, n: usize) -> ();
            erf(x: *const f32, out: *mut f32, n: usize) -> ();
            gelu_tanh(x: *const f32, out: *mut f32, n: usize) -> ();
            gelu_erf(x: *const f32, out: *mut f32, n: usize) -> ();
            silu(x: *const f32, out: *mut f32, n: usize) -> ();
            relu(x: *const f32, out: *mut f32, n: usize) -> ();
            swiglu(gate: *const f32, up: *const f32, out: *mut f32, n: usize) -> ();
            rms_norm(x: *const f32, w: *const f32, eps: f32, out: *mut f32, rows: usize, n: usize) -> ();
            layer_norm(x: *const f32, w: *const f32, b: *const f32, eps: f32, out: *mut f32, rows: usize,
                n: usize) -> ();
            normalize(x: *const f32, eps: f32, out: *mut f32, rows: usize, n: usize) -> ();
            softmax(x: *const f32, c: f32, causal: usize, out: *mut f32, rows: usize, n: usize) -> ();
            rope_half(x: *mut f32, rows: usize, heads: usize, hd: usize, cos: *const f32, sin: *const f32)
                -> ();
            rms_norm_backward(x: *const f32, w: *const f32, eps: f32, dy: *const f32, dx: *mut f32,
                dw: *mut f32, rows: usize, n: usize) -> ();
            layer_norm_backward(x: *const f32, w: *const f32, eps: f32, dy: *const f32, dx: *mut f32,
                dw: *mut f32, db: *mut f32, rows: usize, n: usize) -> ();
            normalize_backward(x: *const f32, eps: f32, dy: *const f32, dx: *mut f32, rows: usize, n: usize)
                -> ();
            softmax_backward(y: *const f32, dy: *const f32, dx: *mut f32, rows: usize, n: usize) -> ();
            gelu_tanh_backward(x: *const f32, dy: *const f32, dx: *mut f32, n: usize) -> ();
            gelu_erf_backward(x: *const f32, dy: *const f32, dx: *mut f32, n: usize) -> ();
            silu_backward(x: *const f32, dy: *const f32, dx: *mut f32, n: usize) -> ();
            relu_backward(x: *const f32, dy: *const f32, dx: *mut f32, n: usize) -> ();
            swiglu_backward(gate: *const f32, up: *const f32, dy: *const f32, dgate: *mut f32,
                dup: *mut f32, n: usize) -> ();
        }
    };
}
pub(crate) use vec_ops;

macro_rules! tables {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty ; )*) => {
        /// Function pointers of one level. `unsafe` because the SIMD ones require their CPU features and
        /// all take raw pointers; a table is only handed out for a level the CPU supports.
        pub struct VecTable {
            $( pub $name: unsafe fn($($ty),*) -> $ret, )*
        }

        static SCALAR: VecTable = VecTable { $( $name: crate::scalar::$name, )* };

        #[cfg(target_arch = "x86_64")]
        mod x86_tables {
            use super::VecTable;
            use crate::x86::{avx2, avx512, sse41};
            pub static SSE41: VecTable = VecTable { $( $name: sse41::$name, )* };
            pub static AVX2: VecTable = VecTable { $( $name: avx2::$name, )* };
            const AVX512_ALL: VecTable = VecTable { $( $name: avx512::$name, )* };
            /// The AVX-512 table, except the ops that stream two inputs and one output with almost no
            /// arithmetic: on Zen 4 these ran 5–20% faster on ymm than on zmm once the data is beyond L2
            /// (examples/ops_table, 512×2048: add 155–158 vs 168–186 µs, softmax_backward 157–161 vs
            /// 190–237 µs), so this level uses the AVX2 kernels for them.
            pub static AVX512: VecTable = VecTable {
                add: avx2::add,
                mul: avx2::mul,
                relu_backward: avx2::relu_backward,
                softmax_backward: avx2::softmax_backward,
                ..AVX512_ALL
            };
        }
    };
}
vec_ops!(tables);

/// The table for `isa`. The caller must only use it if the CPU supports `isa` ([`Kernels::new`] checks).
pub(crate) fn table(isa: Isa) -> &'static VecTable {
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            Isa::Scalar => &SCALAR,
            Isa::Sse41 => &x86_tables::SSE41,
            Isa::Avx2 => &x86_tables::AVX2,
            Isa::Avx512 => &x86_tables::AVX512,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        &SCALAR
    }
}

pub(crate) fn check_len(
    op: &'static str,
    what: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::Len {
            op,
            what,
            expected,
            got,
        })
    }
}

/// Rows of a (rows, n) slice of length `len`; an error unless `n` divides `len` (n = 0 only for len = 0).
pub(crate) fn rows_of(op: &'static str, len: usize, n: usize) -> Result<usize, KernelError> {
    if n == 0 {
        return if len == 0 {
            Ok(0)
        } else {
            Err(KernelError::Invalid {
                op,
                msg: format!("row length is 0 but x has {len} elements"),
            })
        };
    }
    if !len.is_multiple_of(n) {
        return Err(KernelError::Invalid {
            op,
            msg: format!("length of x is {len}, not a multiple of the row length {n}"),
        });
    }
    Ok(len / n)
}

/// Public unary ops: `name(x, out)` and `name_assign(x)`.
macro_rules! unary_api {
    ($( $(#[$doc:meta])* $name:ident, $assign:ident ; )*) => {$(
        $(#[$doc])*
        /// x, out: (n)
        pub fn $name(&self, x: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
            check_len(stringify!($name), "out", x.len(), out.len())?;
            let (xp, op, f) = (Sp::c(x.as_ptr()), Sp(out.as_mut_ptr()), self.vec.$name);
            // Safety: `self.vec` belongs to a level this CPU supports; both slices hold x.len() elements.
            self.par(x.len(), 1, &|s, e| unsafe { f(xp.at(s), op.at(s), e - s) });
            Ok(())
        }
        $(#[$doc])*
        /// In place. x: (n)
        pub fn $assign(&self, x: &mut [f32]) {
            let (p, f) = (Sp(x.as_mut_ptr()), self.vec.$name);
            // Safety: as above; the kernel reads element i before writing it.
            self.par(x.len(), 1, &|s, e| unsafe { f(p.at(s), p.at(s), e - s) });
        }
    )*};
}

/// Public unary backward ops: `name(x, dy, dx)`.
macro_rules! grad_api {
    ($( $(#[$doc:meta])* $name:ident ; )*) => {$(
        $(#[$doc])*
        /// x, dy, dx: (n)
        pub fn $name(&self, x: &[f32], dy: &[f32], dx: &mut [f32]) -> Result<(), KernelError> {
            check_len(stringify!($name), "dy", x.len(), dy.len())?;
            check_len(stringify!($name), "dx", x.len(), dx.len())?;
            // Safety: supported level; all slices hold x.len() elements.
            unsafe { (self.vec.$name)(x.as_ptr(), dy.as_ptr(), dx.as_mut_ptr(), x.len()) };
            Ok(())
        }
    )*};
}

/// A raw pointer handed to the tasks of one threaded op; each task reads and writes its own range only.
#[derive(Clone, Copy)]
struct Sp<T>(*mut T);
// Safety: tasks of one op touch disjoint ranges of the outputs (see `Kernels::par`); inputs are shared reads.
unsafe impl<T> Sync for Sp<T> {}
unsafe impl<T> Send for Sp<T> {}
impl<T> Sp<T> {
    fn c(p: *const T) -> Sp<T> {
        Sp(p as *mut T)
    }
    /// The pointer `i` elements on. Safety: in bounds of the slice it came from.
    unsafe fn at(self, i: usize) -> *mut T {
        self.0.add(i)
    }
}

/// Below this many elements an op runs on the calling thread (a fork/join costs a few µs; 64K floats
/// take ~10–20 µs on one core).
const PAR_MIN_ELEMS: usize = 1 << 16;
/// Elementwise ranges start at multiples of this many elements (whole cache lines per task).
const PAR_ALIGN: usize = 64;

/// `causal` as the kernels take it: usize::MAX for none.
fn causal_arg(causal: Option<usize>) -> usize {
    causal.unwrap_or(usize::MAX)
}

impl Kernels {
    /// Runs `f(a, b)` over contiguous ranges `[a, b)` of `0..units` (elements, or rows of `per_unit`
    /// elements for a row-wise op) on the pool when the op covers at least [`PAR_MIN_ELEMS`] elements and
    /// there are several threads, else `f(0, units)` here. Every element (or row) is computed exactly as
    /// in one call, so the result does not depend on the thread count.
    fn par(&self, units: usize, per_unit: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        let threads = self.threads();
        let align = if per_unit == 1 { PAR_ALIGN } else { 1 };
        if threads <= 1 || units.saturating_mul(per_unit) < PAR_MIN_ELEMS || units < 2 * align {
            f(0, units);
            return;
        }
        let blocks = units.div_ceil(align);
        self.parallel_for(threads, &|t| {
            let (a, b) = (
                blocks * t / threads * align,
                (blocks * (t + 1) / threads * align).min(units),
            );
            if a < b {
                f(a, b)
            }
        });
    }

    // -- elementwise ------------------------------------------------------------------------------------

    /// out = a + b. a, b, out: (n)
    pub fn add(&self, a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        check_len("add", "b", a.len(), b.len())?;
        check_len("add", "out", a.len(), out.len())?;
        let (ap, bp, op, f) = (
            Sp::c(a.as_ptr()),
            Sp::c(b.as_ptr()),
            Sp(out.as_mut_ptr()),
            self.vec.add,
        );
        // Safety: `self.vec` belongs to a level this CPU supports (see `Kernels::new`); lengths checked;
        // each range [s, e) is in bounds of all three slices.
        self.par(a.len(), 1, &|s, e| unsafe {
            f(ap.at(s), bp.at(s), op.at(s), e - s)
        });
        Ok(())
    }

    /// acc += b. acc, b: (n)
    pub fn add_assign(&self, acc: &mut [f32], b: &[f32]) -> Result<(), KernelError> {
        check_len("add_assign", "b", acc.len(), b.len())?;
        let (p, bp, f) = (Sp(acc.as_mut_ptr()), Sp::c(b.as_ptr()), self.vec.add);
        // Safety: supported level; lengths checked; the kernel reads element i before writing it.
        self.par(b.len(), 1, &|s, e| unsafe {
            f(p.at(s), bp.at(s), p.at(s), e - s)
        });
        Ok(())
    }

    /// out = a * b. a, b, out: (n)
    pub fn mul(&self, a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        check_len("mul", "b", a.len(), b.len())?;
        check_len("mul", "out", a.len(), out.len())?;
        let (ap, bp, op, f) = (
            Sp::c(a.as_ptr()),
            Sp::c(b.as_ptr()),
            Sp(out.as_mut_ptr()),
            self.vec.mul,
        );
        // Safety: supported level; lengths checked.
        self.par(a.len(), 1, &|s, e| unsafe {
            f(ap.at(s), bp.at(s), op.at(s), e - s)
        });
        Ok(())
    }

    /// acc *= b. acc, b: (n)
    pub fn mul_assign(&self, acc: &mut [f32], b: &[f32]) -> Result<(), KernelError> {
        check_len("mul_assign", "b", acc.len(), b.len())?;
        let (p, bp, f) = (Sp(acc.as_mut_ptr()), Sp::c(b.as_ptr()), self.vec.mul);
        // Safety: supported level; lengths checked; in place is allowed.
        self.par(b.len(), 1, &|s, e| unsafe {
            f(p.at(s), bp.at(s), p.at(s), e - s)
        });
        Ok(())
    }

    /// out = x * s. x, out: (n)
    pub fn scale(&self, x: &[f32], s: f32, out: &mut [f32]) -> Result<(), KernelError> {
        check_len("scale", "out", x.len(), out.len())?;
        let (xp, op, f) = (Sp::c(x.as_ptr()), Sp(out.as_mut_ptr()), self.vec.scale);
        // Safety: supported level; lengths checked.
        self.par(x.len(), 1, &|a, e| unsafe {
            f(xp.at(a), s, op.at(a), e - a)
        });
        Ok(())
    }

    /// x *= s. x: (n)
    pub fn scale_assign(&self, x: &mut [f32], s: f32) {
        let (p, f) = (Sp(x.as_mut_ptr()), self.vec.scale);
        // Safety: supported level; in place is allowed.
        self.par(x.len(), 1, &|a, e| unsafe { f(p.at(a), s, p.at(a), e - a) });
    }

    /// Σ a·b. a, b: (n)
    pub fn dot(&self, a: &[f32], b: &[f32]) -> Result<f32, KernelError> {
        check_len("dot", "b", a.len(), b.len())?;
        // Safety: supported level; lengths checked.
        Ok(unsafe { (self.vec.dot)(a.as_ptr(), b.as_ptr(), a.len()) })
    }

    /// Σ x. x: (n)
    pub fn sum(&self, x: &[f32]) -> Result<f32, KernelError> {
        // Safety: supported level.
        Ok(unsafe { (self.vec.sum)(x.as_ptr(), x.len()) })
    }

    /// max x (−inf for an empty slice; NaN if any element is NaN). x: (n)
    pub fn max(&self, x: &[f32]) -> Result<f32, KernelError> {
        // Safety: supported level.
        Ok(unsafe { (self.vec.max)(x.as_ptr(), x.len()) })
    }

    /// out = bf16(x) as raw bits, round to nearest even, NaN stays NaN. x, out: (n)
    pub fn f32_to_bf16(&self, x: &[f32], out: &mut [u16]) -> Result<(), KernelError> {
        check_len("f32_to_bf16", "out", x.len(), out.len())?;
        let (xp, op, f) = (
            Sp::c(x.as_ptr()),
            Sp(out.as_mut_ptr()),
            self.vec.f32_to_bf16,
        );
        // Safety: supported level; lengths checked.
        self.par(x.len(), 1, &|s, e| unsafe { f(xp.at(s), op.at(s), e - s) });
        Ok(())
    }

    /// out = f32(x) for raw bf16 bits (exact). x, out: (n)
    pub fn bf16_to_f32(&self, x: &[u16], out: &mut [f32]) -> Result<(), KernelError> {
        check_len("bf16_to_f32", "out", x.len(), out.len())?;
        let (xp, op, f) = (
            Sp::c(x.as_ptr()),
            Sp(out.as_mut_ptr()),
            self.vec.bf16_to_f32,
        );
        // Safety: supported level; lengths checked.
        self.par(x.len(), 1, &|s, e| unsafe { f(xp.at(s), op.at(s), e - s) });
        Ok(())
    }

    unary_api! {
        /// out = f32(bf16(x)) (round to nearest even).
        round_bf16, round_bf16_assign;
        /// out = e^x (≤ 1 ULP; see `simd::math` for all bounds).
        exp, exp_assign;
        /// out = tanh(x) (≤ 1.5 ULP).
        tanh, tanh_assign;
        /// out = erf(x) (≤ 2.5 ULP, 3 on SSE4.1).
        erf, erf_assign;
        /// out = ½x(1 + tanh(√(2/π)(x + 0.044715x³))) (GELU, tanh approximation), computed as x·σ(2u).
        gelu_tanh, gelu_tanh_assign;
        /// out = x·Φ(x) = ½x(1 + erf(x/√2)) (exact GELU, torch nn.GELU()); ≤ 6 ULP.
        gelu_erf, gelu_erf_assign;
        /// out = x·σ(x) (≤ 3.5 ULP).
        silu, silu_assign;
        /// out = max(x, 0) (NaN stays NaN).
        relu, relu_assign;
    }

    /// out = silu(gate)·up. gate, up, out: (n)
    pub fn swiglu(&self, gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        check_len("swiglu", "up", gate.len(), up.len())?;
        check_len("swiglu", "out", gate.len(), out.len())?;
        // Safety: supported level; lengths checked.
        let (gp, up, op, f) = (
            Sp::c(gate.as_ptr()),
            Sp::c(up.as_ptr()),
            Sp(out.as_mut_ptr()),
            self.vec.swiglu,
        );
        self.par(gate.len(), 1, &|s, e| unsafe {
            f(gp.at(s), up.at(s), op.at(s), e - s)
        });
        Ok(())
    }

    /// gate = silu(gate)·up. gate, up: (n)
    pub fn swiglu_assign(&self, gate: &mut [f32], up: &[f32]) -> Result<(), KernelError> {
        check_len("swiglu_assign", "up", gate.len(), up.len())?;
        let (p, upp, f) = (Sp(gate.as_mut_ptr()), Sp::c(up.as_ptr()), self.vec.swiglu);
        // Safety: supported level; lengths checked; in place is allowed.
        self.par(up.len(), 1, &|s, e| unsafe {
            f(p.at(s), upp.at(s), p.at(s), e - s)
        });
        Ok(())
    }

    // -- row-wise ---------------------------------------------------------------------------------------

    /// out = x / sqrt(mean(x²) + eps) * w per row. x, out: (rows, n); w: (n)
    pub fn rms_norm(
        &self,
        x: &[f32],
        w: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let rows = rows_of("rms_norm", x.len(), w.len())?;
        check_len("rms_norm", "out", x.len(), out.len())?;
        let (n, xp, wp, op, f) = (
            w.len(),
            Sp::c(x.as_ptr()),
            Sp::c(w.as_ptr()),
            Sp(out.as_mut_ptr()),
            self.vec.rms_norm,
        );
        // Safety: supported level; x and out hold rows·n elements, w holds n; rows [a, b) in bounds.
        self.par(rows, n, &|a, b| unsafe {
            f(xp.at(a * n), wp.at(0), eps, op.at(a * n), b - a, n)
        });
        Ok(())
    }

    /// x = rms_norm(x) in place. x: (rows, n); w: (n)
    pub fn rms_norm_assign(&self, x: &mut [f32], w: &[f32], eps: f32) -> Result<(), KernelError> {
        let rows = rows_of("rms_norm_assign", x.len(), w.len())?;
        let (n, p, wp, f) = (
            w.len(),
            Sp(x.as_mut_ptr()),
            Sp::c(w.as_ptr()),
            self.vec.rms_norm,
        );
        // Safety: as above; a row's statistics are read before any of it is written.
        self.par(rows, n, &|a, b| unsafe {
            f(p.at(a * n), wp.at(0), eps, p.at(a * n), b - a, n)
        });
        Ok(())
    }

    /// out = (x - mean) / sqrt(var + eps) * w + b per row, biased variance. x, out: (rows, n); w, b: (n)
    pub fn layer_norm(
        &self,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let rows = rows_of("layer_norm", x.len(), w.len())?;
        check_len("layer_norm", "b", w.len(), b.len())?;
        check_len("layer_norm", "out", x.len(), out.len())?;
        let (n, f) = (w.len(), self.vec.layer_norm);
        let (xp, wp, bp, op) = (
            Sp::c(x.as_ptr()),
            Sp::c(w.as_ptr()),
            Sp::c(b.as_ptr()),
            Sp(out.as_mut_ptr()),
        );
        // Safety: supported level; lengths checked; rows [r0, r1) in bounds.
        self.par(rows, n, &|r0, r1| unsafe {
            f(
                xp.at(r0 * n),
                wp.at(0),
                bp.at(0),
                eps,
                op.at(r0 * n),
                r1 - r0,
                n,
            )
        });
        Ok(())
    }

    /// x = layer_norm(x) in place. x: (rows, n); w, b: (n)
    pub fn layer_norm_assign(
        &self,
        x: &mut [f32],
        w: &[f32],
        b: &[f32],
        eps: f32,
    ) -> Result<(), KernelError> {
        let rows = rows_of("layer_norm_assign", x.len(), w.len())?;
        check_len("layer_norm_assign", "b", w.len(), b.len())?;
        let (n, f) = (w.len(), self.vec.layer_norm);
        let (p, wp, bp) = (Sp(x.as_mut_ptr()), Sp::c(w.as_ptr()), Sp::c(b.as_ptr()));
        // Safety: as above; in place is allowed.
        self.par(rows, n, &|r0, r1| unsafe {
            f(
                p.at(r0 * n),
                wp.at(0),
                bp.at(0),
                eps,
                p.at(r0 * n),
                r1 - r0,
                n,
            )
        });
        Ok(())
    }

    /// out = x / max(||x||₂, eps) over the whole slice (one row; see [`Kernels::normalize_rows`]).
    /// x, out: (n)
    pub fn normalize(&self, x: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
        self.normalize_rows(x, x.len(), eps, out)
    }

    /// out = x / max(||x_r||₂, eps) per row r (torch F.normalize(x, dim=-1)). x, out: (rows, n)
    pub fn normalize_rows(
        &self,
        x: &[f32],
        n: usize,
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let rows = rows_of("normalize", x.len(), n)?;
        check_len("normalize", "out", x.len(), out.len())?;
        let (xp, op, f) = (Sp::c(x.as_ptr()), Sp(out.as_mut_ptr()), self.vec.normalize);
        // Safety: supported level; lengths checked; rows [a, b) in bounds.
        self.par(rows, n, &|a, b| unsafe {
            f(xp.at(a * n), eps, op.at(a * n), b - a, n)
        });
        Ok(())
    }

    /// Row-wise L2 normalize in place. x: (rows, n)
    pub fn normalize_rows_assign(
        &self,
        x: &mut [f32],
        n: usize,
        eps: f32,
    ) -> Result<(), KernelError> {
        let rows = rows_of("normalize_rows_assign", x.len(), n)?;
        let (p, f) = (Sp(x.as_mut_ptr()), self.vec.normalize);
        // Safety: supported level; lengths checked; in place is allowed.
        self.par(rows, n, &|a, b| unsafe {
            f(p.at(a * n), eps, p.at(a * n), b - a, n)
        });
        Ok(())
    }

    /// Row r of x (rows, n): out_r = softmax(scale·x_r) over columns j <= r + offset when
    /// `causal = Some(offset)` (masked columns written as 0), else over all columns. x, out: (rows, n)
    pub fn softmax(
        &self,
        x: &[f32],
        n: usize,
        scale: f32,
        causal: Option<usize>,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let rows = rows_of("softmax", x.len(), n)?;
        check_len("softmax", "out", x.len(), out.len())?;
        let c = causal_arg(causal);
        // Safety: supported level; lengths checked.
        unsafe { (self.vec.softmax)(x.as_ptr(), scale, c, out.as_mut_ptr(), rows, n) };
        Ok(())
    }

    /// Softmax in place (see [`Kernels::softmax`]). x: (rows, n)
    pub fn softmax_assign(
        &self,
        x: &mut [f32],
        n: usize,
        scale: f32,
        causal: Option<usize>,
    ) -> Result<(), KernelError> {
        let rows = rows_of("softmax_assign", x.len(), n)?;
        let p = x.as_mut_ptr();
        // Safety: supported level; lengths checked; a row's max is found before any of it is written.
        unsafe { (self.vec.softmax)(p, scale, causal_arg(causal), p, rows, n) };
        Ok(())
    }

    /// NeoX rotate-half RoPE in place. x: (rows, heads, head_dim); cos, sin: (rows, head_dim/2).
    /// For i < h/2: x1 = x[i], x2 = x[i+h/2]; x[i] = x1·c[i] - x2·s[i]; x[i+h/2] = x2·c[i] + x1·s[i].
    pub fn rope_half(
        &self,
        x: &mut [f32],
        heads: usize,
        head_dim: usize,
        cos: &[f32],
        sin: &[f32],
    ) -> Result<(), KernelError> {
        // rows of a contiguous x (a bad heads·head_dim is reported by rope_rows)
        let rows = match heads.checked_mul(head_dim) {
            Some(per_row) if per_row > 0 => rows_of("rope_half", x.len(), per_row)?,
            _ => 0,
        };
        self.rope_rows(
            "rope_half",
            x,
            heads.saturating_mul(head_dim),
            rows,
            heads,
            head_dim,
            cos,
            sin,
        )
    }

    /// [`Kernels::rope_half`] on `rows` rows that start every `row_stride` elements of x (e.g. the q and k
    /// heads at the start of each row of a fused qkv buffer); elements between rows are left alone.
    /// cos, sin: (rows, head_dim/2). Threaded over rows when there are many.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_half_rows(
        &self,
        x: &mut [f32],
        row_stride: usize,
        rows: usize,
        heads: usize,
        head_dim: usize,
        cos: &[f32],
        sin: &[f32],
    ) -> Result<(), KernelError> {
        self.rope_rows(
            "rope_half_rows",
            x,
            row_stride,
            rows,
            heads,
            head_dim,
            cos,
            sin,
        )
    }

    /// The checks and the threaded run of both RoPE entry points.
    #[allow(clippy::too_many_arguments)]
    fn rope_rows(
        &self,
        op: &'static str,
        x: &mut [f32],
        row_stride: usize,
        rows: usize,
        heads: usize,
        head_dim: usize,
        cos: &[f32],
        sin: &[f32],
    ) -> Result<(), KernelError> {
        let invalid = |msg: String| KernelError::Invalid { op, msg };
        if !head_dim.is_multiple_of(2) {
            return Err(invalid(format!("head_dim {head_dim} is odd")));
        }
        let per_row = heads
            .checked_mul(head_dim)
            .ok_or_else(|| invalid(format!("heads {heads} × head_dim {head_dim} overflows")))?;
        let h = head_dim / 2;
        check_len(op, "cos", rows * h, cos.len())?;
        check_len(op, "sin", rows * h, sin.len())?;
        if rows == 0 || per_row == 0 {
            return Ok(());
        }
        let end = (rows - 1)
            .checked_mul(row_stride)
            .and_then(|e| e.checked_add(per_row));
        if row_stride < per_row || end.is_none_or(|e| e > x.len()) {
            return Err(invalid(format!(
                "{rows} rows of {heads}×{head_dim} at stride {row_stride} do not fit in {} elements",
                x.len()
            )));
        }
        let (p, cp, sp, f) = (
            Sp(x.as_mut_ptr()),
            Sp::c(cos.as_ptr()),
            Sp::c(sin.as_ptr()),
            self.vec.rope_half,
        );
        // Safety: supported level; every row r < rows lies in x (checked above), its cos/sin row too;
        // rows are disjoint (row_stride >= per_row) and each is written by one task. Contiguous rows go
        // to the kernel together.
        self.par(rows, per_row, &|a, b| unsafe {
            if row_stride == per_row {
                f(
                    p.at(a * per_row),
                    b - a,
                    heads,
                    head_dim,
                    cp.at(a * h),
                    sp.at(a * h),
                );
            } else {
                for r in a..b {
                    f(
                        p.at(r * row_stride),
                        1,
                        heads,
                        head_dim,
                        cp.at(r * h),
                        sp.at(r * h),
                    );
                }
            }
        });
        Ok(())
    }

    /// Per-head RMSNorm then rotate-half RoPE, read from one strided buffer and written to another in one
    /// pass: `out[r, h, :] = rope_half(rms_norm(x[r, h, :], w, eps), cos[r], sin[r])`.
    ///
    /// Row r of x starts at `r·x_stride` and holds `heads` heads of `head_dim`; row r of out starts at
    /// `r·out_stride`. w: (head_dim); cos, sin: (rows, head_dim/2). Each head runs the level's
    /// [`Kernels::rms_norm`] and [`Kernels::rope_half`] on a head in L1, so the result is bit for bit that
    /// of the two ops in sequence (plus a copy) — without the passes over memory between them. Threaded
    /// over rows when there are many.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_rope_half(
        &self,
        x: &[f32],
        x_stride: usize,
        out: &mut [f32],
        out_stride: usize,
        rows: usize,
        heads: usize,
        w: &[f32],
        eps: f32,
        cos: &[f32],
        sin: &[f32],
    ) -> Result<(), KernelError> {
        const OP: &str = "rms_norm_rope_half";
        let hd = w.len();
        let invalid = |msg: String| KernelError::Invalid { op: OP, msg };
        if !hd.is_multiple_of(2) {
            return Err(invalid(format!("head_dim {hd} (the length of w) is odd")));
        }
        if rows == 0 || heads == 0 || hd == 0 {
            return Ok(());
        }
        let row = heads
            .checked_mul(hd)
            .ok_or_else(|| invalid(format!("heads {heads} × head_dim {hd} overflows")))?;
        // The last row's end must lie inside each buffer; rows must not overlap in out.
        let end = |stride: usize| {
            (rows - 1)
                .checked_mul(stride)
                .and_then(|e| e.checked_add(row))
        };
        if end(x_stride).is_none_or(|e| e > x.len()) || x_stride < row {
            return Err(invalid(format!(
                "x: {rows} rows of {heads}×{hd} at stride {x_stride} do not fit in {} elements",
                x.len()
            )));
        }
        if end(out_stride).is_none_or(|e| e > out.len()) || out_stride < row {
            return Err(invalid(format!(
                "out: {rows} rows of {heads}×{hd} at stride {out_stride} do not fit in {} elements",
                out.len()
            )));
        }
        check_len(OP, "cos", rows * hd / 2, cos.len())?;
        check_len(OP, "sin", rows * hd / 2, sin.len())?;
        let (xp, op) = (x.as_ptr() as usize, out.as_mut_ptr() as usize);
        let (norm, rope) = (self.vec.rms_norm, self.vec.rope_half);
        let run = |r0: usize, r1: usize| {
            for r in r0..r1 {
                let (c, s) = (cos[r * hd / 2..].as_ptr(), sin[r * hd / 2..].as_ptr());
                for h in 0..heads {
                    // Safety: supported level; the bounds of row r of x and out were checked above; rows of
                    // out are disjoint (out_stride >= row) and each is written by one task.
                    unsafe {
                        let src = (xp as *const f32).add(r * x_stride + h * hd);
                        let dst = (op as *mut f32).add(r * out_stride + h * hd);
                        norm(src, w.as_ptr(), eps, dst, 1, hd);
                        rope(dst, 1, 1, hd, c, s);
                    }
                }
            }
        };
        // A decode step (a row or a few) stays on this thread; a prefill splits its rows.
        let tasks = if rows * row >= 1 << 15 {
            self.threads().min(rows)
        } else {
            1
        };
        if tasks <= 1 {
            run(0, rows);
        } else {
            self.parallel_for(tasks, &|t| run(rows * t / tasks, rows * (t + 1) / tasks));
        }
        Ok(())
    }

    // -- backward ---------------------------------------------------------------------------------------

    grad_api! {
        /// dx = dy · d/dx gelu_tanh(x).
        gelu_tanh_backward;
        /// dx = dy · d/dx gelu_erf(x).
        gelu_erf_backward;
        /// dx = dy · d/dx silu(x).
        silu_backward;
        /// dx = dy where x > 0, else 0 (a NaN x passes dy, as torch's threshold_backward).
        relu_backward;
    }

    /// Backward of out = silu(gate)·up: dgate = dy·up·silu'(gate), dup = dy·silu(gate). All: (n)
    pub fn swiglu_backward(
        &self,
        gate: &[f32],
        up: &[f32],
        dy: &[f32],
        dgate: &mut [f32],
        dup: &mut [f32],
    ) -> Result<(), KernelError> {
        let n = gate.len();
        check_len("swiglu_backward", "up", n, up.len())?;
        check_len("swiglu_backward", "dy", n, dy.len())?;
        check_len("swiglu_backward", "dgate", n, dgate.len())?;
        check_len("swiglu_backward", "dup", n, dup.len())?;
        let (dg, du) = (dgate.as_mut_ptr(), dup.as_mut_ptr());
        // Safety: supported level; lengths checked.
        unsafe { (self.vec.swiglu_backward)(gate.as_ptr(), up.as_ptr(), dy.as_ptr(), dg, du, n) };
        Ok(())
    }

    /// Backward of rms_norm: dx written, dw_accum += Σ_rows dy·x·r. x, dy, dx: (rows, n); w, dw_accum: (n)
    pub fn rms_norm_backward(
        &self,
        x: &[f32],
        w: &[f32],
        eps: f32,
        dy: &[f32],
        dx: &mut [f32],
        dw_accum: &mut [f32],
    ) -> Result<(), KernelError> {
        let op = "rms_norm_backward";
        let rows = rows_of(op, x.len(), w.len())?;
        check_len(op, "dy", x.len(), dy.len())?;
        check_len(op, "dx", x.len(), dx.len())?;
        check_len(op, "dw_accum", w.len(), dw_accum.len())?;
        let (xp, wp, dyp) = (x.as_ptr(), w.as_ptr(), dy.as_ptr());
        let (dxp, dwp) = (dx.as_mut_ptr(), dw_accum.as_mut_ptr());
        // Safety: supported level; lengths checked.
        unsafe { (self.vec.rms_norm_backward)(xp, wp, eps, dyp, dxp, dwp, rows, w.len()) };
        Ok(())
    }

    /// Backward of layer_norm: dx written; dw_accum += Σ dy·x̂, db_accum += Σ dy over rows.
    /// x, dy, dx: (rows, n); w, dw_accum, db_accum: (n)
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_backward(
        &self,
        x: &[f32],
        w: &[f32],
        eps: f32,
        dy: &[f32],
        dx: &mut [f32],
        dw_accum: &mut [f32],
        db_accum: &mut [f32],
    ) -> Result<(), KernelError> {
        let op = "layer_norm_backward";
        let rows = rows_of(op, x.len(), w.len())?;
        check_len(op, "dy", x.len(), dy.len())?;
        check_len(op, "dx", x.len(), dx.len())?;
        check_len(op, "dw_accum", w.len(), dw_accum.len())?;
        check_len(op, "db_accum", w.len(), db_accum.len())?;
        let (xp, wp, dyp) = (x.as_ptr(), w.as_ptr(), dy.as_ptr());
        let (dxp, dwp, dbp) = (
            dx.as_mut_ptr(),
            dw_accum.as_mut_ptr(),
            db_accum.as_mut_ptr(),
        );
        // Safety: supported level; lengths checked.
        unsafe { (self.vec.layer_norm_backward)(xp, wp, eps, dyp, dxp, dwp, dbp, rows, w.len()) };
        Ok(())
    }

    /// Backward of [`Kernels::normalize`] (the whole slice as one row). x, dy, dx: (n)
    pub fn normalize_backward(
        &self,
        x: &[f32],
        eps: f32,
        dy: &[f32],
        dx: &mut [f32],
    ) -> Result<(), KernelError> {
        self.normalize_rows_backward(x, x.len(), eps, dy, dx)
    }

    /// Backward of [`Kernels::normalize_rows`]. x, dy, dx: (rows, n)
    pub fn normalize_rows_backward(
        &self,
        x: &[f32],
        n: usize,
        eps: f32,
        dy: &[f32],
        dx: &mut [f32],
    ) -> Result<(), KernelError> {
        let op = "normalize_backward";
        let rows = rows_of(op, x.len(), n)?;
        check_len(op, "dy", x.len(), dy.len())?;
        check_len(op, "dx", x.len(), dx.len())?;
        let (xp, dyp, dxp) = (x.as_ptr(), dy.as_ptr(), dx.as_mut_ptr());
        // Safety: supported level; lengths checked.
        unsafe { (self.vec.normalize_backward)(xp, eps, dyp, dxp, rows, n) };
        Ok(())
    }

    /// Backward of softmax (scale 1) given its output y: dx = y·(dy - Σ y·dy) per row. y, dy, dx: (rows, n)
    pub fn softmax_backward(
        &self,
        y: &[f32],
        n: usize,
        dy: &[f32],
        dx: &mut [f32],
    ) -> Result<(), KernelError> {
        let op = "softmax_backward";
        let rows = rows_of(op, y.len(), n)?;
        check_len(op, "dy", y.len(), dy.len())?;
        check_len(op, "dx", y.len(), dx.len())?;
        // Safety: supported level; lengths checked.
        unsafe { (self.vec.softmax_backward)(y.as_ptr(), dy.as_ptr(), dx.as_mut_ptr(), rows, n) };
        Ok(())
    }
}
