//! Choosing the next token from the logits of the last position.
//!
//! Order of the steps (transformers' logits processors, then warpers; vLLM applies the same order):
//! 1. repetition penalty over every token seen (prompt and generated): logit > 0 ? logit / p : logit · p;
//! 2. presence and frequency penalties over generated tokens (OpenAI): logit -= presence + frequency · count;
//! 3. temperature 0 (or top_k 1) → greedy: the first index of the maximum (like `torch.argmax`);
//! 4. logit /= temperature;
//! 5. top-k: keep the tokens whose logit is ≥ the k-th largest (ties at the boundary kept, like transformers);
//! 6. softmax over the kept tokens;
//! 7. top-p: in descending order, keep the smallest prefix whose probability mass reaches top_p;
//! 8. min-p: drop tokens with probability < min_p · max probability;
//! 9. draw u ∈ [0,1) from the seeded generator, walk the kept tokens in descending order (ties by id) and
//!    take the first whose cumulative (renormalized) mass exceeds u.
//!
//! NaN logits are treated as −∞. The generator is SplitMix64 seeding xoshiro256**, written here so that a
//! seed gives the same tokens on every platform and every version of dependencies.

use std::collections::{HashMap, HashSet};

/// A parameter out of range, with the parameter's name.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplingError {
    #[error("{name} = {value} is out of range: {expected}")]
    Range {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("logits are empty")]
    Empty,
    #[error("every logit is -inf or NaN after penalties and filters; nothing to sample")]
    NoCandidates,
    /// The output constraint (structured output) failed.
    #[error("{0}")]
    Constraint(String),
}

/// How to choose tokens. `temperature == 0` means greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 = disabled.
    pub top_k: usize,
    /// 1.0 = disabled.
    pub top_p: f32,
    /// 0.0 = disabled.
    pub min_p: f32,
    /// 1.0 = disabled.
    pub repetition_penalty: f32,
    /// 0.0 = disabled.
    pub presence_penalty: f32,
    /// 0.0 = disabled.
    pub frequency_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Greedy, no penalties.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self::default()
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Range checks (RELIABILITY 10): finite values, temperature ≥ 0, top_p ∈ (0,1], min_p ∈ [0,1],
    /// repetition_penalty > 0, presence/frequency ∈ [−2, 2].
    pub fn validate(&self) -> Result<(), SamplingError> {
        fn bad(name: &'static str, v: f32, expected: &'static str) -> SamplingError {
            SamplingError::Range {
                name,
                value: v.to_string(),
                expected,
            }
        }
        let t = self.temperature;
        if !t.is_finite() || t < 0.0 {
            return Err(bad("temperature", t, "a finite number >= 0 (0 = greedy)"));
        }
        let p = self.top_p;
        if !p.is_finite() || p <= 0.0 || p > 1.0 {
            return Err(bad("top_p", p, "0 < top_p <= 1"));
        }
        let m = self.min_p;
        if !m.is_finite() || !(0.0..=1.0).contains(&m) {
            return Err(bad("min_p", m, "0 <= min_p <= 1"));
        }
        let r = self.repetition_penalty;
        if !r.is_finite() || r <= 0.0 {
            return Err(bad(
                "repetition_penalty",
                r,
                "a finite number > 0 (1 = off)",
            ));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !v.is_finite() || !(-2.0..=2.0).contains(&v) {
                return Err(bad(name, v, "-2 <= value <= 2"));
            }
        }
        Ok(())
    }
}

/// xoshiro256** seeded through SplitMix64: small, fast, the same on every platform.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The sampler of one request: parameters, the generator, and the token history the penalties use.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Tokens of the prompt (repetition penalty only).
    prompt_tokens: HashSet<u32>,
    /// Generated tokens and how often each occurred.
    generated: HashMap<u32, u32>,
    /// (V) the scratch copy of the logits `sample` works on (reused: sampling allocates no vocab-sized
    /// vector per token)
    work: Vec<f32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Sampler, SamplingError> {
        params.validate()?;
        Ok(Sampler {
            rng: Rng::new(params.seed),
            params,
            prompt_tokens: HashSet::new(),
            generated: HashMap::new(),
            work: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Tokens already in the context (the prompt): the repetition penalty applies to them too.
    pub fn add_prompt_tokens(&mut self, ids: &[u32]) {
        self.prompt_tokens.extend(ids.iter().copied());
    }

    /// Record a generated token (done by [`Sampler::sample`]; call it yourself for forced tokens).
    pub fn accept(&mut self, id: u32) {
        *self.generated.entry(id).or_insert(0) += 1;
    }

    /// Forget the history (not the generator state).
    pub fn reset_history(&mut self) {
        self.prompt_tokens.clear();
        self.generated.clear();
    }

    /// Choose the next token from `logits` (vocab) and record it in the history.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, SamplingError> {
        let mut l = std::mem::take(&mut self.work);
        l.clear();
        l.extend_from_slice(logits);
        let id = self.choose(&mut l);
        self.work = l;
        let id = id?;
        self.accept(id);
        Ok(id)
    }

    /// Steps 1–9 on a scratch copy of the logits (modified in place); does not record the token.
    pub fn choose(&mut self, logits: &mut [f32]) -> Result<u32, SamplingError> {
        if logits.is_empty() {
            return Err(SamplingError::Empty);
        }
        for x in logits.iter_mut() {
            if x.is_nan() {
                *x = f32::NEG_INFINITY;
            }
        }
        self.apply_penalties(logits);
        let p = &self.params;
        if p.is_greedy() {
            return argmax(logits).ok_or(SamplingError::NoCandidates);
        }
        // 4. temperature
        let inv_t = 1.0 / p.temperature;
        // Candidates (id, scaled logit), finite only.
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, &x)| x > f32::NEG_INFINITY)
            .map(|(i, &x)| (i as u32, x * inv_t))
            .collect();
        if cand.is_empty() {
            return Err(SamplingError::NoCandidates);
        }
        let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        // 5. top-k (keep ties with the k-th value)
        if p.top_k > 0 && p.top_k < cand.len() {
            let k = p.top_k;
            cand.select_nth_unstable_by(k - 1, desc);
            let kth = cand[k - 1].1;
            let (head, tail) = cand.split_at(k);
            let mut kept: Vec<(u32, f32)> = head.to_vec();
            kept.extend(tail.iter().filter(|c| c.1 >= kth));
            cand = kept;
        }
        cand.sort_unstable_by(desc);
        // 6. softmax (f64 accumulation)
        let max = cand[0].1 as f64;
        let mut probs: Vec<f64> = cand.iter().map(|c| (c.1 as f64 - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        for q in probs.iter_mut() {
            *q /= total;
        }
        // 7. top-p: smallest prefix with mass >= top_p (at least one token)
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, &q) in probs.iter().enumerate() {
                cum += q;
                if cum >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        // 8. min-p
        if p.min_p > 0.0 {
            let floor = p.min_p as f64 * probs[0];
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        // 9. draw
        let mass: f64 = probs[..keep].iter().sum();
        let u = self.rng.next_f64() * mass;
        let mut cum = 0.0;
        for i in 0..keep {
            cum += probs[i];
            if u < cum {
                return Ok(cand[i].0);
            }
        }
        Ok(cand[keep - 1].0)
    }

    /// Steps 1 and 2.
    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        let n = logits.len();
        if p.repetition_penalty != 1.0 {
            let r = p.repetition_penalty;
            let seen = self.prompt_tokens.iter().chain(
                self.generated
                    .keys()
                    .filter(|id| !self.prompt_tokens.contains(id)),
            );
            for &id in seen {
                if let Some(x) = logits.get_mut(id as usize) {
                    *x = if *x > 0.0 { *x / r } else { *x * r };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&id, &count) in &self.generated {
                if (id as usize) < n {
                    logits[id as usize] -= p.presence_penalty + p.frequency_penalty * count as f32;
                }
            }
        }
    }
}

/// Index of the first maximum (NaN never wins); None if empty or all −∞/NaN.
pub fn argmax(x: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in x.iter().enumerate() {
        if v.is_nan() || v == f32::NEG_INFINITY {
            continue;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        f(&mut p);
        p
    }

    /// The set of tokens a sampler can produce, found by drawing many times.
    fn support(p: SamplingParams, logits: &[f32], draws: usize) -> Vec<u32> {
        let mut s = Sampler::new(p).unwrap();
        let mut seen: Vec<u32> = (0..draws)
            .map(|_| s.choose(&mut logits.to_vec()).unwrap())
            .collect();
        seen.sort_unstable();
        seen.dedup();
        seen
    }

    #[test]
    fn greedy_takes_first_max_and_ignores_nan() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&[0.5, 2.0, -1.0, 2.0]).unwrap(), 1);
        assert_eq!(s.sample(&[f32::NAN, 0.1, 0.2]).unwrap(), 2);
        assert_eq!(s.sample(&[f32::NEG_INFINITY, -3.0]).unwrap(), 1);
        assert_eq!(
            s.sample(&[f32::NAN, f32::NEG_INFINITY]),
            Err(SamplingError::NoCandidates)
        );
        assert_eq!(s.sample(&[]), Err(SamplingError::Empty));
        // top_k = 1 is greedy whatever the temperature.
        let mut s = Sampler::new(params(|p| p.top_k = 1)).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&[1.0, 1.1, 0.9]).unwrap(), 1);
        }
    }

    #[test]
    fn repetition_penalty_divides_positive_multiplies_negative() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        })
        .unwrap();
        s.add_prompt_tokens(&[0, 1]);
        s.accept(3);
        let mut l = vec![4.0, -1.0, 3.0, 2.5, -0.5];
        s.apply_penalties(&mut l);
        assert_eq!(l, vec![2.0, -2.0, 3.0, 1.25, -0.5]);
        // Greedy then picks token 2 (3.0), not token 0 (4.0 → 2.0).
        assert_eq!(s.choose(&mut [4.0, -1.0, 3.0, 2.5, -0.5]).unwrap(), 2);
    }

    #[test]
    fn presence_and_frequency_penalties_count_generated_tokens_only() {
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..Default::default()
        })
        .unwrap();
        s.add_prompt_tokens(&[1]); // prompt tokens are not penalised by presence/frequency
        s.accept(0);
        s.accept(0);
        s.accept(0);
        s.accept(2);
        let mut l = vec![1.0, 1.0, 1.0, 1.0];
        s.apply_penalties(&mut l);
        // token 0: 1 - 0.5 - 3·0.25 = -0.25; token 2: 1 - 0.5 - 0.25 = 0.25
        assert_eq!(l, vec![-0.25, 1.0, 0.25, 1.0]);
        assert_eq!(s.choose(&mut [1.2, 1.0, 1.0, 0.9]).unwrap(), 1);
    }

    #[test]
    fn top_k_keeps_exactly_the_k_largest() {
        let logits = [0.0, 3.0, 1.0, 2.9, -1.0, 2.8];
        assert_eq!(
            support(params(|p| p.top_k = 3), &logits, 400),
            vec![1, 3, 5]
        );
        assert_eq!(support(params(|p| p.top_k = 2), &logits, 400), vec![1, 3]);
        // Ties at the boundary are kept (transformers keeps logits >= the k-th value).
        let tied = [1.0, 2.0, 1.0, 0.0];
        assert_eq!(support(params(|p| p.top_k = 2), &tied, 400), vec![0, 1, 2]);
    }

    #[test]
    fn top_p_keeps_smallest_prefix_reaching_mass() {
        // probabilities 0.5, 0.25, 0.125, 0.125 (logits are their logs)
        let logits = [0.5f32.ln(), 0.25f32.ln(), 0.125f32.ln(), 0.125f32.ln()];
        assert_eq!(support(params(|p| p.top_p = 0.49), &logits, 300), vec![0]);
        assert_eq!(support(params(|p| p.top_p = 0.6), &logits, 300), vec![0, 1]);
        assert_eq!(
            support(params(|p| p.top_p = 0.74), &logits, 300),
            vec![0, 1]
        );
        assert_eq!(
            support(params(|p| p.top_p = 0.8), &logits, 600),
            vec![0, 1, 2]
        );
        assert_eq!(
            support(params(|p| p.top_p = 1.0), &logits, 600),
            vec![0, 1, 2, 3]
        );
        // top-k then top-p: probabilities 0.5, 0.25, 0.15, 0.1; alone, p=0.8 keeps three; after k=3 they
        // renormalise to 0.556, 0.278, 0.167 and p=0.8 keeps two.
        let logits = [0.5f32.ln(), 0.25f32.ln(), 0.15f32.ln(), 0.1f32.ln()];
        assert_eq!(
            support(params(|p| p.top_p = 0.8), &logits, 600),
            vec![0, 1, 2]
        );
        assert_eq!(
            support(
                params(|p| {
                    p.top_k = 3;
                    p.top_p = 0.8
                }),
                &logits,
                400
            ),
            vec![0, 1]
        );
    }

    #[test]
    fn min_p_drops_tokens_below_fraction_of_max() {
        let logits = [0.5f32.ln(), 0.25f32.ln(), 0.125f32.ln(), 0.125f32.ln()];
        assert_eq!(
            support(params(|p| p.min_p = 0.49), &logits, 300),
            vec![0, 1]
        );
        assert_eq!(support(params(|p| p.min_p = 0.51), &logits, 300), vec![0]);
        assert_eq!(
            support(params(|p| p.min_p = 0.24), &logits, 600),
            vec![0, 1, 2, 3]
        );
    }

    #[test]
    fn temperature_sharpens_distribution() {
        // At T=1 probabilities are 0.5/0.5 vs token 2 rare; count how often token 0 wins at T=0.05.
        let logits = [1.0, 0.9, -5.0];
        let mut s = Sampler::new(params(|p| p.temperature = 0.05)).unwrap();
        let zeros = (0..2000)
            .filter(|_| s.choose(&mut logits.to_vec()).unwrap() == 0)
            .count();
        // p0 = 1 / (1 + e^(-0.1/0.05)) = 0.8808
        assert!((1660..1860).contains(&zeros), "{zeros}");
    }

    #[test]
    fn draw_frequencies_follow_probabilities() {
        let logits = [0.5f32.ln(), 0.25f32.ln(), 0.25f32.ln()];
        let mut s = Sampler::new(params(|p| p.seed = 7)).unwrap();
        let mut counts = [0usize; 3];
        for _ in 0..8000 {
            counts[s.choose(&mut logits.to_vec()).unwrap() as usize] += 1;
        }
        assert!((3800..4200).contains(&counts[0]), "{counts:?}");
        assert!((1800..2200).contains(&counts[1]), "{counts:?}");
        assert!((1800..2200).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(|p| {
                p.seed = seed;
                p.top_k = 20;
                p.top_p = 0.9
            }))
            .unwrap();
            (0..64)
                .map(|_| s.sample(&logits).unwrap())
                .collect::<Vec<u32>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn rng_known_values() {
        // SplitMix64(0) first output is 0xE220A8397B1DCDAF (published reference value).
        let mut x = 0u64;
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        assert_eq!(z ^ (z >> 31), 0xE220_A839_7B1D_CDAF);
        let mut r = Rng::new(1);
        let a: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        let mut r2 = Rng::new(1);
        assert_eq!(a, (0..3).map(|_| r2.next_u64()).collect::<Vec<_>>());
        let f = Rng::new(9).next_f64();
        assert!((0.0..1.0).contains(&f));
    }

    #[test]
    fn out_of_range_parameters_are_named() {
        let cases: Vec<(SamplingParams, &str)> = vec![
            (params(|p| p.temperature = -1.0), "temperature"),
            (params(|p| p.temperature = f32::NAN), "temperature"),
            (params(|p| p.top_p = 0.0), "top_p"),
            (params(|p| p.top_p = 1.5), "top_p"),
            (params(|p| p.min_p = -0.1), "min_p"),
            (params(|p| p.repetition_penalty = 0.0), "repetition_penalty"),
            (params(|p| p.presence_penalty = 3.0), "presence_penalty"),
            (
                params(|p| p.frequency_penalty = f32::INFINITY),
                "frequency_penalty",
            ),
        ];
        for (p, name) in cases {
            let e = Sampler::new(p).unwrap_err().to_string();
            assert!(e.starts_with(name), "{e}");
        }
    }
}
