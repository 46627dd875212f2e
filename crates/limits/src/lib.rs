//! The engine's own limits on every size and count that arrives from a file or an option: one place, in a
//! crate of its own so that the processor and the model (peers that never import each other) both read it.
//!
//! A value read from `config.json`, `preprocessor_config.json`, `generation_config.json`, a safetensors
//! header, an image header, a chat template or a command-line option is range-checked against these before
//! anything is allocated or looped over, and products of checked values are computed with checked
//! arithmetic. Each limit is far above every released Qwen3-VL checkpoint (the value in brackets) and far
//! below what would exhaust a machine; a refusal names the file, field or option and the limit.
//!
//! Limits kept beside the code that applies them (listed here so this stays the one index):
//! - images: `qwen3vl_processor::ImageLimits` (16384 x 16384 pixels, 1 GiB decode buffer, 256 MiB file) and the aspect
//!   ratio of 200 (`qwen3vl_processor::resize::MAX_ASPECT_RATIO`);
//! - safetensors: a header of at most 100 MB (`qwen3vl_model::weights::MAX_HEADER_LEN`); at most
//!   [`MAX_TENSORS`] tensors per file;
//! - prompt text: 4 MiB before tokenization (`qwen3vl_engine::session::MAX_PROMPT_BYTES`);
//! - worker threads: at most [`MAX_THREADS_PER_CORE`] per core ([`max_threads`]).

// ---- preprocessor_config.json ----

/// `patch_size` (16).
pub const MAX_PATCH_SIZE: usize = 64;
/// `temporal_patch_size` (2).
pub const MAX_TEMPORAL_PATCH_SIZE: usize = 16;
/// `merge_size` / `vision_config.spatial_merge_size` (2).
pub const MAX_MERGE_SIZE: usize = 16;
/// `size.longest_edge` / `max_pixels`, and so `shortest_edge` / `min_pixels` (16777216 = 4096²): the pixels of
/// a resized image. Twice the checkpoints' value; pixel_values of such an image take 805 MB.
pub const MAX_RESIZED_PIXELS: usize = 1 << 25;

// ---- files ----

/// A JSON config file or chat template (config.json is ~5 KB).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// `tokenizer.json` (11 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

// ---- config.json ----

/// `text_config.vocab_size` (151936).
pub const MAX_VOCAB_SIZE: usize = 1 << 22;
/// `text_config.hidden_size`, `vision_config.hidden_size` / `out_hidden_size` (5120).
pub const MAX_HIDDEN_SIZE: usize = 1 << 16;
/// `intermediate_size` of either tower (25600).
pub const MAX_INTERMEDIATE_SIZE: usize = 1 << 18;
/// `text_config.num_experts` and `num_experts_per_tok` of a MoE checkpoint (128, 8).
pub const MAX_EXPERTS: usize = 4096;
/// `text_config.num_hidden_layers`, `vision_config.depth` (64).
pub const MAX_LAYERS: usize = 1024;
/// `num_attention_heads`, `num_key_value_heads`, `vision_config.num_heads` (64).
pub const MAX_HEADS: usize = 1024;
/// `text_config.head_dim` (128).
pub const MAX_HEAD_DIM: usize = 1024;
/// `text_config.max_position_embeddings` (262144).
pub const MAX_CONTEXT: usize = 1 << 24;
/// `vision_config.num_position_embeddings` (2304).
pub const MAX_POSITION_EMBEDDINGS: usize = 1 << 20;
/// `vision_config.in_channels` (3).
pub const MAX_IN_CHANNELS: usize = 16;
/// Tensors in one safetensors file (a 32B checkpoint has ~1200 in all).
pub const MAX_TENSORS: usize = 1 << 20;
/// Dimensions of one tensor (2).
pub const MAX_TENSOR_RANK: usize = 8;

// ---- chat template ----

/// minijinja fuel (about one unit per template instruction) for one render: a real template spends a few
/// hundred per message, so this allows conversations of ten thousand messages and stops a template that
/// would loop for minutes after about a second.
pub const TEMPLATE_FUEL: u64 = 5_000_000;
/// Bytes of rendered prompt text (the prompt text itself is at most 4 MiB).
pub const MAX_RENDERED_BYTES: usize = 64 << 20;

// ---- options ----

/// Worker threads per core the engine accepts (`--threads`).
pub const MAX_THREADS_PER_CORE: usize = 4;

/// The most worker threads accepted on this machine: [`MAX_THREADS_PER_CORE`] × its cores.
pub fn max_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_mul(MAX_THREADS_PER_CORE)
}
