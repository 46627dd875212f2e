//! `qwen3vl bench serve` against a real `qwen3vl serve` on the tiny checkpoint (127.0.0.1, free ports):
//! the report counts what the server did (answers, 429s by status) and its latencies are ordered.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_qwen3vl")
}

fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/model-tiny-tied")
}

/// A `qwen3vl serve` child on a free port; killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin())
            .env(
                "QWEN3VL_CACHE",
                std::env::temp_dir().join("qwen3vl-cli-tests-cache"),
            )
            .args(["serve", "--model"])
            .arg(tiny_model())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting qwen3vl serve");
        let mut s = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while health(port) != Some(200) {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!("qwen3vl serve exited early: {status}");
            }
            assert!(Instant::now() < deadline, "serve not healthy in 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of `GET /health`, or None when nothing answers.
fn health(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn bench(url: &str, args: &[&str]) -> Value {
    let out = Command::new(bin())
        .env(
            "QWEN3VL_CACHE",
            std::env::temp_dir().join("qwen3vl-cli-tests-cache"),
        )
        .args(["bench", "serve", "--url", url, "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench serve failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bench serve --json prints one JSON object")
}

fn assert_ordered(r: &Value, key: &str) {
    let p = &r[key];
    let (p50, p90, p99) = (
        p["p50"].as_f64().unwrap(),
        p["p90"].as_f64().unwrap(),
        p["p99"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p90 && p90 <= p99, "{key}: {p}");
}

#[test]
fn every_request_answered_and_timed() {
    let s = Server::start(&["--parallel", "2"]);
    let dir = std::env::temp_dir().join(format!("qwen3vl-bench-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("red.png");
    image::RgbImage::from_pixel(64, 48, image::Rgb([200, 60, 60]))
        .save(&png)
        .unwrap();
    let r = bench(
        &s.url,
        &[
            "--concurrency",
            "2",
            "--requests",
            "5",
            "--max-tokens",
            "6",
            "--image",
            png.to_str().unwrap(),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(r["requests"], 5, "{r}");
    assert_eq!(r["completed"], 5, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}));
    let out = r["total_output_tokens"].as_u64().unwrap();
    assert!((5..=30).contains(&out), "{r}");
    // The image's tokens are in every prompt.
    assert!(r["total_prompt_tokens"].as_u64().unwrap() > 5 * 20, "{r}");
    for key in ["ttft_ms", "e2e_ms"] {
        assert_ordered(&r, key);
    }
    assert!(r["ttft_ms"]["p50"].as_f64() <= r["e2e_ms"]["p50"].as_f64());
    assert!(r["output_token_throughput"].as_f64().unwrap() > 0.0);
    assert!(r["request_throughput"].as_f64().unwrap() > 0.0);
}

#[test]
fn overflow_is_counted_as_429_and_never_5xx() {
    // One slot and one queue place; six clients at once: the rest are refused with 429.
    let s = Server::start(&["--parallel", "1", "--queue", "1"]);
    let r = bench(
        &s.url,
        &[
            "--concurrency",
            "6",
            "--requests",
            "12",
            "--max-tokens",
            "300",
        ],
    );
    let rejected = r["rejected_429"].as_u64().unwrap();
    assert!(rejected >= 1, "{r}");
    assert_eq!(r["errors"]["429"].as_u64(), Some(rejected), "{r}");
    assert_eq!(r["server_errors_5xx"], 0, "{r}");
    assert_eq!(
        r["completed"].as_u64().unwrap() + rejected,
        12,
        "every request answered or 429'd: {r}"
    );
}

#[test]
fn unreachable_server_is_counted_as_transport_errors() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Nothing listens on the port now that the listener is dropped.
    let r = bench(
        &format!("http://127.0.0.1:{port}"),
        &["--concurrency", "2", "--requests", "3"],
    );
    assert_eq!(r["completed"], 0);
    assert_eq!(r["errors"]["transport"], 3, "{r}");
    assert_eq!(r["error_rate"], 1.0);
}

#[test]
fn bad_arguments_are_one_line_errors() {
    for (args, want) in [
        (
            vec!["--url", "127.0.0.1:8080"],
            "is not an http:// or https:// URL",
        ),
        (
            vec!["--url", "http://127.0.0.1:1", "--concurrency", "0"],
            "--concurrency must be at least 1",
        ),
        (
            vec!["--url", "http://127.0.0.1:1", "--image", "/nonexistent.png"],
            "--image /nonexistent.png",
        ),
    ] {
        let out = Command::new(bin())
            .env(
                "QWEN3VL_CACHE",
                std::env::temp_dir().join("qwen3vl-cli-tests-cache"),
            )
            .args(["bench", "serve"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}
