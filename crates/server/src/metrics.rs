//! `/metrics` in Prometheus' text format: request counts by status, tokens, queue depth, time to first
//! token and time per output token histograms.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use qwen3vl_engine::scheduler::SchedulerLoad;

/// A cumulative histogram with fixed upper bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistState>,
}

#[derive(Default)]
struct HistState {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub const fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            inner: Mutex::new(HistState {
                counts: Vec::new(),
                sum: 0.0,
                count: 0,
            }),
        }
    }

    pub fn observe(&self, x: f64) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if s.counts.is_empty() {
            s.counts = vec![0; self.bounds.len()];
        }
        for (i, &b) in self.bounds.iter().enumerate() {
            if x <= b {
                s.counts[i] += 1;
            }
        }
        s.sum += x;
        s.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in self.bounds.iter().enumerate() {
            let c = s.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", s.count);
        let _ = writeln!(out, "{name}_sum {}", s.sum);
        let _ = writeln!(out, "{name}_count {}", s.count);
    }
}

const TTFT_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const TPOT_BOUNDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
const LATENCY_BOUNDS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// The server's counters.
pub struct Metrics {
    /// Finished HTTP requests of the API by status code.
    by_status: Mutex<BTreeMap<u16, u64>>,
    pub prompt_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub ttft: Histogram,
    pub tpot: Histogram,
    pub latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            by_status: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            cached_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BOUNDS),
            tpot: Histogram::new(TPOT_BOUNDS),
            latency: Histogram::new(LATENCY_BOUNDS),
        }
    }
}

impl Metrics {
    pub fn count_status(&self, status: u16) {
        *self
            .by_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(status)
            .or_insert(0) += 1;
    }

    /// The text of `/metrics`; `load` is the scheduler's state (None while loading), `in_flight` the
    /// requests admitted by the server.
    pub fn render(&self, load: Option<SchedulerLoad>, in_flight: usize, ready: bool) -> String {
        let mut out = String::new();
        let mut put = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        put(
            "qwen3vl_ready",
            "gauge",
            "1 once the model is loaded",
            (ready as u8).to_string(),
        );
        let ld = load.unwrap_or_default();
        put(
            "qwen3vl_requests_in_flight",
            "gauge",
            "Chat requests admitted and not yet answered",
            in_flight.to_string(),
        );
        put(
            "qwen3vl_sequences_running",
            "gauge",
            "Sequences in the decode batch",
            ld.running.to_string(),
        );
        put(
            "qwen3vl_queue_depth",
            "gauge",
            "Sequences waiting for a slot or KV memory",
            ld.waiting.to_string(),
        );
        put(
            "qwen3vl_sequences_cancelled_total",
            "counter",
            "Sequences freed because the client cancelled or disconnected",
            ld.cancelled.to_string(),
        );
        put(
            "qwen3vl_sequences_finished_total",
            "counter",
            "Sequences that ended (EOS, stop string or length)",
            ld.finished.to_string(),
        );
        put(
            "qwen3vl_steps_total",
            "counter",
            "Batched model steps",
            ld.steps.to_string(),
        );
        put(
            "qwen3vl_prompt_tokens_total",
            "counter",
            "Prompt tokens of answered requests",
            self.prompt_tokens.load(Ordering::Relaxed).to_string(),
        );
        put(
            "qwen3vl_prompt_tokens_cached_total",
            "counter",
            "Prompt tokens whose KV came from the prefix cache",
            self.cached_tokens.load(Ordering::Relaxed).to_string(),
        );
        put(
            "qwen3vl_generation_tokens_total",
            "counter",
            "Tokens generated",
            self.generated_tokens.load(Ordering::Relaxed).to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP qwen3vl_requests_total API requests by HTTP status\n# TYPE qwen3vl_requests_total counter"
        );
        for (s, n) in self
            .by_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(out, "qwen3vl_requests_total{{status=\"{s}\"}} {n}");
        }
        self.ttft.write(
            &mut out,
            "qwen3vl_time_to_first_token_seconds",
            "Request arrival to first token",
        );
        self.tpot.write(
            &mut out,
            "qwen3vl_time_per_output_token_seconds",
            "Decode time per token after the first",
        );
        self.latency.write(
            &mut out,
            "qwen3vl_request_duration_seconds",
            "Request arrival to the last token",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut s = String::new();
        h.write(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3\n"), "{s}");
        let m = Metrics::default();
        m.count_status(429);
        m.count_status(429);
        let text = m.render(None, 0, false);
        assert!(
            text.contains("qwen3vl_requests_total{status=\"429\"} 2"),
            "{text}"
        );
        assert!(text.contains("qwen3vl_ready 0"), "{text}");
    }
}
