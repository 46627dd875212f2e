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

use isa::{Bf16Dot, Features, Isa, IsaError, SimdConfig};

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

/// A raw pointer handed to the tasks of one threaded op, each of which reads or writes only its own
/// disjoint elements (the owner of the memory outlives the fork/join). The one such wrapper of the crate.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// Safety: the tasks sharing one touch disjoint elements, and the memory outlives `parallel_for`.
unsafe impl<T> Sync for SendPtr<T> {}
unsafe impl<T> Send for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// For a shared input (only read through it).
    pub(crate) fn from_const(p: *const T) -> SendPtr<T> {
        SendPtr(p as *mut T)
    }
    /// (a method, so closures capture the Sync wrapper rather than its raw field)
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
    /// The pointer `i` elements on. Safety: in bounds of the allocation it came from.
    pub(crate) unsafe fn at(self, i: usize) -> *mut T {
        self.0.add(i)
    }
}

/// The kernels of one SIMD level. Cheap to copy; make it once and pass it around.
#[derive(Clone, Copy)]
pub struct Kernels {
    isa: Isa,
    features: Features,
    /// The `Fast` paths run on `vdpbf16ps` (see [`Bf16Dot`]).
    bf16_dot: bool,
    /// The `Fast` matmul of [`matmul::AMX_MIN_M`] rows and more runs on AMX tiles (see [`Kernels::amx`]).
    amx: bool,
    pub(crate) vec: &'static ops::VecTable,
    pool: &'static pool::ThreadPool,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels")
            .field("isa", &self.isa)
            .field("bf16_dot", &self.bf16_dot)
            .field("amx", &self.amx)
            .finish()
    }
}

impl Kernels {
    /// The kernels of `isa`; an error if this CPU does not support it.
    pub fn new(isa: Isa) -> Result<Kernels, IsaError> {
        let sel = SimdConfig::default().force(isa).select()?;
        Ok(Kernels::from_selection(
            sel.isa,
            sel.features,
            Bf16Dot::Auto,
            true,
        ))
    }

    /// The kernels chosen by `QWEN3VL_SIMD` if set, else the best level of this CPU.
    pub fn detect() -> Result<Kernels, IsaError> {
        Self::with_config(&SimdConfig::from_env()?)
    }

    /// The kernels chosen by `config` on this CPU.
    pub fn with_config(config: &SimdConfig) -> Result<Kernels, IsaError> {
        let sel = config.select()?;
        let mut features = sel.features;
        if !config.vnni {
            (features.avx512_vnni, features.avx_vnni) = (false, false);
        }
        Ok(Kernels::from_selection(
            sel.isa,
            features,
            config.bf16_dot,
            config.amx,
        ))
    }

    fn from_selection(isa: Isa, features: Features, dot: Bf16Dot, amx: bool) -> Kernels {
        let can = isa == Isa::Avx512 && features.avx512_bf16;
        let bf16_dot = can
            && match dot {
                Bf16Dot::On => true,
                Bf16Dot::Off => false,
                Bf16Dot::Auto => roofline::bf16_dot_pays(),
            };
        Kernels {
            isa,
            features,
            bf16_dot,
            amx: amx && isa == Isa::Avx512 && features.amx_bf16,
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

    /// [`Kernels::all_available`], with the AVX-512 level twice where the CPU has AVX512_BF16: the bf16
    /// dot product on, then off (whichever the probe would choose), both without AMX; and where the
    /// process may use AMX, a third time with AMX on (bf16 dot off), so that tests run every path.
    pub fn test_variants() -> Vec<Kernels> {
        let mut v = Vec::new();
        for k in Kernels::all_available() {
            let k0 = k.with_amx(false);
            if k0.with_bf16_dot(true).bf16_dot() {
                v.extend([k0.with_bf16_dot(true), k0.with_bf16_dot(false)]);
            } else {
                v.push(k0);
            }
            if k.with_amx(true).amx() {
                v.push(k.with_bf16_dot(false).with_amx(true));
            }
        }
        v
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn features(&self) -> Features {
        self.features
    }

    /// Whether the `Fast` matmul and attention paths run on the bf16 dot product (`vdpbf16ps`): the CPU
    /// has it (AVX-512 level with AVX512_BF16) and it pays here (see [`Bf16Dot`]).
    pub fn bf16_dot(&self) -> bool {
        self.bf16_dot
    }

    /// Whether the `Fast` matmul on bf16 packed weights runs on AMX tiles (`tdpbf16ps`) from
    /// [`matmul::AMX_MIN_M`] rows of x (every matmul: decode streams the weights through one A tile;
    /// quantized weights from [`matmul::QUANT_DEQUANT_MIN_M`] rows): the CPU and OS allow it, the level is AVX-512 and
    /// `QWEN3VL_AMX` is not `off`. Its arithmetic is the bf16 dot product's (x rounded to bf16, f32 sums).
    pub fn amx(&self) -> bool {
        self.amx
    }

    /// These kernels with AMX on or off (on only where the process may use it, at the AVX-512 level).
    pub fn with_amx(mut self, on: bool) -> Kernels {
        self.amx = on && self.isa == Isa::Avx512 && self.features.amx_bf16;
        self
    }

    /// These kernels with the bf16 dot product on or off (on only where the CPU has it): to test and
    /// measure both paths on one machine.
    pub fn with_bf16_dot(mut self, on: bool) -> Kernels {
        self.bf16_dot = on && self.isa == Isa::Avx512 && self.features.avx512_bf16;
        self
    }
}
