//! The dispatch table of the vector ops, and their public, length-checked API on [`Kernels`].
//!
//! [`vec_ops!`] is the one list of ops and their kernel signatures (raw pointers and counts). From it come
//! the [`VecTable`] struct of function pointers, the scalar table (`crate::scalar::*`), and each ISA's
//! `#[target_feature]` entry points and table (`crate::x86::*`). [`Kernels`] holds a reference to the table
//! of the level chosen at start, so an op is dispatched once per call. The public methods below check every
//! slice length and return [`KernelError`] on a mismatch, so no kernel ever runs on inconsistent lengths.

use crate::isa::Isa;
use crate::SendPtr;
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
            let (xp, op, f) = (SendPtr::from_const(x.as_ptr()), SendPtr(out.as_mut_ptr()), self.vec.$name);
            // Safety: `self.vec` belongs to a level this CPU supports; both slices hold x.len() elements.
            self.par(x.len(), 1, &|s, e| unsafe { f(xp.at(s), op.at(s), e - s) });
            Ok(())
        }
        $(#[$doc])*
        /// In place. x: (n)
        pub fn $assign(&self, x: &mut [f32]) {
            let (p, f) = (SendPtr(x.as_mut_ptr()), self.vec.$name);
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
            SendPtr::from_const(a.as_ptr()),
            SendPtr::from_const(b.as_ptr()),
            SendPtr(out.as_mut_ptr()),
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
        let (p, bp, f) = (
            SendPtr(acc.as_mut_ptr()),
            SendPtr::from_const(b.as_ptr()),
            self.vec.add,
        );
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
            SendPtr::from_const(a.as_ptr()),
            SendPtr::from_const(b.as_ptr()),
            SendPtr(out.as_mut_ptr()),
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
        let (p, bp, f) = (
            SendPtr(acc.as_mut_ptr()),
            SendPtr::from_const(b.as_ptr()),
            self.vec.mul,
        );
        // Safety: supported level; lengths checked; in place is allowed.
        self.par(b.len(), 1, &|s, e| unsafe {
            f(p.at(s), bp.at(s), p.at(s), e - s)
        });
        Ok(())
    }

    /// out = x * s. x, out: (n)
    pub fn scale(&self, x: &[f32], s: f32, out: &mut [f32]) -> Result<(), KernelError> {
        check_len("scale", "out", x.len(), out.len())?;
        let (xp, op, f) = (
            SendPtr::from_const(x.as_ptr()),
            SendPtr(out.as_mut_ptr()),
            self.vec.scale,
        );
        // Safety: supported level; lengths checked.
        self.par(x.len(), 1, &|a, e| unsafe {
            f(xp.at(a), s, op.at(a), e - a)
        });
        Ok(())
    }

    /// x *= s. x: (n)
    pub fn scale_assign(&self, x: &mut [f32], s: f32) {
        let (p, f) = (SendPtr(x.as_mut_ptr()), self.vec.scale);
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
            SendPtr::from_const(x.as_ptr()),
            SendPtr(out.as_mut_ptr()),
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
            SendPtr::from_const(x.as_ptr()),
            SendPtr(out.as_mut_ptr()),
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
            SendPtr::from_const(gate.as_ptr()),
            SendPtr::from_const(up.as_ptr()),
            SendPtr(out.as_mut_ptr()),
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
        let (p, upp, f) = (
            SendPtr(gate.as_mut_ptr()),
            SendPtr::from_const(up.as_ptr()),
            self.vec.swiglu,
        );
        // Safety: supported level; lengths checked; in place is allowed.
        self.par(up.len(), 1, &|s, e| unsafe {
            f(p.at(s), upp.at(s), p.at(s), e - s)
        });
        Ok(())
    }
}

// after the macros above: `macro_rules!` are in scope only below their definition
mod backward;
mod rows;
