//! The worker thread: admission under the KV budget (with prefix reuse), and the steps of continuous
//! batching.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use qwen3vl_model::{KvCache, Logits, RunState, Seq, VisionOutput, VisionRows};

use super::cache::{token_keys, VisionJob};
use super::{Counters, Event, Job, SchedulerOptions, SeqStats};
use crate::generate::{Generator, LoopError, Next};
use crate::sampling::Sampler;
use crate::session::Engine;
use crate::stream::StreamDecoder;

/// Vision blocks run per scheduler step while other sequences decode (one block of a 640×480 image on
/// the 2B model costs about as much as a decode step).
const VISION_BLOCKS_PER_STEP: usize = 1;

/// A sequence in the batch.
struct Running {
    job: Job,
    keys: Vec<u64>,
    cache: KvCache,
    gen: Generator,
    vision: Option<VisionOutput>,
    /// Its images' encoding while in progress.
    vision_job: Option<VisionJob>,
    /// Prompt tokens in the cache, visual (image and video) tokens among them.
    done: usize,
    image_rows: usize,
    /// When a step first worked on this sequence (the end of its wait in the queue).
    started: Option<Instant>,
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

pub(super) struct Worker<'e> {
    engine: &'e Engine,
    opts: SchedulerOptions,
    waiting: VecDeque<Job>,
    running: Vec<Running>,
    kept: Vec<Kept>,
    /// (content hash, features) of recently encoded images, most recent last
    vision_cache: Vec<(u64, Arc<VisionOutput>)>,
    state: RunState,
    clock: u64,
    counters: Arc<Counters>,
}

impl<'e> Worker<'e> {
    pub(super) fn new(
        engine: &'e Engine,
        opts: SchedulerOptions,
        counters: Arc<Counters>,
    ) -> Worker<'e> {
        Worker {
            engine,
            opts,
            waiting: VecDeque::new(),
            running: Vec::new(),
            kept: Vec::new(),
            vision_cache: Vec::new(),
            state: RunState::new(),
            clock: 0,
            counters,
        }
    }

    /// KV rows reserved: running sequences (and the answers they will fork) and kept prefixes.
    fn used(&self) -> usize {
        self.running
            .iter()
            .map(|r| r.cache.max_len() * r.job.width())
            .sum::<usize>()
            + self.kept.iter().map(|k| k.cache.max_len()).sum::<usize>()
    }

    pub(super) fn run(mut self, rx: Receiver<Job>) {
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
            let before = self.running.len() + self.waiting.len();
            self.running.retain(|r| !r.job.cancelled());
            self.waiting.retain(|j| !j.cancelled());
            let gone = before - self.running.len() - self.waiting.len();
            self.counters
                .cancelled
                .fetch_add(gone as u64, Ordering::Relaxed);
            self.admit();
            self.publish();
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
            self.counters.steps.fetch_add(1, Ordering::Relaxed);
            self.publish();
        }
    }

    fn publish(&self) {
        let c = &self.counters;
        c.running.store(self.running.len(), Ordering::Relaxed);
        c.waiting
            .store(self.waiting.iter().map(Job::width).sum(), Ordering::Relaxed);
    }

    /// Moves waiting requests into the batch, in order, while their KV reservation fits the budget
    /// (evicting kept prefixes if needed).
    fn admit(&mut self) {
        loop {
            let Some(job) = self.waiting.front() else {
                return;
            };
            let slots: usize = self.running.iter().map(|r| r.job.width()).sum();
            if slots + job.width() > self.opts.max_batch {
                return;
            }
            let need = job.prepared.kv_tokens() * job.width();
            let cfg = self.engine.model.config();
            let merge = cfg.vision.spatial_merge_size;
            let keys = token_keys(
                &job.prepared.tokens,
                [cfg.image_token_id, cfg.video_token_id],
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
            let mut cache =
                KvCache::new(&self.engine.model.config().text, job.prepared.kv_tokens());
            let mut done = 0;
            if let Some((i, n)) = best {
                if cache.copy_prefix_from(&self.kept[i].cache, n).is_ok() {
                    done = n;
                    self.clock += 1;
                    self.kept[i].last_used = self.clock;
                }
            }
            match generator(self.engine, &job, job.params.sampling.seed) {
                Ok(gen) => {
                    let r = self.start(job, keys, cache, done, gen);
                    self.running.push(r);
                }
                Err(e) => {
                    for f in &job.forks {
                        let _ = f.events.send(Event::Error(e.clone()));
                    }
                    let _ = job.events.send(Event::Error(e));
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
        gen: Generator,
    ) -> Running {
        let engine = self.engine;
        let cfg = engine.model.config();
        let visual = [cfg.image_token_id, cfg.video_token_id];
        let image_rows = job.prepared.tokens[..done]
            .iter()
            .filter(|t| visual.contains(t))
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
            vision_job: None,
            done,
            image_rows,
            started: None,
            next_id: 0,
            next_pos: 0,
            stats,
            first_token: None,
        }
    }

    /// One forward pass: a token of every decoding sequence and up to `prefill_chunk` prompt tokens of the
    /// sequences still prefilling (the first one's, then the next ones' while the budget lasts: a burst of
    /// new requests is prefilled in a few wide passes, not one pass each).
    fn step(&mut self) {
        let engine = self.engine;
        let model = &engine.model;
        let visual = [model.config().image_token_id, model.config().video_token_id];
        // The first sequence still prefilling gets this step's chunk; its images and videos are encoded
        // first (unless every visual token is already in its cache).
        let pre = self
            .running
            .iter()
            .position(|r| r.done < r.job.prepared.tokens.len());
        let mut pre = pre;
        if let Some(i) = pre {
            // While other sequences decode, the vision tower runs a few blocks per step (their tokens keep
            // coming); alone, it runs whole.
            let others_decode = self
                .running
                .iter()
                .enumerate()
                .any(|(j, s)| j != i && s.done >= s.job.prepared.tokens.len());
            let r = &mut self.running[i];
            if r.started.is_none() {
                let now = Instant::now();
                r.started = Some(now);
                r.stats.queue_seconds = (now - r.job.submitted).as_secs_f64();
            }
            let rest_has_images = r.job.prepared.tokens[r.done..]
                .iter()
                .any(|t| visual.contains(t));
            if r.vision.is_none() && rest_has_images {
                let (vision_cache, cap) = (&mut self.vision_cache, self.opts.vision_cache_bytes);
                let images = &r.job.prepared.vision;
                let job = r
                    .vision_job
                    .get_or_insert_with(|| VisionJob::new(images, vision_cache, cap));
                let blocks = if others_decode {
                    VISION_BLOCKS_PER_STEP
                } else {
                    usize::MAX
                };
                match job.advance(model, images, vision_cache, cap, blocks) {
                    Ok(Some((v, cached))) => {
                        r.stats.image_tokens = v.n_tokens(model.config().text.hidden_size);
                        r.stats.cached_images = cached;
                        r.stats.vision_steps = job.calls;
                        r.vision = Some(v);
                        r.vision_job = None;
                    }
                    // not yet: this step decodes the others only
                    Ok(None) => pre = None,
                    Err(e) => {
                        let r = self.running.remove(i);
                        let _ = r.job.events.send(Event::Error(e.to_string()));
                        return;
                    }
                }
            }
        }
        let mut budget = self.opts.prefill_chunk;
        let mut seqs: Vec<Seq> = Vec::with_capacity(self.running.len());
        let mut owners: Vec<usize> = Vec::with_capacity(self.running.len());
        // (sequence, prompt tokens in its cache after this step, visual tokens among this step's)
        let mut advanced: Vec<(usize, usize, usize)> = Vec::new();
        for (i, r) in self.running.iter_mut().enumerate() {
            let p = &r.job.prepared;
            if r.done < p.tokens.len() {
                // `pre` (its images encoded above, if it has any), then the next ones whose rest of
                // the prompt needs no vision tower now
                let ready = Some(i) == pre
                    || (r.vision.is_some()
                        || !p.tokens[r.done..].iter().any(|t| visual.contains(t)))
                        && pre.is_none_or(|f| f < i);
                if !ready || budget == 0 {
                    continue;
                }
                if r.started.is_none() {
                    let now = Instant::now();
                    r.started = Some(now);
                    r.stats.queue_seconds = (now - r.job.submitted).as_secs_f64();
                }
                let end = (r.done + budget).min(p.tokens.len());
                budget -= end - r.done;
                let ids = &p.tokens[r.done..end];
                let last = end == p.tokens.len();
                let n_img = ids.iter().filter(|t| visual.contains(t)).count();
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
                advanced.push((i, end, n_img));
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
        // (row of the logits, sequence) to sample.
        let mut rows: Vec<(usize, usize)> = owners.iter().copied().enumerate().collect();
        for (i, end, n_img) in advanced {
            let r = &mut self.running[i];
            r.done = end;
            r.image_rows += n_img;
            if end == r.job.prepared.tokens.len() {
                r.vision = None;
                // The prompt is in: the other answers of the request start from copies of its rows and
                // sample from the same logits.
                let row = rows.iter().find(|x| x.1 == i).map(|x| x.0);
                if let Some(row) = row {
                    for child in Self::fork(engine, &mut self.running, i) {
                        self.running.push(child);
                        rows.push((row, self.running.len() - 1));
                    }
                }
            }
        }
        // 4. Sample each sequence's next token; finished ones leave.
        let v = model.vocab_size();
        let mut finished: Vec<usize> = Vec::new();
        for &(row, i) in &rows {
            let row = &logits[row * v..(row + 1) * v];
            let r = &mut self.running[i];
            let now = Instant::now();
            if r.first_token.is_none() {
                r.first_token = Some(now);
                r.stats.ttft_seconds = (now - r.job.submitted).as_secs_f64();
            }
            let events = &r.job.events;
            let pushed = match r.gen.choose(row) {
                Ok(id) => {
                    if let Some(lp) = r.gen.take_logprob() {
                        let _ = events.send(Event::Token(lp));
                    }
                    r.gen.feed(id, &mut |s: &str| {
                        events.send(Event::Text(s.to_string())).map_err(|_| ())
                    })
                }
                Err(e) => Err(LoopError::Sampling(e)),
            };
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
        finished.sort_unstable();
        self.counters
            .finished
            .fetch_add(finished.len() as u64, Ordering::Relaxed);
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

    /// The other answers of running sequence `i` (its prompt just prefilled): each a copy of its KV rows
    /// with its own generator (seed + k). Forks whose caller has gone are dropped.
    fn fork(engine: &Engine, running: &mut [Running], i: usize) -> Vec<Running> {
        let forks = std::mem::take(&mut running[i].job.forks);
        let mut out = Vec::with_capacity(forks.len());
        for (k, f) in forks.into_iter().enumerate() {
            if f.cancel.load(Ordering::Relaxed) {
                continue;
            }
            let p = &running[i];
            let seed = p.job.params.sampling.seed.wrapping_add(k as u64 + 1);
            let gen = match generator(engine, &p.job, seed) {
                Ok(g) => g,
                Err(e) => {
                    let _ = f.events.send(Event::Error(e));
                    continue;
                }
            };
            let mut cache = KvCache::new(&engine.model.config().text, p.cache.max_len());
            if let Err(e) = cache.copy_prefix_from(&p.cache, p.cache.len()) {
                let _ = f.events.send(Event::Error(e.to_string()));
                continue;
            }
            let prepared = crate::request::Prepared {
                tokens: p.job.prepared.tokens.clone(),
                positions: p.job.prepared.positions.clone(),
                vision: Vec::new(),
                rope_delta: p.job.prepared.rope_delta,
                max_tokens: p.job.prepared.max_tokens,
            };
            let job = Job {
                prepared,
                params: p.job.params.clone(),
                events: f.events,
                cancel: f.cancel,
                submitted: p.job.submitted,
                opts: p.job.opts.clone(),
                forks: Vec::new(),
            };
            out.push(Running {
                job,
                keys: p.keys.clone(),
                cache,
                gen,
                vision: None,
                vision_job: None,
                done: p.done,
                image_rows: p.image_rows,
                started: p.started,
                next_id: 0,
                next_pos: 0,
                stats: p.stats.clone(),
                first_token: None,
            });
        }
        out
    }
}

/// The decoding state of one answer of `job`, its sampler seeded with `seed`.
fn generator(engine: &Engine, job: &Job, seed: u64) -> Result<Generator, String> {
    let mut sampling = job.params.sampling.clone();
    sampling.seed = seed;
    let mut sampler = Sampler::new(sampling).map_err(|e| e.to_string())?;
    sampler.add_prompt_tokens(&job.prepared.tokens);
    let mut gen = Generator::new(
        sampler,
        StreamDecoder::new(engine.token_bytes.clone(), true),
        &engine.stop_config(&job.params, job.prepared.max_tokens),
    );
    if let Some(f) = &job.opts.constraint {
        gen = gen.with_constraint(f.start()?);
    }
    if let Some(top) = job.opts.logprobs {
        gen = gen.with_logprobs(top);
    }
    Ok(gen)
}
