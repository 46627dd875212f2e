//! Developer tools, not part of serving a model: random-weight checkpoints in the Hub layout
//! (`qwen3vl init-random`, for trying and benchmarking the engine without downloading weights) and the
//! logits dump (`qwen3vl logits`, for comparing with a reference implementation stage by stage); and
//! schemas that probe structured output's limits, for tests.

pub mod init_random;
pub mod logits;
pub mod schemas;
