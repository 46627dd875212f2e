//! The dispatch table of the vector ops, and their public, length-checked API on [`Kernels`].
//!
//! A table is a struct of function pointers built once per level; [`Kernels`] holds a reference to the table
//! of the level chosen at start. Public methods check slice lengths and return [`KernelError`] on a mismatch,
//! so no kernel ever runs on inconsistent lengths.

use crate::isa::Isa;
use crate::{KernelError, Kernels};

/// Function pointers of one level. `unsafe` because the SIMD ones require their CPU features; a table is
/// only handed out for a level the CPU supports.
pub struct VecTable {
    pub add: unsafe fn(&[f32], &[f32], &mut [f32]),
}

static SCALAR: VecTable = VecTable {
    add: crate::scalar::vec::add,
};

#[cfg(target_arch = "x86_64")]
mod x86_tables {
    use super::VecTable;
    use crate::x86::{avx2, avx512, sse41};
    pub static SSE41: VecTable = VecTable { add: sse41::add };
    pub static AVX2: VecTable = VecTable { add: avx2::add };
    pub static AVX512: VecTable = VecTable { add: avx512::add };
}

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

impl Kernels {
    /// out = a + b, elementwise. a, b, out: (n)
    pub fn add(&self, a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        check_len("add", "b", a.len(), b.len())?;
        check_len("add", "out", a.len(), out.len())?;
        // Safety: `self.vec` belongs to a level this CPU supports (see `Kernels::new`).
        unsafe { (self.vec.add)(a, b, out) };
        Ok(())
    }
}
