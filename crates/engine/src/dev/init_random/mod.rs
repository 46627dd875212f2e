//! Random-weight checkpoints in the Hub layout, for trying the engine (and benchmarking it) without
//! downloading weights: `qwen3vl init-random --preset tiny|tiny-moe|2b|4b|8b|32b|30b-a3b --out DIR`.
//!
//! The geometry of each preset is spec 1.2 / 1.3 exactly (`--layers N` keeps a preset's per-layer geometry
//! with fewer decoder layers); every tensor of spec 2 is written with its exact name and shape in bf16
//! (tied presets have no `lm_head.weight`; MoE presets store the experts fused in the released layout,
//! `mlp.experts.gate_up_proj` (E, H, 2I) and `mlp.experts.down_proj` (E, I, H)). Weights are streamed
//! tensor by tensor (in chunks) into safetensors shards (≤ 2 GB each by default, with
//! `model.safetensors.index.json` when there is more than one), so even 32B never needs more than one
//! tensor in memory.
//!
//! With a quantization format (`--quant q8`) the checkpoint is written quantized directly, as
//! `qwen3vl quantize` writes it and by its functions (`quantize::format_of` chooses the tensors,
//! `quantize::quantized_entries` and `quantized_bytes` lay them out; experts in the transformers layout's
//! rows, (E·2I, H) and (E·H, I)), generated and quantized a few rows at a time: the 30B-A3B at q8 never
//! exists in bf16, on disk or in memory (one tensor at a time exists quantized, until it is written).
//!
//! Scaling, so activations stay finite and varied through every layer:
//! - a linear layer with fan-in n: uniform with std 1/√n (output variance ≈ input variance);
//! - residual-branch outputs (`o_proj`, `down_proj`, vision `attn.proj`, `mlp.linear_fc2`): std 1/√(n·2L),
//!   so the residual stream grows by O(1) over L layers, not O(√L);
//! - `embed_tokens` / `lm_head`: std 2/√H, so logits = RMSNorm(x)·Eᵀ have std ≈ 2 (a spread-out but not
//!   degenerate distribution);
//! - norm weights 1 ± 0.1, biases ± 0.02, the vision position table std 0.5 (pixels are in [−1, 1]).
//!
//! The other files: config.json (the released 4.57 spelling, spec 1.1), generation_config.json (spec 7.2),
//! preprocessor_config.json (spec 6.1), chat_template.json (the Instruct template), and the real Qwen3
//! tokenizer — all embedded in the binary, so the command does not depend on the source tree.
//!
//! `presets.rs` holds the geometries and every tensor's shape and distribution, `config.rs` the JSON files
//! that describe the checkpoint, `values.rs` the random values, `write.rs` the shards as streamed to disk.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use qwen3vl_model::QuantFormat;

use crate::generation_config::GenerationConfig;

mod config;
mod presets;
mod values;
mod write;

pub use presets::{Geometry, Init, MoeGeometry, Preset, TensorSpec, TextGeometry, VisionGeometry};
use write::{write_weights, Stored};

const TOKENIZER_JSON: &[u8] = include_bytes!("../../../../../testdata/tokenizer/tokenizer.json");
const TOKENIZER_CONFIG_JSON: &[u8] =
    include_bytes!("../../../../../testdata/tokenizer/tokenizer_config.json");
const CHAT_TEMPLATE: &str =
    include_str!("../../../../processor/src/chat_template.qwen3vl-instruct.jinja");

/// Default largest shard, like the Hub's.
pub const DEFAULT_SHARD_BYTES: u64 = 2_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("unknown preset {0:?}: expected one of tiny, tiny-moe, 2b, 4b, 8b, 32b, 30b-a3b")]
    UnknownPreset(String),
    #[error("--layers {layers}: {msg}")]
    Layers { layers: usize, msg: String },
    #[error("quantizing {tensor}: {msg}")]
    Quantize { tensor: String, msg: String },
    #[error(
        "output directory {0} is not empty (pass --force to overwrite the checkpoint files in it)"
    )]
    NotEmpty(PathBuf),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Options of [`write_checkpoint`].
pub struct InitOptions<'a> {
    pub seed: u64,
    /// Largest shard in bytes (a tensor larger than this gets a shard of its own).
    pub shard_bytes: u64,
    /// Overwrite the checkpoint files in a non-empty directory.
    pub force: bool,
    /// Called with (bytes written, total bytes) after each tensor.
    pub progress: Option<&'a dyn Fn(u64, u64)>,
    /// Decoder layers (None: the preset's); every other size stays the preset's.
    pub layers: Option<usize>,
    /// Write the linear weights quantized to this format (the tensors `qwen3vl quantize` quantizes; the
    /// lm head / tied embeddings in q8), generated a few rows at a time.
    pub quant: Option<QuantFormat>,
}

impl Default for InitOptions<'_> {
    fn default() -> Self {
        InitOptions {
            seed: 0,
            shard_bytes: DEFAULT_SHARD_BYTES,
            force: false,
            progress: None,
            layers: None,
            quant: None,
        }
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitSummary {
    pub tensors: usize,
    pub params: u64,
    pub weight_bytes: u64,
    pub shards: Vec<String>,
}

/// Write a complete checkpoint of `preset` into `out` (created if missing).
pub fn write_checkpoint(
    out: &Path,
    preset: Preset,
    opts: &InitOptions,
) -> Result<InitSummary, InitError> {
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let non_empty = std::fs::read_dir(out)
        .map_err(io_err(out))?
        .next()
        .is_some();
    if non_empty && !opts.force {
        return Err(InitError::NotEmpty(out.to_path_buf()));
    }
    let mut geo = preset.geometry();
    if let Some(n) = opts.layers {
        let ds = geo.vision.deepstack.len();
        if n == 0 || n < ds {
            return Err(InitError::Layers {
                layers: n,
                msg: format!(
                    "must be at least 1 and at least the {ds} DeepStack features the vision tower injects"
                ),
            });
        }
        geo.text.layers = n;
    }
    let write = |name: &str, bytes: &[u8]| -> Result<(), InitError> {
        let p = out.join(name);
        std::fs::write(&p, bytes).map_err(io_err(&p))
    };
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    write("config.json", pretty(&geo.config_json()).as_bytes())?;
    write(
        "generation_config.json",
        (GenerationConfig::default().to_json() + "\n").as_bytes(),
    )?;
    write(
        "preprocessor_config.json",
        pretty(&config::preprocessor_config()).as_bytes(),
    )?;
    write(
        "chat_template.json",
        pretty(&json!({ "chat_template": CHAT_TEMPLATE })).as_bytes(),
    )?;
    write("tokenizer.json", TOKENIZER_JSON)?;
    write("tokenizer_config.json", TOKENIZER_CONFIG_JSON)?;
    // Remove stale shards of an earlier run (with --force).
    if opts.force {
        if let Ok(rd) = std::fs::read_dir(out) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("model") && n.contains(".safetensors") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    let stored: Vec<Stored> = geo
        .tensors()
        .into_iter()
        .map(|spec| Stored::new(spec, geo.text.tie, geo.text.layers, opts.quant))
        .collect();
    write_weights(out, &stored, opts)
}
