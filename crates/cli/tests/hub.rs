//! `--model owner/name` and `pull` / `list` / `rm` end to end: the binary against a local fake Hub
//! (127.0.0.1, `HF_ENDPOINT`) serving the repo's tiny checkpoint; no internet.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qwen3vl_hub::fake_hub::FakeHub;

const REPO: &str = "tiny-org/tiny-tied";
const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

fn tiny_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/model-tiny-tied")
}

fn temp_cache(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qwen3vl-cli-hub-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The binary with only our Hub variables set.
fn qwen3vl(args: &[&str], endpoint: &str, cache: &Path, offline: bool) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qwen3vl"));
    c.args(args)
        .env("QWEN3VL_CACHE", cache.join("qwen3vl-cache"))
        .env_remove("QWEN3VL_SIMD")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HOME")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .env_remove("TRANSFORMERS_OFFLINE")
        // The fake Hub is on 127.0.0.1: no proxy in between.
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("all_proxy")
        .env("HF_TOKEN_PATH", cache.join("no-token"))
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HUB_CACHE", cache);
    if offline {
        c.env("HF_HUB_OFFLINE", "1");
    } else {
        c.env_remove("HF_HUB_OFFLINE");
    }
    c.output().expect("run qwen3vl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const GENERATE: [&str; 8] = [
    "--prompt",
    "Hello",
    "--max-tokens",
    "6",
    "--temperature",
    "0",
    "--threads",
    "1",
];

fn generate(model: &str, endpoint: &str, cache: &Path, offline: bool) -> Output {
    let mut args = vec!["generate", "--model", model];
    args.extend(GENERATE);
    qwen3vl(&args, endpoint, cache, offline)
}

#[test]
fn generate_by_hub_id_downloads_then_runs_from_the_cache() {
    let hub = FakeHub::start();
    hub.add_repo(REPO, COMMIT, FakeHub::dir_files(&tiny_dir()));
    let cache = temp_cache("generate");
    let local = generate(tiny_dir().to_str().unwrap(), &hub.url(), &cache, false);
    assert!(local.status.success(), "{}", text(&local.stderr));
    assert!(
        hub.requests().is_empty(),
        "a local directory asks the Hub nothing"
    );

    // First use: downloads, then answers exactly as from the local directory.
    let first = generate(REPO, &hub.url(), &cache, false);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(text(&first.stdout), text(&local.stdout));
    assert!(!text(&first.stdout).is_empty());
    let reqs = hub.requests();
    assert!(
        reqs[0]
            .path
            .starts_with("/api/models/tiny-org/tiny-tied/revision/main"),
        "{reqs:?}"
    );
    assert!(reqs.iter().any(|r| r.path.starts_with("/cdn/")), "{reqs:?}");

    // Second use: from the cache, not one request; offline too.
    hub.clear_requests();
    let second = generate(REPO, &hub.url(), &cache, false);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(text(&second.stdout), text(&local.stdout));
    let offline = generate(REPO, "http://127.0.0.1:1", &cache, true);
    assert!(offline.status.success(), "{}", text(&offline.stderr));
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
    std::fs::remove_dir_all(&cache).unwrap();
}

/// A failed run: non-zero exit, one line on stderr starting with "error:", mentioning each needle.
fn assert_clean_failure(o: &Output, needles: &[&str]) {
    let err = text(&o.stderr);
    assert!(!o.status.success(), "expected failure: {err}");
    assert!(
        err.starts_with("error:") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}: {err}");
    }
}

#[test]
fn hub_errors_are_one_clear_line() {
    let hub = FakeHub::start();
    hub.add_repo(REPO, COMMIT, FakeHub::dir_files(&tiny_dir()));
    hub.require_token(REPO, "hf_x");
    let cache = temp_cache("errors");
    let o = generate(REPO, &hub.url(), &cache, false);
    assert_clean_failure(&o, &["401 Unauthorized", "set HF_TOKEN"]);
    let o = generate("tiny-org/missing", &hub.url(), &cache, false);
    assert_clean_failure(
        &o,
        &[
            "--model tiny-org/missing: no such directory, so it was taken as a Hugging Face Hub id",
            "model not found on the Hub",
        ],
    );
    let o = generate(REPO, "http://127.0.0.1:1", &cache, false);
    assert_clean_failure(
        &o,
        &[
            "cannot reach the Hub at http://127.0.0.1:1",
            "HF_HUB_OFFLINE=1",
        ],
    );
    let o = generate(REPO, &hub.url(), &cache, true);
    assert_clean_failure(
        &o,
        &["HF_HUB_OFFLINE is set and tiny-org/tiny-tied is not complete in the cache"],
    );
    let o = generate("./no/such/dir", &hub.url(), &cache, false);
    assert_clean_failure(
        &o,
        &["./no/such/dir does not exist, and it is not a Hugging Face Hub id"],
    );
    let o = qwen3vl(&["pull", "not-an-id"], &hub.url(), &cache, false);
    assert_clean_failure(&o, &["\"not-an-id\" is not a Hugging Face Hub id"]);
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn pull_list_rm() {
    let hub = FakeHub::start();
    hub.add_repo(REPO, COMMIT, FakeHub::dir_files(&tiny_dir()));
    let cache = temp_cache("pull");
    let o = qwen3vl(&["list"], &hub.url(), &cache, false);
    assert!(
        o.status.success() && o.stdout.is_empty(),
        "{}",
        text(&o.stderr)
    );

    let o = qwen3vl(&["pull", REPO], &hub.url(), &cache, false);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let dir = cache
        .join("models--tiny-org--tiny-tied/snapshots")
        .join(COMMIT);
    assert_eq!(text(&o.stdout).trim_end(), dir.to_str().unwrap());
    assert!(
        text(&o.stderr).contains("tiny-org/tiny-tied: commit 89abcdef0123, 8 files"),
        "{}",
        text(&o.stderr)
    );
    assert!(dir.join("model.safetensors").is_file());

    let o = qwen3vl(&["list"], &hub.url(), &cache, false);
    let out = text(&o.stdout);
    assert!(
        out.contains("tiny-org/tiny-tied     14.3 MB  main=89abcdef0123"),
        "{out}"
    );
    let o = qwen3vl(&["list", "--json"], &hub.url(), &cache, false);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["id"], REPO);
    assert_eq!(v[0]["size"], 14297542);
    assert_eq!(v[0]["refs"][0]["commit"], COMMIT);
    assert_eq!(v[0]["snapshots"][0]["complete"], true);

    let o = qwen3vl(&["rm", REPO], &hub.url(), &cache, false);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("removed tiny-org/tiny-tied"),
        "{}",
        text(&o.stderr)
    );
    assert!(!cache.join("models--tiny-org--tiny-tied").exists());
    let o = qwen3vl(&["rm", REPO], &hub.url(), &cache, false);
    assert_clean_failure(&o, &["tiny-org/tiny-tied is not in the cache"]);
    std::fs::remove_dir_all(&cache).unwrap();
}
