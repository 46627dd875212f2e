//! Decoding, independent of the model: sample, stop on an EOS id / a stop string / the token budget, stream
//! whole-UTF-8 text pieces. [`Generator`] is one sequence's state, pushed a row of logits at a time; the
//! model step of [`run_loop`] is a closure, so decoding is tested on scripted logits.

use crate::constraint::TokenConstraint;
use crate::sampling::{Sampler, SamplingError};
use crate::stream::{StopStrings, StreamDecoder};

/// The log-probability of a chosen token under the model's distribution (log-softmax of the raw logits,
/// before penalties, temperature and masks), with the most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// (id, logprob) of the `top` most likely tokens, most likely first (ties by id).
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    /// `id`'s log-probability in `logits` (V) and the `top` best (at most 20 is sensible; NaN counts as
    /// −∞). One pass for the maximum, one for the normalizer, one for the top list.
    pub fn of(logits: &[f32], id: u32, top: usize) -> TokenLogprob {
        let clean = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
        let max = logits
            .iter()
            .map(|&x| clean(x))
            .fold(f32::NEG_INFINITY, f32::max);
        let lse = if max == f32::NEG_INFINITY {
            0.0
        } else {
            let sum: f64 = logits
                .iter()
                .map(|&x| ((clean(x) - max) as f64).exp())
                .sum();
            max as f64 + sum.ln()
        };
        let lp = |x: f32| (clean(x) as f64 - lse) as f32;
        // The best `top` (id, logit), kept sorted descending: insertion into a list of at most `top`.
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
        if top > 0 {
            for (i, &x) in logits.iter().enumerate() {
                let x = clean(x);
                if best.len() == top && x <= best[top - 1].1 {
                    continue;
                }
                let at = best.partition_point(|&(_, b)| b >= x);
                best.insert(at, (i as u32, x));
                best.truncate(top);
            }
        }
        TokenLogprob {
            id,
            logprob: logits
                .get(id as usize)
                .map_or(f32::NEG_INFINITY, |&x| lp(x)),
            top: best.into_iter().map(|(i, x)| (i, lp(x))).collect(),
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence id was sampled (it is not part of the text).
    Eos,
    /// A stop string appeared (the text ends right before it).
    Stop,
    /// `max_tokens` tokens were generated.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// When to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopConfig {
    pub eos_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
    /// At least 1.
    pub max_tokens: usize,
}

/// What the loop produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopOutput {
    /// Every sampled id, including a final EOS id.
    pub tokens: Vec<u32>,
    /// The streamed text (without EOS, special tokens or the stop string).
    pub text: String,
    pub finish: FinishReason,
    /// Number of model steps run after the prefill (= tokens fed back into the model).
    pub steps: usize,
}

/// An error of the loop: from the sampler or from the caller's closures.
#[derive(Debug)]
pub enum LoopError<E> {
    Sampling(SamplingError),
    Step(E),
}

/// The decoding state of one sequence, pushed one row of logits at a time: sample, stop on an EOS id / a stop
/// string / the token budget, stream whole-UTF-8 text. The single-sequence loop ([`run_loop`]) and the
/// scheduler's batched steps both drive it, so every path stops and streams the same way.
pub struct Generator {
    sampler: Sampler,
    decoder: StreamDecoder,
    stops: StopStrings,
    max_tokens: usize,
    eos_ids: Vec<u32>,
    out: LoopOutput,
    /// Allowed-token rule applied to the logits before sampling (structured output).
    constraint: Option<Box<dyn TokenConstraint>>,
    /// Record log-probabilities with this many alternatives (None: not at all).
    logprobs: Option<usize>,
    /// (V) the masked copy of the logits when a constraint is set
    masked: Vec<f32>,
    /// The log-probability of the last chosen token (when asked for).
    last_logprob: Option<TokenLogprob>,
}

/// What [`Generator::push`] asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Run the model on this token and push its logits.
    Feed(u32),
    /// Generation ended ([`Generator::output`] has the reason).
    Done,
}

impl Generator {
    pub fn new(sampler: Sampler, decoder: StreamDecoder, stop: &StopConfig) -> Generator {
        Generator {
            sampler,
            decoder,
            stops: StopStrings::new(&stop.stop_strings),
            max_tokens: stop.max_tokens,
            eos_ids: stop.eos_ids.clone(),
            out: LoopOutput {
                tokens: Vec::new(),
                text: String::new(),
                finish: FinishReason::Length,
                steps: 0,
            },
            constraint: None,
            logprobs: None,
            masked: Vec::new(),
            last_logprob: None,
        }
    }

    /// Mask the logits with `constraint` before each sampling step.
    pub fn with_constraint(mut self, constraint: Box<dyn TokenConstraint>) -> Generator {
        self.constraint = Some(constraint);
        self
    }

    /// Record each chosen token's log-probability and its `top` alternatives (see
    /// [`Generator::take_logprob`]).
    pub fn with_logprobs(mut self, top: usize) -> Generator {
        self.logprobs = Some(top);
        self
    }

    /// The log-probability of the token chosen by the last [`Generator::choose`] (once).
    pub fn take_logprob(&mut self) -> Option<TokenLogprob> {
        self.last_logprob.take()
    }

    /// What was produced so far (all of it after [`Next::Done`]).
    pub fn output(&self) -> &LoopOutput {
        &self.out
    }

    pub fn into_output(self) -> LoopOutput {
        self.out
    }

    /// Samples the next token from `logits` (V); `on_text` receives each whole-UTF-8 piece as soon as it is
    /// safe to show. The last sampled id is never asked to be fed.
    pub fn push<E>(
        &mut self,
        logits: &[f32],
        on_text: &mut dyn FnMut(&str) -> Result<(), E>,
    ) -> Result<Next, LoopError<E>> {
        let id = self.choose(logits).map_err(LoopError::Sampling)?;
        self.feed(id, on_text)
    }

    /// The first half of [`Generator::push`]: mask (if constrained), sample, record the log-probability
    /// (if asked). The token must then be given to [`Generator::feed`].
    pub fn choose(&mut self, logits: &[f32]) -> Result<u32, SamplingError> {
        let id = match &mut self.constraint {
            Some(c) => {
                self.masked.clear();
                self.masked.extend_from_slice(logits);
                c.mask(&mut self.masked)
                    .map_err(SamplingError::Constraint)?;
                let id = self.sampler.sample(&self.masked)?;
                c.accept(id).map_err(SamplingError::Constraint)?;
                id
            }
            None => self.sampler.sample(logits)?,
        };
        if let Some(top) = self.logprobs {
            self.last_logprob = Some(TokenLogprob::of(logits, id, top));
        }
        Ok(id)
    }

    /// The second half of [`Generator::push`]: stop checks and text for the chosen token `id`.
    pub fn feed<E>(
        &mut self,
        id: u32,
        on_text: &mut dyn FnMut(&str) -> Result<(), E>,
    ) -> Result<Next, LoopError<E>> {
        self.out.tokens.push(id);
        if self.eos_ids.contains(&id) {
            self.out.finish = FinishReason::Eos;
            self.flush(on_text)?;
            return Ok(Next::Done);
        }
        let piece = self.decoder.push(id);
        let check = self.stops.push(&piece);
        emit(&check.emit, &mut self.out, on_text)?;
        if check.stopped {
            self.out.finish = FinishReason::Stop;
            self.decoder.reset();
            return Ok(Next::Done);
        }
        if self.out.tokens.len() >= self.max_tokens {
            self.out.finish = FinishReason::Length;
            self.flush(on_text)?;
            return Ok(Next::Done);
        }
        self.out.steps += 1;
        Ok(Next::Feed(id))
    }

    /// Flush what the decoder and the stop matcher still hold.
    fn flush<E>(
        &mut self,
        on_text: &mut dyn FnMut(&str) -> Result<(), E>,
    ) -> Result<(), LoopError<E>> {
        let tail = self.decoder.finish();
        let check = self.stops.push(&tail);
        emit(&check.emit, &mut self.out, on_text)?;
        if check.stopped {
            self.out.finish = FinishReason::Stop;
        } else {
            let rest = self.stops.finish();
            emit(&rest, &mut self.out, on_text)?;
        }
        Ok(())
    }
}

fn emit<E>(
    s: &str,
    out: &mut LoopOutput,
    on_text: &mut dyn FnMut(&str) -> Result<(), E>,
) -> Result<(), LoopError<E>> {
    if !s.is_empty() {
        out.text.push_str(s);
        on_text(s).map_err(LoopError::Step)?;
    }
    Ok(())
}

/// Push `logits` (the prefill's last row) into `gen`, then repeatedly feed the sampled id to `step` (which
/// runs the model and writes the next logits into its buffer) until a stop condition.
pub fn run_loop<E>(
    gen: &mut Generator,
    logits: &[f32],
    mut step: impl FnMut(u32, &mut Vec<f32>) -> Result<(), E>,
    on_text: &mut dyn FnMut(&str) -> Result<(), E>,
) -> Result<(), LoopError<E>> {
    let mut buf = logits.to_vec();
    while let Next::Feed(id) = gen.push(&buf, on_text)? {
        step(id, &mut buf).map_err(LoopError::Step)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplingParams;
    use crate::stream::TokenBytes;
    use std::sync::Arc;

    /// Vocabulary: 0 "a", 1 "b", 2 "\xE4" 3 "\xBD" 4 "\xA0" (你 split in 3), 5 "<eos>" (special), 6 "S", 7 "T".
    fn table() -> Arc<TokenBytes> {
        Arc::new(TokenBytes::from_parts(
            &[b"a", b"b", b"\xE4", b"\xBD", b"\xA0", b"<eos>", b"S", b"T"],
            &[false, false, false, false, false, true, false, false],
        ))
    }

    /// Logits that make greedy pick `id`.
    fn one_hot(id: u32) -> Vec<f32> {
        let mut l = vec![0.0; 8];
        l[id as usize] = 10.0;
        l
    }

    fn run(script: &[u32], stop: StopConfig) -> (LoopOutput, Vec<String>, Vec<u32>) {
        let sampler = Sampler::new(SamplingParams::greedy()).unwrap();
        let dec = StreamDecoder::new(table(), true);
        let mut gen = Generator::new(sampler, dec, &stop);
        let mut fed = Vec::new();
        let mut pieces = Vec::new();
        let mut i = 0;
        run_loop::<()>(
            &mut gen,
            &one_hot(script[0]),
            |id, buf| {
                fed.push(id);
                i += 1;
                *buf = one_hot(script[i.min(script.len() - 1)]);
                Ok(())
            },
            &mut |s| {
                pieces.push(s.to_string());
                Ok(())
            },
        )
        .map_err(|_| ())
        .unwrap();
        (gen.into_output(), pieces, fed)
    }

    fn cfg(max_tokens: usize, stops: &[&str]) -> StopConfig {
        StopConfig {
            eos_ids: vec![5],
            stop_strings: stops.iter().map(|s| s.to_string()).collect(),
            max_tokens,
        }
    }

    #[test]
    fn logprobs_are_log_softmax_with_sorted_top() {
        let l = [1.0f32, 3.0, f32::NAN, 2.0, 3.0];
        let t = TokenLogprob::of(&l, 3, 3);
        let z: f64 = [1.0f64, 3.0, 2.0, 3.0].iter().map(|x| x.exp()).sum();
        assert!((t.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6, "{t:?}");
        let ids: Vec<u32> = t.top.iter().map(|x| x.0).collect();
        assert_eq!(ids, vec![1, 4, 3]);
        assert!((t.top[0].1 as f64 - (3.0 - z.ln())).abs() < 1e-6);
        assert_eq!(TokenLogprob::of(&l, 2, 0).logprob, f32::NEG_INFINITY);
        assert!(TokenLogprob::of(&l, 0, 0).top.is_empty());
    }

    /// Allows only token 1 ("b") then only EOS.
    struct OnlyB(bool);
    impl TokenConstraint for OnlyB {
        fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
            let keep = if self.0 { 5 } else { 1 };
            for (i, x) in logits.iter_mut().enumerate() {
                if i != keep {
                    *x = f32::NEG_INFINITY;
                }
            }
            Ok(())
        }
        fn accept(&mut self, id: u32) -> Result<(), String> {
            self.0 = id == 1;
            Ok(())
        }
    }

    #[test]
    fn constraint_masks_before_sampling_and_logprobs_use_raw_logits() {
        let sampler = Sampler::new(SamplingParams::greedy()).unwrap();
        let mut gen = Generator::new(sampler, StreamDecoder::new(table(), true), &cfg(10, &[]))
            .with_constraint(Box::new(OnlyB(false)))
            .with_logprobs(1);
        let mut sink = |_: &str| Ok::<(), ()>(());
        assert_eq!(gen.push(&one_hot(0), &mut sink).ok(), Some(Next::Feed(1)));
        let lp = gen.take_logprob().unwrap();
        assert_eq!((lp.id, lp.top[0].0), (1, 0));
        assert!(lp.logprob < -9.0);
        assert_eq!(gen.push(&one_hot(0), &mut sink).ok(), Some(Next::Done));
        assert_eq!(gen.output().text, "b");
        assert_eq!(gen.output().finish, FinishReason::Eos);
    }

    #[test]
    fn stops_on_eos_without_feeding_it() {
        let (out, pieces, fed) = run(&[0, 2, 3, 4, 1, 5, 0], cfg(100, &[]));
        assert_eq!(out.finish, FinishReason::Eos);
        assert_eq!(out.tokens, vec![0, 2, 3, 4, 1, 5]);
        assert_eq!(out.text, "a你b");
        assert_eq!(pieces, vec!["a", "你", "b"]);
        assert_eq!(fed, vec![0, 2, 3, 4, 1]);
        assert_eq!(out.steps, 5);
    }

    #[test]
    fn stops_at_max_tokens() {
        let (out, _, fed) = run(&[0, 1, 0, 1, 0, 1], cfg(3, &[]));
        assert_eq!(out.finish, FinishReason::Length);
        assert_eq!(out.tokens, vec![0, 1, 0]);
        assert_eq!(out.text, "aba");
        assert_eq!(fed, vec![0, 1]);
        // A character cut by the budget is flushed as U+FFFD, never a broken sequence.
        let (out, _, _) = run(&[0, 2, 3, 4], cfg(2, &[]));
        assert_eq!(out.text, "a\u{FFFD}");
    }

    #[test]
    fn stops_on_stop_string_across_tokens() {
        let (out, pieces, _) = run(&[0, 6, 0, 6, 7, 1, 1], cfg(100, &["ST"]));
        assert_eq!(out.finish, FinishReason::Stop);
        assert_eq!(out.text, "aSa");
        assert_eq!(pieces.concat(), "aSa");
        assert_eq!(out.tokens, vec![0, 6, 0, 6, 7]);
        // A held-back prefix that never completes is released at the end.
        let (out, _, _) = run(&[0, 6], cfg(2, &["ST"]));
        assert_eq!(
            (out.text.as_str(), out.finish),
            ("aS", FinishReason::Length)
        );
    }
}
