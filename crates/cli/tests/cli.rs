//! The `qwen3vl` binary as a user runs it: exit codes, one-line errors on stderr, JSON shapes.

use std::process::{Command, Output};

fn qwen3vl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qwen3vl"))
        .args(args)
        .env_remove("QWEN3VL_SIMD")
        .output()
        .expect("run qwen3vl")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed run: non-zero exit, one line on stderr starting with "error:", no panic text.
pub fn assert_clean_failure(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(
        !err.contains("panicked")
            && !err.contains("RUST_BACKTRACE")
            && !err.contains("internal error"),
        "panic on stderr: {err}"
    );
    assert!(
        err.starts_with("error:"),
        "stderr should start with 'error:': {err}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "error should be one line: {err}"
    );
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "stderr should mention {needle:?}: {err}"
    );
}

#[test]
fn cpu_json_has_required_keys() {
    let o = qwen3vl(&["cpu", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    let level = v["level"].as_str().expect("level");
    assert!(["scalar", "sse4.1", "avx2", "avx512"].contains(&level));
    assert!(v["features"].is_array());
    assert_eq!(v["f32_lanes"]["avx2"], 8);
    assert_eq!(v["f32_lanes"]["sse4.1"], 4);
    assert!(v["cpu"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(v["reason"].as_str().is_some_and(|s| !s.is_empty()));
}

#[test]
fn cpu_text_names_the_level() {
    let o = qwen3vl(&["cpu"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("level:") && s.contains("features:"), "{s}");
}

#[test]
fn forced_scalar_is_reported() {
    let o = Command::new(env!("CARGO_BIN_EXE_qwen3vl"))
        .args(["cpu", "--json"])
        .env("QWEN3VL_SIMD", "scalar")
        .output()
        .unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["level"], "scalar");
    assert!(v["reason"].as_str().unwrap().contains("QWEN3VL_SIMD"));
}

#[test]
fn unknown_simd_level_is_a_clean_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_qwen3vl"))
        .args(["cpu"])
        .env("QWEN3VL_SIMD", "neon")
        .output()
        .unwrap();
    assert_clean_failure(&o, "neon");
}

#[test]
fn unknown_subcommand_fails_without_panic() {
    let o = qwen3vl(&["frobnicate"]);
    assert!(!o.status.success());
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn help_lists_commands() {
    let o = qwen3vl(&["--help"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("cpu"));
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("qwen3vl-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn init_random_tiny_writes_checkpoint_and_refuses_to_clobber() {
    let dir = temp_dir("init");
    let d = dir.to_str().unwrap();
    let o = qwen3vl(&["init-random", "--preset", "tiny", "--out", d, "--seed", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("69 tensors"), "{}", stderr(&o));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.json",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let o = qwen3vl(&["init-random", "--preset", "tiny", "--out", d]);
    assert_clean_failure(&o, "not empty");
    let o = qwen3vl(&[
        "init-random",
        "--preset",
        "tiny",
        "--out",
        d,
        "--force",
        "--shard-size-mb",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join("model.safetensors.index.json").is_file());
    assert!(
        !dir.join("model.safetensors").exists(),
        "stale single file left behind"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn init_random_unknown_preset_is_a_clean_error() {
    let dir = temp_dir("badpreset");
    let o = qwen3vl(&[
        "init-random",
        "--preset",
        "70b",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "unknown preset");
}
