//! qwen3vl-engine: what sits between the model and a user — CPU report, sampling, generation defaults,
//! streaming detokenization, sessions with a KV cache, the generation loop, benchmarks and random
//! checkpoints for trying the engine without weights.

pub mod bench;
pub mod cpu;
pub mod generate;
pub mod generation_config;
pub mod grounding;
pub mod init_random;
pub mod logits;
pub mod media;
pub mod sampling;
pub mod session;
pub mod stream;

pub use generate::FinishReason;
pub use generation_config::GenerationConfig;
pub use sampling::{Sampler, SamplingParams};
pub use session::{Engine, EngineError, EngineOptions, GenerateParams, Generation, Session};
pub use stream::{StopStrings, StreamDecoder, TokenBytes};
