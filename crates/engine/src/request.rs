//! The one request path: messages (text and images) -> the tokens, M-RoPE positions, vision input and token
//! budget the model runs. `generate`, `chat`, `logits`, the scheduler (and so the server and Python) all
//! prepare their requests here; a prompt is tokenized once.

use qwen3vl_model::{Positions, VisionInput};
use qwen3vl_processor::{Content, ImageInput, Message, VideoInput};

use crate::session::{Engine, EngineError};

/// Largest prompt text accepted before tokenization (RELIABILITY 11): a bound on tokenizer time
/// (about 3 s for 4 MiB on one loaded core).
pub const MAX_PROMPT_BYTES: usize = 4 << 20;

/// Bytes of prompt text worth tokenizing for a context of `context` tokens: 16 bytes per token (far above
/// any real text's average), at most [`MAX_PROMPT_BYTES`].
pub fn prompt_byte_limit(context: usize) -> usize {
    MAX_PROMPT_BYTES.min(context.saturating_mul(16))
}

/// Refuse prompt text over `limit` bytes before tokenizing it (RELIABILITY 11).
pub fn check_prompt_bytes(messages: &[Message], limit: usize) -> Result<(), EngineError> {
    let text_bytes: usize = messages
        .iter()
        .flat_map(|m| &m.content)
        .map(|c| match c {
            Content::Text(t) => t.len(),
            _ => 0,
        })
        .sum();
    if text_bytes > limit {
        return Err(EngineError::Input(format!(
            "the prompt text is {text_bytes} bytes, over the limit of {limit} bytes for this context"
        )));
    }
    Ok(())
}

/// What a sequence already holds when a request continues it (a chat session's earlier turns).
#[derive(Clone, Copy, Debug, Default)]
pub struct History<'a> {
    /// Tokens in the cache.
    pub len: usize,
    /// Accumulated M-RoPE delta of the cached tokens.
    pub rope_delta: i64,
    /// Tokens that close the previous answer, run before the new prompt.
    pub close: &'a [u32],
}

/// A request ready for the model.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// (l) tokens to run: the closing tokens of the history, then the prompt with image tokens expanded
    pub tokens: Vec<u32>,
    /// (3, l) absolute M-RoPE positions of `tokens` (continuing the history)
    pub positions: Positions,
    /// The images of the prompt, in order, for the vision tower
    pub vision: Vec<VisionInput>,
    /// Added to the cache length to get a decoded token's position (history's delta + this prompt's)
    pub rope_delta: i64,
    /// Most tokens to generate: the request's `max_tokens`, or everything that fits when it has none
    pub max_tokens: usize,
}

impl Prepared {
    /// Cache rows the request needs: its tokens and the tokens it may generate.
    pub fn kv_tokens(&self) -> usize {
        self.tokens.len() + self.max_tokens
    }
}

impl Engine {
    /// Prepares `messages` (whose image items are `images`, in order) to run after `history` in a sequence
    /// of at most `capacity` tokens. `max_tokens` None means as many as fit (at most the checkpoint's
    /// `generation_config.json` `max_new_tokens`, if it sets one). Refuses, with the numbers, a
    /// prompt that does not fit or a `max_tokens` of 0 or past the capacity.
    pub fn prepare(
        &self,
        messages: &[Message],
        images: Vec<ImageInput>,
        history: History,
        max_tokens: Option<usize>,
        capacity: usize,
    ) -> Result<Prepared, EngineError> {
        self.prepare_media(messages, images, Vec::new(), history, max_tokens, capacity)
    }

    /// [`Engine::prepare`] with videos: `videos` are the preprocessed videos of the messages' video items,
    /// in order. The vision inputs of the result hold images and videos in prompt order.
    pub fn prepare_media(
        &self,
        messages: &[Message],
        images: Vec<ImageInput>,
        videos: Vec<VideoInput>,
        history: History,
        max_tokens: Option<usize>,
        capacity: usize,
    ) -> Result<Prepared, EngineError> {
        if max_tokens == Some(0) {
            return Err(EngineError::Input(
                "max_tokens must be at least 1".to_string(),
            ));
        }
        check_prompt_bytes(messages, prompt_byte_limit(capacity))?;
        // 1. Template, tokens with image and video tokens expanded, positions numbered from 0.
        let prompt = self
            .processor
            .encode_media(messages, &images, &videos, true)?;
        let visual = if videos.is_empty() {
            images
        } else {
            crate::media::visual_inputs_in_prompt_order(messages, &images, &videos).into_owned()
        };
        // 2. Continue the history: closing tokens, then the prompt, after `len + rope_delta`.
        let base = history.len as i64 + history.rope_delta;
        let n_close = history.close.len();
        let mut tokens = Vec::with_capacity(n_close + prompt.input_ids.len());
        tokens.extend_from_slice(history.close);
        tokens.extend_from_slice(&prompt.input_ids);
        let mut positions = Positions::text(base, n_close);
        positions.extend_shifted(
            Positions::from(prompt.positions).as_ref(),
            base + n_close as i64,
        );
        // 3. The token budget.
        let used = history.len + tokens.len();
        let room = capacity.saturating_sub(used);
        let too_long = |n: usize| {
            EngineError::Input(format!(
                "the prompt has {} tokens{}; with max_tokens {n} that is {} tokens, over the context of {} tokens",
                tokens.len(),
                if history.len == 0 {
                    String::new()
                } else {
                    format!(" (after {} tokens of conversation)", history.len)
                },
                match used.checked_add(n) {
                    Some(t) => t.to_string(),
                    None => "more than usize::MAX".to_string(),
                },
                capacity
            ))
        };
        let max_tokens = match max_tokens {
            Some(n) if n > room => return Err(too_long(n)),
            Some(n) => n,
            None if room == 0 => {
                return Err(EngineError::Input(format!(
                    "the prompt has {} tokens{}: it does not fit in the context of {capacity} tokens with room \
                     for an answer",
                    tokens.len(),
                    if history.len == 0 {
                        String::new()
                    } else {
                        format!(" (after {} tokens of conversation)", history.len)
                    },
                )))
            }
            // Unset: what fits, at most the checkpoint's `max_new_tokens` when it sets one.
            None => room.min(self.generation_config.max_new_tokens.unwrap_or(usize::MAX)),
        };
        Ok(Prepared {
            tokens,
            positions,
            vision: visual
                .into_iter()
                .map(|im| VisionInput {
                    pixel_values: im.pixel_values,
                    grid_thw: im.grid_thw,
                })
                .collect(),
            rope_delta: history.rope_delta + prompt.rope_delta,
            max_tokens,
        })
    }
}
