//! The checked chat-completions request, and the limits it is checked against.

use serde_json::Value;

/// Limits the validation enforces (from the server's options).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most images and videos in one request (counted before any is fetched or decoded).
    pub max_images: usize,
    /// Most answers per request (`n`): the sequences that run at once.
    pub max_n: usize,
    /// The context: `max_tokens` above it can never fit.
    pub context: usize,
    /// Most stop strings, and bytes per stop string.
    pub max_stop: usize,
    pub max_stop_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_images: 8,
            max_n: 4,
            context: 4096,
            max_stop: 16,
            max_stop_bytes: 256,
        }
    }
}

/// Most alternatives per token (`top_logprobs`), as in OpenAI's API.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Largest `media_io_kwargs.video.num_frames` (transformers' default `max_frames` for Qwen3-VL; the
/// checkpoint's own limit applies below it).
pub const MAX_VIDEO_FRAMES: usize = 768;

/// One part of a message.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text(String),
    /// The `image_url.url` (a `data:` URI, `file://` path or `http(s)` URL), and its field path for errors.
    Image {
        url: String,
        param: String,
    },
    /// The `video_url.url` (same sources as images), and its field path for errors.
    Video {
        url: String,
        param: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub parts: Vec<Part>,
}

/// What the output must be.
#[derive(Clone, Debug, PartialEq)]
pub enum ResponseFormat {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against this schema.
    JsonSchema(Value),
}

/// A checked chat-completions request. Sampling fields left unset take the checkpoint's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Log-probabilities with this many alternatives per token (None: not asked).
    pub logprobs: Option<usize>,
    pub n: usize,
    pub response_format: ResponseFormat,
    /// Most frames sampled per video (`media_io_kwargs.video.num_frames`); None: the checkpoint's limit.
    pub video_frames: Option<usize>,
}

impl ChatRequest {
    pub fn image_count(&self) -> usize {
        self.messages
            .iter()
            .flat_map(|m| &m.parts)
            .filter(|p| matches!(p, Part::Image { .. }))
            .count()
    }

    pub fn video_count(&self) -> usize {
        self.messages
            .iter()
            .flat_map(|m| &m.parts)
            .filter(|p| matches!(p, Part::Video { .. }))
            .count()
    }
}
