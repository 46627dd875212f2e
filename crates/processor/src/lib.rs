//! qwen3vl-processor
