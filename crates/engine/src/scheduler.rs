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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use qwen3vl_model::{KvCache, Logits, RunState, Seq, VisionInput, VisionOutput, VisionRows};
use qwen3vl_processor::{ImageInput, Message};

use crate::generate::{FinishReason, Generator, LoopError, Next};
use crate::request::{History, Prepared};
use crate::sampling::Sampler;
use crate::session::{Engine, EngineError, GenerateParams};
use crate::stream::StreamDecoder;

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

/// Key of each token for prefix matching: the id for text, the image's content hash (and the token's index
/// in the image) with the top bit set for image tokens, so the same placeholders of different images differ.
fn token_keys(
    tokens: &[u32],
    image_token_id: u32,
    merge2: usize,
    vision: &[VisionInput],
) -> Vec<u64> {
    let hashes: Vec<u64> = vision.iter().map(content_hash).collect();
    let mut img = 0usize;
    tokens
        .iter()
        .map(|&t| {
            if t == image_token_id {
                // Rows of image j follow each other; hash + global row index is unique enough per image.
                let h = hashes
                    .get(img_of(img, merge2, vision))
                    .copied()
                    .unwrap_or(0);
                img += 1;
                (1 << 63) | (h.wrapping_add(img as u64) & !(1 << 63))
            } else {
                t as u64
            }
        })
        .collect()
}

/// Which image the `n`-th image token belongs to (t·h·w/merge² tokens per image).
fn img_of(n: usize, merge2: usize, vision: &[VisionInput]) -> usize {
    let mut left = n;
    for (j, v) in vision.iter().enumerate() {
        let k = v.grid_thw.iter().product::<usize>() / merge2.max(1);
        if left < k {
            return j;
        }
        left -= k;
    }
    vision.len()
}

/// FNV-1a over the grid and the pixel bits.
fn content_hash(v: &VisionInput) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u64| {
        h ^= x;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    v.grid_thw.iter().for_each(|&g| eat(g as u64));
    v.pixel_values.iter().for_each(|p| eat(p.to_bits() as u64));
    h
}

/// Bytes of a vision output.
fn vision_bytes(v: &VisionOutput) -> usize {
    4 * (v.embeds.len() + v.deepstack.iter().map(Vec::len).sum::<usize>())
}

/// The features of `images` (in order), each image taken from `cache` by content hash or encoded alone
/// and added to it (least recently used dropped beyond `cap` bytes). Images are independent in the vision
/// tower (attention within each image), so encoding them one at a time gives the same features. Returns
/// the concatenated features and how many images came from the cache.
fn encode_cached(
    model: &qwen3vl_model::Model,
    images: &[VisionInput],
    cache: &mut Vec<(u64, Arc<VisionOutput>)>,
    cap: usize,
) -> Result<(VisionOutput, usize), EngineError> {
    if cap == 0 {
        return Ok((model.encode_images(images)?, 0));
    }
    let mut parts = Vec::with_capacity(images.len());
    let mut hits = 0;
    for im in images {
        let h = content_hash(im);
        let part = match cache.iter().position(|(k, _)| *k == h) {
            Some(i) => {
                hits += 1;
                let e = cache.remove(i);
                cache.push(e.clone());
                e.1
            }
            None => {
                let v = Arc::new(model.encode_images(std::slice::from_ref(im))?);
                if vision_bytes(&v) <= cap {
                    cache.push((h, v.clone()));
                    while cache.iter().map(|(_, v)| vision_bytes(v)).sum::<usize>() > cap {
                        cache.remove(0);
                    }
                }
                v
            }
        };
        parts.push(part);
    }
    if parts.len() == 1 {
        return Ok(((*parts[0]).clone(), hits));
    }
    let mut out = VisionOutput {
        embeds: parts
            .iter()
            .flat_map(|p| p.embeds.iter().copied())
            .collect(),
        deepstack: Vec::new(),
    };
    let levels = parts.first().map_or(0, |p| p.deepstack.len());
    for l in 0..levels {
        out.deepstack.push(
            parts
                .iter()
                .flat_map(|p| p.deepstack[l].iter().copied())
                .collect(),
        );
    }
    Ok((out, hits))
}

/// A sequence in the batch.
struct Running {
    job: Job,
    keys: Vec<u64>,
    cache: KvCache,
    gen: Generator,
    vision: Option<VisionOutput>,
    /// Prompt tokens in the cache, image tokens among them.
    done: usize,
    image_rows: usize,
    next_id: u32,
    next_pos: i64,
    stats: SeqStats,
    first_token: Option<Instant>,
}

/// A finished sequence's KV, kept for reuse.
struct Kept {
    keys: Vec<u64>,
    cache: KvCache,
    last_used: u64,
}

struct Worker<'e> {
    engine: &'e Engine,
    opts: SchedulerOptions,
    waiting: VecDeque<Job>,
    running: Vec<Running>,
    kept: Vec<Kept>,
    /// (content hash, features) of recently encoded images, most recent last
    vision_cache: Vec<(u64, Arc<VisionOutput>)>,
    state: RunState,
    clock: u64,
}

impl<'e> Worker<'e> {
    fn new(engine: &'e Engine, opts: SchedulerOptions) -> Worker<'e> {
        Worker {
            engine,
            opts,
            waiting: VecDeque::new(),
            running: Vec::new(),
            kept: Vec::new(),
            vision_cache: Vec::new(),
            state: RunState::new(),
            clock: 0,
        }
    }

    fn used(&self) -> usize {
        self.running
            .iter()
            .map(|r| r.cache.max_len())
            .sum::<usize>()
            + self.kept.iter().map(|k| k.cache.max_len()).sum::<usize>()
    }

    fn run(mut self, rx: Receiver<Job>) {
        let mut open = true;
        loop {
            // 1. New requests: wait for one when idle, otherwise take what has arrived.
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(j) => self.waiting.push_back(j),
                    Err(_) => return,
                }
            }
            while open {
                match rx.try_recv() {
                    Ok(j) => self.waiting.push_back(j),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            // 2. Cancelled requests leave; waiting ones join while the budget allows.
            self.running
                .retain(|r| !r.job.cancel.load(Ordering::Relaxed));
            self.waiting.retain(|j| !j.cancel.load(Ordering::Relaxed));
            self.admit();
            if self.running.is_empty() {
                if !open && self.waiting.is_empty() {
                    return;
                }
                if !self.waiting.is_empty() {
                    // Nothing runs and the head still does not fit: only possible if kept KV blocks it,
                    // and admit() evicts that; refuse rather than spin.
                    let j = self.waiting.pop_front().expect("not empty");
                    let _ = j.events.send(Event::Error(format!(
                        "the request needs {} KV tokens, over the budget of {}",
                        j.prepared.kv_tokens(),
                        self.opts.kv_tokens
                    )));
                }
                continue;
            }
            // 3. One step.
            self.step();
        }
    }

    /// Moves waiting requests into the batch, in order, while their KV reservation fits the budget
    /// (evicting kept prefixes if needed).
    fn admit(&mut self) {
        while self.running.len() < self.opts.max_batch {
            let Some(job) = self.waiting.front() else {
                return;
            };
            let need = job.prepared.kv_tokens();
            let cfg = self.engine.model.config();
            let merge = cfg.vision.spatial_merge_size;
            let keys = token_keys(
                &job.prepared.tokens,
                cfg.image_token_id,
                merge * merge,
                &job.prepared.vision,
            );
            // The longest kept prefix (at least one token must still run, for the logits).
            let best = self
                .kept
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let n = k.keys.iter().zip(&keys).take_while(|(a, b)| a == b).count();
                    (i, n.min(keys.len() - 1).min(k.cache.len()))
                })
                .max_by_key(|&(_, n)| n)
                .filter(|&(_, n)| n > 0);
            // Evict least recently used kept sequences (not the one to reuse) until the request fits.
            while self.used() + need > self.opts.kv_tokens {
                let victim = self
                    .kept
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| Some(*i) != best.map(|b| b.0) || self.kept.len() == 1)
                    .min_by_key(|(_, k)| k.last_used)
                    .map(|(i, _)| i);
                match victim {
                    Some(i) => {
                        self.kept.swap_remove(i);
                    }
                    None => break,
                }
            }
            // The reused entry may have moved (swap_remove) or gone: look it up again by content.
            let best = best.and_then(|(_, n)| {
                self.kept
                    .iter()
                    .position(|k| k.keys.len() >= n && k.keys[..n] == keys[..n])
                    .map(|i| (i, n))
            });
            if self.used() + need > self.opts.kv_tokens {
                if self.running.is_empty() && self.kept.is_empty() {
                    // Cannot happen (submit checks the budget), but never wait forever.
                    let job = self.waiting.pop_front().expect("front exists");
                    let _ = job.events.send(Event::Error(format!(
                        "the request needs {need} KV tokens, over the budget of {}",
                        self.opts.kv_tokens
                    )));
                    continue;
                }
                return;
            }
            let job = self.waiting.pop_front().expect("front exists");
            let mut cache = KvCache::new(&self.engine.model.config().text, need);
            let mut done = 0;
            if let Some((i, n)) = best {
                if cache.copy_prefix_from(&self.kept[i].cache, n).is_ok() {
                    done = n;
                    self.clock += 1;
                    self.kept[i].last_used = self.clock;
                }
            }
            match Sampler::new(job.params.sampling.clone()) {
                Ok(sampler) => {
                    let r = self.start(job, keys, cache, done, sampler);
                    self.running.push(r);
                }
                Err(e) => {
                    let _ = job.events.send(Event::Error(e.to_string()));
                }
            }
        }
    }

    fn start(
        &self,
        job: Job,
        keys: Vec<u64>,
        cache: KvCache,
        done: usize,
        mut sampler: Sampler,
    ) -> Running {
        let engine = self.engine;
        sampler.add_prompt_tokens(&job.prepared.tokens);
        let gen = Generator::new(
            sampler,
            StreamDecoder::new(engine.token_bytes.clone(), true),
            &engine.stop_config(&job.params, job.prepared.max_tokens),
        );
        let img = engine.model.config().image_token_id;
        let image_rows = job.prepared.tokens[..done]
            .iter()
            .filter(|&&t| t == img)
            .count();
        let stats = SeqStats {
            prompt_tokens: job.prepared.tokens.len(),
            cached_tokens: done,
            ..Default::default()
        };
        Running {
            job,
            keys,
            cache,
            gen,
            vision: None,
            done,
            image_rows,
            next_id: 0,
            next_pos: 0,
            stats,
            first_token: None,
        }
    }

    /// One forward pass: a token of every decoding sequence and one prefill chunk.
    fn step(&mut self) {
        let engine = self.engine;
        let model = &engine.model;
        let img = model.config().image_token_id;
        // The first sequence still prefilling gets this step's chunk; its images are encoded first (unless
        // every image token is already in its cache).
        let pre = self
            .running
            .iter()
            .position(|r| r.done < r.job.prepared.tokens.len());
        if let Some(i) = pre {
            let r = &mut self.running[i];
            let rest_has_images = r.job.prepared.tokens[r.done..].contains(&img);
            if r.vision.is_none() && rest_has_images {
                let (vision_cache, cap) = (&mut self.vision_cache, self.opts.vision_cache_bytes);
                match encode_cached(model, &r.job.prepared.vision, vision_cache, cap) {
                    Ok((v, cached)) => {
                        r.stats.image_tokens = v.n_tokens(model.config().text.hidden_size);
                        r.stats.cached_images = cached;
                        r.vision = Some(v);
                    }
                    Err(e) => {
                        let r = self.running.remove(i);
                        let _ = r.job.events.send(Event::Error(e.to_string()));
                        return;
                    }
                }
            }
        }
        let chunk = self.opts.prefill_chunk;
        let mut seqs: Vec<Seq> = Vec::with_capacity(self.running.len());
        let mut owners: Vec<usize> = Vec::with_capacity(self.running.len());
        let mut advanced: Option<(usize, usize, usize)> = None;
        for (i, r) in self.running.iter_mut().enumerate() {
            let p = &r.job.prepared;
            if r.done < p.tokens.len() {
                if Some(i) != pre {
                    continue;
                }
                let end = (r.done + chunk).min(p.tokens.len());
                let ids = &p.tokens[r.done..end];
                let last = end == p.tokens.len();
                let n_img = ids.iter().filter(|&&t| t == img).count();
                seqs.push(Seq {
                    ids,
                    positions: p.positions.slice(r.done, end),
                    vision: r.vision.as_ref().map(|features| VisionRows {
                        features,
                        first: r.image_rows,
                    }),
                    cache: &mut r.cache,
                    logits: if last { Logits::Last } else { Logits::None },
                });
                advanced = Some((i, end, n_img));
                if last {
                    owners.push(i);
                }
            } else {
                seqs.push(Seq::decode(&r.next_id, &r.next_pos, &mut r.cache));
                owners.push(i);
            }
        }
        let result = model.forward_batch(&mut seqs, &mut self.state);
        drop(seqs);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // A failed pass fails the sequences in it (their caches may hold partial rows).
                for r in self.running.drain(..) {
                    let _ = r.job.events.send(Event::Error(e.to_string()));
                }
                return;
            }
        };
        if let Some((i, end, n_img)) = advanced {
            let r = &mut self.running[i];
            r.done = end;
            r.image_rows += n_img;
            if end == r.job.prepared.tokens.len() {
                r.vision = None;
            }
        }
        // 4. Sample each sequence's next token; finished ones leave.
        let v = model.vocab_size();
        let mut finished: Vec<usize> = Vec::new();
        for (row, &i) in logits.chunks_exact(v).zip(&owners) {
            let r = &mut self.running[i];
            let now = Instant::now();
            if r.first_token.is_none() {
                r.first_token = Some(now);
                r.stats.ttft_seconds = (now - r.job.submitted).as_secs_f64();
            }
            let events = &r.job.events;
            let pushed = r.gen.push(row, &mut |s: &str| {
                events.send(Event::Text(s.to_string())).map_err(|_| ())
            });
            match pushed {
                Ok(Next::Feed(id)) => {
                    r.next_id = id;
                    r.next_pos = r.cache.len() as i64 + r.job.prepared.rope_delta;
                }
                Ok(Next::Done) => finished.push(i),
                Err(LoopError::Step(())) => {
                    // The receiver is gone: cancelled.
                    r.job.cancel.store(true, Ordering::Relaxed);
                }
                Err(LoopError::Sampling(e)) => {
                    let _ = events.send(Event::Error(e.to_string()));
                    r.job.cancel.store(true, Ordering::Relaxed);
                }
            }
        }
        for &i in finished.iter().rev() {
            let mut r = self.running.swap_remove(i);
            let out = r.gen.output();
            r.stats.generated_tokens = out.tokens.len();
            r.stats.decode_seconds = r.first_token.map_or(0.0, |t| t.elapsed().as_secs_f64());
            let out = r.gen.into_output();
            let _ = r.job.events.send(Event::Done {
                tokens: out.tokens.clone(),
                text: out.text,
                finish: out.finish,
                stats: r.stats,
            });
            if self.opts.prefix_cache {
                // Keep the rows of the prompt and of the answer tokens fed back (a chat client resends the
                // answer as history), in a cache of just that size.
                let n = r.cache.len();
                let fed = n.saturating_sub(r.keys.len());
                r.keys
                    .extend(out.tokens.iter().take(fed).map(|&t| t as u64));
                r.keys.truncate(n);
                let mut kept = KvCache::new(&model.config().text, n);
                if kept.copy_prefix_from(&r.cache, n).is_ok() {
                    self.clock += 1;
                    self.kept.push(Kept {
                        keys: r.keys,
                        cache: kept,
                        last_used: self.clock,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tokens_are_keyed_by_content() {
        let im = |x: f32| VisionInput {
            pixel_values: vec![x; 16 * 4],
            grid_thw: [1, 4, 4],
        };
        let toks = [1u32, 9, 9, 9, 9, 2];
        let a = token_keys(&toks, 9, 4, &[im(0.5)]);
        let b = token_keys(&toks, 9, 4, &[im(0.25)]);
        assert_eq!(a[0], 1);
        assert_eq!(a[5], 2);
        assert_eq!(a, token_keys(&toks, 9, 4, &[im(0.5)]));
        assert_ne!(a[1..5], b[1..5]);
        assert!(a[1..5].iter().all(|k| k >> 63 == 1));
        assert_eq!(img_of(3, 4, &[im(0.5), im(0.5)]), 0);
        assert_eq!(img_of(4, 4, &[im(0.5), im(0.5)]), 1);
    }
}
