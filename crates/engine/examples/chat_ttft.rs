//! Time to first token of a chat's second turn resent in full (same image, the history, one new question)
//! against the first turn's, through the scheduler's prefix cache.
//!
//! `cargo run --release -p qwen3vl-engine --example chat_ttft -- DIR [WxH]`

use std::sync::Arc;

use qwen3vl_engine::scheduler::{Request, Scheduler, SchedulerOptions};
use qwen3vl_engine::{Engine, EngineOptions, GenerateParams, SamplingParams};
use qwen3vl_processor::{Content, Message, RgbImage};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: chat_ttft DIR [WxH]")?;
    let (w, h) = match args.next() {
        Some(s) => {
            let (a, b) = s.split_once('x').ok_or("size is WxH")?;
            (a.parse()?, b.parse()?)
        }
        None => (640u32, 480u32),
    };
    let engine = Arc::new(Engine::load(dir.as_ref(), &EngineOptions::default())?);
    let img = RgbImage::from_fn(w, h, |x, y| {
        [(x % 256) as u8, (y % 256) as u8, ((x ^ y) & 0xFF) as u8].into()
    });
    let img = engine.processor.preprocess_image(&img)?;
    let user = |img: bool, text: &str| {
        let mut c = if img { vec![Content::Image] } else { vec![] };
        c.push(Content::Text(text.into()));
        Message::new("user", c)
    };
    let params = GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: Some(8),
        stop_strings: vec![],
        extra_eos: vec![],
    };
    let s = Scheduler::start(engine.clone(), SchedulerOptions::new(8192))?;
    let first = vec![user(true, "Describe this image in detail.")];
    let a = s
        .submit(Request {
            messages: first.clone(),
            images: vec![img.clone()],
            params: params.clone(),
        })?
        .wait()?;
    let mut second = first;
    second.push(Message::text(
        "assistant",
        &engine.processor.decode(&a.tokens)?,
    ));
    second.push(user(false, "What colours dominate?"));
    let b = s
        .submit(Request {
            messages: second,
            images: vec![img],
            params,
        })?
        .wait()?;
    println!(
        "turn 1: {} prompt tokens ({} image tokens), ttft {:.2} s",
        a.stats.prompt_tokens, a.stats.image_tokens, a.stats.ttft_seconds
    );
    println!(
        "turn 2: {} prompt tokens, {} reused from the prefix cache, ttft {:.2} s = {:.1}% of turn 1",
        b.stats.prompt_tokens,
        b.stats.cached_tokens,
        b.stats.ttft_seconds,
        100.0 * b.stats.ttft_seconds / a.stats.ttft_seconds.max(1e-9)
    );
    Ok(())
}
