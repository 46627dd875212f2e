//! qwen3vl-engine: what sits between the model and a user — CPU report, sampling, generation defaults,
//! streaming detokenization, sessions with a KV cache, the generation loop, benchmarks and random
//! checkpoints for trying the engine without weights.

pub mod cpu;
pub mod sampling;

pub use sampling::{Sampler, SamplingParams};
pub mod generation_config;
pub mod stream;

pub use generation_config::GenerationConfig;
pub use stream::{StopStrings, StreamDecoder, TokenBytes};
pub mod generate;
pub mod init_random;
