//! The `qwen3vl` binary as a user runs it: exit codes, one-line errors on stderr, JSON shapes.

use std::process::{Command, Output};

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
    // whether AMX tiles run the fast matmuls, in words ("used ..." / "not available ..." / "not used ...")
    let amx = v["amx"].as_str().expect("amx");
    assert!(amx.starts_with("used") || amx.starts_with("not"), "{amx}");
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
        .env(
            "QWEN3VL_CACHE",
            std::env::temp_dir().join("qwen3vl-cli-tests-cache"),
        )
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
        .env(
            "QWEN3VL_CACHE",
            std::env::temp_dir().join("qwen3vl-cli-tests-cache"),
        )
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

/// One tiny random checkpoint per test process, written by the binary itself into the target's temp
/// directory; those of earlier processes that have ended are removed first.
fn tiny_checkpoint() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        if let Ok(entries) = std::fs::read_dir(root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("qwen3vl-cli-tiny-") {
                    if !std::path::Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let dir = root.join(format!("qwen3vl-cli-tiny-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let o = qwen3vl(&[
            "init-random",
            "--preset",
            "tiny",
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "init-random: {}", stderr(&o));
        dir
    })
}

#[test]
fn init_random_then_generate_streams_text_and_timings() {
    let dir = tiny_checkpoint().to_str().unwrap();
    let o = qwen3vl(&[
        "generate",
        "--model",
        dir,
        "--prompt",
        "Hello!",
        "--max-tokens",
        "6",
        "--temperature",
        "0",
        "--print-ids",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    for needle in ["load", "prefill", "tok/s", "decode", "ids: ["] {
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    }
    // Greedy is deterministic: the same ids twice.
    let o2 = qwen3vl(&[
        "generate",
        "--model",
        dir,
        "--prompt",
        "Hello!",
        "--max-tokens",
        "6",
        "--temperature",
        "0",
        "--print-ids",
    ]);
    let ids = |e: &str| {
        e.lines()
            .find(|l| l.starts_with("ids:"))
            .map(str::to_string)
    };
    assert_eq!(ids(&err), ids(&stderr(&o2)));
    assert_eq!(o.stdout, o2.stdout);
    // Sampling with a seed: reproducible.
    let sampled = |seed: &str| {
        let o = qwen3vl(&[
            "generate",
            "--model",
            dir,
            "--prompt",
            "Hi",
            "--max-tokens",
            "8",
            "--temperature",
            "1.0",
            "--top-k",
            "40",
            "--seed",
            seed,
            "--print-ids",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        ids(&stderr(&o))
    };
    assert_eq!(sampled("3"), sampled("3"));
}

#[test]
fn generate_with_an_image() {
    let dir = tiny_checkpoint().to_str().unwrap();
    let img = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/model-reference/img_64x96.png"
    );
    let o = qwen3vl(&[
        "generate",
        "--model",
        dir,
        "--image",
        img,
        "--prompt",
        "Describe this image.",
        "--max-tokens",
        "4",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("image tokens"), "{err}");
}

#[test]
fn missing_model_directory_is_a_clean_error() {
    let o = qwen3vl(&[
        "generate",
        "--model",
        "/nonexistent/qwen3vl-model",
        "--prompt",
        "hi",
    ]);
    assert_clean_failure(&o, "does not exist");
}

#[test]
fn model_directory_without_files_is_a_clean_error() {
    let dir = temp_dir("emptymodel");
    std::fs::create_dir_all(&dir).unwrap();
    let o = qwen3vl(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert_clean_failure(&o, "config.json");
    // Config and tokenizer but no weights.
    let tiny = tiny_checkpoint();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    ] {
        std::fs::copy(tiny.join(f), dir.join(f)).unwrap();
    }
    let o = qwen3vl(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert_clean_failure(&o, "safetensors");
    // A truncated weights file.
    let w = std::fs::read(tiny.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    let o = qwen3vl(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert_clean_failure(&o, "model.safetensors");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreadable_image_is_a_clean_error() {
    let dir = tiny_checkpoint().to_str().unwrap();
    let o = qwen3vl(&[
        "generate",
        "--model",
        dir,
        "--image",
        "/nonexistent/cat.png",
        "--prompt",
        "hi",
    ]);
    assert_clean_failure(&o, "cat.png");
    let bad = temp_dir("badimg");
    std::fs::create_dir_all(&bad).unwrap();
    let f = bad.join("not-an-image.png");
    std::fs::write(&f, b"this is not a PNG").unwrap();
    let o = qwen3vl(&[
        "generate",
        "--model",
        dir,
        "--image",
        f.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert_clean_failure(&o, "not-an-image.png");
    let _ = std::fs::remove_dir_all(&bad);
}

#[test]
fn prompt_longer_than_context_is_a_clean_error() {
    let dir = tiny_checkpoint().to_str().unwrap();
    let long = "word ".repeat(200);
    let o = qwen3vl(&[
        "generate",
        "--model",
        dir,
        "--context",
        "64",
        "--prompt",
        &long,
        "--max-tokens",
        "4",
    ]);
    assert_clean_failure(&o, "context");
    // Without --max-tokens too.
    let o = qwen3vl(&[
        "generate",
        "--model",
        dir,
        "--context",
        "64",
        "--prompt",
        &long,
    ]);
    assert_clean_failure(&o, "context");
    // Far too long for the context: refused by size before tokenizing.
    let huge = "word ".repeat(1000);
    let o = qwen3vl(&[
        "generate",
        "--model",
        dir,
        "--context",
        "64",
        "--prompt",
        &huge,
    ]);
    assert_clean_failure(&o, "bytes");
}

/// The packed-weight cache is written only when asked for: by default nothing appears in the cache
/// directory; with `--weight-cache DIR` the first run writes one file there and says so.
#[test]
fn weight_cache_is_off_by_default_and_written_when_asked() {
    let dir = tiny_checkpoint().to_str().unwrap();
    let tmp = std::env::temp_dir().join(format!("qwen3vl-cli-wcache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            dir,
            "--prompt",
            "hi",
            "--max-tokens",
            "1",
        ];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_qwen3vl"))
            .env("QWEN3VL_CACHE", &tmp)
            .env_remove("QWEN3VL_SIMD")
            .args(&args)
            .output()
            .expect("run qwen3vl")
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!tmp.join("packed").exists(), "the default wrote a cache");
    let explicit = tmp.join("explicit");
    let o = run(&["--weight-cache", explicit.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("packed weights cached"),
        "{}",
        stderr(&o)
    );
    let files = std::fs::read_dir(&explicit).unwrap().count();
    assert_eq!(files, 1, "one cache file");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn bad_numbers_are_clean_errors() {
    let dir = tiny_checkpoint().to_str().unwrap();
    let o = qwen3vl(&[
        "generate",
        "--model",
        dir,
        "--prompt",
        "hi",
        "--max-tokens",
        "0",
    ]);
    assert_clean_failure(&o, "max-tokens");
    let o = qwen3vl(&[
        "generate",
        "--model",
        dir,
        "--prompt",
        "hi",
        "--temperature",
        "-1",
    ]);
    assert_clean_failure(&o, "temperature");
    let o = qwen3vl(&[
        "generate", "--model", dir, "--prompt", "hi", "--top-p", "1.5",
    ]);
    assert_clean_failure(&o, "top_p");
    let o = qwen3vl(&[
        "generate",
        "--model",
        dir,
        "--prompt",
        "hi",
        "--temperature",
        "NaN",
    ]);
    assert_clean_failure(&o, "temperature");
}

#[test]
fn chat_keeps_history_and_handles_commands() {
    use std::io::Write as _;
    let dir = tiny_checkpoint().to_str().unwrap();
    let img = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/model-reference/img_64x96.png"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen3vl"))
        .env(
            "QWEN3VL_CACHE",
            std::env::temp_dir().join("qwen3vl-cli-tests-cache"),
        )
        .args([
            "chat",
            "--model",
            dir,
            "--max-tokens",
            "3",
            "--temperature",
            "0",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = format!(
        "Hello\nHello\n/image {img}\nWhat is this?\n/image /nonexistent.png\n/reset\nAgain\n"
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("attached"), "{err}");
    assert!(err.contains("image tokens"), "{err}");
    assert!(err.contains("nonexistent.png"), "{err}");
    assert!(err.contains("cleared"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Four answered turns.
    assert_eq!(err.matches("finish:").count(), 4, "{err}");
    // Prefill sizes: the second turn runs only its own 9 tokens plus the 2-3 that close the first answer
    // (a recomputed history would be 9 + 3 + 2 + 9); after /reset a turn starts from scratch again.
    let prefills: Vec<usize> = err
        .lines()
        .filter_map(|l| l.split("prefill ").nth(1))
        .filter_map(|r| r.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(prefills.len(), 4, "{err}");
    assert_eq!(prefills[0], 9, "{err}");
    assert!(prefills[1] == 11 || prefills[1] == 12, "{err}");
    assert_eq!(prefills[3], 9, "{err}");
}

#[test]
fn bench_json_has_required_keys() {
    let dir = tiny_checkpoint().to_str().unwrap();
    let o = qwen3vl(&[
        "bench",
        "--model",
        dir,
        "--prompt-tokens",
        "16",
        "--gen-tokens",
        "4",
        "--image-size",
        "64x64",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    for key in [
        "load_s",
        "vision_s",
        "image_tokens",
        "prefill_tok_s",
        "decode_tok_s",
        "peak_rss_mib",
        "decode_pct_of_bandwidth",
        "prefill_pct_of_peak",
        "vision_pct_of_peak",
    ] {
        let x = v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing or not a number: {v}"));
        assert!(x.is_finite() && x >= 0.0, "{key} = {x}");
    }
    // 64×64 is resized up to the 65536-pixel minimum: 256×256 → 64 tokens.
    assert_eq!(v["image_tokens"], 64);
    assert!(v["decode_tok_s"].as_f64().unwrap() > 0.0);
    // Memory is reported next to what the model must hold: the checkpoint's tensor bytes (the file
    // less its 8-byte length and JSON header) and the KV cache for 16 + 4 tokens (keys and values of
    // every layer, f32).
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tiny_checkpoint().join("config.json")).unwrap())
            .unwrap();
    let t = &cfg["text_config"];
    let dim = |k: &str| t[k].as_u64().unwrap() as usize;
    let kv_bytes =
        20 * 2 * dim("num_hidden_layers") * dim("num_key_value_heads") * dim("head_dim") * 4;
    let file = std::fs::read(tiny_checkpoint().join("model.safetensors")).unwrap();
    let header = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
    assert_eq!(
        v["checkpoint_mib"].as_f64(),
        Some(mib(file.len() - 8 - header))
    );
    assert_eq!(v["kv_cache_mib"].as_f64(), Some(mib(kv_bytes)));
    let ratio = v["peak_rss_mib"].as_f64().unwrap()
        / (v["checkpoint_mib"].as_f64().unwrap() + v["kv_cache_mib"].as_f64().unwrap());
    let reported = v["rss_over_checkpoint_kv"].as_f64().unwrap();
    assert!(
        (reported - ratio).abs() < 1e-9 * ratio,
        "{reported} vs {ratio}"
    );
}

#[test]
fn bench_without_model_or_subcommand_is_a_clean_error() {
    let o = qwen3vl(&["bench"]);
    assert_clean_failure(&o, "--model");
    let o = qwen3vl(&[
        "bench",
        "--model",
        tiny_checkpoint().to_str().unwrap(),
        "--image-size",
        "big",
    ]);
    assert_clean_failure(&o, "image-size");
}

#[test]
fn logits_writes_safetensors() {
    let dir = temp_dir("logits");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out.safetensors");
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/model-tiny-tied"
    );
    let img = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/model-reference/img_64x96.png"
    );
    let o = qwen3vl(&[
        "logits",
        "--model",
        model,
        "--image",
        img,
        "--prompt",
        "Describe this image.",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&out).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    for key in [
        "input_ids",
        "last_logits",
        "top5_idx",
        "top5_val",
        "pixel_values",
        "image_grid_thw",
    ] {
        assert!(header.get(key).is_some(), "{key} missing: {header}");
    }
    let o = qwen3vl(&[
        "logits",
        "--model",
        "/nonexistent/dir",
        "--prompt",
        "hi",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "/nonexistent/dir");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn prompt_from_stdin_equals_prompt_argument() {
    use std::io::Write as _;
    let dir = tiny_checkpoint().to_str().unwrap();
    let args = |p: &'static str| {
        vec![
            "generate",
            "--model",
            dir,
            "--prompt",
            p,
            "--max-tokens",
            "5",
            "--temperature",
            "0",
            "--print-ids",
        ]
    };
    let a = qwen3vl(&args("Hello!"));
    assert!(a.status.success(), "{}", stderr(&a));
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen3vl"))
        .env(
            "QWEN3VL_CACHE",
            std::env::temp_dir().join("qwen3vl-cli-tests-cache"),
        )
        .args(args("-"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Hello!").unwrap();
    let b = child.wait_with_output().unwrap();
    assert!(b.status.success(), "{}", stderr(&b));
    let ids = |e: &str| {
        e.lines()
            .find(|l| l.starts_with("ids:"))
            .map(str::to_string)
    };
    assert!(ids(&stderr(&a)).is_some());
    assert_eq!(ids(&stderr(&a)), ids(&stderr(&b)));
}

#[test]
fn chat_refuses_a_turn_that_does_not_fit_and_goes_on() {
    use std::io::Write as _;
    let dir = tiny_checkpoint().to_str().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen3vl"))
        .env(
            "QWEN3VL_CACHE",
            std::env::temp_dir().join("qwen3vl-cli-tests-cache"),
        )
        .args([
            "chat",
            "--model",
            dir,
            "--context",
            "30",
            "--temperature",
            "0",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hello\nHello again\n/reset\nHi\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("does not fit"), "{err}");
    // The first turn fills the context (9 prompt tokens + 21 generated); after /reset a turn runs again.
    assert_eq!(err.matches("finish: length").count(), 2, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `init-random --preset tiny` (seed 0) is a checkpoint transformers loads as is, and greedy decoding on it
/// gives transformers' ids. Expected ids from transformers 5.23 / torch 2.15 (float32):
/// `Qwen3VLForConditionalGeneration.from_pretrained(DIR)`, `AutoProcessor.from_pretrained(DIR)`, the chat
/// template with add_generation_prompt, `generate(max_new_tokens=8, do_sample=False)`; the image case with
/// testdata/model-reference/img_64x96.png before the text.
#[test]
fn init_random_tiny_matches_transformers_greedy() {
    let dir = tiny_checkpoint().to_str().unwrap();
    let img = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/model-reference/img_64x96.png"
    );
    let ids = |extra: &[&str], prompt: &str| {
        let mut args = vec![
            "generate",
            "--model",
            dir,
            "--max-tokens",
            "8",
            "--temperature",
            "0",
        ];
        args.extend_from_slice(&["--precision", "f32", "--print-ids", "--prompt", prompt]);
        args.extend_from_slice(extra);
        let o = qwen3vl(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
            .lines()
            .find(|l| l.starts_with("ids:"))
            .unwrap()
            .to_string()
    };
    assert_eq!(ids(&[], "Hello!"), format!("ids: {:?}", [140539u32; 8]));
    assert_eq!(
        ids(&["--image", img], "Describe this image."),
        format!(
            "ids: {:?}",
            [49759u32, 78309, 78309, 78309, 78309, 78309, 78309, 78309]
        )
    );
}

/// `plan` prints, per op, the kernel and weight layout of the loaded model, with the fused projections.
#[test]
fn plan_lists_ops_kernels_and_layouts() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/model-tiny-tied"
    );
    let o = qwen3vl(&["plan", "--model", dir, "--threads", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    for needle in [
        "visual.blocks.*",
        "self_attn.q|k|v_proj",
        "mlp.gate|up_proj",
        "packed bf16 panels",
        "attention, flash causal: prefill ",
        "decode f32, split-KV",
        "rms_norm_rope_half",
        "SwiGLU epilogue",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    let o = qwen3vl(&["plan", "--model", "/nonexistent/model"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nonexistent/model"), "{}", stderr(&o));
}

/// `serve --allow-private-media` only together with `--allow-remote-media` (refused alone, naming the
/// missing option), and `serve --help` explains it.
#[test]
fn allow_private_media_needs_allow_remote_media() {
    let o = qwen3vl(&[
        "serve",
        "--model",
        "/nonexistent-model-dir",
        "--allow-private-media",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("--allow-remote-media"), "{e}");
    let help = String::from_utf8_lossy(&qwen3vl(&["serve", "--help"]).stdout).to_string();
    assert!(help.contains("--allow-private-media"), "{help}");
}
