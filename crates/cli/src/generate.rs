//! `qwen3vl generate`: one prompt (with images and videos) answered, streamed to stdout, with a timing
//! summary on stderr; and the request pieces `chat` shares (parameters, the user message, the summary).

use super::*;

/// The request's settings: command-line values over generation_config.json.
pub(crate) fn generate_params(
    g: &GenerationConfig,
    a: &SamplingArgs,
    max_tokens: Option<usize>,
) -> GenerateParams {
    let mut p = g.sampling_params(a.seed);
    if let Some(t) = a.temperature {
        p.temperature = t;
    }
    if let Some(k) = a.top_k {
        p.top_k = k;
    }
    if let Some(x) = a.top_p {
        p.top_p = x;
    }
    if let Some(x) = a.min_p {
        p.min_p = x;
    }
    if let Some(x) = a.repetition_penalty {
        p.repetition_penalty = x;
    }
    if let Some(x) = a.presence_penalty {
        p.presence_penalty = x;
    }
    if let Some(x) = a.frequency_penalty {
        p.frequency_penalty = x;
    }
    GenerateParams {
        sampling: p,
        max_tokens,
        stop_strings: a.stop.clone(),
        extra_eos: Vec::new(),
    }
}

/// The sampling options checked before anything loads (a bad value fails in a moment, not after the
/// model has loaded): each override against its range, on the defaults of an empty generation_config.
pub(crate) fn check_sampling(a: &SamplingArgs) -> Result<()> {
    if a.max_tokens == Some(0) {
        bail!("--max-tokens must be at least 1");
    }
    generate_params(&GenerationConfig::default(), a, a.max_tokens)
        .sampling
        .validate()?;
    Ok(())
}

/// The user message: images first, then the text.
pub(crate) fn user_message(n_images: usize, text: &str) -> Message {
    let mut content = vec![Content::Image; n_images];
    content.push(Content::Text(text.to_string()));
    Message::new("user", content)
}

pub(crate) fn stdout_sink() -> impl FnMut(&str) -> Result<(), EngineError> {
    let mut out = std::io::stdout();
    move |s: &str| {
        out.write_all(s.as_bytes())?;
        out.flush()?;
        Ok(())
    }
}

pub(crate) fn cmd_generate(
    args: &ModelArgs,
    images: &[PathBuf],
    system: Option<&str>,
    prompt: &str,
    sampling: &SamplingArgs,
    print_ids: bool,
    video: &video_args::VideoArgs,
) -> Result<()> {
    check_sampling(sampling)?;
    if args.context == Some(0) {
        bail!("--context must be at least 1");
    }
    let prompt = if prompt == "-" {
        read_prompt_stdin()?
    } else {
        prompt.to_string()
    };
    let prompt = prompt.as_str();
    // Inputs are checked before the model loads: a missing or bad image fails in a moment, not after it.
    let decoded = images
        .iter()
        .map(|p| qwen3vl_processor::decode::read_image_file(p, &Default::default()))
        .collect::<Result<Vec<_>, _>>()?;
    let engine = load_engine(args)?;
    let pixels = decoded
        .iter()
        .map(|img| engine.processor.preprocess_image(img))
        .collect::<Result<Vec<_>, _>>()?;
    for (path, img) in images.iter().zip(&pixels) {
        say_image_cost(&engine, path, img);
    }
    let videos = video.load(&engine, images.len())?;
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(Message::text("system", s));
    }
    let mut user = user_message(images.len(), prompt);
    let at = user.content.len() - 1;
    user.content
        .splice(at..at, std::iter::repeat_n(Content::Video, videos.len()));
    messages.push(user);
    // One request path: the prompt is prepared once, the KV cache sized to prompt + answer.
    let context = args.context.unwrap_or(usize::MAX).min(engine.context_len());
    let pixels_tokens: usize = pixels.iter().map(|p| image_tokens(&engine, p)).sum();
    let prepared = engine.prepare_media(
        &messages,
        pixels,
        videos,
        History::default(),
        sampling.max_tokens,
        context,
    )?;
    let params = generate_params(
        &engine.generation_config,
        sampling,
        Some(prepared.max_tokens),
    );
    let mut session = engine.session(prepared.kv_tokens());
    let image_tokens: usize = pixels_tokens;
    let spinner = working_spinner(prepared.tokens.len(), image_tokens);
    progress::observe(&mut session, &spinner);
    let mut out = stdout_sink();
    let mut sink = |s: &str| {
        stop_spinner(&spinner);
        out(s)
    };
    let g = session.run(prepared, &params, &mut sink);
    stop_spinner(&spinner);
    let g = g?;
    println!();
    if print_ids {
        eprintln!("ids: {:?}", g.tokens);
    }
    video.after_answer(&engine, images, &g.text)?;
    eprintln!(
        "{}",
        summary(engine.load_seconds, &g.stats, g.finish.as_str())
    );
    Ok(())
}

/// Tokens the vision tower makes of one preprocessed image.
/// Visual tokens of a video: t·h·w / merge² over all its frame groups.
pub(crate) fn video_tokens(engine: &Engine, v: &qwen3vl_processor::VideoInput) -> usize {
    image_tokens(engine, &v.visual)
}

pub(crate) fn image_tokens(engine: &Engine, img: &qwen3vl_processor::ImageInput) -> usize {
    let m = engine.processor.image_config().map_or(1, |c| c.merge_size);
    let [t, h, w] = img.grid_thw;
    t * h * w / (m * m).max(1)
}

/// On a terminal, a spinner with the elapsed time while the vision tower and the prefill run (nothing is
/// printed until the first answer text, which can take minutes for a large image).
pub(crate) fn working_spinner(
    prompt_tokens: usize,
    image_tokens: usize,
) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        b.set_style(style);
    }
    b.set_message(if image_tokens > 0 {
        format!("encoding {image_tokens} image tokens, then reading {prompt_tokens} prompt tokens")
    } else {
        format!("reading {prompt_tokens} prompt tokens")
    });
    b.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(b)
}

pub(crate) fn stop_spinner(b: &Option<indicatif::ProgressBar>) {
    if let Some(b) = b {
        if !b.is_finished() {
            b.finish_and_clear();
        }
    }
}

/// Say on stderr (a terminal only) what an image costs before the vision tower spends it.
pub(crate) fn say_image_cost(
    engine: &Engine,
    path: &std::path::Path,
    img: &qwen3vl_processor::ImageInput,
) {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return;
    }
    let tokens = image_tokens(engine, img);
    let [_, h, w] = img.grid_thw;
    eprintln!(
        "[image {}: {} image tokens ({}x{} patches)]",
        path.display(),
        tokens,
        w,
        h
    );
}

/// The prompt from standard input, refusing more than the engine accepts before reading it all.
pub(crate) fn read_prompt_stdin() -> Result<String> {
    use std::io::Read;
    let limit = qwen3vl_engine::session::MAX_PROMPT_BYTES;
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .context("reading the prompt from standard input")?;
    if buf.len() > limit {
        bail!("the prompt on standard input is over the limit of {limit} bytes");
    }
    String::from_utf8(buf).context("the prompt on standard input is not UTF-8")
}

pub(crate) fn summary(load_s: f64, s: &TurnStats, finish: &str) -> String {
    let mut parts = Vec::new();
    if load_s > 0.0 {
        parts.push(format!("load {load_s:.2} s"));
    }
    if s.image_tokens > 0 {
        parts.push(format!(
            "vision {:.2} s ({} image tokens)",
            s.vision_seconds, s.image_tokens
        ));
    }
    parts.push(format!(
        "prefill {} tokens {:.2} s ({:.1} tok/s)",
        s.prefill_tokens,
        s.prefill_seconds,
        s.prefill_tok_s()
    ));
    parts.push(format!(
        "decode {} tokens {:.2} s ({:.1} tok/s)",
        s.decode_steps,
        s.decode_seconds,
        s.decode_tok_s()
    ));
    parts.push(format!(
        "{} tokens generated, finish: {finish}",
        s.generated_tokens
    ));
    parts.join(" | ")
}
