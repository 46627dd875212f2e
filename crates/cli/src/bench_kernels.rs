//! `qwen3vl bench roofline` and `qwen3vl bench matmul` (in progress).
