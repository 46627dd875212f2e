//! The decoding loop, independent of the model: sample, stop on an EOS id / a stop string / the token
//! budget, stream whole-UTF-8 text pieces. The model step is a closure, so the loop is tested on scripted
//! logits.

use crate::sampling::{Sampler, SamplingError};
use crate::stream::{StopStrings, StreamDecoder};

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

/// Sample from `logits` (the prefill's last row), then repeatedly feed the sampled id to `step` (which runs
/// the model and returns the next logits) until a stop condition. `on_text` receives each whole-UTF-8
/// piece as soon as it is safe to show. The last sampled id is never fed to `step`.
pub fn run_loop<E>(
    logits: Vec<f32>,
    sampler: &mut Sampler,
    decoder: &mut StreamDecoder,
    stop: &StopConfig,
    mut step: impl FnMut(u32) -> Result<Vec<f32>, E>,
    on_text: &mut dyn FnMut(&str) -> Result<(), E>,
) -> Result<LoopOutput, LoopError<E>> {
    let mut stops = StopStrings::new(&stop.stop_strings);
    let mut out = LoopOutput {
        tokens: Vec::new(),
        text: String::new(),
        finish: FinishReason::Length,
        steps: 0,
    };
    let mut emit = |s: &str, out: &mut LoopOutput| -> Result<(), LoopError<E>> {
        if !s.is_empty() {
            out.text.push_str(s);
            on_text(s).map_err(LoopError::Step)?;
        }
        Ok(())
    };
    let mut logits = logits;
    loop {
        let id = sampler.sample(&logits).map_err(LoopError::Sampling)?;
        out.tokens.push(id);
        if stop.eos_ids.contains(&id) {
            out.finish = FinishReason::Eos;
            break;
        }
        let piece = decoder.push(id);
        let check = stops.push(&piece);
        emit(&check.emit, &mut out)?;
        if check.stopped {
            out.finish = FinishReason::Stop;
            decoder.reset();
            return Ok(out);
        }
        if out.tokens.len() >= stop.max_tokens {
            out.finish = FinishReason::Length;
            break;
        }
        logits = step(id).map_err(LoopError::Step)?;
        out.steps += 1;
    }
    // Flush what the decoder and the stop matcher still hold.
    let tail = decoder.finish();
    let check = stops.push(&tail);
    emit(&check.emit, &mut out)?;
    if check.stopped {
        out.finish = FinishReason::Stop;
    } else {
        let rest = stops.finish();
        emit(&rest, &mut out)?;
    }
    Ok(out)
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
        let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
        let mut dec = StreamDecoder::new(table(), true);
        let mut fed = Vec::new();
        let mut pieces = Vec::new();
        let mut i = 0;
        let out = run_loop::<()>(
            one_hot(script[0]),
            &mut sampler,
            &mut dec,
            &stop,
            |id| {
                fed.push(id);
                i += 1;
                Ok(one_hot(script[i.min(script.len() - 1)]))
            },
            &mut |s| {
                pieces.push(s.to_string());
                Ok(())
            },
        )
        .map_err(|_| ())
        .unwrap();
        (out, pieces, fed)
    }

    fn cfg(max_tokens: usize, stops: &[&str]) -> StopConfig {
        StopConfig {
            eos_ids: vec![5],
            stop_strings: stops.iter().map(|s| s.to_string()).collect(),
            max_tokens,
        }
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
