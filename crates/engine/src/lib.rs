//! qwen3vl-engine: what sits between the model and a user — CPU report, sampling, generation defaults,
//! streaming detokenization, sessions with a KV cache, the generation loop, the scheduler and benchmarks;
//! developer tools (random checkpoints, the logits dump) in [`dev`].

pub mod bench;
pub mod constraint;
pub mod cpu;
pub mod dev;
pub mod eval;
pub mod generate;
pub mod generation_config;
pub mod grounding;
pub mod media;
pub mod quantize;
pub mod request;
pub mod sampling;
pub mod scheduler;
pub mod session;
pub mod stream;

/// Models by Hugging Face Hub id (download, cache, verification); `resolve_model` turns a `--model`
/// argument (a directory or `owner/name[@revision]`) into a checkpoint directory.
pub use qwen3vl_hub as hub;
pub use qwen3vl_hub::resolve_model;

pub use constraint::{ConstraintFactory, JsonGrammar, TokenConstraint};
pub use generate::{FinishReason, TokenLogprob};
pub use generation_config::GenerationConfig;
pub use qwen3vl_model::Progress;
pub use request::{History, Prepared};
pub use sampling::{Sampler, SamplingParams};
pub use scheduler::{
    CancelToken, Event, Request, RequestHandle, Scheduler, SchedulerLoad, SchedulerOptions,
    SeqOptions,
};
pub use session::{
    Engine, EngineError, EngineOptions, GenerateParams, Generation, ProgressFn, Session,
};
pub use stream::{StopStrings, StreamDecoder, TokenBytes};
