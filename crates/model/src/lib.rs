//! qwen3vl-model: the Qwen3-VL network on the qwen3vl kernels.
//!
//! ```text
//! config.json ──> Config                        (errors name the field; no class defaults)
//! *.safetensors ─> Weights (mmap, validated) ──> Model::load: structs named like the HF modules,
//!                                                linear weights packed once for the CPU
//! VisionInput ──> Model::encode_images ──> VisionOutput { embeds (n_tok, H), deepstack [(n_tok, H)] }
//! ids + M-RoPE Positions + VisionOutput ──> Model::forward(.., &mut KvCache, &mut RunState, Logits) ──> logits
//! [Seq { ids, positions, vision, cache }; N] ──> Model::forward_batch ──> logits of N sequences, one pass
//! ```
//!
//! The model does not know the processor: it takes its own [`VisionInput`] (pixels, grid) and
//! [`Positions`]; the engine joins the two. A [`KvCache`] holds one sequence's keys and values; the
//! activations live in a [`RunState`] the caller owns, so a decode step allocates nothing.
//!
//! ```text
//! ```
//!
//! Activations are f32 throughout. [`Precision::F32`] rounds nothing to bf16 (the parity mode: it matches
//! transformers run in float32 on the bf16 weights to ~1e-5); [`Precision::Fast`] lets matmuls round their
//! input rows to bf16 and use bf16 dot products where the CPU has them.
//!
//! Parity: every stage can be recorded through a [`Trace`] under the reference's module path
//! (`visual.blocks.3`, `language_model.layers.0`, `logits`), so a test names the first diverging module.

pub mod config;
mod input;
mod kv_cache;
mod linear;
mod model;
mod norm;
mod plan;
mod state;
pub mod text;
pub mod trace;
pub mod vision;
mod weight_cache;
pub mod weights;

pub use config::{Config, TextConfig, VisionConfig};
pub use input::{Logits, Positions, PositionsRef, Seq, VisionInput, VisionRows};
pub use kv_cache::KvCache;
pub use linear::{load_stored_quant, Linear, LinearWeight};
pub use model::{top_k, LoadOptions, Model, Precision, TopK, VisionOutput};
pub use plan::{Plan, PlanOp};
pub use qwen3vl_kernels::quant::QuantFormat;
pub use state::RunState;
pub use trace::{Hooks, Progress, Trace, TraceMap};
pub use vision::VisionEncoding;
pub use weight_cache::{CacheOutcome, WeightCache, WeightCacheReport};

/// Everything that can go wrong loading or running the model. Messages name the field, file or tensor key.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("config: {field}: {msg}")]
    Config { field: String, msg: String },
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
    #[error("{file}: {}{msg}", tensor.as_ref().map(|t| format!("tensor {t}: ")).unwrap_or_default())]
    Safetensors {
        file: String,
        tensor: Option<String>,
        msg: String,
    },
    #[error("tensor {key}: {msg}")]
    MissingTensor { key: String, msg: String },
    #[error("tensor {key}: shape {got:?}, expected {expected:?}")]
    Shape {
        key: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("tensor {key}: {msg}")]
    Dtype { key: String, msg: String },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("{context}: {source}")]
    Kernel {
        context: String,
        source: qwen3vl_kernels::KernelError,
    },
}

/// Attaches a context (the module being run) to kernel errors.
pub(crate) trait KernelCtx<T> {
    fn ctx(self, context: &str) -> Result<T, ModelError>;
}

impl<T> KernelCtx<T> for Result<T, qwen3vl_kernels::KernelError> {
    fn ctx(self, context: &str) -> Result<T, ModelError> {
        self.map_err(|source| ModelError::Kernel {
            context: context.to_string(),
            source,
        })
    }
}
