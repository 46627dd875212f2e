//! The progress of a turn's vision tower and prefill on the working spinner (stderr, a terminal only):
//! the engine reports [`Progress`] to an observer; this file turns it into the spinner's message.

use std::sync::Arc;

use qwen3vl_engine::{Progress, Session};

/// What the spinner says at `p`: `vision 3/24 blocks (1200 patches)`, `prefill 8192 tokens: layer 12/28`.
pub(crate) fn message(p: Progress) -> String {
    match p {
        Progress::Vision {
            patches,
            done,
            total,
        } => format!("vision {done}/{total} blocks ({patches} patches)"),
        Progress::Decoder {
            tokens,
            done,
            total,
        } => format!("prefill {tokens} tokens: layer {done}/{total}"),
    }
}

/// Shows the session's progress on `spinner` (None: stderr is not a terminal, nothing is reported).
pub(crate) fn observe(session: &mut Session, spinner: &Option<indicatif::ProgressBar>) {
    session.set_progress(
        spinner.clone().map(|b| -> qwen3vl_engine::ProgressFn {
            Arc::new(move |p| b.set_message(message(p)))
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_stage_and_the_fraction() {
        let v = Progress::Vision {
            patches: 1200,
            done: 3,
            total: 24,
        };
        assert_eq!(message(v), "vision 3/24 blocks (1200 patches)");
        let d = Progress::Decoder {
            tokens: 8192,
            done: 12,
            total: 28,
        };
        assert_eq!(message(d), "prefill 8192 tokens: layer 12/28");
    }
}
