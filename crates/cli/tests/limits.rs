//! Options and inputs checked against the engine's limits before work starts; one line per error, each
//! fact once; the chat's commands and bad lines.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn qwen3vl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qwen3vl"))
        .env(
            "QWEN3VL_CACHE",
            std::env::temp_dir().join("qwen3vl-cli-tests-cache"),
        )
        .args(args)
        .env_remove("QWEN3VL_SIMD")
        .output()
        .expect("run qwen3vl")
}

fn tiny() -> &'static str {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/model-tiny-tied"
    )
}

/// Non-zero exit, exactly one line on stderr, starting with "error:", holding every needle.
fn one_line_error(o: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "expected a failure: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("error:") || err.contains("(see --help)"),
        "{err}"
    );
    for n in needles {
        assert!(err.contains(n), "{err:?} does not say {n:?}");
    }
    err
}

#[test]
fn threads_are_capped_and_negative_values_name_the_option() {
    let o = qwen3vl(&["plan", "--model", tiny(), "--threads", "100000000"]);
    one_line_error(
        &o,
        &["--threads 100000000 is over the limit of", "per core"],
    );
    let o = qwen3vl(&["bench", "matmul", "--threads", "10000"]);
    one_line_error(&o, &["--threads 10000 is over the limit"]);
    let o = qwen3vl(&["plan", "--model", tiny(), "--threads", "-1"]);
    one_line_error(&o, &["-1", "--threads"]);
}

#[test]
fn negative_infinite_temperature_reaches_the_range_check() {
    let o = qwen3vl(&[
        "generate",
        "--model",
        tiny(),
        "--prompt",
        "hi",
        "--temperature",
        "-inf",
    ]);
    one_line_error(&o, &["temperature", "-inf"]);
}

#[test]
fn a_missing_image_is_reported_before_the_model_loads() {
    // The model directory is not a checkpoint at all: the image error must come first.
    let o = qwen3vl(&[
        "generate",
        "--model",
        "/nonexistent-model-dir",
        "--image",
        "/nonexistent/cat.png",
        "--prompt",
        "hi",
    ]);
    one_line_error(&o, &["/nonexistent/cat.png"]);
}

#[test]
fn bench_image_size_is_bounded() {
    let o = qwen3vl(&[
        "bench",
        "--model",
        "/nonexistent-model-dir",
        "--image-size",
        "100000x100000",
    ]);
    one_line_error(&o, &["--image-size", "over the limit of 16384x16384"]);
}

fn copy_of_tiny(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-limits-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for f in std::fs::read_dir(tiny()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, d.join(f.file_name().unwrap())).unwrap();
    }
    d
}

#[test]
fn each_fact_is_printed_once() {
    let d = copy_of_tiny("genconfig");
    std::fs::write(d.join("generation_config.json"), "[]").unwrap();
    let o = qwen3vl(&["generate", "--model", d.to_str().unwrap(), "--prompt", "hi"]);
    let err = one_line_error(
        &o,
        &["generation_config.json: the top level must be a JSON object"],
    );
    assert_eq!(err.matches("top level").count(), 1, "{err}");
    // A file the OS refuses: the path and the OS's reason, once each.
    let d = copy_of_tiny("cfgdir");
    std::fs::remove_file(d.join("preprocessor_config.json")).unwrap();
    std::fs::create_dir(d.join("preprocessor_config.json")).unwrap();
    let o = qwen3vl(&["plan", "--model", d.to_str().unwrap()]);
    let err = one_line_error(&o, &["preprocessor_config.json"]);
    assert_eq!(err.matches("preprocessor_config.json").count(), 1, "{err}");
}

fn chat(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen3vl"))
        .env(
            "QWEN3VL_CACHE",
            std::env::temp_dir().join("qwen3vl-cli-tests-cache"),
        )
        .arg("chat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn chat_refuses_unknown_commands_and_skips_bad_lines() {
    let mut input = b"/imagine a cat\n".to_vec();
    input.extend_from_slice(b"\xff\xfe bad\n/image \"/nonexistent/my cat.png\"\nhello\n");
    let o = chat(&["--model", tiny(), "--max-tokens", "2"], &input);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("unknown command /imagine"), "{err}");
    assert!(err.contains("not UTF-8"), "{err}");
    // The quoted path arrives whole (with its space) and is reported; the chat goes on.
    assert!(err.contains("/nonexistent/my cat.png"), "{err}");
    // Only "hello" reached the model: one turn summary.
    assert_eq!(err.matches("tokens generated").count(), 1, "{err}");
    assert!(!o.stdout.is_empty());
}

#[test]
fn chat_refuses_context_zero_like_generate() {
    let o = chat(&["--model", tiny(), "--context", "0"], b"");
    one_line_error(&o, &["--context must be at least 1"]);
}
