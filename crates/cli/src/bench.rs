//! `qwen3vl bench`: end to end on a checkpoint (load, vision, prefill, decode against this machine's
//! limits), `--concurrency N`, and `bench serve`.

use super::*;

pub(crate) fn parse_image_size(s: &str) -> Result<Option<(u32, u32)>> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let (w, h) = s
        .split_once(['x', 'X'])
        .with_context(|| format!("--image-size {s:?}: expected WxH, e.g. 640x480, or none"))?;
    let w: u32 = w
        .trim()
        .parse()
        .with_context(|| format!("--image-size {s:?}: bad width"))?;
    let h: u32 = h
        .trim()
        .parse()
        .with_context(|| format!("--image-size {s:?}: bad height"))?;
    if w == 0 || h == 0 {
        bail!("--image-size {s:?}: width and height must be at least 1");
    }
    // The limits of a decoded image (a 100000x100000 synthetic image aborted on allocation).
    let lim = qwen3vl_processor::ImageLimits::default();
    if w > lim.max_width || h > lim.max_height {
        bail!(
            "--image-size {s:?}: over the limit of {}x{} (the image decode limits)",
            lim.max_width,
            lim.max_height
        );
    }
    Ok(Some((w, h)))
}

/// `bench serve`: the load generator of the server crate, its report as a table or JSON on stdout.
pub(crate) fn bench_serve(a: &args::BenchServeArgs) -> Result<()> {
    use qwen3vl_server::bench::{run, ServeBenchOptions};
    let report = run(&ServeBenchOptions {
        url: a.url.clone(),
        concurrency: a.concurrency,
        requests: a.requests,
        image: a.image.clone(),
        max_tokens: a.max_tokens,
        prompt: a.prompt.clone(),
        api_key: a.api_key.clone(),
        model: a.model.clone(),
        timeout: std::time::Duration::from_secs(a.timeout.max(1)),
    })?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", report.table())?;
    }
    Ok(())
}

pub(crate) fn cmd_bench(b: &BenchArgs) -> Result<()> {
    match &b.cmd {
        Some(BenchCmd::Roofline { json }) => return bench_kernels::roofline(*json),
        Some(BenchCmd::Matmul { json, threads }) => {
            check_threads(threads.unwrap_or(0))?;
            return bench_kernels::matmul(*json, *threads);
        }
        Some(BenchCmd::Serve(a)) => return bench_serve(a),
        None => {}
    }
    let Some(model) = &b.model else {
        bail!("bench needs --model DIR (or a subcommand: bench roofline, bench matmul)");
    };
    check_threads(b.threads)?;
    let image_size = parse_image_size(&b.image_size)?;
    let engine = load_engine(&ModelArgs {
        model: model.clone(),
        threads: b.threads,
        precision: b.precision,
        context: None,
        quant: b.quant,
        cache: b.cache.clone(),
    })?;
    if let Some(n) = b.concurrency {
        return bench_concurrency(&engine, n, b);
    }
    let r = qwen3vl_engine::bench::run(
        &engine,
        &qwen3vl_engine::bench::BenchOptions {
            prompt_tokens: b.prompt_tokens,
            gen_tokens: b.gen_tokens,
            image_size,
            roofline: !b.no_roofline,
        },
    )?;
    let mut out = std::io::stdout().lock();
    if b.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    let pct = |x: Option<f64>, what: &str| {
        x.map(|p| format!("  ({p:.0}% of {what})"))
            .unwrap_or_default()
    };
    writeln!(
        out,
        "{} on {} threads, {} precision",
        r.isa, r.threads, r.precision
    )?;
    writeln!(out, "load          {:8.2} s", r.load_s)?;
    if r.image_tokens > 0 {
        writeln!(
            out,
            "vision        {:8.2} s   {} image tokens, {:.1} GFLOP/s{}",
            r.vision_s,
            r.image_tokens,
            r.vision_gflops,
            pct(r.vision_pct_of_peak, "peak")
        )?;
    }
    writeln!(
        out,
        "prefill       {:8.1} tok/s  {} tokens in {:.2} s, {:.1} GFLOP/s{}",
        r.prefill_tok_s,
        r.prefill_tokens,
        r.prefill_s,
        r.prefill_gflops,
        pct(r.prefill_pct_of_peak, "peak")
    )?;
    writeln!(
        out,
        "decode        {:8.2} tok/s  {} tokens in {:.2} s, {:.1} GB/s{}{}",
        r.decode_tok_s,
        r.decode_tokens,
        r.decode_s,
        r.decode_gbps,
        pct(r.decode_pct_of_bandwidth, "read bandwidth"),
        r.decode_tok_s_limit
            .map(|l| format!("; bandwidth limit {l:.2} tok/s"))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "peak RSS      {:8.0} MiB  {:.2}x of checkpoint {:.0} MiB + KV cache {:.0} MiB",
        r.peak_rss_mib, r.rss_over_checkpoint_kv, r.checkpoint_mib, r.kv_cache_mib
    )?;
    if let (Some(bw), Some(pk)) = (r.read_gbps, r.peak_gflops) {
        writeln!(
            out,
            "roofline: read {bw:.1} GB/s (probed during decode), compute peak {pk:.0} GFLOP/s"
        )?;
    }
    Ok(())
}

/// `bench --concurrency N`: one sequence alone, then N decoded together.
pub(crate) fn bench_concurrency(engine: &Engine, n: usize, b: &BenchArgs) -> Result<()> {
    let r = qwen3vl_engine::bench::run_concurrent(engine, n, b.prompt_tokens, b.gen_tokens)?;
    let mut out = std::io::stdout().lock();
    if b.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{} on {} threads, {} precision; {} tokens decoded per sequence after {} prompt tokens",
        r.isa, r.threads, r.precision, r.gen_tokens, r.prompt_tokens
    )?;
    writeln!(
        out,
        "1 sequence    {:8.2} tok/s  {:7.1} ms per token",
        r.single_tok_s, r.single_ms_per_token
    )?;
    writeln!(
        out,
        "{:<2} sequences  {:8.2} tok/s  {:7.1} ms per token each  ({:.2}x the aggregate, {:.2}x the latency)",
        r.concurrency, r.aggregate_tok_s, r.batch_ms_per_token, r.speedup, r.latency_ratio
    )?;
    Ok(())
}
