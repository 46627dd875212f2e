//! Helpers of the server's integration tests: the tiny checkpoint, servers on free ports of 127.0.0.1, a
//! minimal HTTP/1.1 client and checks of OpenAI error bodies.
#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use qwen3vl_engine::{Engine, EngineOptions};
use qwen3vl_model::Precision;
use qwen3vl_server::{Server, ServerOptions};
use serde_json::{json, Value};

pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

pub fn load() -> Result<Engine, String> {
    Engine::load(
        &testdata().join("model-tiny-tied"),
        &EngineOptions {
            threads: 1,
            precision: Precision::F32,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())
}

pub fn opts() -> ServerOptions {
    ServerOptions {
        port: 0,
        context: Some(1024),
        parallel: 4,
        queue: 8,
        body_limit: 1 << 20,
        max_images: 2,
        keep_alive: Duration::from_millis(200),
        model_name: "tiny".into(),
        ..ServerOptions::default()
    }
}

/// Starts a server and waits until it is ready.
pub fn start(o: ServerOptions) -> Server {
    let s = Server::start(o, Box::new(load)).unwrap();
    wait_ready(s.addr());
    s
}

pub fn wait_ready(addr: SocketAddr) {
    let t = Instant::now();
    while http(addr, "GET", "/health", &[], b"").status != 200 {
        assert!(t.elapsed() < Duration::from_secs(60), "server not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One server shared by the tests that do not need their own.
pub fn shared() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let s = Box::leak(Box::new(start(opts())));
        s.addr()
    })
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of an SSE body.
    pub fn sse(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A minimal HTTP/1.1 client (Connection: close; chunked bodies decoded).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // The server may answer (413) before reading the whole body: ignore a write error.
    let _ = s.write_all(&request_bytes(method, path, headers, body));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16)
                .unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + n]);
            rest = &rest[nl + 2 + n + 2..];
        }
        body = out;
    }
    Resp {
        status,
        headers,
        body: String::from_utf8(body).expect("the body is UTF-8"),
    }
}

pub fn chat(addr: SocketAddr, body: &Value) -> Resp {
    http(
        addr,
        "POST",
        "/v1/chat/completions",
        &[],
        body.to_string().as_bytes(),
    )
}

pub fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

pub fn png_data_uri() -> String {
    let bytes = std::fs::read(testdata().join("model-reference/img_64x96.png")).unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A valid request answered: the server still serves.
pub fn still_serves(addr: SocketAddr) {
    let r = chat(
        addr,
        &json!({"messages": user("hi"), "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["message"]["role"], "assistant");
}

pub fn assert_error(r: &Resp, status: u16, param: Option<&str>, needle: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let e = &r.json()["error"];
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    assert!(e["type"].is_string(), "{}", r.body);
    if let Some(p) = param {
        assert_eq!(e["param"], json!(p), "{}", r.body);
    }
}

/// A streaming request read until its first content chunk, then left open or dropped.
pub fn open_stream(addr: SocketAddr, body: &Value) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &[],
        body.to_string().as_bytes(),
    ))
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let mut seen = 0;
    while seen < 2 {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended early");
        if line.starts_with("HTTP/1.1 ") {
            assert!(line.contains(" 200 "), "{line}");
        }
        if line.contains("data: ") {
            seen += 1;
        }
    }
    r
}

pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = http(addr, "GET", "/metrics", &[], b"").body;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

pub fn long_stream() -> Value {
    // No EOS can end it early: only max_tokens does (the tiny model rarely samples EOS, and ignore it
    // anyway by asking for a long answer on a small context).
    json!({"messages": user("Write a long story."), "max_tokens": 900, "temperature": 0, "stream": true})
}
