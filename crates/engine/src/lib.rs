//! qwen3vl-engine
