//! The processor's error type: every variant names the problem (file, field, sizes or counts).

use qwen3vl_kernels::KernelError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file could not be decoded, or was refused by the limits (the message names which).
    #[error("image: {0}")]
    Image(String),
    #[error(
        "image aspect ratio {ratio:.1} (height {height}, width {width}) is over the limit of 200"
    )]
    AspectRatio {
        height: usize,
        width: usize,
        ratio: f64,
    },
    /// A missing or bad field in a checkpoint file.
    #[error("{file}: {msg}")]
    Config { file: String, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("the prompt has {placeholders} image placeholders but {images} images were given")]
    PlaceholderCount { placeholders: usize, images: usize },
    /// A video could not be read, or was refused by the limits (the message names which).
    #[error("video: {0}")]
    Video(String),
    #[error("the prompt has {placeholders} video placeholders but {videos} videos were given")]
    VideoPlaceholderCount { placeholders: usize, videos: usize },
    #[error("get_rope_index: {0}")]
    RopeIndex(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The checkpoint has no `preprocessor_config.json`: it answers text prompts only.
    #[error("{dir} has no preprocessor_config.json: this checkpoint takes text prompts only (images and videos need the file)")]
    NoImageConfig { dir: PathBuf },
}
