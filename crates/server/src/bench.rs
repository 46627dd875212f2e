//! `qwen3vl bench serve`: a load generator for an OpenAI-compatible chat-completions server.
//!
//! N worker threads each send streaming requests (`stream: true`, `stream_options.include_usage`) until M
//! requests have been sent in all. Per answered request it records the time to the first content token
//! (TTFT), the time per output token after it (TPOT = (end-to-end − TTFT) / (tokens − 1)) and the
//! end-to-end latency; the report gives their p50/p90/p99, request and output-token throughput over the
//! wall time of the run, and the failures counted by HTTP status (429s also on their own) or by kind
//! (`transport` when no response came, `stream` when a 200 stream broke off or carried an error).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Serialize;
use serde_json::{json, Value};

/// What `bench serve` sends and how.
#[derive(Clone, Debug)]
pub struct ServeBenchOptions {
    /// The server's base URL (`http://127.0.0.1:8080`) or the full chat-completions URL.
    pub url: String,
    /// Requests in flight at once (worker threads).
    pub concurrency: usize,
    /// Requests in all.
    pub requests: usize,
    /// An image sent with every request as a `data:` URI.
    pub image: Option<PathBuf>,
    pub max_tokens: usize,
    /// The user text; each request appends its number so that prompts differ (no whole-prompt cache hit).
    pub prompt: String,
    pub api_key: Option<String>,
    /// The `model` field of the requests.
    pub model: String,
    /// Most time one request may take, start to last byte.
    pub timeout: Duration,
}

/// Largest SSE line accepted from the server (a chunk carrying logprobs is a few KB).
const MAX_LINE_BYTES: usize = 1 << 20;
/// Largest response body read (an error body or a whole stream).
const MAX_BODY_BYTES: u64 = 64 << 20;
/// Largest image file sent.
const MAX_IMAGE_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ServeBenchError {
    #[error("--concurrency must be at least 1")]
    ZeroConcurrency,
    #[error("--requests must be at least 1")]
    ZeroRequests,
    #[error("--max-tokens must be at least 1")]
    ZeroMaxTokens,
    #[error("--url {0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("--image {path}: {source}")]
    Image {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--image {path}: {bytes} bytes is over the {MAX_IMAGE_BYTES}-byte limit")]
    ImageTooLarge { path: PathBuf, bytes: u64 },
    #[error("starting worker thread: {0}")]
    Thread(std::io::Error),
}

/// p50/p90/p99 and mean of one latency, in milliseconds, over the requests answered in full.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values` (any order); all zero when empty.
    pub fn of(values: &[f64]) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Percentiles {
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

/// The result of a run.
#[derive(Clone, Debug, Serialize)]
pub struct ServeBenchReport {
    pub url: String,
    pub concurrency: usize,
    pub requests: usize,
    /// Requests answered in full (200 and a stream that ended with `[DONE]`).
    pub completed: usize,
    pub failed: usize,
    /// Failed requests by HTTP status ("429", "500", ...) or kind ("transport", "stream").
    pub errors: BTreeMap<String, usize>,
    /// Requests refused with 429 (also in `errors`).
    pub rejected_429: usize,
    /// Requests answered with a 5xx status (also in `errors`).
    pub server_errors_5xx: usize,
    pub error_rate: f64,
    /// Wall time of the whole run.
    pub duration_s: f64,
    /// Completed requests per second of wall time.
    pub request_throughput: f64,
    /// Output tokens of completed requests per second of wall time.
    pub output_token_throughput: f64,
    pub total_output_tokens: usize,
    pub total_prompt_tokens: usize,
    pub ttft_ms: Percentiles,
    pub tpot_ms: Percentiles,
    pub e2e_ms: Percentiles,
    /// The first message of each failure kind (status or kind -> message), to tell what went wrong.
    pub error_examples: BTreeMap<String, String>,
}

/// One request's outcome.
#[derive(Clone, Debug)]
struct Sample {
    /// Ok(measurement) or Err((status or kind, message)).
    outcome: Result<Timing, (String, String)>,
}

#[derive(Clone, Debug)]
struct Timing {
    ttft: f64,
    e2e: f64,
    output_tokens: usize,
    prompt_tokens: usize,
}

/// The chat-completions URL for `--url` (a base URL gets `/v1/chat/completions`).
pub fn completions_url(url: &str) -> Result<String, ServeBenchError> {
    let u = url.trim();
    if !(u.starts_with("http://") || u.starts_with("https://")) {
        return Err(ServeBenchError::BadUrl(url.to_string()));
    }
    if u.ends_with("/chat/completions") {
        return Ok(u.to_string());
    }
    let base = u.trim_end_matches('/');
    Ok(if base.ends_with("/v1") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    })
}

/// The image as a `data:` URI, its media type from its first bytes.
fn image_data_uri(path: &PathBuf) -> Result<String, ServeBenchError> {
    let err = |source| ServeBenchError::Image {
        path: path.clone(),
        source,
    };
    let bytes = std::fs::metadata(path).map_err(err)?.len();
    if bytes > MAX_IMAGE_BYTES {
        return Err(ServeBenchError::ImageTooLarge {
            path: path.clone(),
            bytes,
        });
    }
    let data = std::fs::read(path).map_err(err)?;
    let mime = match data.as_slice() {
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [0xff, 0xd8, ..] => "image/jpeg",
        [b'G', b'I', b'F', b'8', ..] => "image/gif",
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "image/webp",
        [b'B', b'M', ..] => "image/bmp",
        _ => "application/octet-stream",
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    Ok(format!("data:{mime};base64,{b64}"))
}

/// The JSON body of request number `i`.
fn request_body(opts: &ServeBenchOptions, image: Option<&str>, i: usize) -> String {
    let text = format!("{} (request {i})", opts.prompt);
    let content = match image {
        Some(uri) => json!([
            {"type": "image_url", "image_url": {"url": uri}},
            {"type": "text", "text": text},
        ]),
        None => json!(text),
    };
    json!({
        "model": opts.model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": opts.max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
        "seed": i,
    })
    .to_string()
}

/// Runs the load and returns the report.
pub fn run(opts: &ServeBenchOptions) -> Result<ServeBenchReport, ServeBenchError> {
    if opts.concurrency == 0 {
        return Err(ServeBenchError::ZeroConcurrency);
    }
    if opts.requests == 0 {
        return Err(ServeBenchError::ZeroRequests);
    }
    if opts.max_tokens == 0 {
        return Err(ServeBenchError::ZeroMaxTokens);
    }
    let url = completions_url(&opts.url)?;
    let image = opts.image.as_ref().map(image_data_uri).transpose()?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .timeout_global(Some(opts.timeout))
        .max_idle_connections_per_host(opts.concurrency)
        .build()
        .into();
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::with_capacity(opts.requests));
    let start = Instant::now();
    std::thread::scope(|s| -> Result<(), ServeBenchError> {
        for w in 0..opts.concurrency.min(opts.requests) {
            let (agent, url, image, next, samples) = (&agent, &url, &image, &next, &samples);
            std::thread::Builder::new()
                .name(format!("bench-serve-{w}"))
                .spawn_scoped(s, move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= opts.requests {
                        break;
                    }
                    let body = request_body(opts, image.as_deref(), i);
                    let sample = one_request(agent, url, opts.api_key.as_deref(), &body);
                    samples
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(sample);
                })
                .map_err(ServeBenchError::Thread)?;
        }
        Ok(())
    })?;
    let duration = start.elapsed().as_secs_f64();
    let samples = samples.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(report(opts, &url, &samples, duration))
}

/// Sends one streaming request and times it.
fn one_request(agent: &ureq::Agent, url: &str, api_key: Option<&str>, body: &str) -> Sample {
    let t0 = Instant::now();
    let mut req = agent
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "text/event-stream");
    if let Some(key) = api_key {
        req = req.header("Authorization", &format!("Bearer {key}"));
    }
    let fail = |kind: String, msg: String| Sample {
        outcome: Err((kind, msg)),
    };
    let resp = match req.send(body) {
        Ok(r) => r,
        Err(e) => return fail("transport".into(), e.to_string()),
    };
    let status = resp.status().as_u16();
    let reader = resp
        .into_body()
        .into_with_config()
        .limit(MAX_BODY_BYTES)
        .reader();
    if status != 200 {
        let mut text = String::new();
        let _ = reader.take(64 << 10).read_to_string(&mut text);
        return fail(status.to_string(), error_message(&text));
    }
    match read_stream(BufReader::new(reader), t0) {
        Ok(t) => Sample { outcome: Ok(t) },
        Err(msg) => fail("stream".into(), msg),
    }
}

/// The `error.message` of an OpenAI-style error body, else the body itself (shortened).
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// Reads an SSE chat-completions stream to `data: [DONE]`: the time of the first content token, the end,
/// and the token counts from the final usage chunk (the number of content chunks if it has none).
fn read_stream(mut r: impl BufRead, t0: Instant) -> Result<Timing, String> {
    let mut first: Option<f64> = None;
    let mut chunks = 0usize;
    let mut usage: Option<(usize, usize)> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut r)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading the stream: {e}"))?;
        if n == 0 {
            return Err("the stream ended without data: [DONE]".into());
        }
        if line.len() > MAX_LINE_BYTES {
            return Err(format!("a stream line over {MAX_LINE_BYTES} bytes"));
        }
        let text = String::from_utf8_lossy(&line);
        let Some(data) = text.trim_end().strip_prefix("data:") else {
            continue; // blank separators, comments (keep-alives), other fields
        };
        let data = data.trim_start();
        if data == "[DONE]" {
            break;
        }
        let v: Value =
            serde_json::from_str(data).map_err(|e| format!("a chunk that is not JSON: {e}"))?;
        if !v["error"].is_null() {
            return Err(format!("error in the stream: {}", v["error"]["message"]));
        }
        let has_content = v["choices"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["delta"]["content"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty())
            })
        });
        if has_content {
            chunks += 1;
            first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        }
        if let (Some(c), Some(p)) = (
            v["usage"]["completion_tokens"].as_u64(),
            v["usage"]["prompt_tokens"].as_u64(),
        ) {
            usage = Some((c as usize, p as usize));
        }
    }
    let e2e = t0.elapsed().as_secs_f64();
    let (output_tokens, prompt_tokens) = usage.unwrap_or((chunks, 0));
    Ok(Timing {
        ttft: first.unwrap_or(e2e),
        e2e,
        output_tokens,
        prompt_tokens,
    })
}

fn report(
    opts: &ServeBenchOptions,
    url: &str,
    samples: &[Sample],
    duration: f64,
) -> ServeBenchReport {
    let ok: Vec<&Timing> = samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().ok())
        .collect();
    let mut errors = BTreeMap::new();
    let mut error_examples = BTreeMap::new();
    for (kind, msg) in samples.iter().filter_map(|s| s.outcome.as_ref().err()) {
        *errors.entry(kind.clone()).or_insert(0) += 1;
        error_examples
            .entry(kind.clone())
            .or_insert_with(|| msg.clone());
    }
    let count = |pred: &dyn Fn(u16) -> bool| -> usize {
        errors
            .iter()
            .filter(|(k, _)| k.parse::<u16>().is_ok_and(pred))
            .map(|(_, n)| n)
            .sum()
    };
    let ms = |f: &dyn Fn(&Timing) -> Option<f64>| -> Percentiles {
        Percentiles::of(
            &ok.iter()
                .filter_map(|t| f(t))
                .map(|s| s * 1e3)
                .collect::<Vec<_>>(),
        )
    };
    let total_output_tokens: usize = ok.iter().map(|t| t.output_tokens).sum();
    let failed = samples.len() - ok.len();
    let per_s = |x: f64| if duration > 0.0 { x / duration } else { 0.0 };
    ServeBenchReport {
        url: url.to_string(),
        concurrency: opts.concurrency,
        requests: samples.len(),
        completed: ok.len(),
        failed,
        rejected_429: count(&|s| s == 429),
        server_errors_5xx: count(&|s| (500..600).contains(&s)),
        errors,
        error_rate: failed as f64 / samples.len().max(1) as f64,
        duration_s: duration,
        request_throughput: per_s(ok.len() as f64),
        output_token_throughput: per_s(total_output_tokens as f64),
        total_output_tokens,
        total_prompt_tokens: ok.iter().map(|t| t.prompt_tokens).sum(),
        ttft_ms: ms(&|t| Some(t.ttft)),
        // One token has no time per output token.
        tpot_ms: ms(&|t| {
            (t.output_tokens > 1).then(|| (t.e2e - t.ttft) / (t.output_tokens - 1) as f64)
        }),
        e2e_ms: ms(&|t| Some(t.e2e)),
        error_examples,
    }
}

impl ServeBenchReport {
    /// The report as a text table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line(format!("url:          {}", self.url));
        line(format!(
            "requests:     {} sent, {} completed, {} failed ({:.1}%), concurrency {}",
            self.requests,
            self.completed,
            self.failed,
            self.error_rate * 100.0,
            self.concurrency
        ));
        line(format!("duration:     {:.2} s", self.duration_s));
        line(format!(
            "throughput:   {:.2} req/s, {:.1} output tok/s ({} output, {} prompt tokens)",
            self.request_throughput,
            self.output_token_throughput,
            self.total_output_tokens,
            self.total_prompt_tokens
        ));
        line(format!(
            "{:<22} {:>10} {:>10} {:>10} {:>10}",
            "latency (ms)", "p50", "p90", "p99", "mean"
        ));
        for (name, p) in [
            ("time to first token", &self.ttft_ms),
            ("time per output token", &self.tpot_ms),
            ("end to end", &self.e2e_ms),
        ] {
            line(format!(
                "{name:<22} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                p.p50, p.p90, p.p99, p.mean
            ));
        }
        if self.errors.is_empty() {
            line("errors:       none".into());
        } else {
            line(format!(
                "errors:       {} (429: {}, 5xx: {})",
                self.failed, self.rejected_429, self.server_errors_5xx
            ));
            for (kind, n) in &self.errors {
                let example = self.error_examples.get(kind).map_or("", String::as_str);
                line(format!("  {kind:<10} {n:>6}  e.g. {example}"));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v);
        assert_eq!((p.p50, p.p90, p.p99, p.mean), (50.0, 90.0, 99.0, 50.5));
        let p = Percentiles::of(&[3.0, 1.0, 2.0]);
        assert_eq!((p.p50, p.p90, p.p99), (2.0, 3.0, 3.0));
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
    }

    #[test]
    fn completions_url_from_base_or_full() {
        for (given, want) in [
            (
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8080/v1/chat/completions",
            ),
            ("http://h:1/", "http://h:1/v1/chat/completions"),
            ("http://h:1/v1", "http://h:1/v1/chat/completions"),
            (
                "http://h:1/v1/chat/completions",
                "http://h:1/v1/chat/completions",
            ),
        ] {
            assert_eq!(completions_url(given).unwrap(), want);
        }
        assert!(matches!(
            completions_url("127.0.0.1:8080"),
            Err(ServeBenchError::BadUrl(_))
        ));
    }

    #[test]
    fn stream_timing_and_usage() {
        let sse = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
                   : keep-alive\n\n\
                   data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
                   data: {\"choices\":[{\"delta\":{\"content\":\" there\"}}]}\n\n\
                   data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n\
                   data: [DONE]\n\n";
        let t = read_stream(sse.as_bytes(), Instant::now()).unwrap();
        assert_eq!((t.output_tokens, t.prompt_tokens), (3, 7));
        assert!(t.ttft <= t.e2e);
        // Without usage the content chunks are counted.
        let sse = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(
            read_stream(sse.as_bytes(), Instant::now())
                .unwrap()
                .output_tokens,
            1
        );
    }

    #[test]
    fn broken_streams_are_errors() {
        let cut = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
        assert!(read_stream(cut.as_bytes(), Instant::now())
            .unwrap_err()
            .contains("[DONE]"));
        let err = "data: {\"error\":{\"message\":\"boom\"}}\n\ndata: [DONE]\n\n";
        assert!(read_stream(err.as_bytes(), Instant::now())
            .unwrap_err()
            .contains("boom"));
        let junk = "data: {not json\n\n";
        assert!(read_stream(junk.as_bytes(), Instant::now()).is_err());
        let long = format!("data: {}\n", "x".repeat(MAX_LINE_BYTES + 10));
        assert!(read_stream(long.as_bytes(), Instant::now())
            .unwrap_err()
            .contains("over"));
    }

    #[test]
    fn report_counts_errors_by_status() {
        let opts = ServeBenchOptions {
            url: "http://h/".into(),
            concurrency: 2,
            requests: 5,
            image: None,
            max_tokens: 4,
            prompt: "p".into(),
            api_key: None,
            model: "m".into(),
            timeout: Duration::from_secs(1),
        };
        let ok = |ttft: f64, e2e: f64, n: usize| Sample {
            outcome: Ok(Timing {
                ttft,
                e2e,
                output_tokens: n,
                prompt_tokens: 10,
            }),
        };
        let err = |k: &str| Sample {
            outcome: Err((k.into(), format!("{k} message"))),
        };
        let samples = [
            ok(0.1, 0.4, 4),
            ok(0.2, 0.2, 1),
            err("429"),
            err("429"),
            err("503"),
        ];
        let r = report(&opts, "http://h/v1/chat/completions", &samples, 2.0);
        assert_eq!(
            (r.completed, r.failed, r.rejected_429, r.server_errors_5xx),
            (2, 3, 2, 1)
        );
        assert_eq!(r.errors["429"], 2);
        assert_eq!(r.total_output_tokens, 5);
        assert_eq!(r.output_token_throughput, 2.5);
        assert_eq!(r.request_throughput, 1.0);
        // TPOT only from the request with more than one token: (0.4 - 0.1) / 3 s.
        assert!((r.tpot_ms.p50 - 100.0).abs() < 1e-9);
        assert!((r.error_rate - 0.6).abs() < 1e-12);
        assert!(r.table().contains("429: 2, 5xx: 1"));
    }
}
