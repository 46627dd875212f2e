//! `qwen3vl chat`: the interactive multi-turn REPL.
//!
//! On a terminal the line is read with a line editor (rustyline: arrow keys, history kept in
//! `~/.qwen3vl_history`); Ctrl-C clears the line being typed, or stops the answer being written and keeps
//! the conversation; Ctrl-D leaves. From a pipe, lines are read as they come; a line that is not UTF-8 is
//! reported and skipped.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};
use qwen3vl_engine::session::EngineError;
use qwen3vl_processor::Message;

use crate::args::{ModelArgs, SamplingArgs};
use crate::video_args::VideoSourceArgs;
use crate::{
    generate_params, image_tokens, load_engine, stop_spinner, summary, user_message, video_tokens,
    working_spinner,
};
use qwen3vl_processor::{Content, VideoInput};

const HELP: &str =
    "/image PATH  attach an image to the next message (quotes and ~ are understood)\n\
/video PATH  attach a video to the next message (GIF/WebP/APNG, a frame directory; MP4/MKV/WebM/MOV with ffmpeg)\n\
/reset       clear the conversation\n\
/help        this list\n\
/quit        leave (or Ctrl-D)\n\
Ctrl-C stops an answer; a message starting with / is written //.";

/// What one input line asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    Empty,
    Message(String),
    Image(PathBuf),
    Video(PathBuf),
    Reset,
    Help,
    Quit,
    /// A usage error to show (unknown command, /image without a path).
    Refused(String),
}

/// Parse one input line (`home`: the directory `~` stands for).
pub(crate) fn parse_line(line: &str, home: Option<&Path>) -> Line {
    let text = line.trim();
    if text.is_empty() {
        return Line::Empty;
    }
    if let Some(rest) = text.strip_prefix("//") {
        return Line::Message(format!("/{rest}"));
    }
    let Some(cmd_line) = text.strip_prefix('/') else {
        return Line::Message(text.to_string());
    };
    let (cmd, arg) = cmd_line
        .split_once(char::is_whitespace)
        .map_or((cmd_line, ""), |(c, a)| (c, a.trim()));
    match cmd {
        "image" => match image_path(arg, home) {
            Some(p) => Line::Image(p),
            None => Line::Refused("usage: /image PATH".into()),
        },
        "video" => match image_path(arg, home) {
            Some(p) => Line::Video(p),
            None => Line::Refused("usage: /video PATH".into()),
        },
        "reset" | "clear" => Line::Reset,
        "help" | "?" => Line::Help,
        "quit" | "exit" => Line::Quit,
        _ => Line::Refused(format!(
            "unknown command /{cmd} (type /help; to send a message starting with /, write //)"
        )),
    }
}

/// The path of an `/image` or `/video` argument: surrounding quotes removed, a leading `~` expanded.
fn image_path(arg: &str, home: Option<&Path>) -> Option<PathBuf> {
    let arg = arg.trim();
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|&q| {
            arg.strip_prefix(q)
                .and_then(|a| a.strip_suffix(q))
                .filter(|_| arg.len() >= 2)
        })
        .unwrap_or(arg);
    if unquoted.is_empty() {
        return None;
    }
    if let (Some(home), Some(rest)) = (home, unquoted.strip_prefix('~')) {
        if rest.is_empty() {
            return Some(home.to_path_buf());
        }
        if let Some(rest) = rest.strip_prefix('/') {
            return Some(home.join(rest));
        }
    }
    Some(PathBuf::from(unquoted))
}

/// Set by SIGINT while an answer is being written.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// While alive, Ctrl-C sets [`STOP`] instead of ending the process.
struct CatchCtrlC(libc::sighandler_t);

impl CatchCtrlC {
    fn new() -> CatchCtrlC {
        STOP.store(false, Ordering::SeqCst);
        let handler = on_sigint as extern "C" fn(libc::c_int);
        // Safety: the handler only stores to an atomic, which is async-signal-safe.
        CatchCtrlC(unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) })
    }
}

impl Drop for CatchCtrlC {
    fn drop(&mut self) {
        // Safety: restores the disposition saved in `new`.
        unsafe { libc::signal(libc::SIGINT, self.0) };
    }
}

/// Where input lines come from.
enum Input {
    Editor(Box<rustyline::DefaultEditor>, Option<PathBuf>),
    Pipe(std::io::StdinLock<'static>),
}

enum Read {
    Line(String),
    /// Ctrl-C at the prompt: nothing to do.
    Interrupted,
    /// Not a usable line (shown, then skipped).
    Bad(String),
    End,
}

impl Input {
    fn read(&mut self) -> Read {
        match self {
            Input::Editor(ed, _) => match ed.readline("> ") {
                Ok(l) => {
                    if !l.trim().is_empty() {
                        let _ = ed.add_history_entry(l.as_str());
                    }
                    Read::Line(l)
                }
                Err(rustyline::error::ReadlineError::Interrupted) => Read::Interrupted,
                Err(rustyline::error::ReadlineError::Eof) => Read::End,
                Err(e) => Read::Bad(format!("reading the line: {e}")),
            },
            Input::Pipe(stdin) => {
                let mut buf = Vec::new();
                match stdin.read_until(b'\n', &mut buf) {
                    Ok(0) => Read::End,
                    Ok(_) => match String::from_utf8(buf) {
                        Ok(s) => Read::Line(s),
                        Err(_) => Read::Bad("the line is not UTF-8; skipped".into()),
                    },
                    Err(e) => Read::Bad(format!("reading standard input: {e}")),
                }
            }
        }
    }

    fn save_history(&mut self) {
        if let Input::Editor(ed, Some(path)) = self {
            let _ = ed.save_history(path);
        }
    }
}

pub(crate) fn cmd_chat(
    args: &ModelArgs,
    system: Option<&str>,
    sampling: &SamplingArgs,
    video: &VideoSourceArgs,
) -> Result<()> {
    use std::io::{IsTerminal, Write};
    crate::check_sampling(sampling)?;
    if args.context == Some(0) {
        bail!("--context must be at least 1");
    }
    let video_opts = video.check()?;
    let engine = load_engine(args)?;
    // --video: loaded now (a bad file ends the command like in generate), sent with the first message.
    let mut pending_videos: Vec<VideoInput> = video.load(&engine)?;
    for (path, v) in video.videos.iter().zip(&pending_videos) {
        say_video(path, v, video_tokens(&engine, v), "the first message");
    }
    let context = args.context.unwrap_or(32768).min(engine.context_len());
    let mut session = engine.session(context);
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut input = if std::io::stdin().is_terminal() {
        let mut ed = rustyline::DefaultEditor::new()?;
        let hist = home.as_ref().map(|h| h.join(".qwen3vl_history"));
        if let Some(h) = &hist {
            let _ = ed.load_history(h);
        }
        eprintln!(
            "qwen3vl chat ({} tokens of context). /image PATH attaches an image, /video PATH a video, /help lists commands, Ctrl-D leaves.",
            session.max_len()
        );
        Input::Editor(Box::new(ed), hist)
    } else {
        Input::Pipe(std::io::stdin().lock())
    };
    let mut pending_images: Vec<(PathBuf, qwen3vl_processor::ImageInput)> = Vec::new();
    let mut first_turn = true;
    let mut bad_reads = 0;
    loop {
        let line = match input.read() {
            Read::Line(l) => {
                bad_reads = 0;
                l
            }
            Read::Interrupted => continue,
            Read::Bad(msg) => {
                eprintln!("error: {msg}");
                bad_reads += 1;
                if bad_reads >= 100 {
                    bail!("standard input keeps failing: {msg}");
                }
                continue;
            }
            Read::End => break,
        };
        let text = match parse_line(&line, home.as_deref()) {
            Line::Empty => continue,
            Line::Quit => break,
            Line::Help => {
                eprintln!("{HELP}");
                continue;
            }
            Line::Refused(msg) => {
                eprintln!("{msg}");
                continue;
            }
            Line::Reset => {
                session.reset();
                pending_images.clear();
                pending_videos.clear();
                first_turn = true;
                eprintln!("[conversation cleared]");
                continue;
            }
            Line::Image(path) => {
                match engine.load_image(&path) {
                    Ok(img) => {
                        eprintln!(
                            "[image {} attached to the next message: {} image tokens]",
                            path.display(),
                            image_tokens(&engine, &img)
                        );
                        pending_images.push((path, img));
                    }
                    // A bad image is reported and the chat goes on.
                    Err(e) => eprintln!("error: {e}"),
                }
                continue;
            }
            Line::Video(path) => {
                match engine.load_video(&path, &video_opts) {
                    Ok(v) => {
                        say_video(&path, &v, video_tokens(&engine, &v), "the next message");
                        pending_videos.push(v);
                    }
                    // A bad video is reported and the chat goes on.
                    Err(e) => eprintln!("error: {e}"),
                }
                continue;
            }
            Line::Message(t) => t,
        };
        let mut messages = Vec::new();
        if first_turn {
            if let Some(s) = system {
                messages.push(Message::text("system", s));
            }
        }
        // Images, then videos, then the text (the order of generate).
        let mut user = user_message(pending_images.len(), &text);
        let at = user.content.len() - 1;
        user.content.splice(
            at..at,
            std::iter::repeat_n(Content::Video, pending_videos.len()),
        );
        messages.push(user);
        let pixels: Vec<_> = pending_images.iter().map(|(_, p)| p.clone()).collect();
        // max_tokens unset: what is left of the context after this turn's tokens.
        let max_tokens = sampling.max_tokens;
        let params = generate_params(&engine.generation_config, sampling, max_tokens);
        let prepared =
            match session.prepare_media(&messages, &pixels, &pending_videos, params.max_tokens) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    continue;
                }
            };
        let spinner = if std::io::stderr().is_terminal() {
            working_spinner(
                prepared.tokens.len(),
                pixels
                    .iter()
                    .map(|p| image_tokens(&engine, p))
                    .sum::<usize>()
                    + pending_videos
                        .iter()
                        .map(|v| video_tokens(&engine, v))
                        .sum::<usize>(),
            )
        } else {
            None
        };
        crate::progress::observe(&mut session, &spinner);
        let mut out = std::io::stdout();
        let mut sink = |s: &str| -> Result<(), EngineError> {
            stop_spinner(&spinner);
            if STOP.load(Ordering::SeqCst) {
                return Err(EngineError::Output(std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    "stopped by Ctrl-C",
                )));
            }
            out.write_all(s.as_bytes())?;
            out.flush()?;
            Ok(())
        };
        let catch = CatchCtrlC::new();
        let r = session.run(prepared, &params, &mut sink);
        drop(catch);
        stop_spinner(&spinner);
        match r {
            Ok(g) => {
                println!();
                first_turn = false;
                pending_images.clear();
                pending_videos.clear();
                eprintln!("[{}]", summary(0.0, &g.stats, g.finish.as_str()));
            }
            Err(EngineError::Output(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                println!();
                first_turn = false;
                pending_images.clear();
                pending_videos.clear();
                eprintln!("[stopped; the conversation goes on]");
            }
            Err(EngineError::Input(msg)) => {
                // Too long for the context etc.: the conversation is unchanged; say so and go on.
                eprintln!("error: {msg} (use /reset to start over)");
            }
            Err(e) => {
                input.save_history();
                return Err(e.into());
            }
        }
    }
    input.save_history();
    Ok(())
}

/// Say what a video costs once it is loaded: sampled frames, frame groups, visual tokens.
fn say_video(path: &Path, v: &VideoInput, tokens: usize, goes_with: &str) {
    eprintln!(
        "[video {} attached to {goes_with}: {} of {} frames sampled, {} frame groups, {tokens} video tokens]",
        path.display(),
        v.frame_indices.len(),
        v.source_frames,
        v.timestamps.len(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_paths_and_messages() {
        let home = Path::new("/home/u");
        let p = |s: &str| parse_line(s, Some(home));
        assert_eq!(p("  "), Line::Empty);
        assert_eq!(p("hello"), Line::Message("hello".into()));
        assert_eq!(p("/image ~/x.png"), Line::Image("/home/u/x.png".into()));
        assert_eq!(p("/image \"my cat.png\""), Line::Image("my cat.png".into()));
        assert_eq!(
            p("/image '~/a b.jpg'"),
            Line::Image("/home/u/a b.jpg".into())
        );
        assert_eq!(p("/image  /tmp/y.png "), Line::Image("/tmp/y.png".into()));
        assert_eq!(
            p("/video ~/clip.mp4"),
            Line::Video("/home/u/clip.mp4".into())
        );
        assert!(matches!(p("/video"), Line::Refused(_)));
        assert_eq!(p("/image ~user/x"), Line::Image("~user/x".into()));
        assert!(matches!(p("/image"), Line::Refused(_)));
        assert!(matches!(p("/image \"\""), Line::Refused(_)));
        assert_eq!(p("/reset"), Line::Reset);
        assert_eq!(p("/quit"), Line::Quit);
        assert_eq!(p("/exit"), Line::Quit);
        assert_eq!(p("/help"), Line::Help);
        match p("/imagine a cat") {
            Line::Refused(m) => assert!(m.contains("unknown command /imagine"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            p("//usr is a folder"),
            Line::Message("/usr is a folder".into())
        );
    }
}
