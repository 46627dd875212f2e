//! Many conversations on one loaded model: continuous batching.
//!
//! A [`Scheduler`] owns a worker thread that runs the model. [`Scheduler::submit`] prepares a request (the
//! one request path, in the caller's thread) and returns a [`RequestHandle`]: a stream of [`Event`]s and a
//! cancel switch. Each step of the worker is one [`qwen3vl_model::Model::forward_batch`] pass holding
//!
//! - one token of every running sequence (decode reads the weights once for all of them), and
//! - at most `prefill_chunk` prompt tokens of new sequences (the first one's chunk, then the next ones'
//!   while the budget lasts), so running streams are not stalled for a whole prefill and a burst of short
//!   requests is prefilled in one wide pass (the matmuls then run on many rows at once).
//!
//! Sequences join and leave between steps. KV memory comes from a budget of `kv_tokens` shared by the
//! sequences: a request reserves its prompt plus its `max_tokens`; one that can never fit is refused at
//! submit, one that does not fit now waits (in order) until running sequences finish.
//!
//! Prefix cache: a finished sequence's keys and values are kept (within the budget, least recently used
//! evicted first) with the key of each token (image and video tokens keyed by their content hash). A new request
//! whose tokens start with a kept sequence's copies those rows and runs only the rest — a chat client that
//! resends the whole history each turn pays only for the new turn, and an image whose tokens are all in the
//! reused prefix is not encoded again.
mod cache;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use qwen3vl_processor::{ImageInput, Message, VideoInput};

use crate::constraint::ConstraintFactory;
use crate::generate::{FinishReason, TokenLogprob};
use crate::request::{History, Prepared};
use crate::session::{Engine, EngineError, GenerateParams};
use worker::Worker;

/// Limits of a [`Scheduler`].
#[derive(Clone, Copy, Debug)]
pub struct SchedulerOptions {
    /// KV cache budget shared by all sequences (and the prefix cache), in tokens.
    pub kv_tokens: usize,
    /// Most sequences running at once.
    pub max_batch: usize,
    /// Prompt tokens prefilled per step (shared by the sequences prefilling), between decode steps.
    pub prefill_chunk: usize,
    /// Keep finished sequences' KV for reuse by requests sharing their prefix.
    pub prefix_cache: bool,
    /// Bytes of vision-tower outputs kept by image content hash (0 = none): an image seen again (after
    /// other text, so the prefix cache does not cover it) is not encoded again.
    pub vision_cache_bytes: usize,
    /// Longest sequence (prompt and answer) a request may have, in tokens; 0 = the model's context.
    pub max_context: usize,
}

impl SchedulerOptions {
    /// The budget in tokens that `bytes` of KV memory hold for `engine`'s model (f32 K and V, every
    /// layer): what a `--kv-memory` option turns into `kv_tokens`.
    pub fn kv_tokens_for_bytes(engine: &Engine, bytes: u64) -> usize {
        let per_token = qwen3vl_model::KvCache::bytes_for(&engine.model.config().text, 1).max(1);
        usize::try_from(bytes / per_token).unwrap_or(usize::MAX)
    }

    /// `kv_tokens` of budget, 16 sequences, chunks of 256 tokens, prefix cache on, 256 MiB of vision
    /// features cached.
    pub fn new(kv_tokens: usize) -> SchedulerOptions {
        SchedulerOptions {
            kv_tokens,
            max_batch: 16,
            prefill_chunk: 256,
            prefix_cache: true,
            vision_cache_bytes: 256 << 20,
            max_context: 0,
        }
    }
}

/// One request: messages (their image items' pixels in `images`, in order) and decoding settings.
#[derive(Clone, Debug)]
pub struct Request {
    pub messages: Vec<Message>,
    pub images: Vec<ImageInput>,
    pub params: GenerateParams,
}

/// Per-request options beyond the decoding settings: several answers, log-probabilities, constrained
/// output.
#[derive(Clone, Default)]
pub struct SeqOptions {
    /// Answers sampled for the prompt (0 and 1 both mean one). They share the prompt's prefill: the
    /// first sequence prefills, the others start from a copy of its KV rows, each with its own generator
    /// (seed, seed + 1, ...).
    pub n: usize,
    /// Send an [`Event::Token`] with the log-probability of each chosen token and this many alternatives.
    pub logprobs: Option<usize>,
    /// Restrict the tokens each sequence may choose (a fresh constraint per sequence).
    pub constraint: Option<Arc<dyn ConstraintFactory>>,
}

impl std::fmt::Debug for SeqOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqOptions")
            .field("n", &self.n)
            .field("logprobs", &self.logprobs)
            .field("constraint", &self.constraint.is_some())
            .finish()
    }
}

/// What the worker is doing, for monitoring (`/metrics`) and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerLoad {
    /// Sequences in the batch.
    pub running: usize,
    /// Requests queued behind them (not yet admitted).
    pub waiting: usize,
    /// Sequences removed because their caller cancelled or went away, since the start.
    pub cancelled: u64,
    /// Sequences that finished (EOS, stop, length), since the start.
    pub finished: u64,
    /// Model steps run since the start.
    pub steps: u64,
}

#[derive(Default)]
struct Counters {
    running: AtomicUsize,
    waiting: AtomicUsize,
    cancelled: AtomicU64,
    finished: AtomicU64,
    steps: AtomicU64,
}

/// Timings of one sequence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeqStats {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
    pub image_tokens: usize,
    /// Images whose features came from the vision cache (not encoded).
    pub cached_images: usize,
    /// Scheduler steps its images' vision encoding was spread over (one block per step while other
    /// sequences decode; 1 when it ran whole; 0 without images to encode).
    pub vision_steps: usize,
    /// Submit to first token, seconds (waiting, vision, prefill).
    pub ttft_seconds: f64,
    /// Submit to the first step that worked on this sequence (vision or prefill), seconds: the part of
    /// `ttft_seconds` spent waiting behind other sequences (for KV budget, a batch slot or their prefill).
    pub queue_seconds: f64,
    /// Tokens generated (including a final EOS id).
    pub generated_tokens: usize,
    /// First token to the last, seconds.
    pub decode_seconds: f64,
}

/// What a request's stream delivers, in order: text pieces, then one `Done` or `Error`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A whole-UTF-8 piece of the answer.
    Text(String),
    /// The log-probability of a chosen token (only with [`SeqOptions::logprobs`]); sent before the text
    /// that token completes.
    Token(TokenLogprob),
    Done {
        tokens: Vec<u32>,
        text: String,
        finish: FinishReason,
        stats: SeqStats,
    },
    /// The request failed or was cancelled (the message says why).
    Error(String),
}

/// The caller's end of a submitted request.
pub struct RequestHandle {
    events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
}

/// A finished request (see [`RequestHandle::wait`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub stats: SeqStats,
}

impl RequestHandle {
    /// The next event; None once the stream has ended.
    pub fn recv(&self) -> Option<Event> {
        self.events.recv().ok()
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        self.events.recv_timeout(timeout)
    }

    /// A switch that cancels this request from elsewhere (e.g. when an HTTP client goes away).
    pub fn cancel_token(&self) -> CancelToken {
        CancelToken(self.cancel.clone())
    }

    /// Stop the request: its sequence leaves the batch at the next step and frees its KV memory.
    /// (Dropping the handle does the same.)
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Waits for the end of the request, discarding the streamed pieces.
    pub fn wait(self) -> Result<Completion, EngineError> {
        while let Some(e) = self.recv() {
            match e {
                Event::Text(_) | Event::Token(_) => {}
                Event::Done {
                    tokens,
                    text,
                    finish,
                    stats,
                } => {
                    return Ok(Completion {
                        tokens,
                        text,
                        finish,
                        stats,
                    })
                }
                Event::Error(m) => return Err(EngineError::Input(m)),
            }
        }
        Err(EngineError::Input(
            "the scheduler stopped before the request finished".into(),
        ))
    }
}

/// Cancels a request (see [`RequestHandle::cancel_token`]).
#[derive(Clone, Debug)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        // A caller that goes away frees the sequence's slot at the next step, text or not.
        self.cancel();
    }
}

/// A thread-safe handle on the worker running the model (clone it freely; the worker stops when the last
/// clone is dropped).
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<Engine>,
    opts: SchedulerOptions,
    tx: Mutex<Sender<Job>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the worker once its sequences are done or cancelled.
        let (dead, _) = mpsc::channel();
        *self.tx.get_mut().unwrap_or_else(|e| e.into_inner()) = dead;
        if let Some(w) = self
            .worker
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = w.join();
        }
    }
}

/// A prepared request on its way to the worker.
struct Job {
    prepared: Prepared,
    params: GenerateParams,
    events: Sender<Event>,
    cancel: Arc<AtomicBool>,
    submitted: Instant,
    opts: SeqOptions,
    /// The other answers of an `n` > 1 request, started from this one's KV after its prefill.
    forks: Vec<Fork>,
}

/// The caller's channel of one more answer to a job's prompt.
struct Fork {
    events: Sender<Event>,
    cancel: Arc<AtomicBool>,
}

impl Job {
    /// Every answer of this job has been cancelled.
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
            && self.forks.iter().all(|f| f.cancel.load(Ordering::Relaxed))
    }

    /// Sequences this job becomes.
    fn width(&self) -> usize {
        1 + self.forks.len()
    }
}

impl Scheduler {
    /// Starts the worker on `engine`.
    pub fn start(engine: Arc<Engine>, opts: SchedulerOptions) -> Result<Scheduler, EngineError> {
        if opts.kv_tokens == 0 || opts.max_batch == 0 || opts.prefill_chunk == 0 {
            return Err(EngineError::Input(format!(
                "scheduler: kv_tokens ({}), max_batch ({}) and prefill_chunk ({}) must be at least 1",
                opts.kv_tokens, opts.max_batch, opts.prefill_chunk
            )));
        }
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let worker = {
            let engine = engine.clone();
            let counters = counters.clone();
            std::thread::Builder::new()
                .name("qwen3vl-scheduler".into())
                .spawn(move || Worker::new(&engine, opts, counters).run(rx))
                .map_err(EngineError::Output)?
        };
        Ok(Scheduler {
            inner: Arc::new(Inner {
                engine,
                opts,
                tx: Mutex::new(tx),
                worker: Mutex::new(Some(worker)),
                counters,
            }),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn options(&self) -> &SchedulerOptions {
        &self.inner.opts
    }

    /// Running and waiting sequences and totals (updated by the worker at every step).
    pub fn load(&self) -> SchedulerLoad {
        let c = &self.inner.counters;
        SchedulerLoad {
            running: c.running.load(Ordering::Relaxed),
            waiting: c.waiting.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            finished: c.finished.load(Ordering::Relaxed),
            steps: c.steps.load(Ordering::Relaxed),
        }
    }

    /// Prepares `req` (tokenized here, in the caller's thread) and queues it. Refused at once, with the
    /// numbers, when it could never fit: its prompt plus `max_tokens` over the context or over the KV budget.
    /// `max_tokens` unset takes as much as fits in both.
    pub fn submit(&self, req: Request) -> Result<RequestHandle, EngineError> {
        let mut h = self.submit_with(req, SeqOptions::default())?;
        Ok(h.pop().expect("one handle per answer"))
    }

    /// [`Scheduler::submit`] with `opts`: one handle per answer (`opts.n` of them). The request is refused
    /// at once when its `n` sequences could never run together (over `max_batch`, or their KV over the
    /// budget).
    pub fn submit_with(
        &self,
        req: Request,
        opts: SeqOptions,
    ) -> Result<Vec<RequestHandle>, EngineError> {
        self.submit_media(req, Vec::new(), opts)
    }

    /// [`Scheduler::submit_with`] for messages with video items: `videos` are their preprocessed videos,
    /// in order (see [`Engine::load_video_bytes`]). Video tokens count against the context and the KV
    /// budget like image tokens, and the prefix and vision caches key them by content the same way.
    pub fn submit_media(
        &self,
        req: Request,
        videos: Vec<VideoInput>,
        opts: SeqOptions,
    ) -> Result<Vec<RequestHandle>, EngineError> {
        let n = opts.n.max(1);
        let max_batch = self.inner.opts.max_batch;
        if n > max_batch {
            return Err(EngineError::Input(format!(
                "n = {n} answers is over the {max_batch} sequences that run at once"
            )));
        }
        let engine = &self.inner.engine;
        let budget = self.inner.opts.kv_tokens;
        let context = match self.inner.opts.max_context {
            0 => engine.context_len(),
            c => c.min(engine.context_len()),
        };
        let capacity = context.min(budget);
        let prepared = engine
            .prepare_media(
                &req.messages,
                req.images,
                videos,
                History::default(),
                req.params.max_tokens,
                capacity,
            )
            .map_err(|e| match e {
                EngineError::Input(m) if capacity == budget && budget < context => {
                    EngineError::Input(format!("{m} (the KV memory budget is {budget} tokens)"))
                }
                e => e,
            })?;
        if prepared.kv_tokens().saturating_mul(n) > budget {
            return Err(EngineError::Input(format!(
                "n = {n} answers of {} tokens each (prompt and max_tokens) need {} KV tokens, over the \
                 budget of {budget}",
                prepared.kv_tokens(),
                prepared.kv_tokens().saturating_mul(n)
            )));
        }
        let mut handles = Vec::with_capacity(n);
        let mut forks = Vec::with_capacity(n - 1);
        let mut first = None;
        for k in 0..n {
            let (events_tx, events) = mpsc::channel();
            let cancel = Arc::new(AtomicBool::new(false));
            handles.push(RequestHandle {
                events,
                cancel: cancel.clone(),
            });
            if k == 0 {
                first = Some((events_tx, cancel));
            } else {
                forks.push(Fork {
                    events: events_tx,
                    cancel,
                });
            }
        }
        let (events_tx, cancel) = first.expect("n >= 1");
        let job = Job {
            prepared,
            params: req.params,
            events: events_tx,
            cancel,
            submitted: Instant::now(),
            opts,
            forks,
        };
        self.inner
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| EngineError::Input("the scheduler has stopped".into()))?;
        Ok(handles)
    }
}
