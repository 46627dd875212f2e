//! qwen3vl-server: an OpenAI-compatible HTTP server over the engine's [`Scheduler`].
//!
//! Routes: `POST /v1/chat/completions` (JSON or SSE streaming), `GET /v1/models`, `POST /tokenize`,
//! `GET /health` (503 while the model loads, then 200), `GET /metrics` (Prometheus text) and the chat page
//! at `GET /`. The port is bound before the model loads, so clients and load balancers see "loading"
//! rather than "connection refused".
//!
//! Every request goes through the engine's one request path (`Scheduler::submit_with`, which prepares it
//! with `Engine::prepare_media`); this crate parses HTTP, checks fields ([`api`]), fetches images
//! ([`media`]) and shapes responses ([`chat`]).

pub mod api;
pub mod bench;
mod chat;
mod inputs;
pub mod media;
mod messages;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use qwen3vl_engine::{Engine, JsonGrammar, Scheduler, SchedulerOptions};
use tokio::sync::oneshot;

use api::{ApiError, Limits};
use media::MediaPolicy;
use metrics::Metrics;

/// The chat page (no build step, no CDN), served at `/`.
const INDEX_HTML: &str = include_str!("../web/index.html");

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub host: String,
    /// 0 picks a free port (see [`Server::addr`]).
    pub port: u16,
    /// Sequences decoded together (the scheduler's batch).
    pub parallel: usize,
    /// Requests waiting behind the running ones; more get 429.
    pub queue: usize,
    /// Required as `Authorization: Bearer KEY` on the API routes when set.
    pub api_key: Option<String>,
    /// Context length (prompt and answer) per request; None: the model's.
    pub context: Option<usize>,
    /// KV cache memory shared by all sequences, bytes; None: `parallel` full contexts.
    pub kv_memory: Option<u64>,
    pub media: MediaPolicy,
    pub max_images: usize,
    /// Largest request body, bytes (checked before parsing).
    pub body_limit: usize,
    /// A request still running after this is cancelled.
    pub request_timeout: Duration,
    /// SSE comment interval while nothing else is sent (long prefills).
    pub keep_alive: Duration,
    /// The model name reported by `/v1/models` and in responses.
    pub model_name: String,
    /// Prompt tokens prefilled per step between decode steps.
    pub prefill_chunk: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            host: "127.0.0.1".into(),
            port: 8080,
            parallel: 4,
            queue: 16,
            api_key: None,
            context: None,
            kv_memory: None,
            media: MediaPolicy::default(),
            max_images: 8,
            body_limit: 32 << 20,
            request_timeout: Duration::from_secs(600),
            keep_alive: Duration::from_secs(5),
            model_name: "qwen3vl".into(),
            prefill_chunk: 256,
        }
    }
}

/// Loads the model (called on a blocking thread after the port is bound).
pub type Loader = Box<dyn FnOnce() -> Result<Engine, String> + Send>;

/// The loaded model and what the handlers need of it.
pub(crate) struct Ready {
    pub scheduler: Scheduler,
    pub engine: Arc<Engine>,
    pub limits: Limits,
    /// The token trie for structured output, built on first use.
    pub json: OnceLock<Result<Arc<JsonGrammar>, String>>,
}

pub(crate) struct AppState {
    pub opts: ServerOptions,
    pub ready: OnceLock<Ready>,
    pub metrics: Metrics,
    /// Chat requests admitted (running or queued).
    pub in_flight: AtomicUsize,
    pub created: u64,
}

/// A slot among `parallel + queue`; freed on drop.
pub(crate) struct Slot(Arc<AppState>);

impl Slot {
    pub fn acquire(st: &Arc<AppState>) -> Result<Slot, ApiError> {
        let cap = st.opts.parallel + st.opts.queue;
        let prev = st.in_flight.fetch_add(1, Ordering::SeqCst);
        if prev >= cap {
            st.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::new(
                429,
                "rate_limit_error",
                format!(
                    "the server is busy: {prev} requests are running or queued (--parallel {} and --queue {}); \
                     retry later",
                    st.opts.parallel, st.opts.queue
                ),
            )
            .retry_after(1));
        }
        Ok(Slot(st.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An [`ApiError`] as an HTTP response.
pub(crate) fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, Json(e.body())).into_response();
    if let Some(s) = e.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    if e.status == 413 {
        // The body was not read to its end: the connection cannot carry another request. Say so, or a
        // client's pool reuses it and its next request meets a closed socket.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

impl AppState {
    pub fn ready(&self) -> Result<&Ready, ApiError> {
        self.ready.get().ok_or_else(|| {
            ApiError::new(
                503,
                "server_error",
                "the model is still loading; retry in a few seconds",
            )
            .retry_after(2)
        })
    }
}

/// A running server (see [`Server::start`]).
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Server {
    /// Binds the port, starts serving (`/health` says 503) and loads the model with `loader` in the
    /// background. Returns once the port is bound.
    pub fn start(opts: ServerOptions, loader: Loader) -> Result<Server, String> {
        if opts.parallel == 0 {
            return Err("--parallel must be at least 1".into());
        }
        let listener = std::net::TcpListener::bind((opts.host.as_str(), opts.port))
            .map_err(|e| format!("cannot listen on {}:{}: {e}", opts.host, opts.port))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("listener: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (tx, rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("qwen3vl-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| format!("tokio runtime: {e}"))?;
                rt.block_on(serve(listener, opts, loader, rx))
            })
            .map_err(|e| e.to_string())?;
        Ok(Server {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets open requests finish, and waits for the server to end.
    pub fn shutdown(mut self) -> Result<(), String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.join()
    }

    /// Waits until the server ends (SIGTERM / Ctrl-C, or a failed model load).
    pub fn join(mut self) -> Result<(), String> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| "the server thread panicked".to_string())?,
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves until `stop` fires, SIGTERM or Ctrl-C arrives, or the model fails to load.
async fn serve(
    listener: std::net::TcpListener,
    opts: ServerOptions,
    loader: Loader,
    stop: oneshot::Receiver<()>,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let state = Arc::new(AppState {
        opts,
        ready: OnceLock::new(),
        metrics: Metrics::default(),
        in_flight: AtomicUsize::new(0),
        created,
    });
    let app = router(state.clone());
    let (fail_tx, fail_rx) = oneshot::channel::<String>();
    // Load in the background; the port already answers.
    {
        let state = state.clone();
        tokio::task::spawn_blocking(move || match load(&state, loader) {
            Ok(r) => {
                let _ = state.ready.set(r);
            }
            Err(e) => {
                let _ = fail_tx.send(e);
            }
        });
    }
    let failed = Arc::new(OnceLock::<String>::new());
    // Resolves only if the load fails (a successful load drops the sender without a message).
    let load_failed = async move {
        match fail_rx.await {
            Ok(e) => e,
            Err(_) => std::future::pending::<String>().await,
        }
    };
    let shutdown = {
        let failed = failed.clone();
        async move {
            tokio::select! {
                _ = stop => {}
                _ = signal() => {}
                e = load_failed => {
                    let _ = failed.set(e);
                }
            }
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| format!("serving: {e}"))?;
    match failed.get() {
        Some(e) => Err(format!("loading the model: {e}")),
        None => Ok(()),
    }
}

/// SIGTERM or Ctrl-C.
async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Loads the engine and starts the scheduler under the options' limits.
fn load(state: &AppState, loader: Loader) -> Result<Ready, String> {
    let o = &state.opts;
    let engine = Arc::new(loader()?);
    let model_ctx = engine.context_len();
    let context = o.context.unwrap_or(model_ctx).min(model_ctx).max(1);
    let kv_tokens = match o.kv_memory {
        Some(bytes) => SchedulerOptions::kv_tokens_for_bytes(&engine, bytes),
        None => context.saturating_mul(o.parallel),
    };
    if kv_tokens < context.min(256) {
        return Err(format!(
            "--kv-memory holds {kv_tokens} tokens, too few for a useful request (context {context})"
        ));
    }
    let mut so = SchedulerOptions::new(kv_tokens);
    so.max_batch = o.parallel;
    so.prefill_chunk = o.prefill_chunk.max(1);
    so.max_context = context;
    let scheduler = Scheduler::start(engine.clone(), so).map_err(|e| e.to_string())?;
    let limits = Limits {
        max_images: o.max_images,
        max_n: o.parallel,
        context: context.min(kv_tokens),
        ..Limits::default()
    };
    Ok(Ready {
        scheduler,
        engine,
        limits,
        json: OnceLock::new(),
    })
}

fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(chat::tokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .merge(api)
        .fallback(|| async {
            error_response(&ApiError::new(
                404,
                "invalid_request_error",
                "no such route",
            ))
        })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(tower_http::cors::CorsLayer::permissive())
        .with_state(state)
}

/// `Authorization: Bearer KEY` when the server has a key.
async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.opts.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compare all bytes (no early exit on the first difference).
        let ok = given.is_some_and(|g| {
            g.len() == key.len()
                && g.bytes()
                    .zip(key.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !ok {
            st.metrics.count_status(401);
            return error_response(&ApiError::new(
                401,
                "authentication_error",
                "invalid or missing API key: send the header Authorization: Bearer <key>",
            ));
        }
    }
    next.run(req).await
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    match st.ready.get() {
        Some(_) => Json(serde_json::json!({"status": "ok"})).into_response(),
        None => {
            let mut r = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({
                    "status": "loading",
                    "error": {"message": "the model is still loading", "type": "server_error", "code": 503}
                })),
            )
                .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(2));
            r
        }
    }
}

async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    let ready = st.ready.get();
    let text = st.metrics.render(
        ready.map(|r| r.scheduler.load()),
        st.in_flight.load(Ordering::SeqCst),
        ready.is_some(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    let ctx = st.ready.get().map(|r| r.limits.context);
    Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": st.opts.model_name,
            "object": "model",
            "created": st.created,
            "owned_by": "qwen3vl",
            "meta": {"context_length": ctx, "ready": ctx.is_some()},
        }]
    }))
    .into_response()
}

/// Reads a body of at most `limit` bytes (413 with an OpenAI body beyond it).
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // The limit error (http-body-util's LengthLimitError) is somewhere in the source chain.
        let mut over = false;
        let mut cause: Option<&dyn std::error::Error> = Some(&e);
        while let Some(c) = cause {
            over |= c.to_string().contains("length limit");
            cause = c.source();
        }
        if over {
            ApiError::new(
                413,
                "invalid_request_error",
                format!("the request body is over the limit of {limit} bytes"),
            )
        } else {
            ApiError::bad_request(format!("reading the request body: {e}"))
        }
    })
}

/// Seconds since `t`.
pub(crate) fn since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}
