//! `qwen3vl eval`: how far a quantized model's next-token distributions are from the unquantized model's
//! over the same tokens, reported as llama.cpp's `llama-perplexity --kl-divergence` does: the KL divergence
//! KL(base ‖ quantized) per scored token (mean, median, p99, max), how often both pick the same top-1
//! token, and the perplexity of each model on the text.
//!
//! The tokens (a text file's, or `--prompt-tokens N` seeded ids) are cut into chunks of `ctx` tokens; each
//! chunk runs from an empty cache through both models (one forward with every position's logits), and as
//! in llama-perplexity only the second half of each chunk is scored (the first half is context): the
//! logits at position p predict token p + 1, for p in ⌊ctx/2⌋ .. ctx − 1. Log-softmax, KL and
//! negative log-likelihoods are computed in f64.
//!
//! With images (`--image FILE`, any number), each is preprocessed once (the reference checkpoint's
//! processor) and encoded by both vision towers; the report gives the cosine of the two models' image
//! features (the merged vision tokens the decoder receives) and their relative error ‖q − b‖ / ‖b‖, in
//! f64 — the measure of `--vision-quant`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use qwen3vl_model::{KvCache, Logits, Positions, Precision, QuantFormat, RunState, VisionInput};

use crate::session::{Engine, EngineOptions};

/// Inputs of [`evaluate`].
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// The reference checkpoint, loaded as stored (not quantized at load).
    pub model_dir: PathBuf,
    /// The checkpoint compared against it (None: `model_dir` again, quantized at load with `quant`).
    pub quantized_dir: Option<PathBuf>,
    /// Quantize the compared model's text linears at load (None: as stored).
    pub quant: Option<QuantFormat>,
    /// Quantize the compared model's vision tower at load (None: as stored).
    pub vision_quant: Option<QuantFormat>,
    /// Images whose features both models' vision towers encode.
    pub images: Vec<PathBuf>,
    /// The text to score (tokenized with the reference checkpoint's tokenizer, no chat template).
    pub text: Option<String>,
    /// Tokens scored at most (with `text`: its first N; without: N seeded pseudo-random ids).
    pub prompt_tokens: Option<usize>,
    /// Tokens per chunk (≥ 2).
    pub ctx: usize,
    pub precision: Precision,
    pub threads: usize,
}

/// What [`evaluate`] measured: the text's scores (when there was a text or a token count) and one
/// comparison per image.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    pub text: Option<TextReport>,
    pub images: Vec<ImageReport>,
}

/// The next-token scores of [`evaluate`] over the tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct TextReport {
    /// Tokens of input, chunks run, next-token predictions scored.
    pub tokens: usize,
    pub chunks: usize,
    pub scored: usize,
    /// KL(base ‖ quantized) per scored prediction, in nats.
    pub kl_mean: f64,
    pub kl_median: f64,
    pub kl_p99: f64,
    pub kl_max: f64,
    /// Fraction of scored predictions where both models' largest logit is the same token.
    pub top1_agreement: f64,
    /// exp(mean negative log-likelihood of the actual next token) of each model.
    pub ppl_base: f64,
    pub ppl_quant: f64,
}

/// One image's features from both vision towers.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageReport {
    /// The image file, as given.
    pub path: PathBuf,
    /// Merged vision tokens (rows of the features).
    pub tokens: usize,
    /// cos(base, quantized) over all the features, and ‖quantized − base‖ / ‖base‖.
    pub cosine: f64,
    pub rel_error: f64,
}

/// Per-prediction statistics of one pair of logit rows.
struct Scored {
    kl: f64,
    same_top1: bool,
    nll_base: f64,
    nll_quant: f64,
}

/// log-softmax of one logit row, in f64.
fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    x.iter().map(|&v| v as f64 - lse).collect()
}

fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Scores one prediction: base and quantized logits (V) of one position, `next` the actual next token.
fn score(base: &[f32], quant: &[f32], next: usize) -> Scored {
    let (lb, lq) = (log_softmax(base), log_softmax(quant));
    // KL(P‖Q) = Σ p (log p − log q); terms with p = 0 contribute 0
    let kl: f64 = lb
        .iter()
        .zip(&lq)
        .map(|(&b, &q)| {
            if b == f64::NEG_INFINITY {
                0.0
            } else {
                b.exp() * (b - q)
            }
        })
        .sum();
    Scored {
        // rounding can leave −1e-17 for identical rows; KL is ≥ 0
        kl: kl.max(0.0),
        same_top1: argmax(base) == argmax(quant),
        nll_base: -lb[next],
        nll_quant: -lq[next],
    }
}

/// The value at fraction `q` of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Loads both models and scores the tokens (see the module docs).
pub fn evaluate(opts: &EvalOptions) -> Result<EvalReport> {
    if opts.ctx < 2 {
        bail!("--ctx must be at least 2 (got {})", opts.ctx);
    }
    let load = |dir: &PathBuf, quant, vision_quant| {
        Engine::load(
            dir,
            &EngineOptions {
                threads: opts.threads,
                precision: opts.precision,
                progress: None,
                quant,
                vision_quant,
                ..Default::default()
            },
        )
        .with_context(|| format!("loading {}", dir.display()))
    };
    if opts.text.is_none() && opts.prompt_tokens.is_none() && opts.images.is_empty() {
        bail!(
            "give a text (--text FILE), a token count (--prompt-tokens N) or images (--image FILE)"
        );
    }
    let base = load(&opts.model_dir, None, None)?;
    let test = load(
        opts.quantized_dir.as_ref().unwrap_or(&opts.model_dir),
        opts.quant,
        opts.vision_quant,
    )?;
    let images = opts
        .images
        .iter()
        .map(|path| compare_image(&base, &test, path))
        .collect::<Result<Vec<_>>>()?;
    let text = if opts.text.is_some() || opts.prompt_tokens.is_some() {
        Some(score_text(opts, &base, &test)?)
    } else {
        None
    };
    Ok(EvalReport { text, images })
}

/// Both models' features of the image at `path` (preprocessed once, by the reference's processor).
fn compare_image(base: &Engine, test: &Engine, path: &std::path::Path) -> Result<ImageReport> {
    let p = &base.processor;
    let img = p
        .load_image_file(path)
        .with_context(|| format!("reading the image {}", path.display()))?;
    let im = p
        .preprocess_image(&img)
        .with_context(|| format!("preprocessing the image {}", path.display()))?;
    let input = [VisionInput {
        pixel_values: im.pixel_values,
        grid_thw: im.grid_thw,
    }];
    let features = |e: &Engine, which: &str| -> Result<Vec<f32>> {
        Ok(e.model
            .encode_images(&input)
            .with_context(|| format!("encoding {} with the {which} model", path.display()))?
            .embeds)
    };
    let (b, q) = (features(base, "reference")?, features(test, "compared")?);
    if b.len() != q.len() {
        bail!(
            "the models' features of {} differ in size ({} vs {} values): different vision geometries",
            path.display(),
            b.len(),
            q.len()
        );
    }
    let (mut bq, mut bb, mut qq, mut dd) = (0f64, 0f64, 0f64, 0f64);
    for (&x, &y) in b.iter().zip(&q) {
        let (x, y) = (x as f64, y as f64);
        bq += x * y;
        bb += x * x;
        qq += y * y;
        dd += (y - x) * (y - x);
    }
    Ok(ImageReport {
        path: path.to_path_buf(),
        tokens: b.len() / base.model.config().text.hidden_size.max(1),
        // ≤ 1 mathematically; rounding can give 1 + 2⁻⁵² for identical features
        cosine: (bq / (bb.sqrt() * qq.sqrt())).min(1.0),
        rel_error: (dd / bb).sqrt(),
    })
}

/// The next-token scores over the text's (or the seeded) tokens; see the module docs.
fn score_text(opts: &EvalOptions, base: &Engine, test: &Engine) -> Result<TextReport> {
    let v = base.model.vocab_size();
    if test.model.vocab_size() != v {
        bail!(
            "the models' vocabularies differ ({v} vs {})",
            test.model.vocab_size()
        );
    }
    let tokens = match (&opts.text, opts.prompt_tokens) {
        (Some(text), n) => {
            let enc = base
                .processor
                .tokenizer()
                .encode(text.as_str(), false)
                .map_err(|e| anyhow::anyhow!("tokenizing the text: {e}"))?;
            let ids = enc.get_ids();
            ids[..n.unwrap_or(ids.len()).min(ids.len())].to_vec()
        }
        (None, Some(n)) => seeded_tokens(n, v.min(151643)),
        (None, None) => bail!("no text to score: give --text FILE or --prompt-tokens N"),
    };
    let ctx = opts.ctx.min(base.context_len());
    let mut stats = Vec::new();
    let mut chunks = 0;
    for chunk in tokens.chunks(ctx) {
        if chunk.len() < 2 {
            continue;
        }
        let rows = |e: &Engine| -> Result<Vec<f32>> {
            let mut cache = KvCache::new(&e.model.config().text, chunk.len());
            let mut st = RunState::new();
            let pos = Positions::text(0, chunk.len());
            let l = e
                .model
                .forward(chunk, pos.as_ref(), None, &mut cache, &mut st, Logits::All)
                .context("running the forward pass")?;
            Ok(l.to_vec())
        };
        let (lb, lq) = (rows(base)?, rows(test)?);
        let first = if chunk.len() == ctx { ctx / 2 } else { 0 };
        for p in first..chunk.len() - 1 {
            stats.push(score(
                &lb[p * v..(p + 1) * v],
                &lq[p * v..(p + 1) * v],
                chunk[p + 1] as usize,
            ));
        }
        chunks += 1;
    }
    if stats.is_empty() {
        bail!(
            "nothing to score: {} tokens (need at least 2)",
            tokens.len()
        );
    }
    let n = stats.len() as f64;
    let mut kl: Vec<f64> = stats.iter().map(|s| s.kl).collect();
    kl.sort_by(f64::total_cmp);
    Ok(TextReport {
        tokens: tokens.len(),
        chunks,
        scored: stats.len(),
        kl_mean: kl.iter().sum::<f64>() / n,
        kl_median: quantile(&kl, 0.5),
        kl_p99: quantile(&kl, 0.99),
        kl_max: *kl.last().expect("non-empty"),
        top1_agreement: stats.iter().filter(|s| s.same_top1).count() as f64 / n,
        ppl_base: (stats.iter().map(|s| s.nll_base).sum::<f64>() / n).exp(),
        ppl_quant: (stats.iter().map(|s| s.nll_quant).sum::<f64>() / n).exp(),
    })
}

/// `n` token ids in 0..vocab from a fixed seed (the same ids on every run).
fn seeded_tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            // splitmix64
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) % vocab.max(1) as u64) as u32
        })
        .collect()
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, im) in self.images.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{im}")?;
        }
        if let Some(t) = &self.text {
            if !self.images.is_empty() {
                writeln!(f)?;
            }
            write!(f, "{t}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for ImageReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "image {}: {} vision tokens, features cosine {:.6}, relative error {:.3e}",
            self.path.display(),
            self.tokens,
            self.cosine,
            self.rel_error
        )
    }
}

impl std::fmt::Display for TextReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} tokens, {} chunks, {} predictions scored",
            self.tokens, self.chunks, self.scored
        )?;
        writeln!(
            f,
            "KL divergence (base ‖ quantized): mean {:.6}, median {:.6}, p99 {:.6}, max {:.6}",
            self.kl_mean, self.kl_median, self.kl_p99, self.kl_max
        )?;
        writeln!(f, "same top-1: {:.2}%", 100.0 * self.top1_agreement)?;
        write!(
            f,
            "perplexity: base {:.4}, quantized {:.4} (ratio {:.4})",
            self.ppl_base,
            self.ppl_quant,
            self.ppl_quant / self.ppl_base
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_rows_score_zero_and_known_rows_their_kl() {
        let a = [1.0f32, 2.0, 3.0, -1.0];
        let s = score(&a, &a, 2);
        assert_eq!(s.kl, 0.0);
        assert!(s.same_top1);
        assert_eq!(s.nll_base, s.nll_quant);
        // two tokens: p = softmax(0, 0) = (1/2, 1/2), q = softmax(0, ln 3) = (1/4, 3/4):
        // KL = ½ ln(2) + ½ ln(2/3)
        let s = score(&[0.0, 0.0], &[0.0, 3f32.ln()], 0);
        let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((s.kl - want).abs() < 1e-7, "{} vs {want}", s.kl);
        assert!((s.nll_quant - 4f64.ln()).abs() < 1e-7);
        assert!(!s.same_top1);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
    }
}
