//! `POST /v1/chat/completions` and `POST /tokenize`: a checked request becomes a scheduler request (images
//! and videos fetched and preprocessed on a blocking thread), and the scheduler's events become an OpenAI response —
//! one JSON body, or SSE chunks ending with `data: [DONE]`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use qwen3vl_engine::scheduler::{CancelToken, SeqStats};
use qwen3vl_engine::{
    ConstraintFactory, EngineError, Event, FinishReason, GenerateParams, JsonGrammar,
    Request as EngineRequest, SeqOptions, TokenLogprob,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api::{self, ApiError, ChatRequest, ResponseFormat};
use crate::{error_response, read_body, since, AppState, Ready, Slot};

/// Cancels the request's sequences when dropped (the response finished, failed, or the client went away)
/// and frees its slot.
struct Guard {
    tokens: Vec<CancelToken>,
    _slot: Slot,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for t in &self.tokens {
            t.cancel();
        }
    }
}

pub(crate) async fn completions(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let t0 = Instant::now();
    let resp = match start(&st, req, t0).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    st.metrics.count_status(resp.status().as_u16());
    resp
}

/// A submitted request: its events (answer index, event) and what the response needs.
struct Running {
    rx: mpsc::UnboundedReceiver<(usize, Event)>,
    guard: Guard,
    n: usize,
    id: String,
    created: u64,
    model: String,
    t0: Instant,
}

async fn start(st: &Arc<AppState>, req: Request, t0: Instant) -> Result<Response, ApiError> {
    let ready = st.ready()?;
    let body = read_body(req.into_body(), st.opts.body_limit).await?;
    let value = api::parse_json(&body)?;
    let creq = api::parse_chat(&value, &ready.limits)?;
    let slot = Slot::acquire(st)?;
    let constraint = constraint_for(st, &creq.response_format).await?;
    let n = creq.n;
    let stream = creq.stream;
    let include_usage = creq.include_usage;
    let handles = {
        let st = st.clone();
        let creq = creq.clone();
        tokio::task::spawn_blocking(move || submit(&st, creq, constraint))
            .await
            .map_err(|e| ApiError::new(500, "server_error", format!("internal error: {e}")))??
    };
    // One forwarding thread per answer: the scheduler's channel is blocking.
    let (tx, rx) = mpsc::unbounded_channel();
    let tokens = handles.iter().map(|h| h.cancel_token()).collect();
    for (i, h) in handles.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::task::spawn_blocking(move || {
            while let Some(ev) = h.recv() {
                if tx.send((i, ev)).is_err() {
                    break;
                }
            }
        });
    }
    let run = Running {
        rx,
        guard: Guard {
            tokens,
            _slot: slot,
        },
        n,
        id: format!("chatcmpl-{:016x}{:08x}", rand_u64(), std::process::id()),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: creq
            .model
            .clone()
            .unwrap_or_else(|| st.opts.model_name.clone()),
        t0,
    };
    if stream {
        Ok(
            stream_response(st.clone(), run, include_usage, creq.logprobs.is_some())
                .into_response(),
        )
    } else {
        collect(st, run, creq.logprobs.is_some()).await
    }
}

/// A random-enough id part (no extra dependency): time and a counter through SplitMix64.
fn rand_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static C: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = t ^ C.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The structured-output constraint of `format` (the token trie is built once, on first use).
async fn constraint_for(
    st: &Arc<AppState>,
    format: &ResponseFormat,
) -> Result<Option<Arc<dyn ConstraintFactory>>, ApiError> {
    let schema = match format {
        ResponseFormat::Text => return Ok(None),
        ResponseFormat::JsonObject => None,
        ResponseFormat::JsonSchema(s) => Some(s.clone()),
    };
    let st = st.clone();
    tokio::task::spawn_blocking(move || {
        let ready = st.ready()?;
        let grammar = json_grammar(ready)
            .map_err(|e| ApiError::new(500, "server_error", format!("structured output: {e}")))?;
        let is_schema = schema.is_some();
        grammar.for_schema(schema).map(Some).map_err(|e| {
            ApiError::invalid(
                if is_schema {
                    "response_format.json_schema.schema"
                } else {
                    "response_format"
                },
                e,
            )
        })
    })
    .await
    .map_err(|e| ApiError::new(500, "server_error", format!("internal error: {e}")))?
}

/// The token trie for structured output, built once per model (blocking).
pub(crate) fn json_grammar(ready: &Ready) -> Result<Arc<JsonGrammar>, String> {
    ready
        .json
        .get_or_init(|| {
            let e = &ready.engine;
            let eos = e
                .processor
                .tokenizer()
                .token_to_id("<|im_end|>")
                .or_else(|| e.generation_config.eos_token_ids.first().copied())
                .unwrap_or(0);
            JsonGrammar::new(&e.token_bytes, e.model.vocab_size(), eos).map(Arc::new)
        })
        .clone()
}

/// Fetches and preprocesses the images and videos, then submits through the engine's one request path.
fn submit(
    st: &AppState,
    creq: ChatRequest,
    constraint: Option<Arc<dyn ConstraintFactory>>,
) -> Result<Vec<qwen3vl_engine::RequestHandle>, ApiError> {
    let ready = st.ready()?;
    let inputs = crate::inputs::load(st, ready, &creq.messages, creq.video_frames)?;
    let params = generate_params(ready, &creq);
    let opts = SeqOptions {
        n: creq.n,
        logprobs: creq.logprobs,
        constraint,
    };
    ready
        .scheduler
        .submit_media(
            EngineRequest {
                messages: inputs.messages,
                images: inputs.images,
                params,
            },
            inputs.videos,
            opts,
        )
        .map_err(engine_error)
}

/// The request's settings over the checkpoint's defaults (generation_config.json).
fn generate_params(ready: &Ready, r: &ChatRequest) -> GenerateParams {
    let seed = r.seed.unwrap_or_else(rand_u64);
    let mut s = ready.engine.generation_config.sampling_params(seed);
    if let Some(t) = r.temperature {
        s.temperature = t;
    }
    if let Some(x) = r.top_p {
        s.top_p = x;
    }
    if let Some(k) = r.top_k {
        s.top_k = k;
    }
    if let Some(x) = r.min_p {
        s.min_p = x;
    }
    if let Some(x) = r.presence_penalty {
        s.presence_penalty = x;
    }
    if let Some(x) = r.frequency_penalty {
        s.frequency_penalty = x;
    }
    if let Some(x) = r.repetition_penalty {
        s.repetition_penalty = x;
    }
    GenerateParams {
        sampling: s,
        max_tokens: r.max_tokens,
        stop_strings: r.stop.clone(),
        extra_eos: Vec::new(),
    }
}

/// An engine refusal as a 400 naming the field it is about (or a 500 for the engine's own failures).
fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::Input(m) => {
            let param = if m.contains("max_tokens") || m.contains("context") {
                "max_tokens"
            } else if m.starts_with("n = ") {
                "n"
            } else {
                "messages"
            };
            ApiError::invalid(param, m)
        }
        EngineError::Processor(p) => ApiError::invalid("messages", p.to_string()),
        EngineError::Sampling(s) => ApiError::bad_request(s.to_string()),
        e => ApiError::new(500, "server_error", e.to_string()),
    }
}

/// One answer as it comes in.
#[derive(Default)]
struct Answer {
    text: String,
    logprobs: Vec<TokenLogprob>,
    done: Option<(FinishReason, SeqStats)>,
}

fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// OpenAI's logprobs `content` list.
fn logprobs_json(ready: &Ready, lps: &[TokenLogprob]) -> Value {
    let tb = &ready.engine.token_bytes;
    let tok = |id: u32| {
        let b = tb.bytes(id).unwrap_or(&[]);
        (String::from_utf8_lossy(b).into_owned(), b.to_vec())
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|lp| {
            let (t, b) = tok(lp.id);
            let top: Vec<Value> = lp
                .top
                .iter()
                .map(|&(id, l)| {
                    let (t, b) = tok(id);
                    json!({"token": t, "logprob": l, "bytes": b})
                })
                .collect();
            json!({"token": t, "logprob": lp.logprob, "bytes": b, "top_logprobs": top})
        })
        .collect();
    json!({ "content": content })
}

/// usage (with cached prompt tokens) and the timings extension, from the answers' statistics.
fn usage_and_timings(stats: &[&SeqStats]) -> (Value, Value) {
    let first = stats.first().copied().cloned().unwrap_or_default();
    let completion: usize = stats.iter().map(|s| s.generated_tokens).sum();
    let prompt = first.prompt_tokens;
    let usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": first.cached_tokens},
    });
    let prefilled = prompt.saturating_sub(first.cached_tokens);
    // Time to first token less the wait behind other requests: vision and prefill of this prompt.
    let prompt_s = (first.ttft_seconds - first.queue_seconds).max(0.0);
    let decode_s = stats.iter().map(|s| s.decode_seconds).fold(0.0, f64::max);
    let decoded: usize = stats
        .iter()
        .map(|s| s.generated_tokens.saturating_sub(1))
        .sum();
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let timings = json!({
        "prompt_n": prefilled,
        "prompt_cached_n": first.cached_tokens,
        "queue_ms": first.queue_seconds * 1e3,
        "prompt_ms": prompt_s * 1e3,
        "prompt_per_second": rate(prefilled, prompt_s),
        "predicted_n": completion,
        "predicted_ms": decode_s * 1e3,
        "predicted_per_second": rate(decoded, decode_s),
    });
    (usage, timings)
}

fn record(st: &AppState, run_t0: Instant, stats: &[&SeqStats]) {
    use std::sync::atomic::Ordering::Relaxed;
    let m = &st.metrics;
    if let Some(f) = stats.first() {
        m.prompt_tokens.fetch_add(f.prompt_tokens as u64, Relaxed);
        m.cached_tokens.fetch_add(f.cached_tokens as u64, Relaxed);
    }
    for s in stats {
        m.generated_tokens
            .fetch_add(s.generated_tokens as u64, Relaxed);
        m.ttft.observe(s.ttft_seconds);
        if s.generated_tokens > 1 {
            m.tpot
                .observe(s.decode_seconds / (s.generated_tokens - 1) as f64);
        }
    }
    m.latency.observe(since(run_t0));
}

fn timeout_error(st: &AppState) -> ApiError {
    ApiError::new(
        504,
        "timeout_error",
        format!(
            "the request ran longer than the server's limit of {} s and was cancelled",
            st.opts.request_timeout.as_secs()
        ),
    )
}

/// A generation failure reported by the scheduler mid-request.
fn worker_error(m: String) -> ApiError {
    if m.contains("over the budget") {
        ApiError::invalid("max_tokens", m)
    } else {
        ApiError::new(500, "server_error", m)
    }
}

/// The non-streaming response: wait for every answer.
async fn collect(
    st: &Arc<AppState>,
    mut run: Running,
    want_lp: bool,
) -> Result<Response, ApiError> {
    let ready = st.ready()?;
    let deadline = tokio::time::Instant::now() + st.opts.request_timeout;
    let mut answers: Vec<Answer> = (0..run.n).map(|_| Answer::default()).collect();
    let mut pending = run.n;
    while pending > 0 {
        let ev = tokio::time::timeout_at(deadline, run.rx.recv())
            .await
            .map_err(|_| timeout_error(st))?;
        let Some((i, ev)) = ev else {
            return Err(ApiError::new(
                500,
                "server_error",
                "the scheduler ended the request without an answer",
            ));
        };
        let a = &mut answers[i];
        match ev {
            Event::Text(t) => a.text.push_str(&t),
            Event::Token(lp) => a.logprobs.push(lp),
            Event::Done {
                text,
                finish,
                stats,
                ..
            } => {
                a.text = text;
                a.done = Some((finish, stats));
                pending -= 1;
            }
            Event::Error(m) => return Err(worker_error(m)),
        }
    }
    drop(run.guard);
    let stats: Vec<&SeqStats> = answers
        .iter()
        .filter_map(|a| a.done.as_ref().map(|d| &d.1))
        .collect();
    record(st, run.t0, &stats);
    let (usage, timings) = usage_and_timings(&stats);
    let choices: Vec<Value> = answers
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let finish = a.done.as_ref().map(|d| finish_str(d.0));
            json!({
                "index": i,
                "message": {"role": "assistant", "content": a.text},
                "logprobs": if want_lp { logprobs_json(ready, &a.logprobs) } else { Value::Null },
                "finish_reason": finish,
            })
        })
        .collect();
    Ok(Json(json!({
        "id": run.id,
        "object": "chat.completion",
        "created": run.created,
        "model": run.model,
        "choices": choices,
        "usage": usage,
        "timings": timings,
    }))
    .into_response())
}

/// The state of a streaming response.
struct StreamState {
    st: Arc<AppState>,
    run: Running,
    answers: Vec<Answer>,
    pending: usize,
    out: VecDeque<SseEvent>,
    include_usage: bool,
    want_lp: bool,
    deadline: tokio::time::Instant,
    finished: bool,
}

impl StreamState {
    fn chunk(&self, choices: Value, usage: Option<Value>) -> SseEvent {
        let mut c = json!({
            "id": self.run.id,
            "object": "chat.completion.chunk",
            "created": self.run.created,
            "model": self.run.model,
            "choices": choices,
        });
        if self.include_usage {
            c["usage"] = usage.unwrap_or(Value::Null);
        }
        SseEvent::default().data(c.to_string())
    }

    fn lp(&mut self, i: usize) -> Value {
        if !self.want_lp {
            return Value::Null;
        }
        let lps = std::mem::take(&mut self.answers[i].logprobs);
        match self.st.ready.get() {
            Some(r) => logprobs_json(r, &lps),
            None => Value::Null,
        }
    }

    /// Ends the stream with an error object, then `[DONE]`.
    fn fail(&mut self, e: ApiError) {
        self.out
            .push_back(SseEvent::default().data(e.body().to_string()));
        self.out.push_back(SseEvent::default().data("[DONE]"));
        self.finished = true;
        for t in &self.run.guard.tokens {
            t.cancel();
        }
    }

    fn on_event(&mut self, i: usize, ev: Event) {
        match ev {
            Event::Token(lp) => self.answers[i].logprobs.push(lp),
            Event::Text(t) => {
                let lp = self.lp(i);
                self.answers[i].text.push_str(&t);
                let c = self.chunk(
                    json!([{"index": i, "delta": {"content": t}, "logprobs": lp, "finish_reason": null}]),
                    None,
                );
                self.out.push_back(c);
            }
            Event::Done { finish, stats, .. } => {
                let lp = self.lp(i);
                let c = self.chunk(
                    json!([{"index": i, "delta": {}, "logprobs": lp, "finish_reason": finish_str(finish)}]),
                    None,
                );
                self.out.push_back(c);
                self.answers[i].done = Some((finish, stats));
                self.pending -= 1;
                if self.pending == 0 {
                    let stats: Vec<&SeqStats> = self
                        .answers
                        .iter()
                        .filter_map(|a| a.done.as_ref().map(|d| &d.1))
                        .collect();
                    record(&self.st, self.run.t0, &stats);
                    let (usage, timings) = usage_and_timings(&stats);
                    if self.include_usage {
                        let c = json!({
                            "id": self.run.id,
                            "object": "chat.completion.chunk",
                            "created": self.run.created,
                            "model": self.run.model,
                            "choices": [],
                            "usage": usage,
                            "timings": timings,
                        });
                        self.out.push_back(SseEvent::default().data(c.to_string()));
                    }
                    self.out.push_back(SseEvent::default().data("[DONE]"));
                    self.finished = true;
                }
            }
            Event::Error(m) => self.fail(worker_error(m)),
        }
    }
}

fn stream_response(
    st: Arc<AppState>,
    run: Running,
    include_usage: bool,
    want_lp: bool,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let n = run.n;
    let deadline = tokio::time::Instant::now() + st.opts.request_timeout;
    let keep_alive = st.opts.keep_alive;
    let mut s = StreamState {
        st,
        run,
        answers: (0..n).map(|_| Answer::default()).collect(),
        pending: n,
        out: VecDeque::new(),
        include_usage,
        want_lp,
        deadline,
        finished: false,
    };
    // The role comes first, one chunk per answer.
    for i in 0..n {
        let c = s.chunk(
            json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
            None,
        );
        s.out.push_back(c);
    }
    let events = stream::unfold(s, |mut s| async move {
        loop {
            if let Some(e) = s.out.pop_front() {
                return Some((Ok(e), s));
            }
            if s.finished {
                return None;
            }
            match tokio::time::timeout_at(s.deadline, s.run.rx.recv()).await {
                Err(_) => {
                    let e = timeout_error(&s.st);
                    s.fail(e);
                }
                Ok(None) => {
                    s.fail(ApiError::new(
                        500,
                        "server_error",
                        "the scheduler ended the request without an answer",
                    ));
                }
                Ok(Some((i, ev))) => s.on_event(i, ev),
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
}

/// `POST /tokenize`: `{"content": "text"}` (plain text, special-token strings stay text) or
/// `{"messages": [...]}` (the full prompt through the engine's request path, images included) →
/// `{"tokens": [...], "count": n}`.
pub(crate) async fn tokenize(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let r = async {
        let ready = st.ready()?;
        let body = read_body(req.into_body(), st.opts.body_limit).await?;
        let v = api::parse_json(&body)?;
        let st2 = st.clone();
        tokio::task::spawn_blocking(move || tokenize_blocking(&st2, &v))
            .await
            .map_err(|e| ApiError::new(500, "server_error", e.to_string()))?
            .map(|t| {
                let _ = ready;
                Json(json!({"count": t.len(), "tokens": t})).into_response()
            })
    }
    .await;
    r.unwrap_or_else(|e| error_response(&e))
}

fn tokenize_blocking(st: &AppState, v: &Value) -> Result<Vec<u32>, ApiError> {
    let ready = st.ready()?;
    let engine = &ready.engine;
    if let Some(c) = v.get("content") {
        let text = c
            .as_str()
            .ok_or_else(|| ApiError::invalid("content", "content must be a string"))?;
        let limit = qwen3vl_engine::request::prompt_byte_limit(ready.limits.context);
        if text.len() > limit {
            return Err(ApiError::invalid(
                "content",
                format!(
                    "content is {} bytes, over the limit of {limit} bytes",
                    text.len()
                ),
            ));
        }
        let enc = engine
            .processor
            .tokenizer()
            .encode(text, false)
            .map_err(|e| ApiError::new(500, "server_error", e.to_string()))?;
        return Ok(enc.get_ids().to_vec());
    }
    let mut body = v.clone();
    // Validate the messages as a chat request would be.
    if let Some(o) = body.as_object_mut() {
        o.remove("max_tokens");
        o.remove("max_completion_tokens");
    }
    let creq = api::parse_chat(&body, &ready.limits)?;
    let inputs = crate::inputs::load(st, ready, &creq.messages, creq.video_frames)?;
    let p = engine
        .prepare_media(
            &inputs.messages,
            inputs.images,
            inputs.videos,
            qwen3vl_engine::History::default(),
            Some(1),
            ready.limits.context,
        )
        .map_err(engine_error)?;
    Ok(p.tokens)
}
