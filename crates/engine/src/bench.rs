//! `qwen3vl bench --model DIR`: load time, vision encode, prefill and decode speed, peak memory — each
//! next to this machine's limit measured by the roofline (bandwidth for decode, probed between segments of
//! the decode itself; compute peak for prefill and the vision tower).
//!
//! Work counted:
//! - decode reads every text weight once per token (all linears of every layer + lm_head: the bytes of the
//!   packed weights as loaded) plus the KV cache (f32) up to the current position;
//! - prefill FLOPs: 2·(linear params)·n + causal attention 4·n_q·hd·n(n+1)/2 per layer + lm_head on the
//!   last row;
//! - vision FLOPs: patch embed, per block 2·N·(4D² + 2DF) + attention 4·N²·D, and the mergers on N/4 rows.
//!
//! The prompt is synthetic (ordinary text token ids); the image is a synthetic gradient of the given size,
//! encoded separately from the prefill so each figure measures one thing.

use std::time::Instant;

use qwen3vl_kernels::roofline;
use qwen3vl_model::{
    KvCache, Logits, Positions, PositionsRef, Precision, RunState, Seq, VisionInput,
};

use crate::sampling::argmax;
use crate::session::{Engine, EngineError};

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct BenchOptions {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// (width, height) of the synthetic image; None = no vision measurement.
    pub image_size: Option<(u32, u32)>,
    /// Measure the roofline (a few seconds).
    pub roofline: bool,
}

/// Figures of one run; `*_pct_*` are None when the roofline was not measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub isa: String,
    pub threads: usize,
    pub precision: String,
    pub load_s: f64,
    pub vision_s: f64,
    pub image_tokens: usize,
    pub vision_gflops: f64,
    pub prefill_tokens: usize,
    pub prefill_s: f64,
    pub prefill_tok_s: f64,
    pub prefill_gflops: f64,
    pub decode_tokens: usize,
    pub decode_s: f64,
    pub decode_tok_s: f64,
    /// Weight bytes read per decoded token.
    pub weight_bytes_per_token: u64,
    /// KV-cache bytes read per decoded token (mean over the decode).
    pub kv_bytes_per_token: u64,
    pub decode_gbps: f64,
    /// Peak resident set size (VmHWM) after decode, MiB.
    pub peak_rss_mib: f64,
    /// Tensor bytes of the checkpoint, MiB.
    pub checkpoint_mib: f64,
    /// KV cache reserved for prompt + generated tokens (f32), MiB.
    pub kv_cache_mib: f64,
    /// peak_rss_mib / (checkpoint_mib + kv_cache_mib): the memory goal is ≤ 1.10.
    pub rss_over_checkpoint_kv: f64,
    /// Read bandwidth probed during decode (time-weighted over its segments), GB/s.
    pub read_gbps: Option<f64>,
    pub peak_gflops: Option<f64>,
    pub decode_pct_of_bandwidth: Option<f64>,
    pub prefill_pct_of_peak: Option<f64>,
    pub vision_pct_of_peak: Option<f64>,
    /// Decode tok/s the bandwidth allows: read_gbps / bytes per token.
    pub decode_tok_s_limit: Option<f64>,
}

/// Run the benchmark on a loaded engine.
pub fn run(engine: &Engine, opts: &BenchOptions) -> Result<BenchReport, EngineError> {
    let model = &engine.model;
    let cfg = model.config();
    let t = &cfg.text;
    if opts.prompt_tokens == 0 || opts.gen_tokens == 0 {
        return Err(EngineError::Input(
            "--prompt-tokens and --gen-tokens must be at least 1".into(),
        ));
    }
    let k = model.kernels();

    // 1. Vision tower on a synthetic image.
    let (mut vision_s, mut image_tokens, mut vision_flops) = (0.0, 0, 0.0);
    if let Some((w, h)) = opts.image_size {
        if w == 0 || h == 0 {
            return Err(EngineError::Input(
                "--image-size must be WxH with W, H ≥ 1".into(),
            ));
        }
        let img = qwen3vl_processor::RgbImage::from_fn(w, h, |x, y| {
            let v = ((x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8);
            [v.0, v.1, ((x ^ y) & 0xFF) as u8].into()
        });
        let input = engine.processor.preprocess_image(&img)?;
        let patches = input.grid_thw.iter().product::<usize>();
        vision_flops = vision_flops_for(cfg, patches);
        // Warm-up on the same image is not done: the first call is what a user waits for.
        let t0 = Instant::now();
        let input = VisionInput {
            pixel_values: input.pixel_values,
            grid_thw: input.grid_thw,
        };
        let v = model.encode_images(std::slice::from_ref(&input))?;
        vision_s = t0.elapsed().as_secs_f64();
        image_tokens = v.n_tokens(t.hidden_size);
    }

    // 2. Prefill of a synthetic prompt.
    let n = opts.prompt_tokens;
    let total = n + opts.gen_tokens;
    if total > engine.context_len() {
        return Err(EngineError::Input(format!(
            "--prompt-tokens {n} + --gen-tokens {} is over the context of {} tokens",
            opts.gen_tokens,
            engine.context_len()
        )));
    }
    let ids: Vec<u32> = (0..n)
        .map(|i| 1000 + ((i as u64 * 7919) % 90_000) as u32)
        .collect();
    let pos = Positions::text(0, n);
    let mut cache = KvCache::new(t, total);
    let mut state = RunState::new();
    let t0 = Instant::now();
    let mut id = argmax(model.forward(
        &ids,
        pos.as_ref(),
        None,
        &mut cache,
        &mut state,
        Logits::Last,
    )?)
    .unwrap_or(0);
    let prefill_s = t0.elapsed().as_secs_f64();

    // 3. Greedy decode, EOS ignored. With the roofline, read bandwidth is probed at the boundaries of 8
    //    segments of the decode, over the lm head's packed weight (memory decode itself streams; nothing
    //    is allocated): on a shared machine the bandwidth left to us changes by 2x within seconds, so each
    //    segment is compared with the mean of the probes just before and just after it, and the limit is
    //    the time-weighted mean over the segments.
    let probe_mem = model.lm_head.weight.as_bytes();
    let probe = || {
        opts.roofline
            .then(|| roofline::read_bandwidth_of(&k, probe_mem, 2))
    };
    let seg_len = if opts.roofline {
        opts.gen_tokens.div_ceil(8)
    } else {
        opts.gen_tokens
    };
    let (mut decode_s, mut bw_seconds, mut done) = (0.0, 0.0, 0);
    let mut bw_before = probe();
    while done < opts.gen_tokens {
        let seg = seg_len.min(opts.gen_tokens - done);
        let t0 = Instant::now();
        for _ in 0..seg {
            let p = cache.len() as i64;
            let logits = model.forward(
                &[id],
                PositionsRef::single(&p),
                None,
                &mut cache,
                &mut state,
                Logits::Last,
            )?;
            id = argmax(logits).unwrap_or(0);
        }
        let dt = t0.elapsed().as_secs_f64();
        let bw_after = probe();
        decode_s += dt;
        bw_seconds += dt * (bw_before.unwrap_or(0.0) + bw_after.unwrap_or(0.0)) / 2.0;
        bw_before = bw_after;
        done += seg;
    }
    let read_gbps = (bw_seconds > 0.0).then(|| bw_seconds / decode_s.max(1e-12));
    // Peak memory of the work itself.
    let peak_rss_mib = peak_rss_mib().unwrap_or(0.0);
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let (checkpoint_mib, kv_cache_mib) =
        (mib(model.checkpoint_bytes()), mib(cache.reserved_bytes()));

    // 4. Work and limits.
    let h = t.hidden_size as u64;
    let q = (t.num_attention_heads * t.head_dim) as u64;
    let kv = (t.num_key_value_heads * t.head_dim) as u64;
    let i = t.intermediate_size as u64;
    let layers = t.num_hidden_layers as u64;
    let linear_params = layers * (h * q + 2 * h * kv + q * h + 3 * h * i);
    let head_params = t.vocab_size as u64 * h;
    // Bytes of the packed weights each decode step streams: every text linear and the lm head.
    let weight_bytes_per_token: u64 =
        model.language_model.linear_weight_bytes() + model.lm_head.weight.bytes() as u64;
    let mean_ctx = n as u64 + (opts.gen_tokens as u64).div_ceil(2);
    let kv_bytes_per_token = 2 * layers * kv * 4 * mean_ctx;
    let nn = n as f64;
    let prefill_flops = 2.0 * linear_params as f64 * nn
        + layers as f64 * 4.0 * q as f64 * nn * (nn + 1.0) / 2.0
        + 2.0 * head_params as f64;
    let decode_tok_s = opts.gen_tokens as f64 / decode_s.max(1e-12);
    let decode_gbps = (weight_bytes_per_token + kv_bytes_per_token) as f64 * decode_tok_s / 1e9;
    let prefill_gflops = prefill_flops / prefill_s.max(1e-12) / 1e9;
    let vision_gflops = if vision_s > 0.0 {
        vision_flops / vision_s / 1e9
    } else {
        0.0
    };

    // The compute peak of the arithmetic the model runs (bandwidth was probed during decode).
    // With AMX, the large matmuls of prefill and vision run on tiles: their peak is the limit.
    let peak = opts.roofline.then(|| match model.precision() {
        Precision::Fast if k.amx() => {
            roofline::amx_peak(&k).unwrap_or_else(|| roofline::fma_peak(&k))
        }
        Precision::Fast if k.bf16_dot() => {
            roofline::bf16_dot_peak(&k).unwrap_or_else(|| roofline::fma_peak(&k))
        }
        Precision::Fast => roofline::fma_peak(&k),
        Precision::F32 => roofline::fma_peak(&k),
    });
    let pct = |x: f64, lim: Option<f64>| lim.filter(|l| *l > 0.0).map(|l| 100.0 * x / l);
    Ok(BenchReport {
        isa: k.isa().name().to_string(),
        threads: k.threads(),
        precision: format!("{:?}", model.precision()).to_lowercase(),
        load_s: engine.load_seconds,
        vision_s,
        image_tokens,
        vision_gflops,
        prefill_tokens: n,
        prefill_s,
        prefill_tok_s: nn / prefill_s.max(1e-12),
        prefill_gflops,
        decode_tokens: opts.gen_tokens,
        decode_s,
        decode_tok_s,
        weight_bytes_per_token,
        kv_bytes_per_token,
        decode_gbps,
        peak_rss_mib,
        checkpoint_mib,
        kv_cache_mib,
        rss_over_checkpoint_kv: peak_rss_mib / (checkpoint_mib + kv_cache_mib).max(1e-9),
        read_gbps,
        peak_gflops: peak,
        decode_pct_of_bandwidth: pct(decode_gbps, read_gbps),
        prefill_pct_of_peak: pct(prefill_gflops, peak),
        vision_pct_of_peak: if vision_s > 0.0 {
            pct(vision_gflops, peak)
        } else {
            None
        },
        decode_tok_s_limit: read_gbps
            .map(|bw| bw * 1e9 / (weight_bytes_per_token + kv_bytes_per_token) as f64),
    })
}

/// Figures of `qwen3vl bench --concurrency N`: decode of one sequence alone against N sequences decoded
/// together (one batched forward per step), after the same synthetic prompts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConcurrencyReport {
    pub isa: String,
    pub threads: usize,
    pub precision: String,
    pub concurrency: usize,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// One sequence alone: tok/s and ms per token.
    pub single_tok_s: f64,
    pub single_ms_per_token: f64,
    /// N sequences together: tokens of all sequences per second, and ms per step (each sequence's
    /// per-token latency).
    pub aggregate_tok_s: f64,
    pub batch_ms_per_token: f64,
    /// aggregate_tok_s / single_tok_s
    pub speedup: f64,
    /// batch_ms_per_token / single_ms_per_token
    pub latency_ratio: f64,
}

/// Decodes `gen_tokens` greedy tokens of one sequence, then of `n` sequences at once, each after its own
/// `prompt_tokens`-token synthetic prompt.
pub fn run_concurrent(
    engine: &Engine,
    n: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
) -> Result<ConcurrencyReport, EngineError> {
    let model = &engine.model;
    let t = &model.config().text;
    if n == 0 || prompt_tokens == 0 || gen_tokens == 0 {
        return Err(EngineError::Input(
            "--concurrency, --prompt-tokens and --gen-tokens must be at least 1".into(),
        ));
    }
    let total = prompt_tokens + gen_tokens;
    if total > engine.context_len() {
        return Err(EngineError::Input(format!(
            "--prompt-tokens {prompt_tokens} + --gen-tokens {gen_tokens} is over the context of {} tokens",
            engine.context_len()
        )));
    }
    let mut state = RunState::new();
    // 1. Prefill 1 + n sequences (different prompts), one at a time.
    let mut caches = Vec::with_capacity(n + 1);
    let mut next = Vec::with_capacity(n + 1);
    for s in 0..=n {
        let ids: Vec<u32> = (0..prompt_tokens)
            .map(|i| 1000 + ((i as u64 * 7919 + s as u64 * 104_729) % 90_000) as u32)
            .collect();
        let mut cache = KvCache::new(t, total);
        let l = model.forward(
            &ids,
            Positions::text(0, prompt_tokens).as_ref(),
            None,
            &mut cache,
            &mut state,
            Logits::Last,
        )?;
        next.push(argmax(l).unwrap_or(0));
        caches.push(cache);
    }
    let (solo, batch) = caches.split_at_mut(1);
    // 2. One sequence alone.
    let t0 = Instant::now();
    let mut id = next[0];
    for _ in 0..gen_tokens {
        let p = solo[0].len() as i64;
        let l = model.forward(
            &[id],
            PositionsRef::single(&p),
            None,
            &mut solo[0],
            &mut state,
            Logits::Last,
        )?;
        id = argmax(l).unwrap_or(0);
    }
    let single_s = t0.elapsed().as_secs_f64();
    // 3. n sequences, one batched forward per step.
    let mut ids = next[1..].to_vec();
    let mut pos = vec![0i64; n];
    let v = model.vocab_size();
    let t0 = Instant::now();
    for _ in 0..gen_tokens {
        for (p, c) in pos.iter_mut().zip(batch.iter()) {
            *p = c.len() as i64;
        }
        let mut seqs: Vec<Seq> = ids
            .iter()
            .zip(&pos)
            .zip(batch.iter_mut())
            .map(|((id, p), c)| Seq::decode(id, p, c))
            .collect();
        let l = model.forward_batch(&mut seqs, &mut state)?;
        for (id, row) in ids.iter_mut().zip(l.chunks_exact(v)) {
            *id = argmax(row).unwrap_or(0);
        }
    }
    let batch_s = t0.elapsed().as_secs_f64();
    let k = model.kernels();
    let g = gen_tokens as f64;
    let single_tok_s = g / single_s.max(1e-12);
    let aggregate_tok_s = g * n as f64 / batch_s.max(1e-12);
    let (single_ms, batch_ms) = (1e3 * single_s / g, 1e3 * batch_s / g);
    Ok(ConcurrencyReport {
        isa: k.isa().name().to_string(),
        threads: k.threads(),
        precision: format!("{:?}", model.precision()).to_lowercase(),
        concurrency: n,
        prompt_tokens,
        gen_tokens,
        single_tok_s,
        single_ms_per_token: single_ms,
        aggregate_tok_s,
        batch_ms_per_token: batch_ms,
        speedup: aggregate_tok_s / single_tok_s.max(1e-12),
        latency_ratio: batch_ms / single_ms.max(1e-12),
    })
}

/// FLOPs of the vision tower on one image of `patches` patches.
pub fn vision_flops_for(cfg: &qwen3vl_model::Config, patches: usize) -> f64 {
    let v = &cfg.vision;
    let n = patches as f64;
    let d = v.hidden_size as f64;
    let f = v.intermediate_size as f64;
    let dm = 4.0 * d;
    let o = v.out_hidden_size as f64;
    let patch = 2.0 * n * 1536.0 * d;
    let block = 2.0 * n * (4.0 * d * d + 2.0 * d * f) + 4.0 * n * n * d;
    let mergers =
        (1 + v.deepstack_visual_indexes.len()) as f64 * 2.0 * (n / 4.0) * (dm * dm + dm * o);
    patch + v.depth as f64 * block + mergers
}

/// Peak resident set size (VmHWM of /proc/self/status) in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    vm_hwm_kb(&s).map(|kb| kb as f64 / 1024.0)
}

fn vm_hwm_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_hwm() {
        let s = "Name:\tqwen3vl\nVmPeak:\t 123 kB\nVmHWM:\t   45678 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(vm_hwm_kb(s), Some(45678));
        assert_eq!(vm_hwm_kb("VmRSS: 1 kB"), None);
        assert!(peak_rss_mib().unwrap() > 0.0);
    }
}
