//! qwen3vl-model
