//! `qwen3vl chat`: the interactive multi-turn REPL.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use qwen3vl_engine::session::EngineError;
use qwen3vl_processor::Message;

use crate::args::{ModelArgs, SamplingArgs};
use crate::{generate_params, load_engine, stdout_sink, summary, user_message};

pub(crate) fn cmd_chat(
    args: &ModelArgs,
    system: Option<&str>,
    sampling: &SamplingArgs,
) -> Result<()> {
    use std::io::{BufRead, IsTerminal};
    if sampling.max_tokens == Some(0) {
        bail!("--max-tokens must be at least 1");
    }
    let engine = load_engine(args)?;
    let context = args.context.unwrap_or(32768).clamp(1, engine.context_len());
    let mut session = engine.session(context);
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "qwen3vl chat ({} tokens of context). /image PATH attaches an image, /reset clears, /quit leaves.",
            session.max_len()
        );
    }
    let mut pending_images: Vec<(PathBuf, qwen3vl_processor::ImageInput)> = Vec::new();
    let mut first_turn = true;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading standard input")?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if let Some(path) = text
            .strip_prefix("/image ")
            .or_else(|| (text == "/image").then_some(""))
        {
            let path = Path::new(path.trim());
            if path.as_os_str().is_empty() {
                eprintln!("usage: /image PATH");
                continue;
            }
            match engine.load_image(path) {
                Ok(img) => {
                    eprintln!("[image {} attached to the next message]", path.display());
                    pending_images.push((path.to_path_buf(), img));
                }
                // A bad image is reported and the chat goes on.
                Err(e) => eprintln!("error: {e}"),
            }
            continue;
        }
        match text {
            "/reset" => {
                session.reset();
                pending_images.clear();
                first_turn = true;
                eprintln!("[conversation cleared]");
                continue;
            }
            "/quit" | "/exit" => break,
            "/help" => {
                eprintln!("/image PATH  attach an image to the next message\n/reset  clear the conversation\n/quit  leave");
                continue;
            }
            _ => {}
        }
        let mut messages = Vec::new();
        if first_turn {
            if let Some(s) = system {
                messages.push(Message::text("system", s));
            }
        }
        messages.push(user_message(pending_images.len(), text));
        let pixels: Vec<_> = pending_images.iter().map(|(_, p)| p.clone()).collect();
        // Default budget: what is left of the context after this turn's tokens.
        let max_tokens = match sampling.max_tokens {
            Some(n) => n,
            None => {
                let turn = match session.turn_len(&messages, &pixels) {
                    Ok(n) => n,
                    Err(e) => {
                        eprintln!("error: {e}");
                        continue;
                    }
                };
                let room = session.max_len().saturating_sub(session.len() + turn);
                if room == 0 {
                    eprintln!(
                        "error: this message does not fit in what is left of the context ({} of {} tokens used; use /reset to start over)",
                        session.len(),
                        session.max_len()
                    );
                    continue;
                }
                engine
                    .generation_config
                    .max_new_tokens
                    .unwrap_or(2048)
                    .min(room)
            }
        };
        let params = generate_params(&engine.generation_config, sampling, max_tokens);
        let mut sink = stdout_sink();
        match session.generate(&messages, &pixels, &params, &mut sink) {
            Ok(g) => {
                println!();
                first_turn = false;
                pending_images.clear();
                eprintln!("[{}]", summary(0.0, &g.stats, g.finish.as_str()));
            }
            Err(EngineError::Input(msg)) => {
                // Too long for the context etc.: the conversation is unchanged; say so and go on.
                eprintln!("error: {msg} (use /reset to start over)");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
