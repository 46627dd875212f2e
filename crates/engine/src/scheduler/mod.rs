//! Many conversations on one loaded model: continuous batching.
//!
//! A [`Scheduler`] owns a worker thread that runs the model. [`Scheduler::submit`] prepares a request (the
//! one request path, in the caller's thread) and returns a [`RequestHandle`]: a stream of [`Event`]s and a
//! cancel switch. Each step of the worker is one [`qwen3vl_model::Model::forward_batch`] pass holding
//!
//! - one token of every running sequence (decode reads the weights once for all of them), and
//! - at most one chunk of a new sequence's prompt (`prefill_chunk` tokens), so running streams are not
//!   stalled for a whole prefill.
//!
//! Sequences join and leave between steps. KV memory comes from a budget of `kv_tokens` shared by the
//! sequences: a request reserves its prompt plus its `max_tokens`; one that can never fit is refused at
//! submit, one that does not fit now waits (in order) until running sequences finish.
//!
//! Prefix cache: a finished sequence's keys and values are kept (within the budget, least recently used
//! evicted first) with the key of each token (image tokens keyed by the image's content hash). A new request
//! whose tokens start with a kept sequence's copies those rows and runs only the rest — a chat client that
//! resends the whole history each turn pays only for the new turn, and an image whose tokens are all in the
//! reused prefix is not encoded again.
mod cache;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use qwen3vl_processor::{ImageInput, Message};

use crate::generate::FinishReason;
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
    /// Prompt tokens prefilled per step, between decode steps.
    pub prefill_chunk: usize,
    /// Keep finished sequences' KV for reuse by requests sharing their prefix.
    pub prefix_cache: bool,
    /// Bytes of vision-tower outputs kept by image content hash (0 = none): an image seen again (after
    /// other text, so the prefix cache does not cover it) is not encoded again.
    pub vision_cache_bytes: usize,
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

/// Timings of one sequence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeqStats {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
    pub image_tokens: usize,
    /// Images whose features came from the vision cache (not encoded).
    pub cached_images: usize,
    /// Submit to first token, seconds (waiting, vision, prefill).
    pub ttft_seconds: f64,
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

    /// Stop the request: its sequence leaves the batch at the next step and frees its KV memory.
    /// (Dropping the handle does the same.)
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Waits for the end of the request, discarding the streamed pieces.
    pub fn wait(self) -> Result<Completion, EngineError> {
        while let Some(e) = self.recv() {
            match e {
                Event::Text(_) => {}
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
        let worker = {
            let engine = engine.clone();
            std::thread::Builder::new()
                .name("qwen3vl-scheduler".into())
                .spawn(move || Worker::new(&engine, opts).run(rx))
                .map_err(EngineError::Output)?
        };
        Ok(Scheduler {
            inner: Arc::new(Inner {
                engine,
                opts,
                tx: Mutex::new(tx),
                worker: Mutex::new(Some(worker)),
            }),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Prepares `req` (tokenized here, in the caller's thread) and queues it. Refused at once, with the
    /// numbers, when it could never fit: its prompt plus `max_tokens` over the context or over the KV budget.
    /// `max_tokens` unset takes as much as fits in both.
    pub fn submit(&self, req: Request) -> Result<RequestHandle, EngineError> {
        let engine = &self.inner.engine;
        let budget = self.inner.opts.kv_tokens;
        let capacity = engine.context_len().min(budget);
        let prepared = engine
            .prepare(
                &req.messages,
                req.images,
                History::default(),
                req.params.max_tokens,
                capacity,
            )
            .map_err(|e| match e {
                EngineError::Input(m) if capacity == budget && budget < engine.context_len() => {
                    EngineError::Input(format!("{m} (the KV memory budget is {budget} tokens)"))
                }
                e => e,
            })?;
        let (events_tx, events) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job {
            prepared,
            params: req.params,
            events: events_tx,
            cancel: cancel.clone(),
            submitted: Instant::now(),
        };
        self.inner
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| EngineError::Input("the scheduler has stopped".into()))?;
        Ok(RequestHandle { events, cancel })
    }
}
