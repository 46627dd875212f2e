//! qwen3vl-kernels: the SIMD kernels of qwen3vl, chosen at run time from the CPU's real features.
//!
//! Nothing here knows about models. Every kernel has a scalar twin (`scalar/`), the reference, and SIMD
//! versions for SSE4.1, AVX2+FMA and AVX-512 (`x86/`), written once over the primitives of [`simd::Simd`].
//! A [`Kernels`] value is made once (at start or load) for one level and carries the dispatch tables:
//!
//! ```
//! use qwen3vl_kernels::{Kernels, isa::Isa};
//! let k = Kernels::new(Isa::Scalar).unwrap();
//! let mut out = [0.0f32; 3];
//! k.add(&[1.0, 2.0, 3.0], &[1.0, 1.0, 1.0], &mut out).unwrap();
//! assert_eq!(out, [2.0, 3.0, 4.0]);
//! ```

pub mod attention;
pub mod isa;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod quant;
pub mod resample;
pub mod roofline;
pub mod scalar;
pub mod simd;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use isa::{Features, Isa, IsaError, SimdConfig};

/// A bad argument to a kernel's public API.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("{op}: length of {what} is {got}, expected {expected}")]
    Len {
        op: &'static str,
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },
}

/// The kernels of one SIMD level. Cheap to copy; make it once and pass it around.
#[derive(Clone, Copy)]
pub struct Kernels {
    isa: Isa,
    features: Features,
    pub(crate) vec: &'static ops::VecTable,
    pool: &'static pool::ThreadPool,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels").field("isa", &self.isa).finish()
    }
}

impl Kernels {
    /// The kernels of `isa`; an error if this CPU does not support it.
    pub fn new(isa: Isa) -> Result<Kernels, IsaError> {
        let sel = SimdConfig::default().force(isa).select()?;
        Ok(Kernels::from_selection(sel.isa, sel.features))
    }

    /// The kernels chosen by `QWEN3VL_SIMD` if set, else the best level of this CPU.
    pub fn detect() -> Result<Kernels, IsaError> {
        Self::with_config(&SimdConfig::from_env()?)
    }

    /// The kernels chosen by `config` on this CPU.
    pub fn with_config(config: &SimdConfig) -> Result<Kernels, IsaError> {
        let sel = config.select()?;
        Ok(Kernels::from_selection(sel.isa, sel.features))
    }

    fn from_selection(isa: Isa, features: Features) -> Kernels {
        Kernels {
            isa,
            features,
            vec: ops::table(isa),
            pool: pool::ThreadPool::default_pool(),
        }
    }

    /// One `Kernels` per level this CPU supports, lowest first (for tests and benchmarks).
    pub fn all_available() -> Vec<Kernels> {
        Features::detect()
            .available()
            .into_iter()
            .map(|i| Kernels::new(i).expect("available level"))
            .collect()
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn features(&self) -> Features {
        self.features
    }
}
